"""The health state machine: the table, its conditions, and lease/heartbeat edges (pure)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.actions import ReleaseWorker, ReplaceWorker, Wait, target
from reconciler.health import STATES, TRANSITIONS, WorkerFacts, assess
from reconciler.model import Observation, RuntimeInstance
from reconciler.planner import plan, restart_delay
from reconciler.spec import PoolSpec, parse_spec
from tests.test_planner import NOW, row

SPEC_TEXT = """
apiVersion: reconciler/v1
kind: WorkerPool
metadata: {name: p}
spec:
  replicas: 1
  repo: /srv/repo
  worker: {command: [agent]}
  health: {heartbeatInterval: 1s, unresponsiveAfter: 10s, deadAfter: 20s, slowAfter: 5m,
           stallAfter: 1m}
  restartPolicy: {maxRestarts: 3, window: 10m, backoff: 2s, resetAfter: 5m}
"""


@pytest.fixture(scope="module")
def spec() -> PoolSpec:
    return parse_spec(SPEC_TEXT, label="t.yaml", base_dir=Path("/srv"))


def facts(**overrides: object) -> WorkerFacts:
    base = WorkerFacts(process_alive=True, exit_description="exit 0", heartbeat_age=1.0,
                       since_start=60.0, busy=False)
    return replace(base, **overrides)  # type: ignore[arg-type]


def path(spec: PoolSpec, state: str, **overrides: object) -> list[str]:
    return [s.dest for s in assess("w-1", state, facts(**overrides), spec)]


def test_table_only_names_known_states_and_every_state_is_reachable() -> None:
    for rule in TRANSITIONS:
        assert rule.dest in STATES and set(rule.sources) <= set(STATES)
    reachable = {rule.dest for rule in TRANSITIONS} | {"recovering"}
    assert reachable == set(STATES)


@pytest.mark.parametrize(("state", "changes", "expected"), [
    pytest.param("recovering", {}, ["healthy"], id="first-heartbeat"),
    pytest.param("recovering", {"heartbeat_age": None, "since_start": 5.0}, [],
                 id="starting-within-grace"),
    pytest.param("healthy", {"busy": True, "task_id": 3}, ["working"], id="picks-up"),
    pytest.param("working", {"busy": True, "task_age": 301.0, "output_age": 1.0}, ["slow"],
                 id="slow-after-slowAfter"),
    pytest.param("working", {"busy": True, "task_age": 90.0, "output_age": 61.0}, ["slow"],
                 id="stalled-after-stallAfter"),
    pytest.param("slow", {"busy": False}, ["healthy"], id="settles"),
    pytest.param("healthy", {"heartbeat_age": 10.5}, ["unresponsive"], id="unresponsive"),
    pytest.param("unresponsive", {"heartbeat_age": 20.5}, ["dead"], id="flatline"),
    pytest.param("unresponsive", {"heartbeat_age": 0.5}, ["healthy"], id="revives"),
    pytest.param("working", {"process_alive": False}, ["dead"], id="process-gone-at-once"),
    pytest.param("dead", {"budget_left": False, "restarts_in_window": 3}, ["failed"],
                 id="over-budget"),
    pytest.param("healthy", {"draining": True}, ["stopping"], id="drains"),
    pytest.param("failed", {"process_alive": False}, [], id="failed-waits-for-operator"),
])
def test_transitions(spec: PoolSpec, state: str, changes: dict[str, object],
                     expected: list[str]) -> None:
    assert path(spec, state, **changes) == expected


def test_a_dead_process_is_dead_at_once_not_after_the_threshold(spec: PoolSpec) -> None:
    (step,) = assess("w-1", "healthy", facts(process_alive=False, heartbeat_age=0.1,
                                              exit_description="killed by signal 9"), spec)
    assert step.reason == "process gone (killed by signal 9)"


# ------------------------------------------------------------------- lease / heartbeat edges

def observed(spec: PoolSpec, heartbeat_age: float, *, alive: bool = True,
             up_for: float = 600.0) -> Observation:
    worker = row("w-1", spec, health="healthy", started_at=NOW - up_for,
                 heartbeat_at=NOW - heartbeat_age)
    instance = RuntimeInstance("w-1", "tmux", 100, alive, handle="@1", socket="reconciler")
    return Observation("p", NOW, (instance,), (worker,))


@pytest.mark.parametrize(("age", "restarted"), [
    pytest.param(19.9, False, id="just-inside-deadAfter"),
    pytest.param(20.1, True, id="just-outside-deadAfter"),
])
def test_heartbeat_edges_decide_a_hung_restart(spec: PoolSpec, age: float,
                                               restarted: bool) -> None:
    # two passes: healthy -> unresponsive (then dead if past deadAfter)
    result = plan(spec, observed(spec, age), NOW)
    actions = [a for a in result.actions if target(a) == "w-1"]
    assert bool(actions) == restarted
    if restarted:
        (waiting,) = actions  # a restart waits for its backoff from the recorded death
        action = waiting.then if isinstance(waiting, Wait) else waiting
        assert isinstance(action, ReplaceWorker) and action.counted
        assert action.reason.startswith("hung: no heartbeat for")
        # the guard: a heartbeat after the observed one calls the restart off
        assert action.unless_heartbeat_after == NOW - age


def test_backoff_grows_with_jitter_and_caps(spec: PoolSpec) -> None:
    """A first crash is restarted at once (as supervisord and pm2 do); every further
    counted restart in the window waits ``backoff`` doubling, jittered, capped."""
    delays = [restart_delay(spec, "w-1", n) for n in range(9)]
    assert delays[0] == 0.0
    for n, delay in enumerate(delays[1:]):
        base = min(60.0, 2.0 * 2 ** n)
        assert 0.75 * base <= delay <= 1.25 * base
    assert len({restart_delay(spec, f"w-{i}", 3) for i in range(1, 21)}) > 10


def test_restart_waits_for_its_backoff(spec: PoolSpec) -> None:
    obs = observed(spec, 0.5, alive=False, up_for=1.0)  # restarted 1s ago, died again
    obs = replace(obs, restart_history={"w-1": (NOW - 1.0,)})
    (action,) = plan(spec, obs, NOW).actions
    assert isinstance(action, Wait) and action.why.startswith("in ")
    assert action.until is not None and NOW < action.until < NOW + 5
    # the pass records the death; the backoff counts from it
    obs = replace(obs, workers=(replace(obs.workers[0], health="dead", health_since=NOW),))
    later = plan(spec, obs, NOW + 5).actions[0]
    assert isinstance(later, ReplaceWorker)


def test_budget_exhausted_goes_failed_and_stable_uptime_forgives(spec: PoolSpec) -> None:
    history = {"w-1": (NOW - 30, NOW - 20, NOW - 10)}
    crashed = replace(observed(spec, 1.0, alive=False, up_for=8.0), restart_history=history)
    result = plan(spec, crashed, NOW)
    # failed: no restart, only its remains cleared (window, agent) and its task requeued
    assert [type(a) for a in result.actions] == [ReleaseWorker]
    assert [s.dest for s in result.steps] == ["dead", "failed"]
    stable = replace(crashed, workers=(row("w-1", spec, health="healthy", started_at=NOW - 400,
                                           heartbeat_at=NOW - 1),))
    (waiting,) = plan(spec, stable, NOW).actions
    restart = waiting.then if isinstance(waiting, Wait) else waiting
    assert isinstance(restart, ReplaceWorker) and restart.reset_budget is not None


@pytest.mark.parametrize("up_for", [pytest.param(2.0, id="crashes-at-once"),
                                    pytest.param(240.0, id="crashes-after-running-a-while")])
def test_late_crashes_count_against_the_budget_too(spec: PoolSpec, up_for: float) -> None:
    """Unlike supervisord's startsecs, a crash after minutes of work still counts (until
    resetAfter of stable uptime)."""
    history = {"w-1": (NOW - 500, NOW - 400, NOW - 300)}
    crashed = replace(observed(spec, 1.0, alive=False, up_for=up_for), restart_history=history)
    assert [s.dest for s in plan(spec, crashed, NOW).steps] == ["dead", "failed"]
