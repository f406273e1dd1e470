"""The plan's vocabulary: one frozen type per kind of change, and the plan itself.

Each action carries exactly what the executor needs to carry it out, decided
by the pure planner from one observation: which process to kill (with its
start time, so a recycled pid is never hit), whether a restart counts against
the budget and why a budget starts afresh, and the guard that makes a counted
restart of a hung worker stand down if it heartbeat after it was observed.
Nothing here does I/O; ``reconciler.report.plan`` renders these values and
``reconciler.executor`` carries them out with one ``match``.

A ``Wait`` is explicit: it names the action it leads to, until when and why
(a restart backoff, a drain in progress), and the executor does nothing for it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from reconciler.model import ProcessRef, RuntimeInstance, Step

CONTROLLER = "controller"  # the target shown for the controller's own actions


@dataclass(frozen=True)
class AttemptRef:
    """A running attempt an action ends: its processes to kill, its worktree to clean.

    ``processes`` are every live process of the attempt that was observed (its
    agent and whatever carries its mark).  The task is requeued only once all
    of them are confirmed gone, so it never runs twice at once.  ``signal`` is
    what to send them now: ``SIGTERM`` the first time, ``SIGKILL`` once
    ``stopGrace`` has passed since, None while that grace runs.
    """

    attempt_id: int
    task_id: int
    agent: ProcessRef | None
    worktree: str | None
    processes: tuple[ProcessRef, ...] = ()
    signal: str | None = None
    kill_at: float | None = None  # when SIGKILL is due (stopGrace after the SIGTERM)


@dataclass(frozen=True)
class StartWorker:
    """Start a worker in an empty slot."""

    worker: str
    reason: str


@dataclass(frozen=True)
class ReplaceWorker:
    """Clear what is left of a worker, end its attempts, and start it again.

    ``counted``: a crash or hang, entered in the restart history the budget
    is checked against (its attempts use up a try); a planned replacement is
    free.  ``reset_budget``: why this start begins a new budget, if it does.
    ``unless_heartbeat_after``: the guard of a hung worker's restart; if it
    heartbeat after this time, it was not hung after all and is left alone.
    """

    worker: str
    reason: str
    instance: RuntimeInstance | None
    attempts: tuple[AttemptRef, ...] = ()
    counted: bool = False
    reset_budget: str | None = None
    unless_heartbeat_after: float | None = None


@dataclass(frozen=True)
class DrainWorker:
    """Ask a live worker to finish its current task and exit (store flag + SIGTERM).

    ``then`` says what follows once it has exited: ``replace`` or ``stop``.
    """

    worker: str
    reason: str
    instance: RuntimeInstance | None
    then: str


@dataclass(frozen=True)
class StopWorker:
    """Stop a worker for good now and forget it; its tasks go back to the queue.

    ``counted``: its attempts use up a try (a crashed surplus worker's do; an
    operator's stop or an overrun drain's do not).
    """

    worker: str
    reason: str
    instance: RuntimeInstance | None
    attempts: tuple[AttemptRef, ...] = ()
    counted: bool = False


@dataclass(frozen=True)
class RemoveWorker:
    """Clear the remains of a worker that exited (a dead tmux pane, its record) and
    forget it; what it left running is killed and its tasks requeued (counted)."""

    worker: str
    reason: str
    instance: RuntimeInstance | None
    attempts: tuple[AttemptRef, ...] = ()


@dataclass(frozen=True)
class ReleaseWorker:
    """Kill what a failed or vanished worker left running and requeue its tasks
    (``counted``: using up a try, unless what ended them was not their fault, such as
    a pueue daemon going away under them); the worker itself is not restarted."""

    worker: str
    reason: str
    instance: RuntimeInstance | None
    attempts: tuple[AttemptRef, ...] = ()
    counted: bool = True


@dataclass(frozen=True)
class KillStrays:
    """SIGKILL processes of the pool whose attempt has ended: they outlived it (a
    daemon an agent started, an agent whose worker died before recording it)."""

    attempt_id: int
    processes: tuple[ProcessRef, ...]
    reason: str


@dataclass(frozen=True)
class ResetBudget:
    """Forget a worker's earlier restarts (an operator's ``reconcile restart``)."""

    worker: str
    reason: str


@dataclass(frozen=True)
class CleanWorktree:
    """Remove a task worktree no running attempt owns (its branch, with any
    uncommitted work committed to it first, stays)."""

    path: str
    reason: str


@dataclass(frozen=True)
class StartController:
    """Start the pool's controller; ``hung`` is a controller to kill first."""

    reason: str
    hung: ProcessRef | None = None


