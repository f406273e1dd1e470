"""Worker records, their health and restart history, and the controller's record."""

from __future__ import annotations

import json
import sqlite3
import time

from reconciler.exitstatus import describe_exit
from reconciler.model import ControllerRow, WorkerRow, worker_sort_key
from reconciler.store.base import Database

CONTROLLER_DOWN_KEY = "controller_down"  # in meta: the controller reported down, if any


def controller_identity(pid: int | None, started_at: float | None) -> str:
    """Which controller process a ``controller.down`` report is about."""
    return f"{pid}@{started_at}"


# each worker's restarts since its epoch: a range of ``restarts_by_worker`` per worker
# (CROSS JOIN keeps workers outside, so the older restarts are never read)
RESTART_HISTORY_SQL = ("SELECT r.worker_id, r.at FROM workers w CROSS JOIN restarts r"
                       " ON r.worker_id = w.id AND r.at >= w.restart_epoch ORDER BY r.at")


class WorkerRegistry(Database):
    def register_worker(self, worker_id: str, *, runtime: str, pid: int | None,
                        pid_create_time: float | None, spec_id: int, template_hash: str,
                        template_digests: dict[str, str], restarted: bool,
                        tmux_socket: str | None = None, counted: bool = False,
                        reason: str = "", reset_budget: bool = False,
                        budget_reason: str | None = None, now: float | None = None) -> None:
        """Record that the executor is starting ``worker_id`` (fresh or as a replacement).

        Called *before* the process starts (pid still unknown), so the
        worker's own first write can never be overwritten by this one.
        ``counted`` restarts (crashes, hangs) enter the restart history that
        the restart budget is checked against; planned ones (rolls) do not.
        ``reset_budget`` starts a new budget (a new spec, stable uptime); a
        replacement says so in a ``worker.budget_reset`` event naming
        ``budget_reason`` (else ``reason``).  A first start has no budget to reset.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute(
                "INSERT INTO workers (id, runtime, tmux_socket, pid, pid_create_time, spec_id,"
                " template_hash, template_digests, state, started_at, heartbeat_at, restarts,"
                " health, health_since, restart_epoch)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'starting', ?, NULL, 0, 'recovering', ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET runtime = excluded.runtime,"
                " tmux_socket = excluded.tmux_socket, pid = excluded.pid,"
                " pid_create_time = excluded.pid_create_time, spec_id = excluded.spec_id,"
                " template_hash = excluded.template_hash,"
                " template_digests = excluded.template_digests, state = 'starting',"
                " current_task = NULL, started_at = excluded.started_at, heartbeat_at = NULL,"
                " drain_requested = 0, drain_requested_at = NULL, exited_at = NULL,"
                " exit_code = NULL, removed = 0, health = 'recovering', health_since = ?,"
                " restarts = restarts + ?,"
                " restart_epoch = CASE WHEN ? THEN ? ELSE restart_epoch END",
                (worker_id, runtime, tmux_socket, pid, pid_create_time, spec_id, template_hash,
                 json.dumps(template_digests, sort_keys=True), now, now, now,
                 now, 1 if restarted else 0, int(reset_budget), now))
            if counted:
                db.execute("INSERT INTO restarts (worker_id, at, reason) VALUES (?, ?, ?)",
                           (worker_id, now, reason))
            self._event(db, now, "worker.restarted" if restarted else "worker.started",
                        worker_id, None,
                        f"starting as {runtime}" + (f" (after: {reason})" if reason else ""),
                        {"counted": counted, "reason": reason})
            if reset_budget and restarted:
                why = budget_reason or reason
                self._event(db, now, "worker.budget_reset", worker_id, None,
                            f"restart budget reset: {why}", {"reason": why})

    def set_worker_process(self, worker_id: str, pid: int, create_time: float | None) -> None:
        """Record the process the runtime started for ``worker_id``."""
        with self.transaction() as db:
            db.execute("UPDATE workers SET pid = ?, pid_create_time = ? WHERE id = ?",
                       (pid, create_time, worker_id))

    def forget_worker_process(self, worker_id: str) -> None:
        """Clear the pid of a worker whose process is gone, so a released worker's
        row no longer points at a process (and is not seen as remains again)."""
        with self.transaction() as db:
            db.execute("UPDATE workers SET pid = NULL, pid_create_time = NULL WHERE id = ?",
                       (worker_id,))

    def worker_heartbeat(self, worker_id: str) -> float | None:
        """The worker's latest heartbeat (None: never, or no such worker); one row read,
        cheap enough to re-check right before a counted restart."""
        rows = self._query("SELECT heartbeat_at FROM workers WHERE id = ?", (worker_id,))
        return float(rows[0]["heartbeat_at"]) if rows and rows[0]["heartbeat_at"] is not None \
            else None

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
        """Ask ``worker_id`` to finish its current task and exit; the first request counts."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET drain_requested = 1,"
                       " drain_requested_at = COALESCE(drain_requested_at, ?) WHERE id = ?",
                       (now, worker_id))
            self._event(db, now, "worker.draining", worker_id, None, reason)

    def set_health(self, worker_id: str, old: str, new: str, reason: str,
                   now: float | None = None) -> None:
        """Record a health transition the planner decided (and log it as an event)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET health = ?, health_since = ? WHERE id = ?",
                       (new, now, worker_id))
            self._health_event(db, now, worker_id, old, new, reason)

    @staticmethod
    def _health_event(db: sqlite3.Connection, now: float, worker_id: str, old: str, new: str,
                      reason: str) -> None:
        """One shape for every health transition, so alerting can key on ``from``/``to``."""
        Database._event(db, now, "worker.health", worker_id, None, f"{old} → {new}: {reason}",
                        {"from": old, "to": new, "reason": reason})

    def reset_restart_budget(self, worker_id: str, reason: str,
                             now: float | None = None) -> None:
        """Forget earlier restarts (stable uptime, or an operator's ``reconcile restart``)."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET restart_epoch = ? WHERE id = ?", (now, worker_id))
            self._event(db, now, "worker.budget_reset", worker_id, None, reason)

    def restart_history(self) -> dict[str, tuple[float, ...]]:
        """Counted restarts of each worker since its budget was last reset, oldest first."""
        rows = self._query(RESTART_HISTORY_SQL)
        history: dict[str, list[float]] = {}
        for r in rows:
            history.setdefault(str(r["worker_id"]), []).append(float(r["at"]))
        return {k: tuple(v) for k, v in history.items()}

    def mark_worker_exited(self, worker_id: str, exit_code: int | None,
                           now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE workers SET state = 'exited', exited_at = ?, exit_code = ?,"
                       " current_task = NULL WHERE id = ?", (now, exit_code, worker_id))
            self._event(db, now, "worker.exited", worker_id, None,
                        f"exited ({describe_exit(exit_code)})")

    def mark_worker_removed(self, worker_id: str, reason: str,
                            now: float | None = None) -> None:
        """Record a planned stop: the worker is ``stopped``, not dead, in health too."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute("SELECT health FROM workers WHERE id = ?", (worker_id,)).fetchone()
            db.execute("UPDATE workers SET removed = 1, state = 'stopped', current_task = NULL,"
                       " pid = NULL, health = 'stopped', health_since = ? WHERE id = ?",
                       (now, worker_id))
            self._event(db, now, "worker.stopped", worker_id, None, reason)
            if row is not None and row["health"] != "stopped":
                self._health_event(db, now, worker_id, str(row["health"]), "stopped", reason)

    def workers(self, include_removed: bool = False) -> list[WorkerRow]:
        rows = [_worker(r) for r in self._query(
            "SELECT * FROM workers WHERE removed = 0 OR ?", (int(include_removed),))]
        return sorted(rows, key=lambda w: worker_sort_key(w.id))

    # ------------------------------------------------------------------ the controller

    def record_controller_launch(self, pid: int, create_time: float | None,
                                 now: float | None = None) -> None:
        """Record a controller process just launched (by an executor), without an event.

        Written at once, so the next pass sees a controller and does not start a
        second one; the controller itself announces its start (``register_controller``).
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            self._upsert_controller(db, pid, create_time, now)

    def register_controller(self, pid: int, create_time: float | None,
                            now: float | None = None) -> None:
        """The controller process records itself and logs the one ``controller.started``."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            self._upsert_controller(db, pid, create_time, now)
            self._event(db, now, "controller.started", None, None, f"pid {pid}", {"pid": pid})

    @staticmethod
    def _upsert_controller(db: sqlite3.Connection, pid: int, create_time: float | None,
                           now: float) -> None:
        # stop_requested survives: a controller started while delete runs must not
        # clear delete's request (apply clears it with ``clear_controller_stop``)
        db.execute("INSERT INTO controller (id, pid, pid_create_time, started_at,"
                   " heartbeat_at, stop_requested) VALUES (1, ?, ?, ?, ?, 0)"
                   " ON CONFLICT (id) DO UPDATE SET pid = excluded.pid,"
                   " pid_create_time = excluded.pid_create_time,"
                   " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                   (pid, create_time, now, now))

    def controller_heartbeat(self, now: float | None = None) -> bool:
        """Record that the controller is alive; returns whether it was asked to stop."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE controller SET heartbeat_at = ? WHERE id = 1", (now,))
            row = db.execute("SELECT pid, started_at, stop_requested FROM controller"
                             " WHERE id = 1").fetchone()
            if row is not None:  # reported down while it hung (or was stopped): back now
                self._clear_down_report(db, now, controller_identity(row["pid"],
                                                                     row["started_at"]),
                                        f"the controller answers again (pid {row['pid']})",
                                        row["pid"])
        return bool(row and row["stop_requested"])

    def clear_controller_stop(self) -> None:
        """The pool is wanted again (``apply``): a controller may run."""
        with self.transaction() as db:
            db.execute("UPDATE controller SET stop_requested = 0 WHERE id = 1")

    def request_controller_stop(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE controller SET stop_requested = 1 WHERE id = 1")
            self._event(db, now, "controller.stopping", None, None, "stop requested")

    def report_controller_down(self, which: str, message: str,
                               now: float | None = None) -> bool:
        """Log ``controller.down`` (critical) for the controller ``which`` (its pid and
        start), once however many workers notice; True for the one that logged it."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            current = db.execute("SELECT pid, started_at FROM controller WHERE id = 1"
                                 ).fetchone()
            if current is None or controller_identity(current["pid"],
                                                      current["started_at"]) != which:
                return False  # another controller registered since the worker looked
            row = db.execute("SELECT value FROM meta WHERE key = ?",
                             (CONTROLLER_DOWN_KEY,)).fetchone()
            if row is not None and row["value"] == which:
                return False
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key)"
                       " DO UPDATE SET value = excluded.value", (CONTROLLER_DOWN_KEY, which))
            self._event(db, now, "controller.down", None, None, message,
                        {"controller": which})
        return True

    def controller_back(self, pid: int, now: float | None = None) -> bool:
        """A controller started after one was reported down: log ``controller.back``
        (and forget the report); True if there was one."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            return self._clear_down_report(db, now, None,
                                           f"a controller runs again (pid {pid})", pid)

    def _clear_down_report(self, db: sqlite3.Connection, now: float, which: str | None,
                           message: str, pid: int | None) -> bool:
        """Forget a ``controller.down`` report (of controller ``which`` only, unless None)
        and log ``controller.back``; True if there was one."""
        row = db.execute("SELECT value FROM meta WHERE key = ?",
                         (CONTROLLER_DOWN_KEY,)).fetchone()
        if row is None or not row["value"] or (which is not None and row["value"] != which):
            return False
        db.execute("UPDATE meta SET value = '' WHERE key = ?", (CONTROLLER_DOWN_KEY,))
        self._event(db, now, "controller.back", None, None, message, {"pid": pid})
        return True

    def controller(self) -> ControllerRow | None:
        rows = self._query("SELECT * FROM controller WHERE id = 1")
        if not rows:
            return None
        r = rows[0]
        return ControllerRow(r["pid"], r["pid_create_time"], r["started_at"], r["heartbeat_at"],
                             bool(r["stop_requested"]), r["busy_with"], r["busy_since"])

    def set_controller_busy(self, what: str | None, now: float | None = None) -> None:
        """What the controller's pass is doing (None once it is done), so ``status`` shows
        a controller in a long pass as busy with it, not as down."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            db.execute("UPDATE controller SET busy_with = ?, busy_since = ? WHERE id = 1",
                       (what, now if what is not None else None))


def _worker(r: sqlite3.Row) -> WorkerRow:
    return WorkerRow(
        id=r["id"], runtime=r["runtime"], tmux_socket=r["tmux_socket"], pid=r["pid"],
        pid_create_time=r["pid_create_time"], spec_id=r["spec_id"],
        template_hash=r["template_hash"], template_digests=json.loads(r["template_digests"]),
        state=r["state"], current_task=r["current_task"], started_at=r["started_at"],
        heartbeat_at=r["heartbeat_at"], restarts=r["restarts"],
        drain_requested=bool(r["drain_requested"]), exited_at=r["exited_at"],
        exit_code=r["exit_code"], removed=bool(r["removed"]),
        drain_requested_at=r["drain_requested_at"], health=r["health"],
        health_since=r["health_since"], restart_epoch=r["restart_epoch"])
