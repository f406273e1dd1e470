"""The pure planner: ``plan(spec, observation, now) -> Plan``.

``reconcile diff`` renders its result, ``reconcile apply`` and the controller
execute it, so what the operator reviews is exactly what runs.  It performs
no I/O and reads no clock: the same inputs always give the same plan, which
lets a property test prove that executing a plan converges (kopf's
``detect_changing_cause`` and controller-runtime's reconcile contract are the
models here).  It decides everything the executor does: what a restart
kills, whether it counts and whether it starts a new budget, what
``delete --force`` means, and when to wait instead of acting.

Everything is level-triggered: a drain in progress, a restart waiting for its
backoff, a worker over its restart budget are all read from the observation
on every pass, never remembered between passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from reconciler import pueueplan
from reconciler.actions import (
    Action,
    AttemptRef,
    Change,
    CleanWorktree,
    DrainWorker,
    KillPueueTask,
    KillStrays,
    Plan,
    ReleaseWorker,
    RemovePueueTasks,
    RemoveWorker,
    ReplaceWorker,
    ResetBudget,
    SetPueueGroup,
    StartController,
    StartPueueDaemon,
    StartWorker,
    StopController,
    StopWorker,
    Wait,
)
from reconciler.durations import format_duration
from reconciler.errors import PoolError
from reconciler.health import (
    assess,
    counted_restarts,
    exit_description,
    facts_of,
    unseen_but_beating,
)
from reconciler.model import (
    AttemptRow,
    Observation,
    ProcessRef,
    RuntimeInstance,
    Step,
    WorkerRow,
    worker_sort_key,
)
from reconciler.policies import keeps_worktree
from reconciler.pueueview import LIVE_STATES
from reconciler.specmodel import PoolSpec

BACKOFF_CAP = 60.0


def worker_ids(replicas: int) -> list[str]:
    """The desired worker slots: ``w-1`` ... ``w-N``."""
    return [f"w-{i}" for i in range(1, replicas + 1)]


def plan(spec: PoolSpec, observation: Observation, now: float, *,
         generation: int = 0) -> Plan:
    """Decide what to start, restart, stop, remove and clean so the pool matches ``spec``."""
    desired = worker_ids(spec.replicas)
    actions: list[Action] = []
    steps: list[Step] = []
    pueue = spec.runtime == "pueue"
    if pueue:  # the daemon and the group first: a slot's task needs them
        actions += pueueplan.daemon_and_group(spec, observation.pueue,
                                              _paused(spec, observation, now))
    for worker_id in desired:
        row = observation.worker(worker_id)
        instance = observation.instance(worker_id)
        worker_steps, health = _health(spec, observation, worker_id, row, instance, now)
        steps += worker_steps
        if pueue:
            actions += _converge_slot(spec, observation, worker_id, row, health, now)
            continue
        action = _converge_desired(spec, observation, worker_id, instance, row, health, now)
        if action is not None:
            actions.append(action)
    surplus = _known_ids(observation) - set(desired)
    why = f"scale down to {spec.replicas} replica{'s' * (spec.replicas != 1)}"
    for worker_id in sorted(surplus, key=_idle_first(observation), reverse=True):
        action = _retire_slot(spec, observation, worker_id, why, now) if pueue else \
            _retire(spec, observation, worker_id, why, now, force=False)
        if action is not None:
            actions.append(action)
    if pueue:
        actions += _pueue_tasks(spec, observation, now, actions)
    actions += _stranded_attempts(spec, observation, now)
    actions += _stray_processes(observation)
    actions += _orphan_worktrees(spec, observation)
    actions += _unused_worker_worktrees(spec, observation, set(desired))
    actions += _controller(spec, observation, now)
    return Plan(spec.name, tuple(_wait_for_grace(actions, now)), tuple(steps), at=now,
                generation=generation)


def next_wakeup(spec: PoolSpec, observation: Observation, remaining: Plan,
                now: float) -> float | None:
    """The earliest future moment at which a pass could decide something new, if nothing
    else happens before: a wait's end (restart backoff, stop grace), or a worker's
    heartbeat, task or output growing old enough to change its health.

    A controller sleeps until then (or until a worker dies or a bell rings) instead of
    polling; a moment already past is not a reason to wake, since the pass that produced
    ``remaining`` has already seen it.
    """
    health = spec.health
    moments = [w.until for w in remaining.waiting if w.until is not None]
    for row in observation.workers:
        if row.removed or row.health in ("dead", "failed", "stopped"):
            continue
        started = row.started_at or now
        fresh = row.heartbeat_at is not None and row.heartbeat_at >= started
        silent_since = row.heartbeat_at if fresh and row.heartbeat_at else started
        moments += [silent_since + health.unresponsive_after, silent_since + health.dead_after]
    for attempt in observation.running:
        moments += [attempt.started_at + health.slow_after,
                    (attempt.last_output_at or attempt.started_at) + health.stall_after,
                    attempt.lease_expires_at]
    if spec.runtime == "pueue":
        moments += pueueplan.moments(spec, observation)
    future = [t for t in moments if t > now]
    return min(future) if future else None


def plan_delete(spec: PoolSpec, observation: Observation, now: float, *,
                force: bool = False, since: float | None = None,
                emptied: bool = False) -> Plan:
    """Stop every worker of the pool and clear what is left of them: after its current
    task, or (``force``) at once, its task requeued without using up a try.  ``since``:
    when the delete began (a pueue slot's task may finish until ``stopGrace`` after);
    ``emptied``: an earlier delete took everything of the pool out of pueue (a daemon
    that is down is then left down)."""
    actions: list[Action] = []
    why = "pool deleted"
    if spec.runtime == "pueue" and not (emptied and not _pueue_up(observation)):
        actions += _delete_from_pueue(spec, observation, now, force, since)
    for worker_id in sorted(_known_ids(observation), key=_idle_first(observation),
                            reverse=True):
        action = _retire_slot_for_good(spec, observation, worker_id, why, now, force, since) \
            if spec.runtime == "pueue" else \
            _retire(spec, observation, worker_id, why, now, force=force)
        if action is not None:
            actions.append(action)
    actions += _stray_processes(observation)
    actions += _orphan_worktrees(spec, observation)
    actions += _unused_worker_worktrees(spec, observation, set())
    return Plan(spec.name, tuple(_wait_for_grace(actions, now)), at=now)


def plan_restart(spec: PoolSpec, observation: Observation, worker_id: str,
                 now: float) -> Plan:
    """An operator's ``reconcile restart``: a fresh budget, and a replacement that is not
    charged to it (a live worker after its current task, any other one at once)."""
    row = observation.worker(worker_id)
    if row is None:
        known = ", ".join(sorted((w.id for w in observation.workers), key=worker_sort_key))
        raise PoolError(f"no worker {worker_id} in pool {observation.pool}",
                        hint=f"workers: {known or 'none'}")
    instance = observation.instance(worker_id)
    _, health = _health(spec, observation, worker_id, row, instance, now)
    why = "operator asked for a restart"
    replacement: Change
    if instance is not None and instance.alive and health not in ("dead", "failed"):
        replacement = DrainWorker(worker_id, why, instance, then="replace")
    else:
        replacement = ReplaceWorker(worker_id, why, instance,
                                    _attempts_of(spec, observation, worker_id, now))
    return Plan(spec.name, (ResetBudget(worker_id, "reconcile restart (operator)"), replacement),
                at=now)


def plan_stop_controller(spec: PoolSpec, process: ProcessRef | None, why: str,
                         now: float) -> Plan:
    """Stop the pool's controller (``delete`` does this first, then holds its lock)."""
    return Plan(spec.name, (StopController(why, process),), at=now)


def _known_ids(observation: Observation) -> set[str]:
    return {i.worker_id for i in observation.instances} | {w.id for w in observation.workers}


def _idle_first(observation: Observation) -> Callable[[str], tuple[bool, tuple[int, str]]]:
    """Sort key (used reversed): idle workers are stopped before busy ones, then by index."""
    def key(worker_id: str) -> tuple[bool, tuple[int, str]]:
        row = observation.worker(worker_id)
        return (row is None or row.current_task is None, worker_sort_key(worker_id))
    return key


def _attempts_of(spec: PoolSpec, observation: Observation, worker_id: str,
                 now: float) -> tuple[AttemptRef, ...]:
    """The running attempts of ``worker_id`` that an action ending it also ends: their
    live processes, what to signal them now, and (as ``worktrees.cleanup`` says for a
    lost attempt) their worktrees."""
    drop = not keeps_worktree(spec.worktrees.cleanup, "lost")
    return tuple(_attempt_ref(spec, observation, a, now, a.worktree if drop else None)
                 for a in observation.running if a.worker_id == worker_id)


def _attempt_ref(spec: PoolSpec, observation: Observation, attempt: AttemptRow, now: float,
                 worktree: str | None) -> AttemptRef:
    agent = ProcessRef(attempt.pid, attempt.pid_create_time) if attempt.pid else None
    processes = observation.attempt_processes.get(attempt.id, ())
    signal: str | None = None
    kill_at: float | None = None
    if processes:
        signalled = attempt.stop_signalled_at
        if signalled is None:
            signal = "SIGTERM"
        elif now - signalled >= spec.worker.stop_grace:
            signal = "SIGKILL"
        else:
            kill_at = signalled + spec.worker.stop_grace
    return AttemptRef(attempt.id, attempt.task_id, agent, worktree, processes, signal,
                      kill_at)


def _wait_for_grace(actions: list[Action], now: float) -> list[Action]:
    """An action ending attempts whose processes got SIGTERM and still have stopGrace left
    has nothing to do now: it waits, and ``diff`` says until when SIGKILL is due."""
    out: list[Action] = []
    for action in actions:
        match action:
            case ReplaceWorker(attempts=attempts) | StopWorker(attempts=attempts) | \
                    RemoveWorker(attempts=attempts) | ReleaseWorker(attempts=attempts):
                pass
            case _:
                attempts = ()
        due = [a.kill_at for a in attempts if a.kill_at is not None]
        if due and not any(a.signal for a in attempts) and not isinstance(action, Wait):
            until = min(due)
            count = sum(len(a.processes) for a in attempts)
            action = Wait(action, f"{count} process(es) of its task got SIGTERM; SIGKILL in "
                          f"{format_duration(until - now)} (stopGrace)", until=until)
        out.append(action)
    return out

# --------------------------------------------------------------------------- pueue


def _paused(spec: PoolSpec, observation: Observation, now: float) -> str | None:
    """Why the pool claims nothing now (no slots, a rate limit, the day's budget), if it
    does not."""
    if spec.replicas == 0:  # pueue reads parallel 0 as no limit: the group is paused
        return "replicas is 0"
    if observation.paused_until > now:
        return f"claiming is paused for {format_duration(observation.paused_until - now)}"
    return None


def _converge_slot(spec: PoolSpec, observation: Observation, worker_id: str,
                   row: WorkerRow | None, health: str, now: float) -> list[Action]:
    """One of pueue's slots in the group (``w-N`` is pueue's worker ``N-1``).  It has no
    process of its own: its health is its wrapper's heartbeats while a task runs, and a
    dead one's task is killed in pueue and requeued, the slot restarted after the
    restart backoff (it never fails: see ``health.facts_of``)."""
    assert spec.pueue is not None
    if row is None:
        return [StartWorker(worker_id, f"a slot of pueue group {spec.pueue.group} "
                                       f"(want {spec.replicas})")]
    attempts = _attempts_of(spec, observation, worker_id, now)
    changed = _changed(spec, row, None)
    if health in ("dead", "failed"):  # failed: only a record from before slots never fail
        # pueue knows nothing of our health and starts its next task in the slot at once:
        # only the attempts that were there when it died are ended, never a newer one
        died = row.health_since or now
        old = {a.id for a in observation.running
               if a.worker_id == worker_id and a.started_at <= died}
        ending = tuple(ref for ref in attempts if ref.attempt_id in old)
        running = observation.attempt_of(worker_id)
        silence = now - max(row.heartbeat_at or 0.0, running.started_at if running else 0.0)
        death = f"its wrapper sent no heartbeat for {format_duration(silence)} (deadAfter " \
                f"{format_duration(spec.health.dead_after)})" if ending else \
            "its wrapper had stopped heartbeating"
        action = _restart_dead(spec, observation, row, None, ending, now, death)
        return [action, *_kill_in_pueue(observation, worker_id, "its wrapper stopped "
                                        "heartbeating", only=old, cause="silent")]
    if changed and not attempts and row.current_task is None:
        return [ReplaceWorker(worker_id, f"{changed} changed", None, ())]
    return []


def _kill_in_pueue(observation: Observation, worker_id: str, why: str, *,
                   only: set[int] | None = None, cause: str) -> list[Action]:
    """The pueue tasks still running the attempts of ``worker_id`` (``only`` these)."""
    view = observation.pueue
    if view is None:
        return []
    kills: list[Action] = []
    for attempt in observation.running:
        task = view.ours.get((attempt.task_id, attempt.number))
        if attempt.worker_id == worker_id and task is not None \
                and task.state in LIVE_STATES and (only is None or attempt.id in only):
            kills.append(KillPueueTask(task.id, attempt.task_id, why, attempt.id, cause))
    return kills


def _retire_slot(spec: PoolSpec, observation: Observation, worker_id: str, why: str,
                 now: float) -> Action | None:
    """A slot above ``replicas``: pueue lets a running task finish when the limit drops,
    so the slot is forgotten once its task is done."""
    row = observation.worker(worker_id)
    if row is None:
        return None
    forget = RemoveWorker(worker_id, f"{why}; forget the slot", None, ())
    if observation.attempt_of(worker_id) is not None:
        return Wait(forget, "its current task runs on in pueue")
    return forget


def _delete_from_pueue(spec: PoolSpec, observation: Observation, now: float, force: bool,
                       since: float | None) -> list[Action]:
    """A deleted pool leaves nothing in pueue that could start later: every task pueue
    holds for it that is not running is removed (the group, shared with whatever else
    people queue there, stays, running)."""
    view = observation.pueue
    if view is None or not view.daemon_up:  # what it holds must go: it is started first
        return [StartPueueDaemon("not running: the tasks it holds for the pool must be "
                                 "removed")]
    actions: list[Action] = []
    idle = tuple(task.id for task in view.ours.values() if task.state not in LIVE_STATES)
    if idle:  # the finished ones too: nothing of a deleted pool stays in pueue
        actions.append(RemovePueueTasks(idle, "pool deleted: none of its tasks may start "
                                        "later"))
    if view.group is not None and view.group.status == "paused" and \
            observation.paused_until <= now:  # as the pool kept it: others may queue there
        actions.append(SetPueueGroup(view.group.name, "paused -> running (left running "
                                     "for whatever else is queued there)", running=True))
    return actions


def _pueue_up(observation: Observation) -> bool:
    return observation.pueue is not None and observation.pueue.daemon_up


def _retire_slot_for_good(spec: PoolSpec, observation: Observation, worker_id: str,
                          why: str, now: float, force: bool,
                          since: float | None) -> Action | None:
    """A slot of a deleted pool: its task may finish until ``stopGrace`` after the delete
    began (pueue has no drain), then (or at once with ``force``) its pueue task is
    killed and the task requeued without using up a try."""
    row = observation.worker(worker_id)
    attempts = _attempts_of(spec, observation, worker_id, now)
    if row is None and not attempts:
        return None
    deadline = (since if since is not None else now) + spec.worker.stop_grace
    stop = StopWorker(worker_id, why + (" (--force: its task goes back to the queue)"
                                        if force else ""), None, attempts)
    if not attempts:
        return RemoveWorker(worker_id, f"{why}; forget the slot", None, ())
    kills = _kill_in_pueue(observation, worker_id, why, cause="delete")
    if not force and now < deadline:
        return Wait(stop, f"its current task runs on in pueue ({format_duration(deadline - now)}"
                          " left of stopGrace; killed then)", until=deadline)
    if kills:
        return kills[0]  # the wrapper goes first; its attempt is ended on the next pass
    return stop


def _pueue_tasks(spec: PoolSpec, observation: Observation, now: float,
                 actions_so_far: list[Action]) -> list[Action]:
    """Attempts whose pueue task ended without a result (requeued), tasks past their
    timeout (killed), failed tasks added by hand (restarted), and due tasks to hand on."""
    view = observation.pueue
    if view is None or not view.daemon_up:
        return []
    # an attempt a dead slot's action already ends is not ended twice
    ending = {ref.attempt_id for action in actions_so_far if isinstance(action, ReleaseWorker)
              for ref in action.attempts}
    ended = [(attempt, why, counted) for attempt, why, counted
             in pueueplan.ended_without_result(spec, view, observation.running)
             if attempt.id not in ending]
    ending |= {attempt.id for attempt, _, _ in ended}
    lost = [(attempt, "its lease expired and pueue has no task for it", True)
            for attempt in observation.running
            if attempt.id not in ending and attempt.lease_expires_at < now
            and (attempt.task_id, attempt.number) not in view.ours
            and (row := observation.worker(attempt.worker_id)) is not None
            and row.runtime == "pueue"]
    actions = _releases(spec, observation, [*ended, *lost], now)
    killing = {a.pueue_id for a in actions_so_far if isinstance(a, KillPueueTask)}
    actions += [k for k in pueueplan.overdue(spec, view, observation.running, now)
                if k.pueue_id not in killing]
    actions += pueueplan.stale(view, observation.pueue_task_statuses)
    actions += pueueplan.foreign_retries(spec, view, observation.foreign_restarts, now)
    actions += pueueplan.submissions(spec, view, observation.due_tasks,
                                     _paused(spec, observation, now))
    return actions


def _releases(spec: PoolSpec, observation: Observation,
              ended: list[tuple[AttemptRow, str, bool]], now: float) -> list[Action]:
    """One release per slot and per whether it uses up a try, for attempts that ended
    in pueue without a result: (attempt, why, counted).  The lost ones among them --
    pueue no longer has their task at all (``pueue clean`` or ``remove`` of a task whose
    wrapper died) and their lease expired -- would otherwise wait for ever in a slot
    above ``replicas``, which is never judged dead."""
    drop = not keeps_worktree(spec.worktrees.cleanup, "lost")
    groups: dict[tuple[str, bool], tuple[str, list[AttemptRef]]] = {}
    for attempt, why, counted in ended:
        _, refs = groups.setdefault((attempt.worker_id, counted), (why, []))
        refs.append(_attempt_ref(spec, observation, attempt, now,
                                 attempt.worktree if drop else None))
    return [ReleaseWorker(worker, why, None, tuple(refs), counted=counted)
            for (worker, counted), (why, refs) in sorted(groups.items(),
                                                         key=lambda g: (not g[0][1], g[0][0]))]


# --------------------------------------------------------------------------- health


def _health(spec: PoolSpec, observation: Observation, worker_id: str, row: WorkerRow | None,
            instance: RuntimeInstance | None, now: float) -> tuple[list[Step], str]:
    if row is None:
        return [], "recovering"
    steps = assess(worker_id, row.health,
                   facts_of(spec, observation, worker_id, row, instance, now), spec)
    return steps, steps[-1].dest if steps else row.health


def restart_delay(spec: PoolSpec, worker_id: str, previous_restarts: int) -> float:
    """Backoff before the next restart, counted from the death: none for a first crash
    (as supervisord and pm2 do: a one-off crash costs no wait), then ``backoff`` (1s),
    doubling with every counted restart in the window up to 60s, scaled by a jitter in
    [0.75, 1.25] derived from the worker and the count, so workers that crashed
    together restart apart (and ``diff`` stays deterministic)."""
    if previous_restarts == 0:
        return 0.0
    base = min(BACKOFF_CAP, spec.restart.backoff * 2 ** (previous_restarts - 1))
    digest = hashlib.sha256(f"{worker_id}:{previous_restarts}".encode()).digest()
    return float(base * (0.75 + 0.5 * digest[0] / 255))


# --------------------------------------------------------------------------- decisions


def _converge_desired(spec: PoolSpec, observation: Observation, worker_id: str,
                      instance: RuntimeInstance | None, row: WorkerRow | None, health: str,
                      now: float) -> Action | None:
    if row is None:
        if instance is None:
            return StartWorker(worker_id, f"not running (want {spec.replicas})")
        if instance.alive:
            return DrainWorker(worker_id, "running but unknown to the store", instance,
                               then="replace")
        return ReplaceWorker(worker_id, f"process gone ({instance.exit_description()})",
                             instance, _attempts_of(spec, observation, worker_id, now),
                             reset_budget="a worker the store did not know")
    alive = instance is not None and instance.alive
    if unseen_but_beating(spec, row, instance, now):
        return _not_while_beating(spec, row, ReplaceWorker(
            worker_id, "no tmux window of it can be seen", None, (), counted=True), now)
    if row.drain_requested:
        return _finish_drain(spec, observation, row, instance, now, then="replace",
                             done="finished its task; replacing it")
    changed = _changed(spec, row, instance)
    attempts = _attempts_of(spec, observation, worker_id, now)
    if health == "failed":
        if changed:  # a new spec deserves a new budget
            return ReplaceWorker(worker_id, f"{changed} changed; retrying a failed worker",
                                 instance, attempts, reset_budget=f"{changed} changed")
        if attempts or _has_remains(instance):
            return ReleaseWorker(worker_id, "failed: kill what it left running, requeue its task",
                                 instance, attempts)
        return None
    if health == "dead" or not alive:  # gone but not yet assessed dead: no health recorded
        return _restart_dead(spec, observation, row, instance, attempts, now)
    if changed:
        return DrainWorker(worker_id, f"{changed} changed", instance, then="replace")
    return None


def _not_while_beating(spec: PoolSpec, row: WorkerRow, then: Change, now: float) -> Wait:
    until = (row.heartbeat_at or now) + spec.health.unresponsive_after
    return Wait(then, f"not while it heartbeats ({format_duration(now - (row.heartbeat_at or now))}"
                " ago) though no window of it can be seen", until=until)


def _has_remains(instance: RuntimeInstance | None) -> bool:
    """Something of the worker is still on the host: a live process, or an exited tmux
    window (a process-runtime worker that exited leaves nothing behind)."""
    return instance is not None and (instance.alive or instance.handle is not None)


def _restart_dead(spec: PoolSpec, observation: Observation, row: WorkerRow,
                  instance: RuntimeInstance | None, attempts: tuple[AttemptRef, ...],
                  now: float, death: str | None = None) -> Action:
    """A counted restart, once the backoff since the death (or the last restart) is over.

    A hung worker (its process still alive) is restarted only if it has not
    heartbeat since it was observed: the guard the executor checks right
    before killing it.
    """
    hung = instance is not None and instance.alive
    death = death or _death(spec, row, instance, now)
    previous = counted_restarts(spec, observation, row, now)
    delay = restart_delay(spec, row.id, len(previous))
    if attempts and not hung:
        # its agent must not work on through the backoff: end the attempt now (once its
        # processes are gone) so the task can run elsewhere; the slot restarts later
        then = "restart after the backoff" if delay else "then restart it"
        return ReleaseWorker(row.id, f"{death}: end its attempt now, {then}", None, attempts)
    died_at = row.health_since if row.health == "dead" and row.health_since else now
    ready_at = died_at + delay
    # a worker that had been stable for resetAfter starts a fresh budget with this restart
    stable = bool(row.started_at and row.heartbeat_at
                  and row.heartbeat_at - row.started_at >= spec.restart.reset_after)
    restart = ReplaceWorker(
        row.id, death, instance, attempts, counted=True,
        reset_budget=f"it had run for resetAfter ({format_duration(spec.restart.reset_after)})"
        if stable else None,
        unless_heartbeat_after=(row.heartbeat_at or 0.0) if hung else None)
    if ready_at > now:
        return Wait(restart, f"in {format_duration(ready_at - now)} (restart backoff)",
                    until=ready_at)
    return restart


def _finish_drain(spec: PoolSpec, observation: Observation, row: WorkerRow,
                  instance: RuntimeInstance | None, now: float, *, then: str,
                  done: str) -> Action:
    """A worker asked to drain: wait for it, replace or remove it once it exited, or
    kill it (its task requeued, not counted) once ``stopGrace`` has passed."""
    attempts = _attempts_of(spec, observation, row.id, now)
    grace = spec.worker.stop_grace
    requested = row.drain_requested_at or now
    overrun = f"still busy after stopGrace ({format_duration(grace)}); killing it, its task " \
              "goes back to the queue"

    def finish(reason: str, ends: tuple[AttemptRef, ...]) -> Change:
        if then == "stop":
            return StopWorker(row.id, reason, instance, ends)
        new_template = row.template_hash != spec.template_hash()
        return ReplaceWorker(row.id, reason, instance, ends,
                             reset_budget="new worker template" if new_template else None)

    if instance is None or not instance.alive:
        return finish(done, attempts)
    if now - requested >= grace:
        return finish(overrun, attempts)
    # what follows a drain that ends well: its task finished, nothing requeued
    after = f"{'stopped' if then == 'stop' else 'replaced'} once its current task is done"
    return Wait(finish(after if then == "replace" else f"{done}; {after}", ()),
                f"waiting for its current task ({format_duration(now - requested)} of "
                f"{format_duration(grace)}; killed then)", until=requested + grace)


def _retire(spec: PoolSpec, observation: Observation, worker_id: str, why: str, now: float,
            *, force: bool) -> Action | None:
    """Stop a worker that is not wanted: drain it (or kill it at once with ``force``),
    then forget it; clear what is left of one that already exited."""
    instance = observation.instance(worker_id)
    row = observation.worker(worker_id)
    attempts = _attempts_of(spec, observation, worker_id, now)
    alive = instance is not None and instance.alive
    if row is not None and unseen_but_beating(spec, row, instance, now):
        if not row.drain_requested:  # asked through the store: it needs no window to hear
            return DrainWorker(worker_id, f"{why} (no window of it can be seen)", None,
                               then="stop")
        return _not_while_beating(spec, row, RemoveWorker(
            worker_id, f"{why}; forget it once it stops heartbeating", None, attempts), now)
    if alive and force:
        return StopWorker(worker_id, f"{why} (--force: its task goes back to the queue)",
                          instance, attempts)
    if alive and row is not None and row.drain_requested:
        return _finish_drain(spec, observation, row, instance, now, then="stop", done=why)
    if alive:
        return DrainWorker(worker_id, why, instance, then="stop")
    if instance is not None:
        remains = "exited window" if instance.runtime == "tmux" else "exited process"
        return RemoveWorker(worker_id, f"{why}; clear its {remains} "
                            f"({instance.exit_description()})", instance, attempts)
    if row is not None:
        return RemoveWorker(worker_id, f"{why}; forget its stopped record", None, attempts)
    return None


def _death(spec: PoolSpec, row: WorkerRow, instance: RuntimeInstance | None,
           now: float) -> str:
    if instance is not None and instance.alive:
        silence = now - (row.heartbeat_at or row.started_at or now)
        return f"hung: no heartbeat for {format_duration(silence)} (deadAfter " \
               f"{format_duration(spec.health.dead_after)})"
    return f"process gone ({exit_description(row, instance)})"


def _changed(spec: PoolSpec, row: WorkerRow, instance: RuntimeInstance | None) -> str:
    """Which fields of the running worker differ from the spec (names only, never values)."""
    if instance is not None and instance.runtime != spec.runtime:
        return f"runtime ({instance.runtime} → {spec.runtime})"
    if instance is not None and instance.runtime == "tmux" and instance.socket \
            and instance.socket != spec.tmux_socket:
        return f"tmux.socket ({instance.socket} → {spec.tmux_socket})"
    if row.template_hash == spec.template_hash():
        return ""
    desired = spec.template_digests()
    fields = [key for key, digest in desired.items() if row.template_digests.get(key) != digest]
    return ", ".join(fields or ["worker template"])


def _stranded_attempts(spec: PoolSpec, observation: Observation, now: float) -> list[Action]:
    """Attempts whose lease expired and whose worker no longer exists at all: the
    sweep behind "a task is never left running" (known workers are handled above)."""
    orphans = {a.worker_id for a in observation.running if a.lease_expires_at < now
               and observation.worker(a.worker_id) is None
               and observation.instance(a.worker_id) is None}
    return [ReleaseWorker(worker_id, "lease expired and no such worker", None,
                          _attempts_of(spec, observation, worker_id, now))
            for worker_id in sorted(orphans, key=worker_sort_key)]


def _stray_processes(observation: Observation) -> list[Action]:
    """Processes carrying the mark of an attempt that is no longer running: nothing may
    outlive its attempt, so they are killed on every pass they are seen."""
    running = {a.id for a in observation.running}
    return [KillStrays(attempt_id, processes,
                       "its attempt has ended; nothing may outlive it")
            for attempt_id, processes in sorted(observation.attempt_processes.items())
            if attempt_id not in running and processes]


def _orphan_worktrees(spec: PoolSpec, observation: Observation) -> list[Action]:
    """Task worktrees no running attempt uses and the cleanup policy does not keep.

    Workers record a worktree's path before creating it, so an unrecorded one
    was made by something that died mid-way.
    """
    actions: list[Action] = []
    for path in observation.worktrees:
        status = observation.attempt_worktrees.get(path)
        if keeps_worktree(spec.worktrees.cleanup, status):
            continue
        why = {None: "no attempt owns it", "lost": "its attempt was lost with its worker"}.get(
            status, f"its attempt {status}; worktrees.cleanup is {spec.worktrees.cleanup}")
        actions.append(CleanWorktree(path, why))
    return actions


CONTROLLER_BACKOFF = 5.0  # no relaunch this soon after a launch that died before beating


def _unused_worker_worktrees(spec: PoolSpec, observation: Observation,
                             wanted: set[str]) -> list[Action]:
    """Per-worker worktrees (``worktrees.reuse: perWorker``) that no worker will use again:
    their worker is gone and not wanted, or the pool went back to ``reuse: fresh``;
    never one a running attempt is in."""
    slots = wanted | _known_ids(observation)
    in_use = {a.worktree for a in observation.running}
    actions: list[Action] = []
    for path in observation.worker_worktrees:
        worker_id = path.rsplit("/", 1)[-1].removeprefix("worker-")
        if path in in_use or (spec.worktrees.reuse == "perWorker" and worker_id in slots):
            continue
        why = f"its worker {worker_id} is gone" if worker_id not in slots \
            else "worktrees.reuse is fresh now"
        actions.append(CleanWorktree(path, why))
    return actions


def _controller(spec: PoolSpec, observation: Observation, now: float) -> list[Action]:
    record = observation.controller
    process = ProcessRef(record.pid, record.pid_create_time) if record and record.pid else None
    if spec.controller_enabled and observation.controller_alive is False:
        start = StartController("not running (or hung)", hung=process)
        if record is not None and record.started_at is not None \
                and record.heartbeat_at is not None \
                and record.heartbeat_at - record.started_at < 1.0 \
                and now - record.started_at < CONTROLLER_BACKOFF:
            # the last one died before its first heartbeat (a crash at start): a crash
            # loop must not relaunch it on every pass
            until = record.started_at + CONTROLLER_BACKOFF
            return [Wait(start, f"in {format_duration(until - now)} (controller backoff: the "
                               "last one died before its first heartbeat; see its log, "
                               "logs/controller.out)", until=until)]
        return [start]
    if not spec.controller_enabled and observation.controller_alive:
        return [StopController("controller.enabled is false", process)]
    return []
