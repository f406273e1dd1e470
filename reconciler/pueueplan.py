"""The planner's decisions for ``runtime: pueue``: a pueue group is the pool (pure).

pueue runs the tasks; we give it what it declines to do itself.  From one
``pueue status`` (``reconciler.pueueview``) and the store's snapshot, this
module decides, in the plan's one vocabulary (``reconciler.actions``):

- the daemon runs (``pueued -d`` when ``pueue status`` does not answer);
- the group exists, its parallel limit is ``replicas``, and it runs -- or is
  paused while the pool is (a rate limit, the day's budget).  A daemon that
  restarts pauses every group with queued tasks: that is undone here too;
- due queued tasks are handed to pueue, a few ahead of its free slots, each
  attempt once (its label says which);
- a task that runs past ``tasks.timeout`` plus ``stopGrace`` is killed with
  ``pueue kill``.  Ours get ``KILL_SLACK`` more: their wrapper stops its own agent
  at the timeout and records a timeout, so this only ever catches a wrapper that
  could not; a task added by hand (``supervise: all``) has no wrapper;
- our attempts whose pueue task ended without the wrapper recording a result
  (killed, crashed, removed) are named, for the planner to requeue;
- with ``supervise: all``, a failed task added by hand is restarted in place
  after ``tasks.retryBackoff`` (doubling), up to ``tasks.maxAttempts`` runs.

Nothing here reads a clock or a file; ``reconciler.planner`` composes it with
the worker-slot health that every runtime shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.actions import (
    Action,
    Change,
    KillPueueTask,
    RemovePueueTasks,
    RestartPueueTask,
    SetPueueGroup,
    StartPueueDaemon,
    SubmitTask,
    Wait,
)
from reconciler.durations import format_duration
from reconciler.model import FINAL_TASK_STATUSES, AttemptRow, DueTask, Observation
from reconciler.pueuestatus import PueueTask
from reconciler.pueueview import LIVE_STATES, MAX_HANDOFFS, PueueView
from reconciler.specmodel import PoolSpec

# After tasks.timeout and stopGrace, how long the wrapper gets to record its result
# before the controller kills its pueue task.
KILL_SLACK = 10.0
# What each result of a finished task added by hand is, in ``tasks.retryOn``'s words
# (killed: a timeout -- ours, or anyone's -- since pueue does not say who killed it)
OUTCOME_OF_RESULT = {"failed": "failed", "errored": "failed", "failed_to_spawn": "failed",
                     "killed": "timeout"}
POLL_SECONDS = 2.0  # how often the controller looks at pueue while it holds the pool's work


def daemon_and_group(spec: PoolSpec, view: PueueView | None, paused: str | None) -> list[Change]:
    """The daemon runs; the group exists with ``replicas`` slots and runs, or is paused
    (``paused``: why the pool is, else None)."""
    assert spec.pueue is not None
    group = spec.pueue.group
    parallel = max(spec.replicas, 1)  # 0 is no limit to pueue: replicas 0 pauses instead
    if view is None or not view.daemon_up:
        return [StartPueueDaemon("not running (`pueue status` does not answer)"),
                SetPueueGroup(group, f"create it if the daemon has none (parallel {parallel})",
                              create=True, parallel=parallel,
                              running=False if paused else None)]
    if view.group is None:
        return [SetPueueGroup(group, f"create it (parallel {parallel})", create=True,
                              parallel=parallel, running=False if paused else None)]
    changes: list[Change] = []
    # a group another pool uses too: its size is theirs to agree on (status says so),
    # else the two controllers would set it back and forth on every pass
    if view.group.parallel_tasks != parallel and not view.others:
        changes.append(SetPueueGroup(
            group, f"parallel {view.group.parallel_tasks} -> {parallel}",
            parallel=parallel, parallel_was=view.group.parallel_tasks))
    if paused and view.group.status == "running":
        changes.append(SetPueueGroup(group, f"running -> paused ({paused})", running=False))
    elif not paused and view.group.status == "paused":
        changes.append(SetPueueGroup(
            group, "paused -> running (the pool is not paused; a pueue daemon that "
            "restarts pauses groups with queued tasks)", running=True))
    return changes


def submissions(spec: PoolSpec, view: PueueView, due: Iterable[DueTask],
                paused: str | None) -> list[SubmitTask]:
    """Due tasks to hand to pueue: none while the pool is paused, and only so many that
    pueue holds ``replicas`` of ours waiting, so a task added later with a higher priority
    is not stuck behind a long line that pueue already orders by itself."""
    assert spec.pueue is not None
    if paused:
        return []
    waiting = sum(1 for task in view.ours.values() if task.state in ("queued", "locked"))
    room = spec.replicas - waiting
    out: list[SubmitTask] = []
    for task in due:
        if len(out) >= room:
            break
        key = (task.id, task.next_attempt)
        held = view.ours.get(key)
        if held is not None and held.state not in ("done", "stashed"):
            continue  # pueue has it (a done one never started us, a stashed one waits
            # for a hand: it is handed on again)
        if held is not None and (view.copies or {}).get(key, 1) >= MAX_HANDOFFS:
            continue  # pueue keeps failing to start it: status names it, see pueue's log
        out.append(SubmitTask(task.id, task.next_attempt, task.priority, spec.pueue.group,
                              "queued and due" if held is None else
                              f"pueue's run of it ended ({_result(held)}) before it started"))
    return out


def stale(view: PueueView, statuses: Mapping[int, str]) -> list[RemovePueueTasks]:
    """pueue tasks of ours whose task has ended for good: waiting ones (a task cancelled
    meanwhile: pueue would start a wrapper that finds nothing to run) and finished ones
    (their results are in the store; kept, pueue's list -- every task with its whole
    environment -- would grow with every task the pool ever ran).  Every copy of a
    label goes, as ``pueue remove`` takes ids: the view keeps one per label, so the
    finished copies of an ended task leave over passes; running ones stay."""
    ids = tuple(task.id for key, task in sorted(view.ours.items())
                if task.state not in LIVE_STATES and statuses.get(key[0]) in FINAL_TASK_STATUSES)
    return [RemovePueueTasks(ids, "their tasks have ended (results are in the store)")] \
        if ids else []


def ended_without_result(spec: PoolSpec, view: PueueView, running: Iterable[AttemptRow]
                         ) -> list[tuple[AttemptRow, str, bool]]:
    """Our attempts still running in the store whose pueue task has ended: its wrapper
    died without recording the result.  Each with the reason and whether it uses up a
    try: yes when we killed it (past its timeout) or it crashed; no when someone else
    killed it (``pueue kill``, a daemon that went away under it) -- unless the task has
    had twice ``maxAttempts`` attempts already: a wrapper that is always killed (out of
    memory, say) must not retry for ever."""
    out = []
    for attempt in running:
        task = view.ours.get((attempt.task_id, attempt.number))
        if task is None or task.state != "done":
            continue
        ours_killed = attempt.stop_signalled_at is not None
        counted = task.result != "killed" or ours_killed or \
            attempt.number >= 2 * spec.tasks.max_attempts
        why = f"pueue task {task.id} ended ({_result(task)}) without its result"
        if task.result == "killed" and not ours_killed:
            why += ": killed by someone else, or by a pueue daemon that went away"
        out.append((attempt, why, counted))
    return out


def overdue(spec: PoolSpec, view: PueueView, running: Iterable[AttemptRow],
            now: float) -> list[KillPueueTask]:
    """Running tasks past ``tasks.timeout`` + ``stopGrace`` (+ ``KILL_SLACK`` for ours, once:
    a kill already sent is waited for), and with ``supervise: all`` those added by hand."""
    assert spec.pueue is not None
    ceiling = kill_after(spec, ours=True)
    attempts = {(a.task_id, a.number): a for a in running}
    kills: list[KillPueueTask] = []
    for key, task in sorted(view.ours.items()):
        attempt = attempts.get(key)
        if _ran(task, now) <= ceiling or (attempt and attempt.stop_signalled_at is not None):
            continue
        kills.append(KillPueueTask(task.id, key[0],
                                   _overdue_reason(spec, task, now, ours=True),
                                   attempt.id if attempt else None))
    if spec.pueue.supervise == "all":
        kills += [KillPueueTask(task.id, None, _overdue_reason(spec, task, now, ours=False))
                  for task in view.foreign if _ran(task, now) > kill_after(spec, ours=False)]
    return kills


def kill_after(spec: PoolSpec, *, ours: bool) -> float:
    """How long a pueue task may run before it is killed: ``tasks.timeout`` + ``stopGrace``
    for a task added by hand; for ours, that for each step the wrapper bounds so (every
    setup command, the agent, the longer list of hooks) plus ``KILL_SLACK``, the longest
    a wrapper that works can take."""
    each = spec.tasks.timeout + spec.worker.stop_grace
    if not ours:
        return each
    steps = 1 + len(spec.worktrees.setup) + max(len(spec.hooks.on_success),
                                                len(spec.hooks.on_failure))
    return steps * each + KILL_SLACK


def foreign_retries(spec: PoolSpec, view: PueueView,
                    restarts: Mapping[tuple[int, float], int], now: float) -> list[Action]:
    """Tasks added by hand that failed (as ``retryOn`` and ``noRetryExitCodes`` say),
    restarted in place while ``maxAttempts`` allows, each after ``retryBackoff`` doubling
    per restart (``supervise: all``)."""
    assert spec.pueue is not None
    if spec.pueue.supervise != "all":
        return []
    actions: list[Action] = []
    for task in view.foreign:
        outcome = OUTCOME_OF_RESULT.get(task.result or "")
        if task.state != "done" or outcome not in spec.tasks.retry_on \
                or task.exit_code in spec.tasks.no_retry_exit_codes:
            continue
        created = task.created_at or 0.0
        done = restarts.get((task.id, created), 0)
        if done + 1 >= spec.tasks.max_attempts:
            continue  # out of tries: it stays failed in pueue
        restart = RestartPueueTask(task.id, created, f"{_result(task)}, added by hand; retry "
                                   f"{done + 1} of {spec.tasks.max_attempts - 1}")
        ready = (task.ended_at or now) + spec.tasks.retry_backoff * 2 ** done
        actions.append(restart if ready <= now else Wait(
            restart, f"in {format_duration(ready - now)} (retryBackoff)", until=ready))
    return actions


def moments(spec: PoolSpec, observation: Observation) -> list[float]:
    """When a pass could decide something new about pueue's tasks: a running task
    reaching its kill deadline, the pool's pause ending, and -- while pueue holds work
    of the pool -- the next look (``POLL_SECONDS``): pueue rings no bell when its daemon
    dies or a task added by hand ends, and a wrapper that was killed cannot."""
    view = observation.pueue
    if view is None or spec.pueue is None:
        return []
    if not view.daemon_up:
        return [observation.observed_at + POLL_SECONDS]
    found = [task.started_at + kill_after(spec, ours=True) for task in view.ours.values()
             if task.state == "running" and task.started_at is not None]
    tasks = list(view.ours.values())
    if spec.pueue.supervise == "all":
        tasks += view.foreign
        found += [task.started_at + kill_after(spec, ours=False) for task in view.foreign
                  if task.state == "running" and task.started_at is not None]
    if any(task.state != "done" for task in tasks) or observation.due_tasks:
        found.append(observation.observed_at + POLL_SECONDS)
    if observation.paused_until > observation.observed_at:  # the group starts again then
        found.append(observation.paused_until)
    if observation.next_due_at is not None:  # a retry's backoff ends: hand it on then
        found.append(observation.next_due_at)
    return found


def _ran(task: PueueTask, now: float) -> float:
    if task.state != "running" or task.started_at is None:
        return 0.0
    return now - task.started_at


def _overdue_reason(spec: PoolSpec, task: PueueTask, now: float, *, ours: bool) -> str:
    ran = format_duration(_ran(task, now))
    if ours:
        return (f"running for {ran}, past the longest its wrapper may take "
                f"({format_duration(kill_after(spec, ours=True))}: tasks.timeout + "
                "stopGrace per step, + 10s): the wrapper did not stop it")
    return (f"added by hand, running for {ran}, past tasks.timeout "
            f"({format_duration(spec.tasks.timeout)}) + stopGrace")


def _result(task: PueueTask) -> str:
    if task.result == "failed" and task.exit_code is not None:
        return f"failed with exit {task.exit_code}"
    return (task.result or "done").replace("_", " ")
