"""Executing plans converges, for every kind of action; and every action type is complete.

The property test generates whole worlds (dead, gone, draining, hung, failed,
unknown and busy workers, stranded attempts, orphaned and rate-limited
worktrees, every controller state), runs the real planner and executor
against fakes of our own ports (runtimes, processes, worktrees; a fake host
decides which pids live) and a real SQLite store, then re-observes.  Passes
must reach a plan of waits only, and, once the waits are over, an empty plan.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.actions import (
    ACTION_TYPES,
    CONTROLLER,
    Action,
    AttemptRef,
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
)
from reconciler.executor import Executor, Ports
from reconciler.model import Observation, ProcessRef, RuntimeInstance
from reconciler.paths import PoolPaths
from reconciler.planner import plan, plan_delete, plan_restart
from reconciler.pueuestatus import PueueState
from reconciler.report import render
from reconciler.report.plan import action_document, describe, symbol
from reconciler.report.status import worker_statuses
from reconciler.runtimes.base import Started
from reconciler.specmodel import PoolSpec
from reconciler.store.sqlite import Store
from tests.test_planner import make_spec

T0 = 1_800_000_000.0
LEASE = 30.0


@dataclass
class FakeHost:
    """Which fake pids are alive, and which of them are hung (alive, never heartbeating)."""

    alive: dict[int, bool] = field(default_factory=dict)
    hung: set[int] = field(default_factory=set)
    stubborn: set[int] = field(default_factory=set)  # agents that ignore SIGTERM
    next_pid: int = 1000

    def spawn(self, *, hung: bool = False) -> int:
        self.next_pid += 1
        self.alive[self.next_pid] = True
        if hung:
            self.hung.add(self.next_pid)
        return self.next_pid

    def is_alive(self, pid: int | None) -> bool:
        return pid is not None and self.alive.get(pid, False)


class FakeRuntime:
    """Our runtime port, faked: a worker drains and exits as soon as it is asked."""

    def __init__(self, name: str, host: FakeHost) -> None:
        self.name = name
        self.host = host
        self.windows: dict[str, int] = {}  # worker id -> pid (tmux keeps dead panes)

    def start(self, worker_id: str, argv: Sequence[str]) -> Started:
        pid = self.host.spawn()
        self.windows[worker_id] = pid
        return Started(pid, None)

    def remove(self, worker_id: str, instance: RuntimeInstance | None, grace: float) -> None:
        pid = self.windows.pop(worker_id, None)
        for gone in (pid, instance.pid if instance else None):
            if gone is not None:
                self.host.alive[gone] = False

    def request_stop(self, instance: RuntimeInstance) -> None:
        if instance.pid is not None:
            self.host.alive[instance.pid] = False

    def is_running(self, instance: RuntimeInstance) -> bool:
        return self.host.is_alive(instance.pid)


class FakeProcesses:
    def __init__(self, host: FakeHost) -> None:
        self.host = host

    def kill(self, process: ProcessRef, grace: float) -> None:
        self.host.alive[process.pid] = False

    def request_stop(self, process: ProcessRef) -> None:
        self.host.alive[process.pid] = False

    def signal(self, processes: tuple[ProcessRef, ...], signal: str) -> None:
        for process in processes:  # fake agents obey SIGTERM at once, unless stubborn
            if signal == "SIGKILL" or process.pid not in self.host.stubborn:
                self.host.alive[process.pid] = False

    def wait_gone(self, processes: tuple[ProcessRef, ...], timeout: float) -> None:
        return None

    def alive(self, processes: tuple[ProcessRef, ...]) -> tuple[ProcessRef, ...]:
        return tuple(p for p in processes if self.host.is_alive(p.pid))

    def of_attempts(self, attempt_ids: tuple[int, ...]) -> tuple[ProcessRef, ...]:
        return ()  # fake agents fork nothing


@dataclass
class FakePueue:
    """Our pueue port, recording what it was asked (the stand-in pueue and the real one
    are driven in tests/test_pueue_*.py)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.next_id = 0

    def start_daemon(self) -> None:
        self.calls.append(("start_daemon",))

    def add_group(self, group: str, parallel: int) -> None:
        self.calls.append(("add_group", group, parallel))

    def set_parallel(self, group: str, parallel: int) -> None:
        self.calls.append(("set_parallel", group, parallel))

    def pause_group(self, group: str) -> None:
        self.calls.append(("pause_group", group))

    def start_group(self, group: str) -> None:
        self.calls.append(("start_group", group))

    def add_attempt(self, *, group: str, pool: str, task_id: int, attempt: int,
                    priority: int, state_dir: Path, cwd: Path) -> int:
        self.calls.append(("add_attempt", group, task_id, attempt, priority))
        self.next_id += 1
        return self.next_id

    def kill(self, ids: Sequence[int]) -> None:
        self.calls.append(("kill", *ids))

    def remove(self, ids: Sequence[int]) -> None:
        self.calls.append(("remove", *ids))

    def status(self) -> PueueState:
        return PueueState("4", {}, {})

    def restart_in_place(self, ids: Sequence[int]) -> None:
        self.calls.append(("restart_in_place", *ids))


