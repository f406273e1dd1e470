"""Finished results the store could not take yet, kept on disk until it can.

A worker whose agent finished must not throw the result away because the
store is full, read-only or locked for longer than the store's own retries
(issue 7 item 3).  It writes the result here, beside the store, and records it
once the store takes writes again: itself before it claims another task, or,
if it dies meanwhile, the controller at the start of its next pass, before
it would end the attempt as lost.  A result is recorded only while its lease
holds (the token fences it, as any late write): one rejected is dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.log import logger
from reconciler.model import AgentReport, Claim, RetryPolicy
from reconciler.store.port import StorePort

DIRECTORY = "results"


@dataclass(frozen=True)
class PendingResult:
    attempt_id: int
    task_id: int
    attempt_number: int
    lease_token: str
    status: str
    exit_code: int | None
    error: str | None
    output_tail: str
    resume_at: float | None
    ended_at: float | None
    report: dict[str, Any] | None = None  # the agent's report (worker.result), as its fields


def directory(pool_root: Path) -> Path:
    return pool_root / DIRECTORY


def save(pool_root: Path, claim: Claim, *, status: str, exit_code: int | None,
         error: str | None, output_tail: str, resume_at: float | None,
         ended_at: float | None, report: AgentReport | None = None) -> Path:
    """Keep a result on disk (0600, written whole then renamed: never half a file)."""
    where = directory(pool_root)
    where.mkdir(mode=0o700, exist_ok=True)
    result = PendingResult(claim.attempt_id, claim.task.id, claim.attempt_number,
                           claim.lease_token, status, exit_code, error, output_tail,
                           resume_at, ended_at, asdict(report) if report else None)
    path = where / f"attempt-{claim.attempt_id}.json"
    partial = path.with_suffix(".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(asdict(result)).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    partial.replace(path)
    return path


def flush(pool_root: Path, store: StorePort, policy: RetryPolicy) -> int:
    """Record every kept result the store now takes; return how many are still kept.

    Never raises for a store that still refuses: the results stay for the next try.
    """
    where = directory(pool_root)
    if not where.is_dir():
        return 0
    left = 0
    for path in sorted(where.glob("attempt-*.json")):
        try:
            result = PendingResult(**json.loads(path.read_text()))
            report = AgentReport(**result.report) if result.report else None
        except (OSError, ValueError, TypeError) as exc:
            logger.error("unreadable kept result {}: {}", path, exc)
            continue
        try:
            task = store.task(result.task_id)
            claim = Claim(task, result.attempt_id, result.attempt_number, result.lease_token)
            recorded = store.finish_attempt(
                claim, result.status, exit_code=result.exit_code, error=result.error,
                output_tail=result.output_tail, policy=policy, resume_at=result.resume_at,
                now=result.ended_at, report=report)
        except ReconcilerError as exc:
            logger.warning("kept result of task {} still not recorded: {}", result.task_id,
                           exc.one_line())
            left += 1
            continue
        if recorded is None:
            logger.warning("kept result of task {} attempt {} ({}) rejected: its lease was "
                           "lost meanwhile", result.task_id, result.attempt_number,
                           result.status)
        else:
            logger.info("kept result of task {} attempt {} recorded: {}; task {}",
                        result.task_id, result.attempt_number, result.status, recorded)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return left
