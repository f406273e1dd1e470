"""Frozen value types shared by every layer: store rows, observations, plans.

Nothing here does I/O.  The observer builds an ``Observation`` (a snapshot of
the host), the pure planner turns it and a ``PoolSpec`` into a ``Plan`` of the
actions in ``reconciler.actions``, and renderers and the executor consume it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from reconciler.exitstatus import describe_exit

if TYPE_CHECKING:  # a type only: every CLI call imports this module, few need pueue's
    from reconciler.pueueview import PueueView

T = TypeVar("T")

TASK_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_TASK_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
ATTEMPT_STATUSES = ("running", "succeeded", "failed", "lost", "timeout", "cancelled",
                    "rate_limited")


@dataclass(frozen=True)
class ProcessRef:
    """A process to signal: its pid and start time (None when unknown), so a pid
    recycled by an unrelated process is never hit."""

    pid: int
    create_time: float | None


@dataclass(frozen=True)
class RetryPolicy:
    """What an ended attempt means for its task (from ``spec.tasks``)."""

    max_attempts: int = 1
    backoff: float = 0.0
    retry_on: frozenset[str] = frozenset({"failed", "timeout", "lost"})
    no_retry_exit_codes: frozenset[int] = frozenset()


@dataclass(frozen=True)
class TaskRow:
    id: int
    title: str
    prompt: str
    priority: int
    status: str
    created_at: float
    updated_at: float
    attempts: int
    cancel_requested: bool
    not_before: float
    last_error: str | None
    branch: str | None


@dataclass(frozen=True)
class AgentReport:
    """What the agent reported about its run (``worker.result``); None where it did not
    say.  ``message``: its own words on what went wrong, when ``is_error``."""

    is_error: bool = False
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    turns: int | None = None
    session_id: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class AttemptRow:
    id: int
    task_id: int
    number: int
    worker_id: str
    status: str
    started_at: float
    ended_at: float | None
    exit_code: int | None
    branch: str | None
    worktree: str | None
    log_path: str | None
    error: str | None
    output_tail: str | None
    lease_expires_at: float
    pid: int | None = None
    last_output_at: float | None = None
    pid_create_time: float | None = None
    stop_signalled_at: float | None = None  # when its processes were first sent SIGTERM
    rescued: str | None = None  # uncommitted work it left: "committed" to its branch, "kept"
    # seconds spent in each phase: worktree, setup, agent, hooks, finish
    phases: Mapping[str, float] = field(default_factory=dict)
    report: AgentReport | None = None  # what the agent said of its run (worker.result)


# What ``reconcile report`` reads of its window: only the columns it uses (never an output
# tail, a prompt, a path or a lease), so a month of history reads fast and stays small.
# Named tuples: each costs a tenth of a dataclass to create, at import and per row.
class ReportAttempt(NamedTuple):
    """An attempt that ended in the report's window."""

    id: int
    task_id: int
    number: int
    worker_id: str
    status: str
    started_at: float
    ended_at: float | None
    phases: Mapping[str, float]
    report: AgentReport | None


class ReportTask(NamedTuple):
    """A task the report's window names (created in it, or run by one of its attempts)."""

    id: int
    status: str
    created_at: float
    attempts: int


class DueTask(NamedTuple):
    """A queued task that is due, as the pueue runtime hands it on: the number of its
    next attempt is part of the label pueue carries."""

    id: int
    priority: int
    next_attempt: int


@dataclass(frozen=True)
class Claim:
    """A task a worker now holds; ``lease_token`` fences every later write."""

    task: TaskRow
    attempt_id: int
    attempt_number: int
    lease_token: str


@dataclass(frozen=True)
class WorkerRow:
    """What the store knows about one worker slot (written by executor and worker)."""

    id: str
    runtime: str
    tmux_socket: str | None
    pid: int | None
    pid_create_time: float | None
    spec_id: int | None
    template_hash: str | None
    template_digests: Mapping[str, str]
    state: str
    current_task: int | None
    started_at: float | None
    heartbeat_at: float | None
    restarts: int
    drain_requested: bool
    exited_at: float | None
    exit_code: int | None
    removed: bool
    drain_requested_at: float | None = None
    health: str = "recovering"
    health_since: float | None = None
    restart_epoch: float = 0.0


@dataclass(frozen=True)
class ControllerRow:
    """The pool's controller as it registered itself in the store."""

    pid: int | None
    pid_create_time: float | None
    started_at: float | None
    heartbeat_at: float | None
    stop_requested: bool
    busy_with: str | None = None  # what the pass under way is doing, if it acts
    busy_since: float | None = None


@dataclass(frozen=True)
class AppliedSpec:
    id: int
    applied_at: float
    source_path: str | None
    source_sha256: str
    git_commit: str | None
    document_hash: str
    summary: str


