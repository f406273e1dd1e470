"""The store as a port: what the rest of reconciler may ask of a pool's store.

``reconciler.store.sqlite.Store`` (embedded SQLite) is today's only
implementation; a shared queue (PostgreSQL, say) must keep this same contract,
which ``tests/test_store_contract.py`` checks against every implementation.
This module does no I/O and imports only typing and ``reconciler.model``.

The contract
============

Atomicity.  Every operation that reads and then writes does both in one
transaction that takes the write lock before it reads (SQLite's ``BEGIN
IMMEDIATE``; ``SELECT ... FOR UPDATE SKIP LOCKED`` or the like elsewhere).  No
two callers ever act on the same read, across threads and processes.

Claim order.  ``claim_task`` takes the runnable task of highest ``priority``,
the oldest (lowest id) among equals.  A task is runnable when it is ``queued``
and its ``not_before`` has come.  While the pool is paused (``paused_until``
in the future, set by a ``rate_limited`` attempt) nobody claims anything.

One running attempt per task.  Claiming moves the task to ``running`` and
starts attempt number N+1 (N: attempts ever made), so a task has at most one
attempt ``running`` at any time, and every attempt has a number of its own
(worktree and log names use it).

Fencing.  Each attempt gets a fresh, unguessable ``lease_token`` in its
``Claim``.  Every write to an attempt (``update_attempt``, ``heartbeat``,
``set_attempt_pid``, ``finish_attempt``) names that token and only takes effect
while the attempt is still ``running`` under it.  A write with a stale token
(the attempt was requeued, swept, or finished) changes nothing at all and says
so: ``update_attempt`` and ``set_attempt_pid`` return False, ``finish_attempt``
returns None, and ``heartbeat`` reports ``cancel_requested`` (abandon the task)
when the attempt was taken away (requeued as ``lost``, or a token that never
held it); a beat racing the holder's own finish asks for nothing.  A lost
lease's result is therefore rejected, never recorded.

Settling.  ``finish_attempt`` settles the task through ``reconciler.retry``:
success wins; a cancel (asked or reported) cancels; an outcome in the
policy's ``retry_on`` whose exit code is not in ``no_retry_exit_codes`` is
queued again (with exponential, jittered backoff) while fewer than
``max_attempts`` attempts were used; anything else fails the task, keeping the
attempt's error as the task's ``last_error``.  A ``rate_limited`` attempt uses
no attempt, requeues its task for ``resume_at`` and pauses the pool until then.

Requeue.  ``requeue_attempts_of`` ends a gone worker's running attempts as
``lost``.  With ``consume`` (a crash, a hang) the attempt counts against
``max_attempts`` and the task is settled by the policy, so a poison task cannot
kill workers forever; without it (an operator's stop, a roll) the attempt is
given back and the task is queued again at once, whatever ``retry_on`` says.

No task is lost.  Every task ends ``succeeded``, ``failed`` (with the reason
in ``last_error``) or ``cancelled``; until then it is ``queued`` or
``running`` under exactly one live lease.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self

from reconciler.model import (
    AgentReport,
    AppliedSpec,
    AttemptRow,
    Claim,
    ControllerRow,
    DueTask,
    EventRow,
    QueueCounts,
    RetryPolicy,
    TaskRow,
    WorkerRow,
)

if TYPE_CHECKING:  # only the name of a type; nothing is imported when the program runs
    from types import TracebackType


class StorePort(Protocol):
    """One connection to a pool's store; each thread or process opens its own."""

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the connection; the store's data stays."""

    def __enter__(self) -> Self:
        """``with Store(path) as store:`` closes the connection however the block ends."""

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Close the connection; an exception in the block propagates."""

    def data_version(self) -> int:
        """A number that changes whenever another connection commits: a cheap wakeup
        check for the controller loop (opening a store must not change it)."""

    # ------------------------------------------------------------------ applied specs

    def record_applied_spec(self, *, source_path: str | None, source_sha256: str,
                            git_commit: str | None, document_hash: str, document: str,
                            summary: str, now: float | None = None) -> int:
        """Append an applied spec to the history; its id is its generation."""

    def latest_spec_id(self, document_hash: str) -> int | None:
        """The newest applied spec with this document hash, if any."""

    def latest_spec(self) -> tuple[int, dict[str, Any]] | None:
        """The newest applied spec's id and document, so a pass never acts on an older
        spec than the newest applied one; None before the first apply."""

    def spec_document(self, spec_id: int) -> dict[str, Any]:
        """The document of an applied spec; ``StoreError`` when it is missing."""

    def history(self) -> list[AppliedSpec]:
        """Every applied spec, oldest first (``reconcile history``)."""

    # ------------------------------------------------------------------ events, pool

    def add_event(self, kind: str, message: str, *, worker_id: str | None = None,
                  task_id: int | None = None, now: float | None = None,
                  fields: Mapping[str, Any] | None = None) -> None:
        """Log an event with its structured ``fields`` for ``-o json`` and alerting."""

    def events(self, after_id: int = 0, last: int | None = None) -> list[EventRow]:
        """Events after ``after_id`` in order; only the ``last`` N if given."""

    def find_events(self, *, kind: str | None = None, worker_id: str | None = None,
                    task_id: int | None = None, after_id: int = 0,
                    last: int | None = None, severity: str | None = None) -> list[EventRow]:
        """Events after ``after_id`` in order whose kind starts with ``kind``, of
        ``worker_id`` and of ``task_id`` (each only if given), of ``severity`` or above;
        only the ``last`` N matching ones if given.  Filtered by the store."""

    def alerts_after(self, after_id: int, limit: int = 500) -> list[EventRow]:
        """The alerts (warning and critical events) after ``after_id``, oldest first."""

    def last_event_id(self) -> int:
        """The newest event's id (0: none yet)."""

    def meta_value(self, key: str) -> str | None:
        """A value kept for the pool's own bookkeeping (e.g. the alerts' cursor)."""

    def set_meta_value(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` (see ``meta_value``)."""

    def paused_until(self) -> float:
        """Until when nobody may claim (a rate limit, the day's budget); 0 when claiming
        is allowed."""

    def next_claim_at(self, now: float | None = None) -> float | None:
        """When a queued task that cannot be claimed now becomes claimable (a retry's
        backoff or a pause ending); None when nothing queued waits for a time."""

    def due_tasks(self, limit: int, now: float | None = None) -> list[DueTask]:
        """The first ``limit`` due queued tasks in claim order, with each next attempt's
        number (what the pueue runtime hands to pueue)."""

    def pueue_restarts(self) -> dict[tuple[int, float], int]:
        """Restarts of tasks added to the pueue group by hand, by (pueue id, created_at)."""

    def count_pueue_restart(self, pueue_id: int, created_at: float, message: str,
                            now: float | None = None) -> None:
        """Record one restart of a task added to the pueue group by hand."""

    def paused_reason(self) -> str | None:
        """Why claiming is paused, as the pause said it."""

    def spend_since(self, since: float) -> float:
        """The reported cost (USD) of the attempts that ended from ``since`` on."""

    def pause_claiming(self, until: float, reason: str, *, kind: str = "pool.paused",
                       now: float | None = None) -> bool:
        """Stop every claim until ``until`` (a longer pause stays), with an event ``kind``."""

    def resume_claiming(self, *, hold_until: float | None = None,
                        now: float | None = None) -> float:
        """Lift a pause; return until when it would have held (0: none).  A budget pause
        is not set again before ``hold_until``."""

    def resumed_until(self) -> float:
        """Until when an operator's ``resume`` holds against a new budget pause."""

    def set_deleting(self, reason: str | None, now: float | None = None) -> None:
        """Mark a ``delete`` in progress (``reason``) or finished (None), so ``status``
        can name a delete that was interrupted."""

    def deleting(self) -> float | None:
        """When the delete in progress or interrupted began; None when there is none."""

    # ------------------------------------------------------------------ tasks

    def add_tasks(self, tasks: Sequence[tuple[str, str, int]], now: float | None = None,
                  ) -> list[int]:
        """Queue ``(title, prompt, priority)`` tuples all at once; return their ids.
        ``TaskError`` (nothing queued) for NUL bytes or an out-of-range priority."""

    def task(self, task_id: int) -> TaskRow:
        """One task; ``TaskError`` when there is no such task."""

    def tasks(self, status: str | None = None, *, limit: int | None = None,
              since: float | None = None) -> list[TaskRow]:
        """Every task (of ``status`` only, if given; changed since ``since``, if given), by
        id; the first ``limit`` if given."""

    def iter_tasks(self, status: str | None = None, *, limit: int | None = None,
                   since: float | None = None) -> Iterator[TaskRow]:
        """What ``tasks`` returns, streamed: memory does not grow with the task count."""

    def open_task_ids(self) -> list[int]:
        """The ids of queued and running tasks, in order, without reading finished ones."""

    def attempts(self, task_id: int | None = None) -> list[AttemptRow]:
        """Every attempt (of ``task_id`` only, if given, by attempt number)."""

    def task_titles(self, task_ids: Collection[int]) -> dict[int, str]:
        """The titles of these tasks, by id; unknown ids are left out."""

    def attempt_branches(self) -> dict[str, bool]:
        """Every branch some attempt recorded, and whether an attempt on it is running."""

    def queue_counts(self) -> QueueCounts:
        """Tasks per status, read without visiting every task row."""

    def retry_task(self, task_id: int, now: float | None = None) -> None:
        """Queue a failed or cancelled task again with a fresh attempt budget;
        ``TaskError`` for any other status."""

    def cancel_task(self, task_id: int, now: float | None = None) -> str:
        """Cancel a queued task at once (returns ``cancelled``) or ask the worker running
        it to stop (returns ``running``); ``TaskError`` when it already ended."""

    # ------------------------------------------------------------------ attempts, leases

    def claim_task_attempt(self, task_id: int, number: int, worker_id: str,
                           lease_seconds: float, now: float | None = None) -> Claim | str:
        """Take attempt ``number`` of task ``task_id`` if it is the task's next and the
        task is queued and due; else why not."""

    def claim_task(self, worker_id: str, lease_seconds: float,
                   now: float | None = None) -> Claim | None:
        """Take the next runnable task in claim order under a new lease; None when
        nothing is runnable or the pool is paused."""

    def update_attempt(self, claim: Claim, *, branch: str, worktree: str,
                       log_path: str) -> bool:
        """Record where the attempt runs; False (nothing written) on a lost lease."""

    def heartbeat(self, worker_id: str, claim: Claim | None, lease_seconds: float,
                  now: float | None = None,
                  last_output_at: float | None = None) -> tuple[bool, bool]:
        """Note the worker alive and extend ``claim``'s lease; returns ``(drain_requested,
        cancel_requested)``, the latter also True when the lease was taken away."""

    def task_statuses(self, task_ids: Sequence[int]) -> dict[int, str]:
        """The status of each of ``task_ids`` that exists."""

    def rescued_counts(self) -> dict[str, int]:
        """Attempts that left uncommitted work, by what became of it."""

    def set_attempt_phases(self, claim: Claim, phases: Mapping[str, float]) -> bool:
        """Record the seconds each phase of an attempt took."""

    def set_attempt_rescued(self, claim: Claim, how: str) -> bool:
        """Record what became of an attempt's uncommitted work (``committed``, ``kept``)."""

    def mark_attempts_signalled(self, attempt_ids: Collection[int],
                                now: float | None = None) -> None:
        """Record when running attempts' processes were first sent SIGTERM; from then on
        their workers' results are rejected."""

    def set_attempt_pid(self, claim: Claim, pid: int, create_time: float | None) -> bool:
        """Record the task command's process; False (nothing written) on a lost lease."""

    def finish_attempt(self, claim: Claim, status: str, *, exit_code: int | None = None,
                       error: str | None = None, output_tail: str | None = None,
                       policy: RetryPolicy | None = None, resume_at: float | None = None,
                       now: float | None = None,
                       report: AgentReport | None = None) -> str | None:
        """End the attempt and settle its task; the task's new status, or None when the
        lease was lost (the result is rejected and nothing changes).  ``report``: what
        the agent said of its run, recorded on the attempt."""

    def requeue_attempts_of(self, worker_id: str, reason: str, *, consume: bool,
                            policy: RetryPolicy | None = None, now: float | None = None,
                            only: Collection[int] | None = None) -> list[int]:
        """End a gone worker's running attempts as ``lost`` and settle their tasks
        (see Requeue above); returns the affected task ids."""

    def attempt_worktrees(self, paths: Collection[str]) -> dict[str, str]:
        """For each of ``paths`` some attempt recorded as its worktree, the status of the
        latest such attempt; the cost follows ``paths``, not the attempt history."""

    def running_attempts(self, worker_id: str | None = None) -> list[AttemptRow]:
        """Attempts in progress (of ``worker_id`` only, if given)."""

    # ------------------------------------------------------------------ workers

    def register_worker(self, worker_id: str, *, runtime: str, pid: int | None,
                        pid_create_time: float | None, spec_id: int, template_hash: str,
                        template_digests: dict[str, str], restarted: bool,
                        tmux_socket: str | None = None, counted: bool = False,
                        reason: str = "", reset_budget: bool = False,
                        budget_reason: str | None = None, now: float | None = None) -> None:
        """Record a worker about to start; ``counted`` restarts enter the restart history,
        ``reset_budget`` starts a new budget; a replacement says so in a
        ``worker.budget_reset`` event naming ``budget_reason`` (else ``reason``)."""

    def set_worker_process(self, worker_id: str, pid: int, create_time: float | None) -> None:
        """Record the process the runtime started for the worker."""

    def forget_worker_process(self, worker_id: str) -> None:
        """Clear the pid of a worker whose process is gone."""

    def set_worker_state(self, worker_id: str, state: str, *, pid: int | None = None,
                         now: float | None = None) -> None:
        """The worker reports its activity (and its own pid, once)."""

    def worker_heartbeat(self, worker_id: str) -> float | None:
        """The worker's latest heartbeat time; None if it never beat or does not exist."""

    def request_drain(self, worker_id: str, reason: str, now: float | None = None) -> None:
        """Ask the worker to finish its current task and exit."""

    def set_health(self, worker_id: str, old: str, new: str, reason: str,
                   now: float | None = None) -> None:
        """Record a health transition, with a ``worker.health`` event (from/to/reason)."""

    def reset_restart_budget(self, worker_id: str, reason: str,
                             now: float | None = None) -> None:
        """Forget the worker's earlier counted restarts, saying why."""

    def restart_history(self) -> dict[str, tuple[float, ...]]:
        """Counted restarts of each worker since its budget was reset, oldest first."""

    def mark_worker_exited(self, worker_id: str, exit_code: int | None,
                           now: float | None = None) -> None:
        """The worker's process ended (it reports this itself when it drains)."""

    def mark_worker_removed(self, worker_id: str, reason: str,
                            now: float | None = None) -> None:
        """A planned stop: the worker is removed, its health ``stopped`` (not dead)."""

    def workers(self, include_removed: bool = False) -> list[WorkerRow]:
        """Worker records in natural order (``w-2`` before ``w-10``)."""

    # ------------------------------------------------------------------ the controller

    def record_controller_launch(self, pid: int, create_time: float | None,
                                 now: float | None = None) -> None:
        """Record a controller just launched, without an event, so the next pass does
        not launch a second one."""

    def register_controller(self, pid: int, create_time: float | None,
                            now: float | None = None) -> None:
        """The controller records itself; exactly one ``controller.started`` event."""

    def controller_heartbeat(self, now: float | None = None) -> bool:
        """Note the controller alive; returns whether it was asked to stop."""

    def clear_controller_stop(self) -> None:
        """The pool is wanted again: a controller may run."""

    def request_controller_stop(self, now: float | None = None) -> None:
        """Ask the controller to stop (``delete``)."""

    def set_controller_busy(self, what: str | None, now: float | None = None) -> None:
        """Record what the controller's pass is doing (None: nothing)."""

    def report_controller_down(self, which: str, message: str,
                               now: float | None = None) -> bool:
        """Log ``controller.down`` once for controller ``which``; True if this call did."""

    def controller_back(self, pid: int, now: float | None = None) -> bool:
        """Log ``controller.back`` if a controller was reported down; True if so."""

    def controller(self) -> ControllerRow | None:
        """The controller's record; None before one ever registered."""
