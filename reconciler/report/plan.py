"""Plans as words and as JSON: one rendering per action type, no I/O.

``diff``, ``apply`` and the controller's log all describe actions with
``describe``; ``-o json`` uses ``action_document``.  Both match on every
action type, so a new type without a rendering fails loudly (a test
enumerates ``reconciler.actions.ACTION_TYPES``) instead of crashing ``diff``.
"""

from __future__ import annotations

from typing import Any

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
    RestartPueueTask,
    SetPueueGroup,
    StartController,
    StartPueueDaemon,
    StartWorker,
    StopController,
    StopWorker,
    SubmitTask,
    Wait,
    target,
    verb,
)

SYMBOLS = {"start": "+", "restart": "~", "reset": "~", "create": "+", "set": "~",
           "queue": "+"}


def symbol(action: Action) -> str:
    return SYMBOLS.get(verb(action), "-")


def detail(action: Action) -> str:
    """What the action does beyond its verb and reason, in words."""
    match action:
        case Wait(then=then, why=why):
            inner = detail(then)
            return f"{inner} [{why}]" if inner else f"[{why}]"
        case DrainWorker():
            return "(after its current task)"
        case ReplaceWorker(counted=counted, reset_budget=reset, attempts=attempts):
            notes = [] if not counted else ["counted"]
            if reset:
                notes.append(f"new restart budget: {reset}")
            if attempts:
                notes.append(_requeues(attempts))
            return f"({'; '.join(notes)})" if notes else ""
        case ReleaseWorker(attempts=attempts, counted=False) if attempts:
            return f"({_requeues(attempts)}; not using up a try)"
        case StopWorker(attempts=attempts) | RemoveWorker(attempts=attempts) | \
                ReleaseWorker(attempts=attempts):
            return f"({_requeues(attempts)})" if attempts else ""
        case KillStrays(processes=processes):
            pids = ", ".join(str(p.pid) for p in processes)
            return f"(SIGKILL pid{'s' * (len(processes) != 1)} {pids})"
        case SubmitTask(attempt=attempt, priority=priority, group=group):
            return f"(attempt {attempt}, priority {priority}, group {group})"
        case StartWorker() | ResetBudget() | CleanWorktree() | StartController() | \
                StopController() | StartPueueDaemon() | SetPueueGroup() | KillPueueTask() | \
                RestartPueueTask() | RemovePueueTasks():
            return ""
    raise TypeError(f"no rendering for {action!r}")


def _requeues(attempts: tuple[AttemptRef, ...]) -> str:
    tasks = ", ".join(str(a.task_id) for a in attempts)
    words = f"requeues task{'s' * (len(attempts) != 1)} {tasks}"
    live = sum(len(a.processes) for a in attempts)
    if not live:
        return words
    signals = {a.signal for a in attempts if a.signal}
    how = "SIGKILL now" if "SIGKILL" in signals else "SIGTERM now" if signals \
        else "SIGKILL once stopGrace is over"
    verb_ = "exits" if live == 1 else "exit"
    return f"{words} once its {live} process{'es' * (live != 1)} {verb_} ({how})"


def lead(action: Action) -> str:
    """How a plan line starts: its symbol and verb (``~ restart``); a pueue group's line
    names no verb (``~ pueue group agents: parallel 4 -> 8``)."""
    if isinstance(_outcome(action), SetPueueGroup):
        return symbol(action)
    return f"{symbol(action)} {verb(action)}"


def describe(action: Action) -> str:
    """One line: ``~ restart w-2: process gone (exit 1) (counted) [in 0.8s (restart backoff)]``."""
    what = "worktree " if isinstance(_outcome(action), CleanWorktree) else ""
    more = detail(action)
    return f"{lead(action)} {what}{target(action)}: {_outcome(action).reason}" \
           + (f" {more}" if more else "")


def _outcome(action: Action) -> Change:
    return action.then if isinstance(action, Wait) else action


def action_document(action: Action) -> dict[str, Any]:
    """The JSON form of an action: its verb, type, target and reason, the facts that
    shape it, and ``waiting`` (until when and why) for a wait."""
    if isinstance(action, Wait):
        return {**action_document(action.then),
                "waiting": {"until": action.until, "why": action.why}}
    doc: dict[str, Any] = {"action": verb(action), "type": type(action).__name__,
                           "target": target(action), "reason": action.reason,
                           "after_current_task": isinstance(action, DrainWorker),
                           "waiting": None}
    match action:
        case ReplaceWorker():
            doc.update(counted=action.counted, reset_budget=action.reset_budget,
                       guard_heartbeat_after=action.unless_heartbeat_after,
                       requeues=[a.task_id for a in action.attempts])
        case StopWorker():
            doc.update(counted=action.counted, requeues=[a.task_id for a in action.attempts])
        case RemoveWorker():
            doc.update(counted=True, requeues=[a.task_id for a in action.attempts])
        case ReleaseWorker():
            doc.update(counted=action.counted, requeues=[a.task_id for a in action.attempts])
        case KillStrays():
            doc.update(attempt=action.attempt_id, pids=[p.pid for p in action.processes])
        case DrainWorker():
            doc.update(then=action.then)
        case SetPueueGroup():
            doc.update(group=action.group, create=action.create, parallel=action.parallel,
                       parallel_was=action.parallel_was, running=action.running)
        case SubmitTask():
            doc.update(task=action.task_id, attempt=action.attempt, priority=action.priority,
                       group=action.group)
        case KillPueueTask():
            doc.update(pueue_id=action.pueue_id, task=action.task_id)
        case RestartPueueTask():
            doc.update(pueue_id=action.pueue_id)
        case RemovePueueTasks():
            doc.update(pueue_ids=list(action.pueue_ids))
        case StartWorker() | ResetBudget() | CleanWorktree() | StartController() | \
                StopController() | StartPueueDaemon():
            pass
        case _:
            raise TypeError(f"no JSON rendering for {action!r}")
    return doc


def plan_document(plan: Plan) -> dict[str, Any]:
    return {
        "pool": plan.pool,
        "generation": plan.generation or None,  # None: a spec not recorded yet (diff)
        "in_sync": plan.in_sync,
        "spec_changes": [{"path": c.path, "old": c.old, "new": c.new}
                         for c in plan.spec_changes],
        "summary": plan.summary(),
        "counts": dict(plan.counts()),
        "transitions": [{"worker": s.worker, "from": s.source, "to": s.dest,
                         "reason": s.reason} for s in plan.steps],
        "actions": [action_document(a) for a in plan.actions],
    }
