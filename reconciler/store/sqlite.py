"""The embedded SQLite store of one pool: tasks, attempts, workers, specs, events."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from reconciler.errors import StoreError
from reconciler.model import AppliedSpec
from reconciler.store.events import EventLog
from reconciler.store.tasks import TaskQueue
from reconciler.store.totals import TotalReads
from reconciler.store.workers import WorkerRegistry


class Store(TaskQueue, WorkerRegistry, EventLog, TotalReads):
    """Everything the pool persists; one instance per thread or process."""

    def record_applied_spec(self, *, source_path: str | None, source_sha256: str,
                            git_commit: str | None, document_hash: str, document: str,
                            summary: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO applied_specs (applied_at, source_path, source_sha256, git_commit,"
                " document_hash, document, summary) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, source_path, source_sha256, git_commit, document_hash, document, summary))
            self._event(db, now, "spec.applied", None, None, summary)
            return int(cur.lastrowid or 0)

    def latest_spec_id(self, document_hash: str) -> int | None:
        rows = self._query("SELECT id FROM applied_specs WHERE document_hash = ?"
                           " ORDER BY id DESC LIMIT 1", (document_hash,))
        return int(rows[0]["id"]) if rows else None

    def spec_document(self, spec_id: int) -> dict[str, Any]:
        rows = self._query("SELECT document FROM applied_specs WHERE id = ?", (spec_id,))
        if not rows:
            raise StoreError(f"applied spec #{spec_id} is missing from {self.path}")
        document: dict[str, Any] = json.loads(rows[0]["document"])
        return document

    def latest_spec(self) -> tuple[int, dict[str, Any]] | None:
        """The newest applied spec's id (its generation) and document, or None before the
        first apply; one row read, so a pass can check it cheaply every time."""
        rows = self._query("SELECT id, document FROM applied_specs ORDER BY id DESC LIMIT 1")
        if not rows:
            return None
        document: dict[str, Any] = json.loads(rows[0]["document"])
        return int(rows[0]["id"]), document

    def history(self) -> list[AppliedSpec]:
        return [AppliedSpec(r["id"], r["applied_at"], r["source_path"], r["source_sha256"],
                            r["git_commit"], r["document_hash"], r["summary"])
                for r in self._query("SELECT * FROM applied_specs ORDER BY id")]

    def add_event(self, kind: str, message: str, *, worker_id: str | None = None,
                  task_id: int | None = None, now: float | None = None,
                  fields: Mapping[str, Any] | None = None) -> None:
        now = time.time() if now is None else now
        with self.transaction() as db:
            self._event(db, now, kind, worker_id, task_id, message, fields)

    # ------------------------------------------------------------------ pool deletion

    def set_deleting(self, reason: str | None, now: float | None = None) -> None:
        """Mark the pool as being deleted (``reason`` given) or no longer (None).

        Set before ``delete`` stops anything, so a delete that was interrupted
        can be named by ``status``; a repeated mark keeps the original start.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            if reason is not None:
                db.execute("INSERT INTO meta (key, value) VALUES ('deleting_since', ?)"
                           " ON CONFLICT (key) DO NOTHING", (repr(now),))
                self._event(db, now, "pool.deleting", None, None, reason, {"reason": reason})
                return
            cur = db.execute("DELETE FROM meta WHERE key = 'deleting_since'")
            if cur.rowcount:
                self._event(db, now, "pool.deleting_cleared", None, None,
                            "no delete in progress any more")

    def deleting(self) -> float | None:
        """When the delete in progress (or interrupted) began; None when there is none."""
        rows = self._query("SELECT value FROM meta WHERE key = 'deleting_since'")
        return float(rows[0]["value"]) if rows else None
