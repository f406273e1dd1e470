"""The pool's event log: the latest N events, filtered, read through an index.

A long-lived pool holds millions of events.  ``reconcile events`` shows the last
50 (of a task, a worker or a kind, if asked), so every query here walks an index
backwards from the newest entry and stops at the limit:

- no filter: the rowid (``id``), newest first;
- ``--task``: ``events_by_task``, ``--worker``: ``events_by_worker`` (an index's
  entries end with the rowid, so each one's events come in ``id`` order); any other
  filter given with them is checked on those rows only;
- ``--severity``: the partial index ``events_alerts`` holds only alerts (warning and
  critical events, a small part of the log), newest first, in pages; other filters
  are checked on those rows;
- ``--kind`` alone, a prefix: each kind that starts with it is found by a seek in
  ``events_by_kind``, its newest events read from there, and the lists merged.
  (A scan down the rowid that skips other kinds would read the whole log to find a
  rare kind; one range over all matching kinds would sort all their events.)
"""

from __future__ import annotations

import heapq
import json
import sqlite3
from collections.abc import Sequence
from itertools import islice
from typing import Any

from reconciler.model import EventRow
from reconciler.severity import at_least
from reconciler.store.base import Database

LATEST_EVENTS_SQL = "SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?"
EVENTS_OF_TASK_SQL = "SELECT * FROM events WHERE task_id = ? AND id > ? ORDER BY id DESC LIMIT ?"
EVENTS_OF_WORKER_SQL = ("SELECT * FROM events WHERE worker_id = ? AND id > ?"
                        " ORDER BY id DESC LIMIT ?")
EVENTS_OF_KIND_SQL = "SELECT * FROM events WHERE kind = ? AND id > ? ORDER BY id DESC LIMIT ?"
NEXT_KIND_SQL = "SELECT kind FROM events WHERE kind > ? ORDER BY kind LIMIT 1"
ALERTS_NEWEST_SQL = ("SELECT * FROM events WHERE severity IS NOT NULL AND id > ?"
                     " AND id < ? ORDER BY id DESC LIMIT ?")
ALERTS_AFTER_SQL = ("SELECT * FROM events WHERE severity IS NOT NULL AND id > ?"
                    " ORDER BY id LIMIT ?")
ALERT_PAGE = 500
# a worker's life, for its up time: starts (up) and planned ends (down) are rare kinds;
# deaths are alerts (worker.health to dead or failed), read through the alerts' index
# (``+kind``: not through ``events_by_kind``, which holds every health change)
LIFE_EVENTS_SQL = ("SELECT id, worker_id, at, kind FROM events WHERE kind IN ('worker.started',"
                   " 'worker.restarted', 'worker.exited', 'worker.stopped') AND id >= ?"
                   " AND at BETWEEN ? AND ?")
DEATHS_SQL = ("SELECT id, worker_id, at, fields FROM events WHERE severity IS NOT NULL"
              " AND id >= ? AND +kind = 'worker.health' AND at BETWEEN ? AND ?")
EVENT_AT_SQL = "SELECT id, at FROM events WHERE id >= ? ORDER BY id LIMIT 1"
# a kind prefix compared exactly (LIKE would take ``_`` as a wildcard)
KIND_PREFIX = "substr(kind, 1, length(?)) = ?"