@dataclass(frozen=True)
class EventRow:
    """One entry of the pool's event log; ``fields`` holds its structured facts
    (e.g. ``from``/``to`` of a health transition) for ``-o json`` and alerting."""

    id: int
    at: float
    kind: str
    worker_id: str | None
    task_id: int | None
    message: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    severity: str | None = None  # warning or critical: an alert; None: info


@dataclass(frozen=True)
class QueueCounts:
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def open(self) -> int:
        return self.queued + self.running

    @property
    def total(self) -> int:
        return self.open + self.succeeded + self.failed + self.cancelled


def worker_sort_key(worker_id: str) -> tuple[int, str]:
    """Order ``w-2`` before ``w-10``."""
    _, _, number = worker_id.rpartition("-")
    return (int(number), worker_id) if number.isdigit() else (1 << 30, worker_id)


# --------------------------------------------------------------------------- observation


@dataclass(frozen=True)
class RuntimeInstance:
    """A worker as the runtime sees it: a tmux pane or a detached process."""

    worker_id: str
    runtime: str
    pid: int | None
    alive: bool
    exit_status: int | None = None
    exit_signal: int | None = None
    handle: str | None = None  # tmux window id, e.g. "@3"
    socket: str | None = None  # tmux socket the window lives on

    def exit_description(self) -> str:
        # tmux 3.3 sometimes records no status for a killed pane: "exit status unknown"
        return describe_exit(self.exit_status, self.exit_signal)


@dataclass(frozen=True)
class Observation:
    """A snapshot of one pool on the host, taken at ``observed_at``."""

    pool: str
    observed_at: float
    instances: tuple[RuntimeInstance, ...] = ()
    workers: tuple[WorkerRow, ...] = ()
    queue: QueueCounts = field(default_factory=QueueCounts)
    worktrees: tuple[str, ...] = ()  # task worktrees git knows under the pool's root
    attempt_worktrees: Mapping[str, str] = field(default_factory=dict)  # path -> attempt status
    running: tuple[AttemptRow, ...] = ()  # attempts in progress
    restart_history: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    controller_alive: bool | None = None  # None: not observed
    controller: ControllerRow | None = None  # the controller's record, if any
    # live processes carrying each attempt's mark (``reconciler.marks``), by attempt id;
    # read before ``running``, so a process of an attempt claimed meanwhile is never
    # mistaken for one no attempt owns
    attempt_processes: Mapping[int, tuple[ProcessRef, ...]] = field(default_factory=dict)
    worker_worktrees: tuple[str, ...] = ()  # worktrees.reuse: perWorker, one per worker
    # runtime: pueue only -- the pool's view of one `pueue status` (None: not a pueue
    # pool), the first queued tasks that are due, in the order workers would claim them,
    # until when claiming is paused (a rate limit, the day's budget), and how often the
    # controller restarted each task people added by hand, by (pueue id, created_at)
    pueue: PueueView | None = None
    due_tasks: tuple[DueTask, ...] = ()
    paused_until: float = 0.0
    foreign_restarts: Mapping[tuple[int, float], int] = field(default_factory=dict)
    # the store's status of each task pueue holds an attempt of, and when the next queued
    # task comes due (a retry's backoff ending: pueue rings no bell for it)
    pueue_task_statuses: Mapping[int, str] = field(default_factory=dict)
    next_due_at: float | None = None

    def attempt_of(self, worker_id: str) -> AttemptRow | None:
        return self._attempts_by_worker.get(worker_id)

    def instance(self, worker_id: str) -> RuntimeInstance | None:
        return self._instances_by_worker.get(worker_id)

    def worker(self, worker_id: str) -> WorkerRow | None:
        return self._workers_by_id.get(worker_id)

    # Indexes built on first use (the snapshot is frozen, so they never go stale): the
    # planner looks every worker up, and a scan per lookup made a pass quadratic in the
    # pool size.  Each keeps the first entry per worker, as a scan would find it.

    @cached_property
    def _attempts_by_worker(self) -> dict[str, AttemptRow]:
        return _first_by(self.running, lambda a: a.worker_id)

    @cached_property
    def _instances_by_worker(self) -> dict[str, RuntimeInstance]:
        return _first_by(self.instances, lambda i: i.worker_id)

    @cached_property
    def _workers_by_id(self) -> dict[str, WorkerRow]:
        return _first_by(self.workers, lambda w: w.id)


def _first_by(items: Iterable[T], key: Callable[[T], str | None]) -> dict[str, T]:
    """``items`` by ``key``; the first of several with the same key wins."""
    index: dict[str, T] = {}
    for item in items:
        k = key(item)
        if k is not None:
            index.setdefault(k, item)
    return index


@dataclass(frozen=True)
class Step:
    """One health transition: ``worker`` goes from ``source`` to ``dest`` because ``reason``."""

    worker: str
    source: str
    dest: str
    trigger: str
    reason: str

    def describe(self) -> str:
        return f"{self.worker}: {self.source} → {self.dest} ({self.reason})"
