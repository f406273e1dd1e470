"""The pure planner: scripted observations in, plans out.

Unit tests build ``Observation`` values by hand and run with every kind of I/O
forbidden.  The convergence property and the action catalogue live in
``tests/test_convergence.py``.
"""

from __future__ import annotations

import builtins
import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.actions import (
    CleanWorktree,
    DrainWorker,
    KillStrays,
    Plan,
    ReleaseWorker,
    RemoveWorker,
    ReplaceWorker,
    ResetBudget,
    StartWorker,
    StopWorker,
    Wait,
    target,
)
from reconciler.model import AttemptRow, Observation, ProcessRef, RuntimeInstance, WorkerRow
from reconciler.planner import next_wakeup, plan, plan_delete, plan_restart
from reconciler.report.plan import describe
from reconciler.spec import parse_spec
from reconciler.specmodel import PoolSpec

NOW = 1_800_000_000.0


def make_spec(replicas: int = 3, *, command: str = "agent-a", runtime: str = "tmux",
              env: str = "secret-value-1", cleanup: str = "always") -> PoolSpec:
    text = f"""
apiVersion: reconciler/v1
kind: WorkerPool
metadata: {{name: p}}
spec:
  replicas: {replicas}
  repo: /srv/repo
  runtime: {runtime}
  worker:
    command: [{command}, "{{task.prompt}}"]
    env: {{TOKEN: {env}}}
  worktrees: {{cleanup: {cleanup}}}
"""
    return parse_spec(text, label="t.yaml", base_dir=Path("/srv"))


def row(worker_id: str, spec: PoolSpec, **overrides: Any) -> WorkerRow:
    base = WorkerRow(id=worker_id, runtime=spec.runtime, tmux_socket="s", pid=100,
                     pid_create_time=None,
                     spec_id=1, template_hash=spec.template_hash(),
                     template_digests=spec.template_digests(), state="idle", current_task=None,
                     started_at=NOW - 60, heartbeat_at=NOW - 1, restarts=0,
                     drain_requested=False, exited_at=None, exit_code=None, removed=False,
                     health="healthy")
    return replace(base, **overrides)


def alive(worker_id: str, runtime: str = "tmux") -> RuntimeInstance:
    return RuntimeInstance(worker_id, runtime, pid=100, alive=True,
                           handle="@1" if runtime == "tmux" else None)


def observation(instances: list[RuntimeInstance], rows: list[WorkerRow]) -> Observation:
    return Observation(pool="p", observed_at=NOW, instances=tuple(instances),
                       workers=tuple(rows))


def healthy(spec: PoolSpec, ids: list[str]) -> Observation:
    return observation([alive(i, spec.runtime) for i in ids], [row(i, spec) for i in ids])