@dataclass(frozen=True)
class StopController:
    """Ask the pool's controller to stop (store flag + SIGTERM)."""

    reason: str
    process: ProcessRef | None = None


# --------------------------------------------------------------------------- pueue
# runtime: pueue (``reconciler.pueueplan`` decides them): the daemon, the group that is
# the pool, the attempts handed to pueue, and the policies pueue lacks.


@dataclass(frozen=True)
class StartPueueDaemon:
    """``pueued -d``, then wait until ``pueue status`` answers."""

    reason: str


@dataclass(frozen=True)
class SetPueueGroup:
    """Bring the pool's pueue group to what the spec says: create it (``create``), set
    its parallel limit (``parallel`` from ``parallel_was``), pause it (``running``
    False: a rate limit, the day's budget) or start it again (True)."""

    group: str
    reason: str
    create: bool = False
    parallel: int | None = None
    parallel_was: int | None = None
    running: bool | None = None


@dataclass(frozen=True)
class SubmitTask:
    """Hand attempt ``attempt`` of a due queued task to pueue, as ``reconcile run-task``
    with a label naming the pool, task and attempt, at the task's priority."""

    task_id: int
    attempt: int
    priority: int
    group: str
    reason: str


@dataclass(frozen=True)
class KillPueueTask:
    """``pueue kill`` a task that ran past ``tasks.timeout`` plus its grace: one of our
    attempts (``task_id``), or one added by hand (None) under ``supervise: all``."""

    pueue_id: int
    task_id: int | None
    reason: str
    attempt_id: int | None = None  # our attempt it ends, if the store runs one
    cause: str = "timeout"  # timeout | silent (its wrapper stopped beating) | delete


@dataclass(frozen=True)
class RemovePueueTasks:
    """``pueue remove`` our tasks that pueue holds but has not started (a deleted pool's):
    no attempt of a pool that is gone may start later."""

    pueue_ids: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class RestartPueueTask:
    """``pueue restart --in-place`` a failed task that people added to the group by hand
    (``supervise: all``): the retry policy pueue has none of.  ``created_at`` and the
    id name the task for the restart count."""

    pueue_id: int
    created_at: float
    reason: str


Change = (StartWorker | ReplaceWorker | DrainWorker | StopWorker | RemoveWorker | ReleaseWorker
          | KillStrays | ResetBudget | CleanWorktree | StartController | StopController
          | StartPueueDaemon | SetPueueGroup | SubmitTask | KillPueueTask | RemovePueueTasks
          | RestartPueueTask)


@dataclass(frozen=True)
class Wait:
    """``then`` happens later: at ``until`` (a restart backoff's end, a drain's
    deadline), or as soon as the draining worker has exited.  ``why`` is the
    planner's words for the wait, relative to the plan's time (``in 0.8s
    (restart backoff)``, ``waiting for its current task (3s of 30s)``)."""

    then: Change
    why: str
    until: float | None = None


Action = Change | Wait
CHANGE_TYPES: tuple[type, ...] = (StartWorker, ReplaceWorker, DrainWorker, StopWorker,
                                  RemoveWorker, ReleaseWorker, KillStrays, ResetBudget,
                                  CleanWorktree, StartController, StopController,
                                  StartPueueDaemon, SetPueueGroup, SubmitTask, KillPueueTask,
                                  RemovePueueTasks, RestartPueueTask)
ACTION_TYPES: tuple[type, ...] = (*CHANGE_TYPES, Wait)


def verb(action: Action) -> str:
    """The word a plan uses for an action (a wait uses its outcome's)."""
    match action:
        case Wait(then=then):
            return verb(then)
        case StartWorker() | StartController() | StartPueueDaemon():
            return "start"
        case SetPueueGroup(create=True):
            return "create"
        case SetPueueGroup():
            return "set"
        case SubmitTask():
            return "queue"
        case ReplaceWorker() | RestartPueueTask():
            return "restart"
        case DrainWorker(then="replace"):
            return "restart"
        case DrainWorker() | StopWorker() | StopController():
            return "stop"
        case RemoveWorker() | RemovePueueTasks():
            return "remove"
        case ReleaseWorker():
            return "release"
        case KillStrays() | KillPueueTask():
            return "kill"
        case ResetBudget():
            return "reset"
        case CleanWorktree():
            return "clean"
    raise TypeError(f"not an action: {action!r}")


