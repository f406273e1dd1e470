"""The pure planner: scripted observations in, plans out; and the convergence property.

Unit tests build ``Observation`` values by hand and run with every kind of I/O
forbidden.  The property test executes plans through the real executor and a
real SQLite store, with fakes only for our own runtime port, and checks that
re-observing after ``execute`` yields an empty plan.
"""

from __future__ import annotations

import builtins
import os
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.executor import Executor
from reconciler.model import ActionKind, Observation, RuntimeInstance, WorkerRow
from reconciler.paths import PoolPaths
from reconciler.planner import plan, plan_delete
from reconciler.runtimes.base import Started
from reconciler.spec import PoolSpec, parse_spec
from reconciler.store.sqlite import Store

NOW = 1_800_000_000.0


def make_spec(replicas: int = 3, *, command: str = "agent-a", runtime: str = "tmux",
              env: str = "secret-value-1") -> PoolSpec:
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
"""
    return parse_spec(text, label="t.yaml", base_dir=Path("/srv"))


def row(worker_id: str, spec: PoolSpec, **overrides: Any) -> WorkerRow:
    base = WorkerRow(id=worker_id, runtime=spec.runtime, tmux_socket="s", pid=100,
                     pid_create_time=None,
                     spec_id=1, template_hash=spec.template_hash(),
                     template_digests=spec.template_digests(), state="idle", current_task=None,
                     started_at=NOW - 60, heartbeat_at=NOW - 1, restarts=0,
                     drain_requested=False, exited_at=None, exit_code=None, removed=False)
    return replace(base, **overrides)


def alive(worker_id: str, runtime: str = "tmux") -> RuntimeInstance:
    return RuntimeInstance(worker_id, runtime, pid=100, alive=True, handle="@1")


def observation(instances: list[RuntimeInstance], rows: list[WorkerRow]) -> Observation:
    return Observation(pool="p", observed_at=NOW, instances=tuple(instances),
                       workers=tuple(rows))


def healthy(spec: PoolSpec, ids: list[str]) -> Observation:
    return observation([alive(i, spec.runtime) for i in ids], [row(i, spec) for i in ids])


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make any file, process, socket, signal or database access fail the test."""

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the planner reached real I/O")

    for target, name in ((subprocess, "Popen"), (subprocess, "run"), (os, "kill"),
                         (builtins, "open"), (socket, "socket"), (sqlite3, "connect")):
        monkeypatch.setattr(target, name, forbidden)
    yield