class FakeClock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeWorktrees:
    paths: set[str] = field(default_factory=set)

    def clean(self, path: Path) -> None:
        self.paths.discard(str(path))


@dataclass
class World:
    spec: PoolSpec
    store: Store
    host: FakeHost
    runtimes: dict[str, FakeRuntime]
    worktrees: FakeWorktrees
    ports: Ports
    executor: Executor
    clock: FakeClock
    agents: dict[int, int] = field(default_factory=dict)  # agent pid -> its attempt id
    tasks: int = 0  # tasks made so far: each new one outranks the others, so it is claimed

    def new_task(self, title: str, now: float) -> int:
        self.tasks += 1
        (task_id,) = self.store.add_tasks([(title, "p", self.tasks)], now=now)
        return task_id

    def observe(self, now: float) -> Observation:
        rows = self.store.workers()
        instances = [RuntimeInstance(w, "tmux", pid, self.host.is_alive(pid),
                                     exit_status=None if self.host.is_alive(pid) else 1,
                                     handle=f"@{pid}")
                     for w, pid in self.runtimes["tmux"].windows.items()]
        instances += [RuntimeInstance(r.id, "process", r.pid, self.host.is_alive(r.pid))
                      for r in rows if r.runtime == "process" and r.pid is not None]
        paths = tuple(sorted(self.worktrees.paths))
        record = self.store.controller()
        controller_alive = bool(record and not record.stop_requested
                                and self.host.is_alive(record.pid)
                                and record.pid not in self.host.hung)
        marked = {attempt: (ProcessRef(pid, None),) for pid, attempt in self.agents.items()
                  if self.host.is_alive(pid)}
        return Observation("p", now, tuple(instances), tuple(rows), self.store.queue_counts(),
                           paths, self.store.attempt_worktrees(paths),
                           tuple(self.store.running_attempts()), self.store.restart_history(),
                           controller_alive, record, attempt_processes=marked)

    def heartbeat(self, now: float) -> None:
        """Every live worker that is not hung heartbeats between passes."""
        for row in self.store.workers():
            if self.host.is_alive(row.pid) and row.pid not in self.host.hung:
                self.store.heartbeat(row.id, None, LEASE, now=now)


WORKER_STATES = ("absent", "alive", "dead", "gone", "draining", "hung", "failed", "unknown")
CONTROLLER_STATES = ("absent", "alive", "down", "hung")
WORKTREE_STATUSES = (None, "lost", "succeeded", "failed", "rate_limited", "cancelled")


@dataclass(frozen=True)
class WorkerSetup:
    worker_id: str
    state: str
    command: str
    runtime: str
    busy: bool


@dataclass(frozen=True)
class WorldSetup:
    replicas: int
    command: str
    runtime: str
    cleanup: str
    controller_enabled: bool
    controller: str
    workers: tuple[WorkerSetup, ...]
    stranded: int
    worktrees: tuple[str | None, ...]
    restart: bool = False  # an operator's `reconcile restart w-1` once converged
    force_delete: bool = False


