"""The pure planner: ``plan(spec, observation, now) -> Plan``.

``reconcile diff`` renders its result and ``reconcile apply`` executes it, so
what the operator reviews is exactly what runs.  It performs no I/O and reads
no clock of its own: the same inputs always give the same plan, which is what
lets a property test prove that executing a plan converges (kopf's
``detect_changing_cause`` and controller-runtime's reconcile contract are the
models here).
"""

from __future__ import annotations

from reconciler.model import (
    Action,
    ActionKind,
    Observation,
    Plan,
    RuntimeInstance,
    WorkerRow,
    worker_sort_key,
)
from reconciler.spec import PoolSpec


def worker_ids(replicas: int) -> list[str]:
    """The desired worker slots: ``w-1`` ... ``w-N``."""
    return [f"w-{i}" for i in range(1, replicas + 1)]


def plan(spec: PoolSpec, observation: Observation, now: float) -> Plan:
    """Decide what to start, restart, stop and remove so the pool matches ``spec``.

    ``now`` is accepted for time-based rules (health thresholds) so callers
    never let the planner read a clock itself.
    """
    del now  # no time-based rule yet; the parameter keeps the contract stable
    desired = worker_ids(spec.replicas)
    actions: list[Action] = []
    for worker_id in desired:
        action = _converge_desired(spec, worker_id, observation.instance(worker_id),
                                   observation.worker(worker_id))
        if action is not None:
            actions.append(action)
    surplus = _known_ids(observation) - set(desired)
    for worker_id in sorted(surplus, key=worker_sort_key, reverse=True):
        action = _retire(worker_id, observation.instance(worker_id), observation.worker(worker_id),
                         f"scale down to {spec.replicas} replica{'s' * (spec.replicas != 1)}")
        if action is not None:
            actions.append(action)
    actions += _orphan_worktrees(spec, observation)
    return Plan(spec.name, tuple(actions))


def plan_delete(spec: PoolSpec, observation: Observation) -> Plan:
    """Stop every worker of the pool (gracefully) and clear what is left of them."""
    actions = []
    for worker_id in sorted(_known_ids(observation), key=worker_sort_key, reverse=True):
        action = _retire(worker_id, observation.instance(worker_id),
                         observation.worker(worker_id), "pool deleted")
        if action is not None:
            actions.append(action)
    actions += _orphan_worktrees(spec, observation)
    return Plan(spec.name, tuple(actions))


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


def _known_ids(observation: Observation) -> set[str]:
    return {i.worker_id for i in observation.instances} | {w.id for w in observation.workers}


def _converge_desired(spec: PoolSpec, worker_id: str, instance: RuntimeInstance | None,
                      row: WorkerRow | None) -> Action | None:
    restart, start = ActionKind.RESTART, ActionKind.START
    if instance is None:
        if row is None:
            return Action(start, worker_id, f"not running (want {spec.replicas})")
        where = "tmux window" if row.runtime == "tmux" else "process"
        return Action(restart, worker_id, f"{where} gone{_last_exit(row)}")
    if not instance.alive:
        return Action(restart, worker_id, f"process gone ({instance.exit_description()})")
    if instance.runtime != spec.runtime:
        return Action(restart, worker_id,
                      f"runtime changed: {instance.runtime} → {spec.runtime}", graceful=True)
    if instance.runtime == "tmux" and instance.socket and instance.socket != spec.tmux_socket:
        return Action(restart, worker_id,
                      f"tmux.socket changed: {instance.socket} → {spec.tmux_socket}",
                      graceful=True)
    if row is None:
        return Action(restart, worker_id, "running but unknown to the store", graceful=True)
    changed = _changed_fields(spec, row)
    if changed:
        return Action(restart, worker_id, f"{', '.join(changed)} changed", graceful=True)
    if row.drain_requested:
        return Action(restart, worker_id, "was draining; replace it", graceful=True)
    return None


def _retire(worker_id: str, instance: RuntimeInstance | None, row: WorkerRow | None,
            why: str) -> Action | None:
    if instance is not None and instance.alive:
        return Action(ActionKind.STOP, worker_id, why, graceful=True)
    if instance is not None:
        return Action(ActionKind.REMOVE, worker_id,
                      f"{why}; clear its exited window ({instance.exit_description()})")
    if row is not None:
        return Action(ActionKind.REMOVE, worker_id, f"{why}; forget its stopped record")
    return None


def _changed_fields(spec: PoolSpec, row: WorkerRow) -> list[str]:
    if row.template_hash == spec.template_hash():
        return []
    desired = spec.template_digests()
    changed = [key for key, digest in desired.items() if row.template_digests.get(key) != digest]
    return changed or ["worker template"]


def _last_exit(row: WorkerRow) -> str:
    if row.exit_code is not None:
        return f" (last exit {row.exit_code})"
    return ""
