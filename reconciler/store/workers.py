"""Worker records: what the executor started and what each worker reports."""

from __future__ import annotations

import json
import sqlite3
import time

from reconciler.model import WorkerRow, worker_sort_key
from reconciler.store.base import Database


class WorkerRegistry(Database):
    def register_worker(self, worker_id: str, *, runtime: str, pid: int | None,
                        pid_create_time: float | None, spec_id: int, template_hash: str,
                        template_digests: dict[str, str], restarted: bool,
                        tmux_socket: str | None = None, now: float | None = None) -> None:
        """Record that the executor is starting ``worker_id`` (fresh or as a replacement).

        Called *before* the process starts (pid still unknown), so the
        worker's own first write can never be overwritten by this one.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute(
                "INSERT INTO workers (id, runtime, tmux_socket, pid, pid_create_time, spec_id,"
                " template_hash, template_digests, state, started_at, heartbeat_at, restarts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'starting', ?, NULL, 0)"
                " ON CONFLICT (id) DO UPDATE SET runtime = excluded.runtime,"
                " tmux_socket = excluded.tmux_socket, pid = excluded.pid,"
                " pid_create_time = excluded.pid_create_time, spec_id = excluded.spec_id,"
                " template_hash = excluded.template_hash,"
                " template_digests = excluded.template_digests, state = 'starting',"
                " current_task = NULL, started_at = excluded.started_at, heartbeat_at = NULL,"
                " drain_requested = 0, exited_at = NULL, exit_code = NULL, removed = 0,"
                " restarts = restarts + ?",
                (worker_id, runtime, tmux_socket, pid, pid_create_time, spec_id, template_hash,
                 json.dumps(template_digests, sort_keys=True), now, 1 if restarted else 0))
            self._event(db, now, "worker.restarted" if restarted else "worker.started",
                        worker_id, None, f"starting as {runtime}")

    def set_worker_process(self, worker_id: str, pid: int, create_time: float | None) -> None:
        """Record the process the runtime started for ``worker_id``."""
        with self.transaction() as db:
            db.execute("UPDATE workers SET pid = ?, pid_create_time = ? WHERE id = ?",
                       (pid, create_time, worker_id))

    def set_worker_state(self, worker_id: str, state: str, *, pid: int | None = None,
                         now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            if pid is not None:
                db.execute("UPDATE workers SET state = ?, pid = ?, heartbeat_at = ? WHERE id = ?",
                           (state, pid, now, worker_id))
            else:
                db.execute("UPDATE workers SET state = ?, heartbeat_at = ? WHERE id = ?",
                           (state, now, worker_id))

    def request_drain(self, worker_id: str, reason: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET drain_requested = 1 WHERE id = ?", (worker_id,))
            self._event(db, now, "worker.draining", worker_id, None, reason)

    def mark_worker_exited(self, worker_id: str, exit_code: int | None,
                           now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET state = 'exited', exited_at = ?, exit_code = ?,"
                       " current_task = NULL WHERE id = ?", (now, exit_code, worker_id))
            self._event(db, now, "worker.exited", worker_id, None,
                        f"exited ({'exit ' + str(exit_code) if exit_code is not None else '?'})")

    def mark_worker_removed(self, worker_id: str, reason: str,
                            now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET removed = 1, state = 'stopped', current_task = NULL,"
                       " pid = NULL WHERE id = ?", (worker_id,))
            self._event(db, now, "worker.stopped", worker_id, None, reason)

    def workers(self, include_removed: bool = False) -> list[WorkerRow]:
        rows = [_worker(r) for r in self._query(
            "SELECT * FROM workers WHERE removed = 0 OR ?", (int(include_removed),))]
        return sorted(rows, key=lambda w: worker_sort_key(w.id))


def _worker(r: sqlite3.Row) -> WorkerRow:
    return WorkerRow(r["id"], r["runtime"], r["tmux_socket"], r["pid"], r["pid_create_time"],
                     r["spec_id"],
                     r["template_hash"], json.loads(r["template_digests"] or "{}"), r["state"],
                     r["current_task"], r["started_at"], r["heartbeat_at"], r["restarts"],
                     bool(r["drain_requested"]), r["exited_at"], r["exit_code"], bool(r["removed"]))