@st.composite
def worlds(draw: st.DrawFn) -> WorldSetup:
    commands, runtimes = st.sampled_from(["agent-a", "agent-b"]), st.sampled_from(
        ["tmux", "process"])
    workers = tuple(
        WorkerSetup(f"w-{i}", draw(st.sampled_from(WORKER_STATES)), draw(commands),
                    draw(runtimes), draw(st.booleans()))
        for i in range(1, draw(st.integers(0, 7)) + 1))
    return WorldSetup(
        replicas=draw(st.integers(0, 5)), command=draw(commands), runtime=draw(runtimes),
        cleanup=draw(st.sampled_from(["always", "onSuccess", "never"])),
        controller_enabled=draw(st.booleans()), controller=draw(st.sampled_from(
            CONTROLLER_STATES)), workers=workers, stranded=draw(st.integers(0, 2)),
        worktrees=tuple(draw(st.lists(st.sampled_from(WORKTREE_STATUSES), max_size=3))),
        restart=draw(st.booleans()), force_delete=draw(st.booleans()))


def _with_controller(spec: PoolSpec, enabled: bool) -> PoolSpec:
    document = json.loads(spec.document_json)
    document["spec"]["controller"]["enabled"] = enabled
    return replace(spec, controller_enabled=enabled, document=document)


@pytest.fixture
def tmp_store() -> Iterator[tuple[Path, Store]]:
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "store.db") as store:
        yield Path(tmp), store


def build(setup: WorldSetup, directory: Path, store: Store) -> World:
    spec = _with_controller(make_spec(setup.replicas, command=setup.command,
                                      runtime=setup.runtime, cleanup=setup.cleanup),
                            setup.controller_enabled)
    generation = store.record_applied_spec(
        source_path=None, source_sha256="", git_commit=None, document_hash=spec.document_hash,
        document=spec.document_json, summary="")
    host = FakeHost()
    runtimes = {"tmux": FakeRuntime("tmux", host), "process": FakeRuntime("process", host)}
    worktrees = FakeWorktrees()
    clock = FakeClock()
    ports = Ports(store=store, runtimes=runtimes, processes=FakeProcesses(host),
                  worktrees=worktrees, clock=clock, pueue=FakePueue())
    world = World(spec, store, host, runtimes, worktrees, ports,
                  Executor(spec, generation, PoolPaths(directory, "p"), ports), clock)
    for worker in setup.workers:
        _add_worker(world, worker, generation)
    for n in range(setup.stranded):  # a worker that vanished without a trace
        _add_attempt(world, f"w-{90 + n}", now=T0 - 3600)
    for n, status in enumerate(setup.worktrees):
        _add_worktree(world, n, status)
    _add_controller(world, setup.controller)
    return world


def _add_worker(world: World, worker: WorkerSetup, generation: int) -> None:
    if worker.state == "absent":
        return
    runtime = world.runtimes[worker.runtime]
    started = runtime.start(worker.worker_id, [])
    if worker.state == "unknown":  # a window of ours the store has no record of
        return
    old = make_spec(1, command=worker.command, runtime=worker.runtime)
    world.store.register_worker(worker.worker_id, runtime=worker.runtime, pid=started.pid,
                                pid_create_time=None, spec_id=generation,
                                template_hash=old.template_hash(),
                                template_digests=old.template_digests(), restarted=False,
                                now=T0 - 600)
    world.store.heartbeat(worker.worker_id, None, LEASE, now=T0 - 1)
    if worker.busy:
        _add_attempt(world, worker.worker_id, now=T0 - 5)
    pid = started.pid
    if worker.state in ("dead", "failed"):
        world.host.alive[pid] = False
    if worker.state == "failed":
        world.store.set_health(worker.worker_id, "dead", "failed", "test", now=T0 - 2)
    elif worker.state == "gone":
        runtime.remove(worker.worker_id, None, 0)
    elif worker.state == "hung":
        world.host.hung.add(pid)
        world.store.heartbeat(worker.worker_id, None, LEASE, now=T0 - 3600)
        with world.store.transaction() as db:  # its last heartbeat long ago
            db.execute("UPDATE workers SET heartbeat_at = ? WHERE id = ?",
                       (T0 - 3600, worker.worker_id))
    elif worker.state == "draining":  # a real worker sees the flag and exits after its task
        world.store.request_drain(worker.worker_id, "test", now=T0 - 1)
        world.host.alive[pid] = False