def attempt(worker_id: str, task_id: int = 7, **overrides: Any) -> AttemptRow:
    base = AttemptRow(id=task_id, task_id=task_id, number=1, worker_id=worker_id,
                      status="running", started_at=NOW - 5, ended_at=None, exit_code=None,
                      branch="b", worktree=f"/wt/task-{task_id}-a1", log_path=None, error=None,
                      output_tail=None, lease_expires_at=NOW + 30, pid=4242,
                      pid_create_time=NOW - 5)
    return replace(base, **overrides)


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make any file, process, socket, signal or database access fail the test."""

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the planner reached real I/O")

    for target_module, name in ((subprocess, "Popen"), (subprocess, "run"), (os, "kill"),
                                (builtins, "open"), (socket, "socket"), (sqlite3, "connect")):
        monkeypatch.setattr(target_module, name, forbidden)
    yield


@pytest.mark.usefixtures("no_io")
class TestScriptedPlans:
    def test_empty_host_starts_every_replica(self) -> None:
        spec = make_spec(3)
        result = plan(spec, observation([], []), NOW)
        assert result.actions == (StartWorker("w-1", "not running (want 3)"),
                                  StartWorker("w-2", "not running (want 3)"),
                                  StartWorker("w-3", "not running (want 3)"))
        assert result.summary() == "Plan: 3 to start, 0 to restart, 0 to stop."

    def test_matching_pool_is_a_no_op(self) -> None:
        spec = make_spec(3)
        result = plan(spec, healthy(spec, ["w-1", "w-2", "w-3"]), NOW)
        assert result.empty
        assert result.summary() == "No changes. The pool matches the spec."

    @pytest.mark.parametrize(("instance", "reason"), [
        pytest.param(RuntimeInstance("w-2", "tmux", 100, False, exit_signal=9),
                     "process gone (killed by SIGKILL (exit 137))", id="killed-by-signal"),
        pytest.param(RuntimeInstance("w-2", "tmux", 100, False, exit_status=137),
                     "process gone (exit 137)", id="exit-status"),
        pytest.param(None, "process gone (tmux window gone)", id="window-gone"),
    ])
    def test_dead_worker_is_restarted_at_once_then_after_a_backoff(
            self, instance: RuntimeInstance | None, reason: str) -> None:
        spec = make_spec(2)
        # its heartbeat stopped long ago (a fresh one outranks a window nobody sees)
        obs = observation([alive("w-1")] + ([instance] if instance else []),
                          [row("w-1", spec), row("w-2", spec, heartbeat_at=NOW - 600)])
        # a first crash: restarted in the pass that sees it, as supervisord and pm2 do
        (restart,) = plan(spec, obs, NOW).actions
        assert isinstance(restart, ReplaceWorker)
        assert (restart.worker, restart.reason, restart.counted) == ("w-2", reason, True)
        assert restart.unless_heartbeat_after is None  # gone: nothing to re-check
        assert describe(restart) == f"~ restart w-2: {reason} (counted)"
        # a second crash in the window waits restartPolicy.backoff (1s, jittered), counted
        # from the death the pass recorded, not from the restart before it
        recorded = replace(obs, workers=(row("w-1", spec),
                                         row("w-2", spec, health="dead", health_since=NOW,
                                             heartbeat_at=NOW - 600)),
                           restart_history={"w-2": (NOW - 30,)})
        (waiting,) = plan(spec, recorded, NOW).actions
        assert isinstance(waiting, Wait) and waiting.why.endswith("(restart backoff)")
        assert waiting.until is not None and NOW + 0.75 <= waiting.until <= NOW + 1.25
        assert describe(waiting).startswith(f"~ restart w-2: {reason} (counted) [in ")
        (now,) = plan(spec, recorded, waiting.until).actions
        assert isinstance(now, ReplaceWorker)

    def test_scale_down_stops_highest_index_first_after_current_task(self) -> None:
        spec = make_spec(5)
        result = plan(make_spec(2), healthy(spec, [f"w-{i}" for i in range(1, 6)]), NOW)
        assert [(type(a), target(a)) for a in result.actions] == [
            (DrainWorker, "w-5"), (DrainWorker, "w-4"), (DrainWorker, "w-3")]
        first = result.actions[0]
        assert isinstance(first, DrainWorker)
        assert (first.then, first.reason) == ("stop", "scale down to 2 replicas")

    def test_scale_down_across_ten_orders_numerically(self) -> None:
        spec = make_spec(11)
        result = plan(make_spec(9), healthy(spec, [f"w-{i}" for i in range(1, 12)]), NOW)
        assert [target(a) for a in result.actions] == ["w-11", "w-10"]

    def test_command_change_rolls_every_worker_gracefully(self) -> None:
        old = make_spec(2, command="agent-a")
        result = plan(make_spec(2, command="agent-b"), healthy(old, ["w-1", "w-2"]), NOW)
        assert result.actions == tuple(DrainWorker(w, "worker.command changed", alive(w),
                                                   then="replace") for w in ("w-1", "w-2"))

    def test_env_change_rolls_without_revealing_values(self) -> None:
        old = make_spec(1, env="secret-value-1")
        result = plan(make_spec(1, env="secret-value-2"), healthy(old, ["w-1"]), NOW)
        (action,) = result.actions
        assert isinstance(action, DrainWorker) and action.reason == "worker.env changed"
        assert "secret" not in repr(result)

    def test_runtime_change_replaces_workers(self) -> None:
        old = make_spec(1, runtime="tmux")
        (action,) = plan(make_spec(1, runtime="process"), healthy(old, ["w-1"]), NOW).actions
        assert isinstance(action, DrainWorker)
        assert action.reason == "runtime (tmux → process) changed"

    def test_draining_worker_waits_then_is_replaced_or_killed(self) -> None:
        spec = make_spec(1)
        draining = row("w-1", spec, drain_requested=True, drain_requested_at=NOW - 2)
        (wait,) = plan(spec, observation([alive("w-1")], [draining]), NOW).actions
        assert isinstance(wait, Wait)
        assert wait.why == "waiting for its current task (2.0s of 30s; killed then)"
        assert wait.until == NOW - 2 + spec.worker.stop_grace
        (overrun,) = plan(spec, observation([alive("w-1")], [draining]), NOW + 60).actions
        assert isinstance(overrun, ReplaceWorker) and not overrun.counted
        assert overrun.reason.startswith("still busy after stopGrace")

    def test_surplus_remains_are_removed(self) -> None:
        spec = make_spec(1)
        dead = RuntimeInstance("w-2", "tmux", 100, False, exit_status=0, handle="@2")
        obs = observation([alive("w-1"), dead], [row("w-1", spec), row("w-2", spec),
                                                 row("w-3", spec, heartbeat_at=NOW - 600)])
        result = plan(spec, obs, NOW)
        assert [(type(a), target(a)) for a in result.actions] == [
            (RemoveWorker, "w-3"), (RemoveWorker, "w-2")]

    def test_window_unknown_to_the_store_is_drained_then_replaced(self) -> None:
        spec = make_spec(1)
        (action,) = plan(spec, observation([alive("w-1")], []), NOW).actions
        assert isinstance(action, DrainWorker)
        assert action.reason == "running but unknown to the store"

    def test_delete_drains_everything_and_force_stops_at_once(self) -> None:
        spec = make_spec(3)
        obs = healthy(spec, ["w-1", "w-2", "w-3"])
        result = plan_delete(spec, obs, NOW)
        assert [target(a) for a in result.actions] == ["w-3", "w-2", "w-1"]
        assert {type(a) for a in result.actions} == {DrainWorker}
        forced = plan_delete(spec, replace(obs, running=(attempt("w-2"),)), NOW, force=True)
        assert {type(a) for a in forced.actions} == {StopWorker}
        (busy,) = [a for a in forced.actions if target(a) == "w-2"]
        assert isinstance(busy, StopWorker) and not busy.counted
        assert [a.task_id for a in busy.attempts] == [7]

    def test_plan_is_deterministic(self) -> None:
        spec = make_spec(4)
        obs = healthy(make_spec(6, command="x"), [f"w-{i}" for i in range(1, 7)])
        assert plan(spec, obs, NOW) == plan(spec, obs, NOW)

    def test_a_dead_workers_attempt_is_ended_first_with_what_to_kill_and_clean(self) -> None:
        """Issue 7 item 2: the attempt is ended at once, whatever the backoff; the slot
        (its exited window kept, for its exit status) is restarted afterwards."""
        spec = make_spec(1)
        dead = RuntimeInstance("w-1", "tmux", 100, False, exit_status=1, handle="@1")
        agent = ProcessRef(4242, NOW - 5)
        for since in (NOW - 10, NOW - 0.01):  # backoff over, or just begun
            obs = replace(observation([dead], [row("w-1", spec, health="dead",
                                                      health_since=since)]),
                          running=(attempt("w-1"),), attempt_processes={7: (agent,)})
            (release,) = plan(spec, obs, NOW).actions
            assert isinstance(release, ReleaseWorker) and release.instance is None
            (ended,) = release.attempts
            assert ended.processes == (agent,) and ended.signal == "SIGTERM"
            assert ended.worktree == "/wt/task-7-a1"

    def test_an_attempts_processes_get_sigterm_once_then_sigkill_after_stop_grace(
            self) -> None:
        spec = make_spec(1)  # stopGrace 30s by default
        grace = spec.worker.stop_grace
        dead = RuntimeInstance("w-1", "tmux", 100, False, exit_status=1, handle="@1")
        agent = ProcessRef(4242, NOW - 5)
        signals = []
        for signalled in (NOW - 1, NOW - grace):
            obs = replace(observation([dead], [row("w-1", spec, health="dead",
                                                      health_since=NOW - 10)]),
                          running=(attempt("w-1", stop_signalled_at=signalled),),
                          attempt_processes={7: (agent,)})
            (action,) = plan(spec, obs, NOW).actions
            release = action.then if isinstance(action, Wait) else action
            assert isinstance(release, ReleaseWorker)
            signals.append(release.attempts[0].signal)
            if isinstance(action, Wait):  # within stopGrace: nothing to send, says when
                assert action.until == signalled + grace
                assert "SIGKILL in 29s (stopGrace)" in describe(action)
        assert signals == [None, "SIGKILL"]

    def test_processes_of_an_ended_attempt_are_killed_and_a_running_ones_are_not(
            self) -> None:
        spec = make_spec(1)
        live = row("w-1", spec)
        stray, working = ProcessRef(5001, NOW - 100), ProcessRef(5002, NOW - 4)
        obs = replace(observation([alive("w-1")], [live]), running=(attempt("w-1"),),
                      attempt_processes={3: (stray,), 7: (working,)})
        (kill,) = plan(spec, obs, NOW).actions
        assert isinstance(kill, KillStrays)
        assert (kill.attempt_id, kill.processes) == (3, (stray,))
        assert describe(kill).startswith("- kill attempt 3: its attempt has ended")


@pytest.mark.usefixtures("no_io")
def test_socket_change_moves_workers_to_the_new_socket() -> None:
    spec = make_spec(1)
    old = replace(alive("w-1"), socket="old-socket")
    (action,) = plan(spec, observation([old], [row("w-1", spec)]), NOW).actions
    assert isinstance(action, DrainWorker)
    assert action.reason == f"tmux.socket (old-socket → {spec.tmux_socket}) changed"


@pytest.mark.usefixtures("no_io")
@pytest.mark.parametrize(("cleanup", "status", "cleaned"), [
    pytest.param("always", None, True, id="unowned"),
    pytest.param("always", "lost", True, id="lost-attempt"),
    pytest.param("always", "succeeded", True, id="finished-always"),
    pytest.param("always", "running", False, id="running"),
    pytest.param("onSuccess", "failed", False, id="failed-kept-on-success-policy"),
    pytest.param("onSuccess", "rate_limited", False, id="rate-limited-kept-on-success-policy"),
    pytest.param("never", "succeeded", False, id="kept-by-never"),
    pytest.param("never", "rate_limited", False, id="rate-limited-kept-by-never"),
    pytest.param("never", "lost", True, id="lost-even-with-never"),
])
def test_orphaned_worktrees_follow_the_cleanup_policy(cleanup: str, status: str | None,
                                                      cleaned: bool) -> None:
    spec = make_spec(0, cleanup=cleanup)
    path = "/state/worktrees/task-3-a1"
    obs = replace(observation([], []), worktrees=(path,),
                  attempt_worktrees={} if status is None else {path: status})
    actions = plan(spec, obs, NOW).actions
    assert [(type(a), target(a)) for a in actions] == ([(CleanWorktree, path)] if cleaned
                                                       else [])


@pytest.mark.usefixtures("no_io")
def test_failed_process_worker_is_released_once_not_forever() -> None:
    """A failed ``runtime: process`` worker leaves only its pid behind: once what it left
    running is released there is nothing more to do (it used to plan a release every pass)."""
    spec = make_spec(1, runtime="process")
    gone = RuntimeInstance("w-1", "process", 100, False, exit_status=1)
    failed = row("w-1", spec, health="failed")
    busy = replace(observation([gone], [failed]), running=(attempt("w-1"),))
    (release,) = plan(spec, busy, NOW).actions
    assert isinstance(release, ReleaseWorker)
    assert plan(spec, observation([gone], [failed]), NOW).empty


@pytest.mark.usefixtures("no_io")
@pytest.mark.parametrize(("health", "is_alive", "kind"), [
    pytest.param("failed", False, ReplaceWorker, id="failed-now"),
    pytest.param("dead", False, ReplaceWorker, id="dead-now"),
    pytest.param("working", True, DrainWorker, id="live-after-its-task"),
])
def test_operator_restart_resets_the_budget_and_is_not_counted(health: str, is_alive: bool,
                                                               kind: type) -> None:
    spec = make_spec(1)
    instance = alive("w-1") if is_alive else RuntimeInstance("w-1", "tmux", 1, False,
                                                               handle="@1")
    obs = replace(observation([instance], [row("w-1", spec, health=health)]),
                  restart_history={"w-1": (NOW - 30, NOW - 20, NOW - 10)})
    reset, replacement = plan_restart(spec, obs, "w-1", NOW).actions
    assert isinstance(reset, ResetBudget)
    assert isinstance(replacement, kind)
    assert not getattr(replacement, "counted", False)


def test_a_dead_workers_attempt_is_released_with_the_restart_it_leads_to() -> None:
    """The release says what follows: at once after a first crash, after the backoff
    after a later one (it said "after the backoff" for both)."""
    spec = make_spec(1)
    dead = row("w-1", spec, heartbeat_at=NOW - 600)
    obs = replace(observation([RuntimeInstance("w-1", "tmux", 100, False, exit_signal=9)],
                              [dead]), running=(attempt("w-1"),))
    (first,) = [a for a in plan(spec, obs, NOW).actions if isinstance(a, ReleaseWorker)]
    assert first.reason.endswith("end its attempt now, then restart it")
    again = replace(obs, restart_history={"w-1": (NOW - 30,)})
    (later,) = [a for a in plan(spec, again, NOW).actions if isinstance(a, ReleaseWorker)]
    assert later.reason.endswith("end its attempt now, restart after the backoff")


class TestNextWakeup:
    """The controller sleeps until ``next_wakeup``: the first moment time alone could
    change a decision.  Too late and a hang or a backoff's end waits for the resync."""

    def test_a_healthy_pool_wakes_when_a_heartbeat_could_grow_too_old(self) -> None:
        spec = make_spec(2)
        obs = observation([alive("w-1"), alive("w-2")],
                          [row("w-1", spec, heartbeat_at=NOW - 4),
                           row("w-2", spec, heartbeat_at=NOW - 1)])
        remaining = plan(spec, obs, NOW)
        assert next_wakeup(spec, obs, remaining, NOW) == \
            NOW - 4 + spec.health.unresponsive_after

    def test_a_backoff_ending_first_is_the_wakeup(self) -> None:
        spec = make_spec(1)
        dead = row("w-1", spec, health="dead", health_since=NOW, heartbeat_at=NOW - 600)
        obs = replace(observation([], [dead]), restart_history={"w-1": (NOW - 30,)})
        remaining = plan(spec, obs, NOW)
        (wait,) = remaining.waiting
        assert wait.until is not None
        assert next_wakeup(spec, obs, remaining, NOW) == wait.until

    def test_a_running_task_wakes_when_it_would_turn_slow(self) -> None:
        spec = make_spec(1)
        busy = attempt("w-1", started_at=NOW - 5, last_output_at=NOW - 1,
                       lease_expires_at=NOW + 10_000)
        obs = replace(observation([alive("w-1")], [row("w-1", spec, heartbeat_at=NOW)]),
                      running=(busy,))
        moment = next_wakeup(spec, obs, plan(spec, obs, NOW), NOW)
        assert moment == min(NOW + spec.health.unresponsive_after,
                             NOW - 5 + spec.health.slow_after,
                             NOW - 1 + spec.health.stall_after)

    def test_moments_already_past_are_no_reason_to_wake(self) -> None:
        spec = make_spec(1)
        silent = row("w-1", spec, health="unresponsive", heartbeat_at=NOW - 20)
        obs = observation([alive("w-1")], [silent])
        moment = next_wakeup(spec, obs, plan(spec, obs, NOW), NOW)
        # unresponsiveAfter (15s) has passed: only deadAfter (30s) is still ahead
        assert moment == NOW - 20 + spec.health.dead_after
        gone = replace(silent, health="dead")
        assert next_wakeup(spec, observation([], [gone]), Plan("p"), NOW) is None


def test_process_runtime_words_never_speak_of_windows() -> None:
    """Issue 12: a process-runtime worker has no tmux window to clear."""
    spec = make_spec(1, runtime="process")
    gone = RuntimeInstance("w-2", "process", pid=100, alive=False, exit_status=0)
    result = plan(spec, observation([alive("w-1", "process"), gone],
                                    [row("w-1", spec), row("w-2", spec)]), NOW)
    (remove,) = [a for a in result.actions if isinstance(a, RemoveWorker)]
    assert "window" not in remove.reason and "clear its exited process (exit 0)" in remove.reason
