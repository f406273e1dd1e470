"""Status of a pool as plain data: what ``reconcile status`` prints or emits as JSON.

Health is assessed with the same state machine the controller uses, from the
same observation, so ``status`` is right even while no controller runs.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from reconciler.health import assess, counted_restarts, facts_of, heartbeat_disagreements
from reconciler.model import ControllerRow, Observation, worker_sort_key
from reconciler.pueueview import not_started
from reconciler.specmodel import PoolSpec

UNHEALTHY_EXIT = 3


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    health: str
    activity: str  # what the worker itself reports: starting, idle, working, exited
    runtime: str
    pid: int | None
    current_task: int | None
    task_title: str | None  # of current_task, as written (renderers escape it)
    heartbeat_age: float | None
    uptime: float | None
    restarts: int
    recent_restarts: int  # counted against restartPolicy.maxRestarts


def worker_statuses(observation: Observation, now: float, spec: PoolSpec | None,
                    titles: Mapping[int, str] | None = None) -> list[WorkerStatus]:
    """``titles``: task titles by id, for the tasks workers are on (missing: None)."""
    out = []
    ids = {w.id for w in observation.workers} | {i.worker_id for i in observation.instances}
    for worker_id in sorted(ids, key=worker_sort_key):
        row = observation.worker(worker_id)
        inst = observation.instance(worker_id)
        # a slot of a pueue group has no process of its own: it is there while recorded
        slot = row is not None and row.runtime == "pueue" and not row.removed
        alive = (inst is not None and inst.alive) or slot
        running = observation.attempt_of(worker_id) if slot else None
        # an idle slot's last heartbeat is an ended wrapper's: it says nothing
        beat = row.heartbeat_at if row and (not slot or running) else None
        health = row.health if row else "unknown"
        recent = 0
        if row is not None and spec is not None:
            steps = assess(worker_id, row.health,
                           facts_of(spec, observation, worker_id, row, inst, now), spec)
            health = steps[-1].dest if steps else row.health
            recent = len(counted_restarts(spec, observation, row, now))
        elif not alive:
            health = "dead"
        out.append(WorkerStatus(
            id=worker_id, health=health, activity=row.state if row else "unknown",
            runtime=inst.runtime if inst else (row.runtime if row else "?"),
            pid=inst.pid if alive and inst else (running.pid if running else None),
            current_task=row.current_task if row and alive else None,
            task_title=(titles or {}).get(row.current_task) if row and alive and
            row.current_task is not None else None,
            heartbeat_age=round(now - beat, 3) if beat else None,
            uptime=round(now - row.started_at, 3) if row and row.started_at and alive else None,
            restarts=row.restarts if row else 0, recent_restarts=recent))
    return out


def verdict(observation: Observation, workers: list[WorkerStatus], spec: PoolSpec | None,
            controller: ControllerRow | None = None) -> list[str]:
    """What needs an operator: failed workers, a controller that should run but does not
    (not after ``delete``, which stops it on purpose)."""
    problems = [f"{w.id} is failed (restart budget exhausted; `reconcile restart {w.id}`)"
                for w in workers if w.health == "failed"]
    stopped_on_purpose = controller is not None and controller.stop_requested
    if spec is not None and spec.controller_enabled and observation.controller_alive is False \
            and not stopped_on_purpose:
        problems.append("the controller is down (`reconcile apply` or `reconcile controller` "
                        "starts it)")
    return problems


def status_document(observation: Observation, now: float, spec: PoolSpec | None,
                    controller: ControllerRow | None = None,
                    paused_until: float = 0.0, *, deleting: float | None = None,
                    delete_running: bool = False,
                    titles: Mapping[int, str] | None = None,
                    rescued: Mapping[str, int] | None = None,
                    paused_reason: str | None = None,
                    spend_today: float = 0.0,
                    endpoint: str | None = None,
                    endpoint_problem: str | None = None) -> dict[str, Any]:
    """``deleting``: when a ``delete`` began that has not finished; ``delete_running``:
    whether it still holds the pool lock (else it was interrupted); ``titles``: the
    titles of the tasks workers are on (``task_title`` of each worker row);
    ``spend_today``: the cost the attempts that ended today reported; ``endpoint``:
    where the controller serves metrics and its status page, if it does;
    ``endpoint_problem``: why it serves none where ``metrics.listen`` says."""
    workers = worker_statuses(observation, now, spec, titles)
    problems = verdict(observation, workers, spec, controller)
    if spec is not None:  # heartbeats and windows disagree: reported, never acted on
        problems += heartbeat_disagreements(spec, observation, now)
    if endpoint_problem and observation.controller_alive:
        problems.append(endpoint_problem)
    if deleting is not None and not delete_running:
        problems.append("a `reconcile delete` was interrupted; run it again to finish it "
                        "(or `reconcile apply` to keep the pool)")
    pueue = pueue_status(observation, spec, now)
    problems += pueue_problems(observation, spec)
    return {
        "pool": observation.pool,
        "observed_at": observation.observed_at,
        "ok": not problems,
        "problems": problems,
        "controller": {"running": observation.controller_alive,
                       "enabled": spec.controller_enabled if spec else None,
                       "pid": controller.pid if controller and observation.controller_alive
                       else None,
                       "busy": {"with": controller.busy_with, "since": controller.busy_since}
                       if controller and controller.busy_with and observation.controller_alive
                       else None,
                       "endpoint": endpoint if observation.controller_alive else None},
        "claiming_paused_until": paused_until if paused_until > now else None,
        "claiming_paused_reason": paused_reason if paused_until > now else None,
        "spend_today_usd": round(spend_today, 6),
        "budget_per_day_usd": spec.budget_per_day_usd if spec else None,
        "deleting": None if deleting is None else
        {"since": deleting, "state": "running" if delete_running else "interrupted"},
        "workers": [asdict(w) for w in workers],
        "queue": asdict(observation.queue),
        # attempts that left uncommitted work: committed to their branch, or kept
        "uncommitted_work": {"committed": (rescued or {}).get("committed", 0),
                             "kept": (rescued or {}).get("kept", 0)},
        "pueue": pueue,
    }


def pueue_problems(observation: Observation, spec: PoolSpec | None) -> list[str]:
    """What needs an operator in pueue: a daemon that does not answer, a group another
    pool uses too, an attempt pueue keeps ending before it starts."""
    view = observation.pueue
    if view is None or spec is None or spec.pueue is None:
        return []
    if not view.daemon_up:
        config = f" --config {shlex.quote(str(spec.pueue.config))}" if spec.pueue.config else ""
        return [f"the pueue daemon does not answer (the controller starts it; by hand: "
                f"`pueued -d{config}`)"]
    problems = [f"pueue group {spec.pueue.group} is also used by pool(s) "
                f"{', '.join(view.others)}: give each pool its own pueue.group (its parallel "
                "limit is left as it is meanwhile)"] if view.others else []
    return problems + not_started(view, observation.pueue_task_statuses)


def pueue_status(observation: Observation, spec: PoolSpec | None,
                 now: float) -> dict[str, Any] | None:
    """runtime: pueue -- the daemon, the group, our tasks in it and those added by hand
    (ids, states and results only: never a command, a path or an environment)."""
    view = observation.pueue
    if view is None or spec is None or spec.pueue is None:
        return None
    group = view.group
    ours = Counter(task.state for task in view.ours.values())
    restarts = observation.foreign_restarts
    return {
        "daemon_up": view.daemon_up,
        "version": f"{view.version}.x" if view.version else None,
        "group": spec.pueue.group,
        "group_status": group.status if group else None,
        "parallel": group.parallel_tasks if group else None,
        "supervise": spec.pueue.supervise,
        "ours": {"running": ours["running"] + ours["paused"],
                 "queued": ours["queued"] + ours["stashed"] + ours["locked"]},
        "added_by_hand": [
            {"id": task.id, "state": task.state, "result": task.result,
             "exit_code": task.exit_code,
             "running_for": now - task.started_at
             if task.state == "running" and task.started_at else None,
             "restarts": restarts.get((task.id, task.created_at or 0.0), 0)}
            for task in view.foreign],
    }