def _add_attempt(world: World, worker_id: str, *, now: float) -> None:
    task_id = world.new_task(f"task of {worker_id}", now)
    claim = world.store.claim_task(worker_id, LEASE, now=now)
    assert claim is not None and claim.task.id == task_id
    path = f"/wt/task-{task_id}-a{claim.attempt_number}"
    world.store.update_attempt(claim, branch=f"b{task_id}", worktree=path, log_path="log")
    agent = world.host.spawn()
    world.store.set_attempt_pid(claim, agent, None)
    world.agents[agent] = claim.attempt_id
    world.worktrees.paths.add(path)


def _add_worktree(world: World, n: int, status: str | None) -> None:
    path = f"/wt/orphan-{n}"
    world.worktrees.paths.add(path)
    if status is None:
        return
    task_id = world.new_task(f"old {n}", T0 - 900)
    claim = world.store.claim_task("w-old", LEASE, now=T0 - 900)
    assert claim is not None and claim.task.id == task_id
    world.store.update_attempt(claim, branch=f"old{n}", worktree=path, log_path="log")
    if status == "lost":
        world.store.requeue_attempts_of("w-old", "test", consume=True, now=T0 - 800)
    else:
        world.store.finish_attempt(claim, status, now=T0 - 800, resume_at=T0 - 950)


def _add_controller(world: World, state: str) -> None:
    if state == "absent":
        return
    pid = world.host.spawn(hung=state == "hung")
    world.store.record_controller_launch(pid, None, now=T0 - 60)
    if state == "down":
        world.host.alive[pid] = False


def converge(world: World, make_plan: Any, *, passes: int = 8) -> tuple[Plan, Observation]:
    """Passes until the plan is empty; when only waits are left, time moves past them."""
    now = world.clock.now
    for _ in range(passes):
        world.heartbeat(now)
        observed = world.observe(now)
        the_plan = make_plan(observed, now)
        if the_plan.empty:
            return the_plan, observed
        world.clock.now = now
        report = world.executor.execute(the_plan)
        assert not report.problems, report.problems
        waits = [a.until for a in the_plan.waiting if a.until is not None]
        now = max([now + 1.0, *(u + 0.01 for u in waits)])
        world.clock.now = now
    raise AssertionError(f"not converged after {passes} passes: {the_plan}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(setup=worlds())
def test_executing_plans_converges_for_every_kind_of_world(setup: WorldSetup) -> None:
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "store.db") as store:
        world = build(setup, Path(tmp), store)
        desired = lambda o, now: plan(world.spec, o, now)  # noqa: E731
        _, after = converge(world, desired)
        _check_converged(world, after)
        if setup.restart and after.worker("w-1") is not None:
            report = world.executor.execute(plan_restart(world.spec, after, "w-1",
                                                         world.clock.now))
            assert not report.problems and world.store.restart_history().get("w-1") is None
            _, again = converge(world, desired)
            _check_converged(world, again)
            revived = again.worker("w-1")
            assert revived is not None and revived.health != "failed"

        _, gone = converge(world, lambda o, now: plan_delete(world.spec, o, now,
                                                             force=setup.force_delete))
        assert not any(i.alive for i in gone.instances)
        assert not gone.running  # every task requeued, none left running


def _check_converged(world: World, after: Observation) -> None:
    """Every wanted worker runs unless it failed; no agent outlived its attempt; the
    controller runs exactly when it is enabled."""
    failed = {r.id for r in after.workers if r.health == "failed"}
    alive_ids = {i.worker_id for i in after.instances if i.alive}
    wanted = {f"w-{n}" for n in range(1, world.spec.replicas + 1)}
    assert alive_ids == wanted - failed
    assert not any(world.host.is_alive(pid) for pid in world.agents
                   if pid not in {a.pid for a in after.running})
    assert after.controller_alive is world.spec.controller_enabled