def target(action: Action) -> str:
    """What an action is about: a worker id, a worktree path, or ``controller``."""
    match action:
        case Wait(then=then):
            return target(then)
        case CleanWorktree(path=path):
            return path
        case KillStrays(attempt_id=attempt_id):
            return f"attempt {attempt_id}"
        case StartController() | StopController():
            return CONTROLLER
        case StartPueueDaemon():
            return "pueued"
        case SetPueueGroup(group=group):
            return f"pueue group {group}"
        case SubmitTask(task_id=task_id):
            return f"task {task_id}"
        case KillPueueTask(pueue_id=pueue_id) | RestartPueueTask(pueue_id=pueue_id):
            return f"pueue task {pueue_id}"
        case RemovePueueTasks(pueue_ids=ids):
            return f"pueue task{'s' * (len(ids) != 1)} {', '.join(map(str, ids))}"
        case StartWorker(worker=worker) | ReplaceWorker(worker=worker) | \
                DrainWorker(worker=worker) | StopWorker(worker=worker) | \
                RemoveWorker(worker=worker) | ReleaseWorker(worker=worker) | \
                ResetBudget(worker=worker):
            return worker
    raise TypeError(f"not an action: {action!r}")


@dataclass(frozen=True)
class SpecChange:
    """A setting the spec changes since the newest applied generation (``specdiff``):
    ``old``/``new`` as JSON text, None where the setting is absent."""

    path: str
    old: str | None
    new: str | None

    def describe(self) -> str:
        if self.old is None:
            return f"+ {self.path} = {self.new}"
        if self.new is None:
            return f"- {self.path} (was {self.old})"
        return f"~ {self.path}: {self.old} -> {self.new}"


@dataclass(frozen=True)
class Plan:
    """What a pass would do (``actions``) and the health transitions it records (``steps``).

    ``at`` is the time the plan was made for (waits are shown relative to it);
    ``generation`` the applied spec it works toward (0: none recorded yet).
    Steps are observations, not changes: a plan with steps but no actions is
    in sync.  A plan of waits only changes nothing now, but is not in sync.
    """

    pool: str
    actions: tuple[Action, ...] = ()
    steps: tuple[Step, ...] = ()
    at: float = 0.0
    generation: int = 0
    spec_changes: tuple[SpecChange, ...] = ()  # settings changed since the applied spec

    @property
    def empty(self) -> bool:
        return not self.actions

    @property
    def in_sync(self) -> bool:
        """Nothing to do and no setting to change: what ``diff`` exits 0 for."""
        return not self.actions and not self.spec_changes

    @property
    def changes(self) -> tuple[Change, ...]:
        """The actions to carry out now (everything but waits)."""
        return tuple(a for a in self.actions if not isinstance(a, Wait))

    @property
    def waiting(self) -> tuple[Wait, ...]:
        return tuple(a for a in self.actions if isinstance(a, Wait))

    def counts(self) -> Counter[str]:
        return Counter(verb(a) for a in self.actions)

    def summary(self) -> str:
        settings = f"{len(self.spec_changes)} setting(s) to change"
        if self.empty:
            return "No changes. The pool matches the spec." if not self.spec_changes else \
                f"Plan: {settings}; no worker to start, restart or stop."
        c = self.counts()
        parts = [f"{c['start']} to start", f"{c['restart']} to restart", f"{c['stop']} to stop"]
        for word, label in (("remove", "to remove"), ("release", "to release"),
                            ("kill", "to kill"),
                            ("create", "pueue group(s) to create"),
                            ("set", "change(s) to the pueue group"),
                            ("queue", "task(s) to hand to pueue"),
                            ("reset", "budget(s) to reset"), ("clean", "worktree(s) to clean")):
            if c[word]:
                parts.append(f"{c[word]} {label}")
        if self.spec_changes:
            parts.append(settings)
        waiting = len(self.waiting)
        return "Plan: " + ", ".join(parts) + (f" ({waiting} waiting)" if waiting else "") + "."