@pytest.mark.usefixtures("no_io")
class TestScriptedPlans:
    def test_empty_host_starts_every_replica(self) -> None:
        spec = make_spec(3)
        result = plan(spec, observation([], []), NOW)
        assert [(a.kind, a.target) for a in result.actions] == [
            (ActionKind.START, "w-1"), (ActionKind.START, "w-2"), (ActionKind.START, "w-3")]
        assert result.summary() == "Plan: 3 to start, 0 to restart, 0 to stop."

    def test_matching_pool_is_a_no_op(self) -> None:
        spec = make_spec(3)
        result = plan(spec, healthy(spec, ["w-1", "w-2", "w-3"]), NOW)
        assert result.empty
        assert result.summary() == "No changes. The pool matches the spec."

    @pytest.mark.parametrize(("instance", "reason"), [
        pytest.param(RuntimeInstance("w-2", "tmux", 100, False, exit_signal=9),
                     "process gone (killed by signal 9 (exit 137))", id="killed-by-signal"),
        pytest.param(RuntimeInstance("w-2", "tmux", 100, False, exit_status=137),
                     "process gone (exit 137)", id="exit-status"),
        pytest.param(None, "process gone (tmux window gone)", id="window-gone"),
    ])
    def test_dead_worker_is_restarted_at_once(self, instance: RuntimeInstance | None,
                                              reason: str) -> None:
        spec = make_spec(2)
        obs = observation([alive("w-1")] + ([instance] if instance else []),
                          [row("w-1", spec), row("w-2", spec)])
        (action,) = plan(spec, obs, NOW).actions
        assert (action.kind, action.target, action.reason, action.graceful) == (
            ActionKind.RESTART, "w-2", reason, False)
        # the first restart waits restartPolicy.backoff (1s, jittered) after the death
        assert action.describe().startswith(f"~ restart w-2: {reason} [in ")
        assert action.pending is not None and action.pending.endswith("(restart backoff)")

    def test_scale_down_stops_highest_index_first_after_current_task(self) -> None:
        spec = make_spec(5)
        smaller = make_spec(2)
        result = plan(smaller, healthy(spec, [f"w-{i}" for i in range(1, 6)]), NOW)
        assert [(a.kind, a.target) for a in result.actions] == [
            (ActionKind.STOP, "w-5"), (ActionKind.STOP, "w-4"), (ActionKind.STOP, "w-3")]
        assert all(a.graceful for a in result.actions)
        assert result.actions[0].reason == "scale down to 2 replicas"

    def test_scale_down_across_ten_orders_numerically(self) -> None:
        spec = make_spec(11)
        result = plan(make_spec(9), healthy(spec, [f"w-{i}" for i in range(1, 12)]), NOW)
        assert [a.target for a in result.actions] == ["w-11", "w-10"]

    def test_command_change_rolls_every_worker_gracefully(self) -> None:
        old = make_spec(2, command="agent-a")
        result = plan(make_spec(2, command="agent-b"), healthy(old, ["w-1", "w-2"]), NOW)
        assert [(a.kind, a.reason, a.graceful) for a in result.actions] == [
            (ActionKind.RESTART, "worker.command changed", True)] * 2

    def test_env_change_rolls_without_revealing_values(self) -> None:
        old = make_spec(1, env="secret-value-1")
        result = plan(make_spec(1, env="secret-value-2"), healthy(old, ["w-1"]), NOW)
        (action,) = result.actions
        assert action.reason == "worker.env changed"
        assert "secret" not in repr(result)

    def test_runtime_change_replaces_workers(self) -> None:
        old = make_spec(1, runtime="tmux")
        (action,) = plan(make_spec(1, runtime="process"), healthy(old, ["w-1"]), NOW).actions
        assert action.reason == "runtime (tmux → process) changed" and action.graceful

    def test_draining_worker_that_is_still_wanted_is_replaced(self) -> None:
        spec = make_spec(1)
        obs = observation([alive("w-1")], [row("w-1", spec, drain_requested=True)])
        (action,) = plan(spec, obs, NOW).actions
        assert action.kind is ActionKind.RESTART and action.graceful

    def test_surplus_remains_are_removed(self) -> None:
        spec = make_spec(1)
        dead = RuntimeInstance("w-2", "tmux", 100, False, exit_status=0)
        obs = observation([alive("w-1"), dead], [row("w-1", spec), row("w-2", spec),
                                                 row("w-3", spec)])
        result = plan(spec, obs, NOW)
        assert [(a.kind, a.target) for a in result.actions] == [
            (ActionKind.REMOVE, "w-3"), (ActionKind.REMOVE, "w-2")]

    def test_window_unknown_to_the_store_is_replaced(self) -> None:
        spec = make_spec(1)
        (action,) = plan(spec, observation([alive("w-1")], []), NOW).actions
        assert action.reason == "running but unknown to the store"

    def test_delete_stops_everything(self) -> None:
        spec = make_spec(3)
        result = plan_delete(spec, healthy(spec, ["w-1", "w-2", "w-3"]), NOW)
        assert [a.target for a in result.actions] == ["w-3", "w-2", "w-1"]
        assert {a.kind for a in result.actions} == {ActionKind.STOP}

    def test_plan_is_deterministic(self) -> None:
        spec = make_spec(4)
        obs = healthy(make_spec(6, command="x"), [f"w-{i}" for i in range(1, 7)])
        assert plan(spec, obs, NOW) == plan(spec, obs, NOW)


# --------------------------------------------------------------------------- convergence