def _samples() -> dict[type, Action]:
    instance = RuntimeInstance("w-1", "tmux", 1001, True, handle="@1")
    attempts = (AttemptRef(1, 1, ProcessRef(1002, None), "/wt/task-1-a1",
                           (ProcessRef(1002, None),), "SIGTERM"),)
    start = StartWorker("w-1", "not running")
    return {
        StartWorker: start,
        ReplaceWorker: ReplaceWorker("w-1", "hung", instance, attempts, counted=True,
                                     reset_budget="stable", unless_heartbeat_after=T0 - 100),
        DrainWorker: DrainWorker("w-1", "rolled", instance, then="replace"),
        StopWorker: StopWorker("w-1", "scale down", instance, attempts),
        RemoveWorker: RemoveWorker("w-1", "exited", replace(instance, alive=False)),
        ReleaseWorker: ReleaseWorker("w-1", "failed", instance, attempts),
        KillStrays: KillStrays(7, (ProcessRef(1005, None),), "its attempt has ended"),
        ResetBudget: ResetBudget("w-1", "operator"),
        CleanWorktree: CleanWorktree("/wt/orphan", "no attempt owns it"),
        StartController: StartController("down", hung=ProcessRef(1003, None)),
        StopController: StopController("disabled", ProcessRef(1004, None)),
        Wait: Wait(start, "in 1s (restart backoff)", until=T0 + 1),
        StartPueueDaemon: StartPueueDaemon("not running"),
        SetPueueGroup: SetPueueGroup("agents", "parallel 4 -> 8", parallel=8, parallel_was=4),
        SubmitTask: SubmitTask(3, 1, 5, "agents", "queued and due"),
        KillPueueTask: KillPueueTask(7, 3, "running for 11m, past tasks.timeout"),
        RestartPueueTask: RestartPueueTask(9, T0 - 60, "failed, added by hand; retry 1 of 2"),
        RemovePueueTasks: RemovePueueTasks((4, 5), "pool deleted"),
    }


@pytest.mark.parametrize("kind", ACTION_TYPES, ids=[t.__name__ for t in ACTION_TYPES])
def test_every_action_type_renders_and_executes(kind: type, tmp_store: tuple[Path, Store],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    samples = _samples()
    assert set(samples) == set(ACTION_TYPES), "add a sample for every new action type"
    action = samples[kind]
    document = action_document(action)
    line = describe(action)
    if isinstance(action, SetPueueGroup):  # ~ pueue group agents: parallel 4 -> 8
        assert line == f"~ pueue group agents: {action.reason}"
    else:
        assert line.startswith(f"{symbol(action)} {document['action']} ")
    assert document["target"] in line and document["reason"] in line
    if isinstance(action, Wait):
        assert action.why in line and document["waiting"]["until"] == action.until
    assert {"action", "type", "target", "reason", "waiting"} <= set(document)
    json.dumps(document)
    render.render_plan(Plan("p", (action,), at=T0), title="t")
    assert document["target"] in capsys.readouterr().out

    directory, store = tmp_store
    setup = WorldSetup(1, "agent-a", "tmux", "always", True, "absent",
                       (WorkerSetup("w-1", "alive", "agent-a", "tmux", True),), 0, ())
    world = build(setup, directory, store)
    report = world.executor.execute(Plan("p", (action,), at=T0))
    assert not report.problems, report.problems
    target = CONTROLLER if kind in (StartController, StopController) else document["target"]
    assert target in " ".join(report.done + report.skipped) or kind is Wait


def test_a_forced_stop_reads_stopping_then_stopped_never_dead(
        tmp_store: tuple[Path, Store]) -> None:
    """Issue 7 walk-through: while a forced stop waited for an agent that ignores SIGTERM,
    ``status`` showed the worker ``dead`` (its process gone, no drain asked)."""
    directory, store = tmp_store
    setup = WorldSetup(1, "agent-a", "tmux", "always", False, "absent",
                       (WorkerSetup("w-1", "alive", "agent-a", "tmux", True),), 0, ())
    world = build(setup, directory, store)
    world.host.stubborn.add(next(iter(world.agents)))  # it ignores SIGTERM and works on
    world.executor.execute(plan_delete(world.spec, world.observe(T0), T0, force=True))
    after = world.observe(T0 + 1)
    (row,) = after.workers
    (status,) = worker_statuses(after, T0 + 1, world.spec)
    assert row.drain_requested and status.health in ("stopping", "stopped"), status
