"""The pure planner: ``plan(spec, observation, now) -> Plan``.

``reconcile diff`` renders its result, ``reconcile apply`` and the controller
execute it, so what the operator reviews is exactly what runs.  It performs
no I/O and reads no clock: the same inputs always give the same plan, which
lets a property test prove that executing a plan converges (kopf's
``detect_changing_cause`` and controller-runtime's reconcile contract are the
models here).

Everything is level-triggered: a drain in progress, a restart waiting for its
backoff, a worker over its restart budget are all read from the observation
on every pass, never remembered between passes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from reconciler.durations import format_duration
from reconciler.health import WorkerFacts, assess
from reconciler.model import (
    Action,
    ActionKind,
    AttemptRow,
    Observation,
    Plan,
    RuntimeInstance,
    Step,
    WorkerRow,
    worker_sort_key,
)
from reconciler.spec import PoolSpec

BACKOFF_CAP = 60.0
CONTROLLER = "controller"  # the target name of the controller's own start action


def worker_ids(replicas: int) -> list[str]:
    """The desired worker slots: ``w-1`` ... ``w-N``."""
    return [f"w-{i}" for i in range(1, replicas + 1)]


def plan(spec: PoolSpec, observation: Observation, now: float) -> Plan:
    """Decide what to start, restart, stop, remove and clean so the pool matches ``spec``."""
    desired = worker_ids(spec.replicas)
    actions: list[Action] = []
    steps: list[Step] = []
    for worker_id in desired:
        row = observation.worker(worker_id)
        instance = observation.instance(worker_id)
        worker_steps, health = _health(spec, observation, worker_id, row, instance, now)
        steps += worker_steps
        action = _converge_desired(spec, observation, worker_id, instance, row, health, now)
        if action is not None:
            actions.append(action)
    surplus = _known_ids(observation) - set(desired)
    why = f"scale down to {spec.replicas} replica{'s' * (spec.replicas != 1)}"
    for worker_id in sorted(surplus, key=_idle_first(observation), reverse=True):
        action = _retire(spec, worker_id, observation.instance(worker_id),
                         observation.worker(worker_id), why, now)
        if action is not None:
            actions.append(action)
    actions += _stranded_attempts(observation, now)
    actions += _orphan_worktrees(spec, observation)
    if spec.controller_enabled and observation.controller_alive is False:
        actions.append(Action(ActionKind.START, CONTROLLER, "not running (or hung)"))
    if not spec.controller_enabled and observation.controller_alive:
        actions.append(Action(ActionKind.STOP, CONTROLLER, "controller.enabled is false"))
    return Plan(spec.name, tuple(actions), tuple(steps))


def plan_delete(spec: PoolSpec, observation: Observation, now: float) -> Plan:
    """Stop every worker of the pool (gracefully) and clear what is left of them."""
    actions = []
    for worker_id in sorted(_known_ids(observation), key=_idle_first(observation),
                            reverse=True):
        action = _retire(spec, worker_id, observation.instance(worker_id),
                         observation.worker(worker_id), "pool deleted", now)
        if action is not None:
            actions.append(action)
    actions += _orphan_worktrees(spec, observation)
    return Plan(spec.name, tuple(actions))


def _known_ids(observation: Observation) -> set[str]:
    return {i.worker_id for i in observation.instances} | {w.id for w in observation.workers}


def _idle_first(observation: Observation) -> Callable[[str], tuple[bool, tuple[int, str]]]:
    """Sort key (used reversed): idle workers are stopped before busy ones, then by index."""
    def key(worker_id: str) -> tuple[bool, tuple[int, str]]:
        row = observation.worker(worker_id)
        return (row is None or row.current_task is None, worker_sort_key(worker_id))
    return key


# --------------------------------------------------------------------------- health


def facts_of(spec: PoolSpec, observation: Observation, worker_id: str, row: WorkerRow,
             instance: RuntimeInstance | None, now: float) -> WorkerFacts:
    """The pure facts the health table reads, for one worker at ``now``."""
    attempt: AttemptRow | None = observation.attempt_of(worker_id)
    started = row.started_at or now
    fresh_heartbeat = row.heartbeat_at is not None and row.heartbeat_at >= started
    restarts = counted_restarts(spec, observation, row, now)
    return WorkerFacts(
        process_alive=instance is not None and instance.alive,
        exit_description=_exit_description(row, instance),
        heartbeat_age=now - row.heartbeat_at if fresh_heartbeat and row.heartbeat_at else None,
        since_start=now - started,
        busy=attempt is not None,
        task_id=attempt.task_id if attempt else None,
        task_age=now - attempt.started_at if attempt else None,
        output_age=now - (attempt.last_output_at or attempt.started_at) if attempt else None,
        draining=row.drain_requested,
        budget_left=row.drain_requested or len(restarts) < spec.restart.max_restarts,
        restarts_in_window=len(restarts))


def _health(spec: PoolSpec, observation: Observation, worker_id: str, row: WorkerRow | None,
            instance: RuntimeInstance | None, now: float) -> tuple[list[Step], str]:
    if row is None:
        return [], "recovering"
    steps = assess(worker_id, row.health,
                   facts_of(spec, observation, worker_id, row, instance, now), spec)
    return steps, steps[-1].dest if steps else row.health


def counted_restarts(spec: PoolSpec, observation: Observation, row: WorkerRow,
                     now: float) -> tuple[float, ...]:
    """Restarts that count against the budget: inside ``window``, and none at all once
    the current process has been up for ``resetAfter`` (its last heartbeat says so)."""
    if row.started_at and row.heartbeat_at and \
            row.heartbeat_at - row.started_at >= spec.restart.reset_after:
        return ()
    return tuple(t for t in observation.restart_history.get(row.id, ())
                 if t > now - spec.restart.window)


def restart_delay(spec: PoolSpec, worker_id: str, previous_restarts: int) -> float:
    """Backoff before the next restart: ``backoff`` (1s) after the death, then doubling
    from the previous restart up to 60s, scaled by a jitter in [0.75, 1.25] derived
    from the worker and the count, so workers that crashed together restart apart
    (and ``diff`` stays deterministic)."""
    base = min(BACKOFF_CAP, spec.restart.backoff * 2 ** previous_restarts)
    digest = hashlib.sha256(f"{worker_id}:{previous_restarts}".encode()).digest()
    return float(base * (0.75 + 0.5 * digest[0] / 255))


# --------------------------------------------------------------------------- decisions


def _converge_desired(spec: PoolSpec, observation: Observation, worker_id: str,
                      instance: RuntimeInstance | None, row: WorkerRow | None, health: str,
                      now: float) -> Action | None:
    restart, start = ActionKind.RESTART, ActionKind.START
    if row is None:
        if instance is None:
            return Action(start, worker_id, f"not running (want {spec.replicas})")
        if instance.alive:
            return Action(restart, worker_id, "running but unknown to the store", graceful=True)
        return Action(restart, worker_id, f"process gone ({instance.exit_description()})")
    alive = instance is not None and instance.alive
    if row.drain_requested:
        return _finish_drain(spec, worker_id, row, alive, now, restart,
                             "finished its task; replacing it")
    changed = _changed(spec, row, instance)
    if health == "failed":
        if changed:  # a new spec deserves a new budget
            return Action(restart, worker_id, f"{changed} changed; retrying a failed worker",
                          reset_budget=True)
        if observation.attempt_of(worker_id) is not None or instance is not None:
            return Action(ActionKind.RELEASE, worker_id,
                          "failed: kill what it left running, requeue its task")
        return None
    if health == "dead":
        return _restart_dead(spec, observation, worker_id, row, instance, now)
    if not alive:  # gone but not yet assessed dead (e.g. no health recorded yet)
        return _restart_dead(spec, observation, worker_id, row, instance, now)
    if changed:
        return Action(restart, worker_id, f"{changed} changed", graceful=True)
    return None


def _restart_dead(spec: PoolSpec, observation: Observation, worker_id: str, row: WorkerRow,
                  instance: RuntimeInstance | None, now: float) -> Action:
    reason = _death(spec, row, instance, now)
    previous = counted_restarts(spec, observation, row, now)
    delay = restart_delay(spec, worker_id, len(previous))
    died_at = row.health_since if row.health == "dead" and row.health_since else now
    ready_at = (previous[-1] if previous else died_at) + delay
    # a worker that had been stable for resetAfter starts a fresh budget with this restart
    stable = bool(row.started_at and row.heartbeat_at
                  and row.heartbeat_at - row.started_at >= spec.restart.reset_after)
    if ready_at > now:
        return Action(ActionKind.RESTART, worker_id, reason, counted=True, reset_budget=stable,
                      pending=f"in {format_duration(ready_at - now)} (restart backoff)")
    return Action(ActionKind.RESTART, worker_id, reason, counted=True, reset_budget=stable)


def _finish_drain(spec: PoolSpec, worker_id: str, row: WorkerRow, alive: bool, now: float,
                  kind: ActionKind, done_reason: str) -> Action:
    """A worker asked to drain: wait for it, replace or remove it once it exited, or
    kill it (its task requeued, not counted) once ``stopGrace`` has passed."""
    if not alive:
        return Action(kind, worker_id, done_reason)
    waited = now - (row.drain_requested_at or now)
    if waited >= spec.worker.stop_grace:
        return Action(kind, worker_id, f"still busy after stopGrace "
                      f"({format_duration(spec.worker.stop_grace)}); killing it, its task "
                      "goes back to the queue")
    return Action(kind, worker_id, "draining", graceful=True,
                  pending=f"waiting for its current task ({format_duration(waited)} of "
                          f"{format_duration(spec.worker.stop_grace)})")


def _retire(spec: PoolSpec, worker_id: str, instance: RuntimeInstance | None,
            row: WorkerRow | None, why: str, now: float) -> Action | None:
    alive = instance is not None and instance.alive
    if alive and row is not None and row.drain_requested:
        action = _finish_drain(spec, worker_id, row, True, now, ActionKind.STOP, why)
        return action if action.pending else Action(ActionKind.STOP, worker_id, action.reason)
    if alive:
        return Action(ActionKind.STOP, worker_id, why, graceful=True)
    if instance is not None:
        return Action(ActionKind.REMOVE, worker_id,
                      f"{why}; clear its exited window ({instance.exit_description()})")
    if row is not None:
        return Action(ActionKind.REMOVE, worker_id, f"{why}; forget its stopped record")
    return None


def _death(spec: PoolSpec, row: WorkerRow, instance: RuntimeInstance | None,
           now: float) -> str:
    if instance is not None and instance.alive:
        silence = now - (row.heartbeat_at or row.started_at or now)
        return f"hung: no heartbeat for {format_duration(silence)} (deadAfter " \
               f"{format_duration(spec.health.dead_after)})"
    return f"process gone ({_exit_description(row, instance)})"


def _exit_description(row: WorkerRow, instance: RuntimeInstance | None) -> str:
    if instance is not None:
        return instance.exit_description()
    where = "tmux window" if row.runtime == "tmux" else "process"
    last = f", last exit {row.exit_code}" if row.exit_code is not None else ""
    return f"{where} gone{last}"


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


def _stranded_attempts(observation: Observation, now: float) -> list[Action]:
    """Attempts whose lease expired and whose worker no longer exists at all: the
    sweep behind "a task is never left running" (known workers are handled above)."""
    orphans = {a.worker_id for a in observation.running if a.lease_expires_at < now
               and observation.worker(a.worker_id) is None
               and observation.instance(a.worker_id) is None}
    return [Action(ActionKind.RELEASE, worker_id, "lease expired and no such worker")
            for worker_id in sorted(orphans, key=worker_sort_key)]


_KEPT_BY_POLICY = {
    "always": frozenset(),
    "onSuccess": frozenset({"failed", "timeout", "cancelled"}),
    "never": frozenset({"succeeded", "failed", "timeout", "cancelled"}),
}


def _orphan_worktrees(spec: PoolSpec, observation: Observation) -> list[Action]:
    """Task worktrees no running attempt uses and the cleanup policy does not keep.

    Workers record a worktree's path before creating it, so an unrecorded one
    was made by something that died mid-way; a ``lost`` attempt's worktree
    belonged to a worker that died.
    """
    kept = _KEPT_BY_POLICY[spec.worktrees.cleanup]
    actions = []
    for path in observation.worktrees:
        status = observation.attempt_worktrees.get(path)
        if status == "running" or status in kept:
            continue
        why = {None: "no attempt owns it", "lost": "its attempt was lost with its worker"}.get(
            status, f"its attempt {status}; worktrees.cleanup is {spec.worktrees.cleanup}")
        actions.append(Action(ActionKind.CLEAN, path, why))
    return actions