class FakeRuntime:
    """Our own runtime port, faked: a worker drains and exits as soon as it is asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.instances: dict[str, RuntimeInstance] = {}
        self.next_pid = 1000

    def start(self, worker_id: str, argv: Any) -> Started:
        self.next_pid += 1
        self.instances[worker_id] = RuntimeInstance(worker_id, self.name, self.next_pid, True,
                                                    handle=f"@{self.next_pid}")
        return Started(self.next_pid, None)

    def remove(self, worker_id: str, instance: RuntimeInstance | None, grace: float) -> None:
        self.instances.pop(worker_id, None)

    def request_stop(self, instance: RuntimeInstance) -> None:
        self.instances[instance.worker_id] = replace(instance, alive=False, exit_status=0)

    def is_running(self, instance: RuntimeInstance) -> bool:
        current = self.instances.get(instance.worker_id)
        return current is not None and current.alive


WORKER_STATES = st.sampled_from(["absent", "alive", "dead", "gone", "draining"])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, str, str, str]]]:
    desired = {"replicas": draw(st.integers(0, 6)),
               "command": draw(st.sampled_from(["agent-a", "agent-b"])),
               "runtime": draw(st.sampled_from(["tmux", "process"]))}
    workers = []
    for i in range(1, draw(st.integers(0, 8)) + 1):
        workers.append((f"w-{i}", draw(WORKER_STATES),
                        draw(st.sampled_from(["agent-a", "agent-b"])),
                        draw(st.sampled_from(["tmux", "process"]))))
    return desired, workers


def _observe(store: Store, runtimes: dict[str, FakeRuntime]) -> Observation:
    instances = [i for r in runtimes.values() for i in r.instances.values()]
    return Observation("p", NOW, tuple(instances), tuple(store.workers()), store.queue_counts())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_executing_a_plan_converges(world: tuple[dict[str, Any],
                                                 list[tuple[str, str, str, str]]]) -> None:
    desired, workers = world
    spec = make_spec(desired["replicas"], command=desired["command"],
                     runtime=desired["runtime"])
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "store.db")
        spec_id = store.record_applied_spec(source_path=None, source_sha256="", git_commit=None,
                                            document_hash=spec.document_hash,
                                            document=spec.document_json, summary="")
        runtimes = {"tmux": FakeRuntime("tmux"), "process": FakeRuntime("process")}
        for worker_id, state, command, runtime in workers:
            if state == "absent":
                continue
            old = make_spec(1, command=command, runtime=runtime)
            started = runtimes[runtime].start(worker_id, [])
            store.register_worker(worker_id, runtime=runtime, pid=started.pid,
                                  pid_create_time=None, spec_id=spec_id,
                                  template_hash=old.template_hash(),
                                  template_digests=old.template_digests(), restarted=False)
            if state == "dead":
                inst = runtimes[runtime].instances[worker_id]
                runtimes[runtime].instances[worker_id] = replace(inst, alive=False,
                                                                 exit_status=1)
            elif state == "gone":
                runtimes[runtime].instances.pop(worker_id)
            elif state == "draining":  # a real worker sees the flag and exits after its task
                store.request_drain(worker_id, "test")
                runtimes[runtime].request_stop(runtimes[runtime].instances[worker_id])
        paths = PoolPaths(Path(tmp), "p")
        executor = Executor(spec, spec_id, paths, store, runtimes=runtimes)  # type: ignore[arg-type]
        # drains are asynchronous (a drained worker is replaced on the next pass) and
        # restarts wait for their backoff: each pass is two minutes after the last
        clock = iter(time.time() + 120 * n for n in range(1, 100))
        after = _converge(executor, store, runtimes, clock, lambda o, now: plan(spec, o, now))
        alive_ids = sorted(i.worker_id for i in after.instances if i.alive)
        assert alive_ids == sorted(f"w-{n}" for n in range(1, spec.replicas + 1))

        gone = _converge(executor, store, runtimes, clock,
                         lambda o, now: plan_delete(spec, o, now))
        assert not gone.instances
        store.close()


PASSES_TO_CONVERGE = 3  # act, let drained workers exit, replace them


def _converge(executor: Executor, store: Store, runtimes: dict[str, FakeRuntime],
              clock: Iterator[float], make_plan: Any) -> Observation:
    """Passes at ``clock``'s times; between them every live fake worker heartbeats."""
    for _ in range(PASSES_TO_CONVERGE + 1):
        now = next(clock)
        for runtime in runtimes.values():
            for instance in runtime.instances.values():
                if instance.alive:
                    store.heartbeat(instance.worker_id, None, 30.0, now=now)
        observed = _observe(store, runtimes)
        the_plan = make_plan(observed, now)
        if the_plan.empty:
            return observed
        executor.execute(the_plan, observed)
    raise AssertionError(f"not converged after {PASSES_TO_CONVERGE} passes: {the_plan}")


@pytest.mark.usefixtures("no_io")
def test_socket_change_moves_workers_to_the_new_socket() -> None:
    spec = make_spec(1)
    old = replace(alive("w-1"), socket="old-socket")
    (action,) = plan(spec, observation([old], [row("w-1", spec)]), NOW).actions
    assert action.reason == f"tmux.socket (old-socket → {spec.tmux_socket}) changed"
    assert action.graceful


@pytest.mark.usefixtures("no_io")
@pytest.mark.parametrize(("cleanup", "status", "cleaned"), [
    pytest.param("always", None, True, id="unowned"),
    pytest.param("always", "lost", True, id="lost-attempt"),
    pytest.param("always", "succeeded", True, id="finished-always"),
    pytest.param("always", "running", False, id="running"),
    pytest.param("onSuccess", "failed", False, id="failed-kept-on-success-policy"),
    pytest.param("never", "succeeded", False, id="kept-by-never"),
    pytest.param("never", "lost", True, id="lost-even-with-never"),
])
def test_orphaned_worktrees_follow_the_cleanup_policy(cleanup: str, status: str | None,
                                                      cleaned: bool) -> None:
    base = make_spec(0)
    document = {**base.document, "spec": {**base.document["spec"],
                                          "worktrees": {**base.document["spec"]["worktrees"],
                                                        "cleanup": cleanup}}}
    spec = replace(base, worktrees=replace(base.worktrees, cleanup=cleanup), document=document)
    path = "/state/worktrees/task-3-a1"
    obs = replace(observation([], []), worktrees=(path,),
                  attempt_worktrees={} if status is None else {path: status})
    actions = plan(spec, obs, NOW).actions
    assert [(a.kind, a.target) for a in actions] == ([(ActionKind.CLEAN, path)] if cleaned else [])
