"""Per-worker health state machines (library ``transitions``): decide, never act.

The transition table below is the single place that says how a worker's
health may change; every condition is a pure function of ``WorkerFacts`` (an
observation of one worker at one instant) and the spec's thresholds.
``assess`` replays the table from the recorded state until nothing more
fires and returns the steps with their reasons; the planner turns them into
actions and the executor records them as events.

States: ``recovering`` (started, no heartbeat yet), ``healthy`` (idle and
heartbeating), ``working``, ``slow`` (task past ``slowAfter`` or silent past
``stallAfter``), ``unresponsive`` (heartbeat older than ``unresponsiveAfter``),
``dead`` (process gone, or heartbeat older than ``deadAfter``), ``failed``
(restart budget exhausted: waits for an operator), ``stopping`` (draining) and
``stopped`` (exited as asked: a planned stop, never a death, so nothing that
alerts on ``dead`` fires for a scale-down or a roll).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.durations import format_duration
from reconciler.exitstatus import describe_exit
from reconciler.model import AttemptRow, Observation, RuntimeInstance, Step, WorkerRow
from reconciler.specmodel import PoolSpec

if TYPE_CHECKING:
    from transitions import Machine

STATES = ("recovering", "healthy", "working", "slow", "unresponsive", "dead", "failed",
          "stopping", "stopped")
LIVE = ("recovering", "healthy", "working", "slow", "unresponsive", "stopping")


@dataclass(frozen=True)
class Rule:
    trigger: str
    sources: tuple[str, ...]
    dest: str
    condition: str


# Order matters: the first rule that fires from the current state wins.
TRANSITIONS: tuple[Rule, ...] = (
    Rule("finish", LIVE, "stopped", "exited_after_drain"),
    Rule("exit", LIVE, "dead", "process_gone"),
    Rule("flatline", ("unresponsive",), "dead", "heartbeat_past_dead"),
    Rule("give_up", ("dead",), "failed", "budget_exhausted"),
    Rule("drain", ("recovering", "healthy", "working", "slow", "unresponsive"), "stopping",
         "draining"),
    Rule("fall_silent", ("recovering", "healthy", "working", "slow"), "unresponsive",
         "heartbeat_past_unresponsive"),
    Rule("come_up", ("recovering",), "healthy", "heartbeat_since_start"),
    Rule("revive", ("unresponsive",), "healthy", "heartbeat_fresh"),
    Rule("pick_up", ("healthy",), "working", "busy"),
    Rule("drag", ("working",), "slow", "long_or_stalled"),
    Rule("settle", ("working", "slow"), "healthy", "idle"),
)


@dataclass(frozen=True)
class WorkerFacts:
    """What the planner knows about one worker right now (all ages in seconds)."""

    process_alive: bool
    exit_description: str
    heartbeat_age: float | None  # None: no heartbeat since this process started
    since_start: float
    busy: bool
    task_id: int | None = None
    task_age: float | None = None
    output_age: float | None = None
    draining: bool = False
    budget_left: bool = True
    restarts_in_window: int = 0


class _Conditions:
    """The model the machine drives; its methods are the table's conditions."""

    state: str

    def __init__(self, facts: WorkerFacts, spec: PoolSpec) -> None:
        self.facts = facts
        self.health = spec.health

    def _silence(self) -> float:
        f = self.facts
        return f.heartbeat_age if f.heartbeat_age is not None else f.since_start

    def process_gone(self) -> bool:
        return not self.facts.process_alive

    def exited_after_drain(self) -> bool:
        return self.facts.draining and not self.facts.process_alive

    def heartbeat_past_dead(self) -> bool:
        return self._silence() > self.health.dead_after

    def heartbeat_past_unresponsive(self) -> bool:
        return self._silence() > self.health.unresponsive_after

    def heartbeat_fresh(self) -> bool:
        return not self.heartbeat_past_unresponsive()

    def heartbeat_since_start(self) -> bool:
        return self.facts.heartbeat_age is not None and self.heartbeat_fresh()

    def budget_exhausted(self) -> bool:
        return not self.facts.budget_left

    def draining(self) -> bool:
        return self.facts.draining

    def busy(self) -> bool:
        return self.facts.busy

    def idle(self) -> bool:
        return not self.facts.busy

    def long_or_stalled(self) -> bool:
        f = self.facts
        return (f.task_age or 0) > self.health.slow_after or \
            (f.output_age or 0) > self.health.stall_after


def _reason(rule: Rule, facts: WorkerFacts, spec: PoolSpec) -> str:
    silence = facts.heartbeat_age if facts.heartbeat_age is not None else facts.since_start
    match rule.trigger:
        case "finish":
            return "exited after draining"
        case "exit":
            return f"process gone ({facts.exit_description})"
        case "flatline":
            return f"no heartbeat for {format_duration(silence)} (deadAfter " \
                   f"{format_duration(spec.health.dead_after)})"
        case "fall_silent":
            return f"no heartbeat for {format_duration(silence)} (unresponsiveAfter " \
                   f"{format_duration(spec.health.unresponsive_after)})"
        case "give_up":
            return f"{facts.restarts_in_window} restarts within " \
                   f"{format_duration(spec.restart.window)} (maxRestarts " \
                   f"{spec.restart.max_restarts}); waiting for `reconcile restart`"
        case "drain":
            return "asked to stop after its current task"
        case "pick_up":
            return f"running task {facts.task_id}"
        case "drag":
            if (facts.task_age or 0) > spec.health.slow_after:
                return f"task {facts.task_id} running for {format_duration(facts.task_age or 0)}"
            return f"task {facts.task_id} silent for {format_duration(facts.output_age or 0)}"
        case "settle":
            return "task finished"
        case "come_up":
            return "first heartbeat"
        case _:
            return "heartbeating again"