class EventLog(Database):
    def events(self, after_id: int = 0, last: int | None = None) -> list[EventRow]:
        """Events after ``after_id`` in order; only the ``last`` N of them if given."""
        return _in_order(self._query(LATEST_EVENTS_SQL, (after_id, _limit(last))))

    def find_events(self, *, kind: str | None = None, worker_id: str | None = None,
                    task_id: int | None = None, after_id: int = 0,
                    last: int | None = None, severity: str | None = None) -> list[EventRow]:
        """Events after ``after_id`` whose kind starts with ``kind``, of ``worker_id``
        and of ``task_id`` (each only if given), of ``severity`` or above (warning,
        critical), in order; only the ``last`` N if given.  Rows that match no index
        are never read into Python (see the module docstring)."""
        if severity is not None:
            return self._alerts(at_least(severity), kind, worker_id, task_id, after_id, last)
        limit = _limit(last)
        if task_id is None and worker_id is None:
            if not kind:
                return self.events(after_id, last)
            return self._events_of_kinds(kind, after_id, last)
        sql = EVENTS_OF_TASK_SQL if task_id is not None else EVENTS_OF_WORKER_SQL
        params: list[object] = [task_id if task_id is not None else worker_id]
        where = []
        if task_id is not None and worker_id is not None:
            where.append("worker_id = ?")
            params.append(worker_id)
        if kind:
            where.append(KIND_PREFIX)
            params += [kind, kind]
        if where:
            sql = sql.replace(" AND id > ?", "".join(f" AND {w}" for w in where) + " AND id > ?")
        return _in_order(self._query(sql, (*params, after_id, limit)))

    def _events_of_kinds(self, prefix: str, after_id: int, last: int | None) -> list[EventRow]:
        """The newest ``last`` events of every kind starting with ``prefix``: one index
        seek per kind there is, and at most ``last`` rows read of each."""
        newest_first = []
        for kind in self._kinds_starting_with(prefix):
            newest_first.append(self._query(EVENTS_OF_KIND_SQL, (kind, after_id, _limit(last))))
        merged = heapq.merge(*newest_first, key=lambda r: r["id"], reverse=True)
        return _in_order(list(islice(merged, last)))

    def _alerts(self, severities: Sequence[str], kind: str | None, worker_id: str | None,
                task_id: int | None, after_id: int, last: int | None) -> list[EventRow]:
        """The newest ``last`` alerts that pass the filters, read a page at a time."""
        found: list[sqlite3.Row] = []
        before = 2 ** 63 - 1
        while last is None or len(found) < last:
            page = self._query(ALERTS_NEWEST_SQL, (after_id, before, ALERT_PAGE))
            for r in page:
                if r["severity"] in severities and (not kind or r["kind"].startswith(kind)) \
                        and (worker_id is None or r["worker_id"] == worker_id) \
                        and (task_id is None or r["task_id"] == task_id):
                    found.append(r)
            if len(page) < ALERT_PAGE:
                break
            before = page[-1]["id"]
        return _in_order(found[:last] if last is not None else found)

    def alerts_after(self, after_id: int, limit: int = ALERT_PAGE) -> list[EventRow]:
        """The alerts logged after ``after_id``, oldest first (the controller sends them)."""
        return [_event(r) for r in self._query(ALERTS_AFTER_SQL, (after_id, limit))]

    def worker_lives(self, since: float, until: float) -> list[tuple[str, float, str]]:
        """(worker, when, what) for each start, restart, exit, stop and death (``died``:
        its health went to dead or failed) logged from ``since`` to ``until``, in the
        order they happened.
        Only the window's events are read: the first of them is found by a binary
        search on the event ids (they grow with time), the rest through the index of
        kinds and the alerts' index (a death is an alert)."""
        first = self._first_event_at(since)
        found = [(int(r["id"]), str(r["worker_id"]), float(r["at"]),
                  str(r["kind"]).removeprefix("worker."))
                 for r in self._query(LIFE_EVENTS_SQL, (first, since, until))
                 if r["worker_id"]]
        for r in self._query(DEATHS_SQL, (first, since, until)):
            to = json.loads(r["fields"] or "{}").get("to")
            if r["worker_id"] and to in ("dead", "failed"):
                found.append((int(r["id"]), str(r["worker_id"]), float(r["at"]), "died"))
        return [(worker, at, what) for _, worker, at, what in
                sorted(found, key=lambda e: (e[2], e[0]))]  # by time, then as logged

    def _first_event_at(self, since: float) -> int:
        """The id of the first event logged at or after ``since`` (past the last: one more
        than it), in about 20 primary-key seeks for a million events."""
        low, high = 1, self.last_event_id() + 1
        while low < high:
            middle = (low + high) // 2
            rows = self._query(EVENT_AT_SQL, (middle,))  # ids may have gaps
            if not rows or float(rows[0]["at"]) >= since:
                high = middle
            else:
                low = int(rows[0]["id"]) + 1
        return low

    def meta_value(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None

    def set_meta_value(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
                       " DO UPDATE SET value = excluded.value", (key, value))

    def last_event_id(self) -> int:
        rows = self._query("SELECT MAX(id) AS id FROM events")
        return int(rows[0]["id"] or 0)

    def _kinds_starting_with(self, prefix: str) -> list[str]:
        """The distinct kinds that start with ``prefix``, each found by one seek in
        ``events_by_kind`` (the kinds are few; the events of each are many)."""
        kinds = []
        rows = self._query("SELECT kind FROM events WHERE kind >= ? ORDER BY kind LIMIT 1",
                           (prefix,))
        while rows and str(rows[0]["kind"]).startswith(prefix):
            after = str(rows[0]["kind"])
            kinds.append(after)
            rows = self._query(NEXT_KIND_SQL, (after,))
        return kinds


def _limit(last: int | None) -> int:
    return -1 if last is None else last


def _in_order(newest_first: Sequence[sqlite3.Row]) -> list[EventRow]:
    return [_event(r) for r in reversed(newest_first)]


def _event(r: sqlite3.Row) -> EventRow:
    fields: dict[str, Any] = json.loads(r["fields"]) if r["fields"] else {}
    return EventRow(r["id"], r["at"], r["kind"], r["worker_id"], r["task_id"], r["message"],
                    fields, r["severity"])