@functools.cache
def _machine() -> Machine:
    """The one machine every worker's assessment runs on: the table is built once per
    process, not once per worker per pass (that cost 83 % of a 256-worker pass).
    Models are not registered with it (``add_model`` binds two dozen methods to each):
    an assessment fires the table's events on its own model directly.  Built (and
    ``transitions`` imported) when a worker's health first changes: ``status`` on a
    steady pool never needs it."""
    from transitions import Machine

    return Machine(model=None, states=list(STATES), initial="recovering",
                   auto_transitions=False,
                   transitions=[{"trigger": rule.trigger, "source": list(rule.sources),
                                 "dest": rule.dest, "conditions": [rule.condition]}
                                for rule in TRANSITIONS])


# The table's rules by source state, in table order: what may fire from each state.
RULES_FROM: dict[str, tuple[Rule, ...]] = {
    state: tuple(rule for rule in TRANSITIONS if state in rule.sources) for state in STATES}


def assess(worker: str, state: str, facts: WorkerFacts, spec: PoolSpec) -> list[Step]:
    """Every transition the table makes from ``state`` given ``facts``, in order."""
    model = _Conditions(facts, spec)
    model.state = state if state in STATES else "recovering"
    steps: list[Step] = []
    for _ in range(len(STATES)):  # the table has no cycles longer than this
        # the first rule from the current state whose condition holds fires (what
        # ``may_<trigger>`` asks, without binding it to the model)
        rule = next((r for r in RULES_FROM[model.state] if getattr(model, r.condition)()), None)
        if rule is None:
            break
        source = model.state
        _machine().events[rule.trigger].trigger(model)
        steps.append(Step(worker, source, model.state, rule.trigger,
                          _reason(rule, facts, spec)))
    return steps


# --------------------------------------------------------------------------- facts
# What the table reads about one worker, from an observation: the planner and
# ``status`` judge from the same facts.


def facts_of(spec: PoolSpec, observation: Observation, worker_id: str, row: WorkerRow,
             instance: RuntimeInstance | None, now: float) -> WorkerFacts:
    """The pure facts the health table reads, for one worker at ``now``."""
    attempt: AttemptRow | None = observation.attempt_of(worker_id)
    started = row.started_at or now
    fresh_heartbeat = row.heartbeat_at is not None and row.heartbeat_at >= started
    heartbeat_age = now - row.heartbeat_at if fresh_heartbeat and row.heartbeat_at else None
    alive = (instance is not None and instance.alive) or \
        unseen_but_beating(spec, row, instance, now)
    pueue_slot = row.runtime == "pueue"
    if pueue_slot:
        # a slot of the pueue group has no process of its own: idle, it is simply there;
        # busy, it lives by the heartbeats of the wrapper running its task (run-task)
        alive = True
        heartbeat_age = 0.0 if attempt is None else \
            now - max(row.heartbeat_at or 0.0, attempt.started_at)
    restarts = counted_restarts(spec, observation, row, now)
    return WorkerFacts(
        process_alive=alive,
        exit_description=exit_description(row, instance),
        heartbeat_age=heartbeat_age,
        since_start=now - started,
        busy=attempt is not None,
        task_id=attempt.task_id if attempt else None,
        task_age=now - attempt.started_at if attempt else None,
        output_age=now - (attempt.last_output_at or attempt.started_at) if attempt else None,
        draining=row.drain_requested,
        # a pueue slot never fails: pueue goes on starting tasks in it whatever we record,
        # so a failed slot would only have every new task in it killed
        budget_left=pueue_slot or row.drain_requested
        or len(restarts) < spec.restart.max_restarts,
        restarts_in_window=len(restarts))


def counted_restarts(spec: PoolSpec, observation: Observation, row: WorkerRow,
                     now: float) -> tuple[float, ...]:
    """Restarts that count against the budget: inside ``window``, and none at all once
    the current process has been up for ``resetAfter`` (its last heartbeat says so)."""
    if row.started_at and row.heartbeat_at and \
            row.heartbeat_at - row.started_at >= spec.restart.reset_after:
        return ()
    return tuple(t for t in observation.restart_history.get(row.id, ())
                 if t > now - spec.restart.window)


def unseen_but_beating(spec: PoolSpec, row: WorkerRow, instance: RuntimeInstance | None,
                       now: float) -> bool:
    """A tmux worker whose window cannot be seen (nor its process confirmed) while its
    heartbeat is fresh.  Heartbeats outrank missing windows: such a worker is never
    restarted (a second copy would take tasks too); it is reported until the two agree."""
    return (row.runtime == "tmux" and instance is None and not row.removed
            and row.heartbeat_at is not None and row.started_at is not None
            and row.heartbeat_at >= row.started_at
            and now - row.heartbeat_at < spec.health.unresponsive_after)


def heartbeat_disagreements(spec: PoolSpec, observation: Observation, now: float) -> list[str]:
    """``status``'s words for each worker that heartbeats but has no window to be seen."""
    return [f"{row.id} heartbeats ({format_duration(now - (row.heartbeat_at or now))} ago) "
            f"but no tmux window of it can be seen on socket {row.tmux_socket}: left alone "
            "while it heartbeats (was its tmux server moved or killed?)"
            for row in observation.workers
            if unseen_but_beating(spec, row, observation.instance(row.id), now)]


def exit_description(row: WorkerRow, instance: RuntimeInstance | None) -> str:
    if instance is not None:
        return instance.exit_description()
    where = "tmux window" if row.runtime == "tmux" else "process"
    last = f", last {describe_exit(row.exit_code)}" if row.exit_code is not None else ""
    return f"{where} gone{last}"
