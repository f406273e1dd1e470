"""The planner's pueue decisions, pure: one ``pueue status`` (as a ``PueueView``) and the
store's snapshot in, actions out (issue 11).  The end-to-end runs are in
``tests/test_pueue_pool.py``; these pin each rule, including the ones a stand-in run
reaches only by timing (the wrapper that never stops its agent, a slot gone silent).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.actions import (
    KillPueueTask,
    Plan,
    ReleaseWorker,
    RemovePueueTasks,
    RemoveWorker,
    ReplaceWorker,
    RestartPueueTask,
    SetPueueGroup,
    StartPueueDaemon,
    StartWorker,
    StopWorker,
    SubmitTask,
    Wait,
)
from reconciler.model import AttemptRow, DueTask, Observation, WorkerRow
from reconciler.planner import next_wakeup, plan, plan_delete
from reconciler.pueuestatus import PueueGroup, PueueTask, label_for
from reconciler.pueueview import PueueView
from reconciler.report.plan import describe
from reconciler.spec import parse_spec
from reconciler.specmodel import PoolSpec
from tests.test_planner import NOW

GROUP = "agents"


def pueue_spec(replicas: int = 2, supervise: str = "ours", tasks: str = "",
               pueue: str | None = None) -> PoolSpec:
    """``pueue``: the spec's pueue section as written (default: group agents)."""
    section = pueue or f"{{group: {GROUP}, supervise: {supervise}}}"
    text = f"""
apiVersion: reconciler/v1
kind: WorkerPool
metadata: {{name: p}}
spec:
  replicas: {replicas}
  repo: /srv/repo
  runtime: pueue
  pueue: {section}
  worker: {{command: [agent, "{{task.prompt}}"], stopGrace: 5s}}
  tasks: {{timeout: 60s, maxAttempts: 3, retryBackoff: 10s{tasks}}}
"""
    return parse_spec(text, label="t.yaml", base_dir=Path("/srv"))


def slot(worker_id: str, spec: PoolSpec, **overrides: Any) -> WorkerRow:
    base = WorkerRow(id=worker_id, runtime="pueue", tmux_socket=None, pid=None,
                     pid_create_time=None, spec_id=1, template_hash=spec.template_hash(),
                     template_digests=spec.template_digests(), state="idle",
                     current_task=None, started_at=NOW - 600, heartbeat_at=None, restarts=0,
                     drain_requested=False, exited_at=None, exit_code=None, removed=False,
                     health="healthy")
    return replace(base, **overrides)


def ours(pueue_id: int, task_id: int, attempt: int, state: str, *, result: str | None = None,
         started: float | None = None, exit_code: int | None = None) -> PueueTask:
    return PueueTask(pueue_id, GROUP, label_for("p", task_id, attempt), 0,
                     state, result, exit_code, NOW - 900, started,  # type: ignore[arg-type]
                     NOW - 5 if state == "done" else None)


def by_hand(pueue_id: int, state: str, *, result: str | None = None,
            started: float | None = None, ended: float | None = None,
            exit_code: int | None = None) -> PueueTask:
    return PueueTask(pueue_id, GROUP, None, 0, state, result,  # type: ignore[arg-type]
                     exit_code, NOW - 900, started, ended, created_at=NOW - 1000.0)


def view(*tasks: PueueTask, status: str = "running", parallel: int = 2,
         group: bool = True) -> PueueView:
    mine = {}
    copies: dict[tuple[int, int], int] = {}
    foreign = []
    for task in tasks:
        if task.label:
            _, task_id, attempt = task.label.rsplit(":", 2)
            key = (int(task_id), int(attempt))
            mine[key] = task
            copies[key] = copies.get(key, 0) + 1
        else:
            foreign.append(task)
    return PueueView(True, PueueGroup(GROUP, status, parallel) if group else None,  # type: ignore[arg-type]
                     mine, tuple(foreign), "4", copies)


def attempt(task_id: int, number: int, worker_id: str = "w-1", **overrides: Any) -> AttemptRow:
    base = AttemptRow(id=100 + task_id, task_id=task_id, number=number, worker_id=worker_id,
                      status="running", started_at=NOW - 30, ended_at=None, exit_code=None,
                      branch=None, worktree=None, log_path=None, error=None, output_tail=None,
                      lease_expires_at=NOW + 20)
    return replace(base, **overrides)


def snapshot(spec: PoolSpec, pueue: PueueView | None, *, running: tuple[AttemptRow, ...] = (),
             due: tuple[DueTask, ...] = (), paused_until: float = 0.0,
             restarts: dict[tuple[int, float], int] | None = None,
             slots: tuple[WorkerRow, ...] | None = None,
             statuses: dict[int, str] | None = None) -> Observation:
    rows = slots if slots is not None else tuple(
        slot(f"w-{n}", spec, current_task=next((a.task_id for a in running
                                                if a.worker_id == f"w-{n}"), None))
        for n in range(1, spec.replicas + 1))
    return Observation(pool="p", observed_at=NOW, workers=rows, running=running,
                       pueue=pueue, due_tasks=due, paused_until=paused_until,
                       foreign_restarts=restarts or {}, pueue_task_statuses=statuses or {})


def of(plan_: Plan, kind: type) -> list[Any]:
    return [a for a in plan_.actions if isinstance(a, kind)]


# --------------------------------------------------------------------------- daemon, group


def test_pueue_daemon_down_is_started_then_the_group_made_and_nothing_handed_on() -> None:
    spec = pueue_spec()
    down = PueueView(False, None, {}, ())
    result = plan(spec, snapshot(spec, down, due=(DueTask(1, 0, 1),)), NOW)
    assert [type(a) for a in result.actions] == [StartPueueDaemon, SetPueueGroup]
    assert describe(result.actions[0]) == \
        "+ start pueued: not running (`pueue status` does not answer)"
    assert describe(result.actions[1]) == \
        f"+ pueue group {GROUP}: create it if the daemon has none (parallel 2)"


def test_pueue_group_is_created_then_sized_to_replicas() -> None:
    spec = pueue_spec(replicas=4)
    (create,) = of(plan(spec, snapshot(spec, view(group=False)), NOW), SetPueueGroup)
    assert (create.create, create.parallel) == (True, 4)
    assert describe(create) == f"+ pueue group {GROUP}: create it (parallel 4)"
    (resize,) = of(plan(spec, snapshot(spec, view(parallel=8)), NOW), SetPueueGroup)
    assert describe(resize) == f"~ pueue group {GROUP}: parallel 8 -> 4"
    assert (resize.parallel, resize.parallel_was) == (4, 8)
    assert plan(spec, snapshot(spec, view(parallel=4)), NOW).in_sync


def test_pueue_group_is_paused_with_the_pool_and_resumed_after_a_daemon_restart() -> None:
    spec = pueue_spec()
    paused = snapshot(spec, view(), paused_until=NOW + 300, due=(DueTask(1, 0, 1),))
    result = plan(spec, paused, NOW)
    (pause,) = of(result, SetPueueGroup)
    assert pause.running is False and "claiming is paused for 5m" in pause.reason
    assert not of(result, SubmitTask)  # nothing is handed on while the pool is paused
    (resume,) = of(plan(spec, snapshot(spec, view(status="paused")), NOW), SetPueueGroup)
    assert resume.running is True and "daemon that restarts" in resume.reason


# --------------------------------------------------------------------------- handing on


def test_pueue_gets_due_tasks_in_claim_order_up_to_one_waiting_per_slot() -> None:
    spec = pueue_spec(replicas=2)
    due = (DueTask(7, 9, 1), DueTask(3, 0, 2), DueTask(4, 0, 1))
    submitted = of(plan(spec, snapshot(spec, view(), due=due), NOW), SubmitTask)
    assert [(s.task_id, s.attempt, s.priority) for s in submitted] == [(7, 1, 9), (3, 2, 0)]
    # one of ours waits in pueue already: room for one more, and 7 is not handed twice
    held = view(ours(0, 7, 1, "queued"))
    submitted = of(plan(spec, snapshot(spec, held, due=due), NOW), SubmitTask)
    assert [(s.task_id, s.attempt) for s in submitted] == [(3, 2)]


def test_pueue_run_that_ended_before_its_wrapper_took_the_attempt_is_handed_on_again() -> None:
    """run-task refused (claiming was paused when pueue started it): the attempt never
    began, the task is still queued, and pueue's copy is done."""
    spec = pueue_spec()
    finished = view(ours(0, 5, 1, "done", result="failed", exit_code=2))
    (again,) = of(plan(spec, snapshot(spec, finished, due=(DueTask(5, 0, 1),)), NOW),
                  SubmitTask)
    assert (again.task_id, again.attempt) == (5, 1)
    assert "failed with exit 2" in again.reason


def test_pueue_drops_held_attempts_whose_task_ended_meanwhile() -> None:
    """`task cancel` of a task pueue holds queued: it is taken out of pueue, not left to
    start a wrapper that would only find nothing to run."""
    spec = pueue_spec()
    held = view(ours(0, 5, 1, "queued"), ours(1, 6, 1, "queued"), ours(2, 7, 1, "queued"))
    statuses = {5: "cancelled", 6: "queued", 7: "succeeded"}
    (drop,) = of(plan(spec, snapshot(spec, held, statuses=statuses), NOW), RemovePueueTasks)
    assert drop.pueue_ids == (0, 2)


# --------------------------------------------------------------------------- endings


@pytest.mark.parametrize(("result", "signalled", "counted"), [
    ("killed", False, False),  # a daemon that went away, or someone's `pueue kill`
    ("killed", True, True),  # our own kill past the timeout
    ("failed", False, True),  # the wrapper crashed before recording
])
def test_pueue_attempt_whose_task_ended_without_a_result_is_requeued(
        result: str, signalled: bool, counted: bool) -> None:
    spec = pueue_spec()
    running = (attempt(5, 1, stop_signalled_at=NOW - 1 if signalled else None),)
    ended = view(ours(0, 5, 1, "done", result=result, exit_code=1 if result == "failed" else None))
    (release,) = of(plan(spec, snapshot(spec, ended, running=running), NOW), ReleaseWorker)
    assert release.counted is counted and [a.task_id for a in release.attempts] == [5]
    assert "without its result" in release.reason
    assert ("not using up a try" in describe(release)) is not counted


def test_pueue_attempt_still_running_in_pueue_is_left_alone() -> None:
    spec = pueue_spec()
    running = (attempt(5, 1),)
    result = plan(spec, snapshot(spec, view(ours(0, 5, 1, "running", started=NOW - 30)),
                                 running=running), NOW)
    assert not of(result, ReleaseWorker) and not of(result, KillPueueTask)


def test_pueue_task_past_timeout_grace_and_slack_is_killed_once() -> None:
    """The wrapper stops its agent at tasks.timeout; the controller kills the pueue task
    only when the wrapper did not, after stopGrace and 10 s more, and only once."""
    spec = pueue_spec()  # timeout 60s, stopGrace 5s: 75s
    running = (attempt(5, 1),)
    early = view(ours(0, 5, 1, "running", started=NOW - 74))
    assert not of(plan(spec, snapshot(spec, early, running=running), NOW), KillPueueTask)
    late = view(ours(0, 5, 1, "running", started=NOW - 76))
    (kill,) = of(plan(spec, snapshot(spec, late, running=running), NOW), KillPueueTask)
    assert (kill.pueue_id, kill.task_id, kill.attempt_id) == (0, 5, running[0].id)
    assert "the wrapper did not stop it" in kill.reason and "(1m15s:" in kill.reason
    sent = (replace(running[0], stop_signalled_at=NOW - 1),)
    assert not of(plan(spec, snapshot(spec, late, running=sent), NOW), KillPueueTask)
    wake = next_wakeup(spec, snapshot(spec, early, running=running), Plan("p"), NOW)
    assert wake is not None and wake <= NOW + 1.0 + 1e-6


def test_pueue_slot_whose_wrapper_fell_silent_is_released_and_its_task_killed() -> None:
    """Worker health for a pueue slot: the wrapper's heartbeats; silent past deadAfter it
    is dead, its pueue task killed and its task requeued (a try used)."""
    spec = pueue_spec()
    running = (attempt(5, 1, started_at=NOW - 100),)
    rows = (slot("w-1", spec, health="unresponsive", heartbeat_at=NOW - 40, current_task=5),
            slot("w-2", spec))
    silent = snapshot(spec, view(ours(3, 5, 1, "running", started=NOW - 100)), running=running,
                      slots=rows)
    result = plan(spec, silent, NOW)
    assert [(s.worker, s.dest) for s in result.steps] == [("w-1", "dead")]
    (release,) = of(result, ReleaseWorker)
    assert release.counted and [a.task_id for a in release.attempts] == [5]
    (kill,) = of(result, KillPueueTask)
    assert (kill.pueue_id, kill.reason) == (3, "its wrapper stopped heartbeating")


def test_pueue_slots_are_recorded_and_idle_ones_stay_healthy() -> None:
    spec = pueue_spec(replicas=2)
    result = plan(spec, snapshot(spec, view(), slots=()), NOW)
    assert [a.worker for a in of(result, StartWorker)] == ["w-1", "w-2"]
    assert "a slot of pueue group agents" in of(result, StartWorker)[0].reason
    fresh = (slot("w-1", spec, health="recovering"), slot("w-2", spec))
    result = plan(spec, snapshot(spec, view(), slots=fresh), NOW)
    assert [(s.worker, s.dest) for s in result.steps] == [("w-1", "healthy")]


def test_pueue_slot_above_replicas_is_forgotten_once_its_task_is_done() -> None:
    spec = pueue_spec(replicas=1)
    rows = (slot("w-1", spec), slot("w-2", spec, current_task=5))
    busy = snapshot(spec, view(ours(0, 5, 1, "running", started=NOW - 5)),
                    running=(attempt(5, 1, worker_id="w-2"),), slots=rows)
    (wait,) = [a for a in plan(spec, busy, NOW).actions if isinstance(a, Wait)]
    assert isinstance(wait.then, RemoveWorker) and wait.then.worker == "w-2"
    idle = snapshot(spec, view(), slots=(rows[0], replace(rows[1], current_task=None)))
    (forget,) = of(plan(spec, idle, NOW), RemoveWorker)
    assert forget.worker == "w-2" and not forget.attempts


# --------------------------------------------------------------------------- by hand


def test_pueue_tasks_added_by_hand_are_ignored_unless_supervise_is_all() -> None:
    spec = pueue_spec(supervise="ours")
    stuck = view(by_hand(9, "running", started=NOW - 3600),
                 by_hand(10, "done", result="failed", exit_code=1, ended=NOW - 60))
    result = plan(spec, snapshot(spec, stuck), NOW)
    assert not of(result, KillPueueTask) and not of(result, RestartPueueTask)


def test_pueue_tasks_added_by_hand_get_the_timeout_and_retries_under_supervise_all() -> None:
    spec = pueue_spec(supervise="all")
    tasks = view(by_hand(9, "running", started=NOW - 66),
                 by_hand(10, "done", result="failed", exit_code=1, ended=NOW - 60),
                 by_hand(11, "done", result="killed", ended=NOW - 5),
                 by_hand(12, "done", result="success", ended=NOW - 60))
    restarts = {(10, NOW - 1000.0): 1, (11, NOW - 1000.0): 0}
    result = plan(spec, snapshot(spec, tasks, restarts=restarts), NOW)
    (kill,) = of(result, KillPueueTask)  # past 60s + 5s, no slack: nothing wraps it
    assert (kill.pueue_id, kill.task_id) == (9, None) and "added by hand" in kill.reason
    (restart,) = of(result, RestartPueueTask)  # 10: second restart, 20s backoff over
    assert restart.pueue_id == 10 and "retry 2 of 2" in restart.reason
    (later,) = [a for a in result.actions if isinstance(a, Wait)]  # 11: killed 5s ago
    assert isinstance(later.then, RestartPueueTask) and later.then.pueue_id == 11
    assert later.until == NOW + 5 and "retryBackoff" in later.why
    # out of tries: maxAttempts 3 means two restarts at most
    done = {(10, NOW - 1000.0): 2, (11, NOW - 1000.0): 2}
    assert not [a for a in plan(spec, snapshot(spec, tasks, restarts=done), NOW).actions
                if isinstance(a, RestartPueueTask | Wait)]


def test_pueue_retry_policy_of_hand_added_tasks_follows_retry_on_and_exit_codes() -> None:
    spec = pueue_spec(supervise="all", tasks=", retryOn: [failed], noRetryExitCodes: [4]")
    tasks = view(by_hand(10, "done", result="failed", exit_code=4, ended=NOW - 600),
                 by_hand(11, "done", result="killed", ended=NOW - 600),
                 by_hand(12, "done", result="failed", exit_code=1, ended=NOW - 600))
    restarted = of(plan(spec, snapshot(spec, tasks), NOW), RestartPueueTask)
    assert [r.pueue_id for r in restarted] == [12]


# --------------------------------------------------------------------------- delete


def test_pueue_delete_removes_waiting_tasks_and_lets_running_ones_finish_within_grace() -> None:
    spec = pueue_spec()
    running = (attempt(5, 1),)
    held = view(ours(0, 5, 1, "running", started=NOW - 30), ours(1, 6, 1, "queued"),
                ours(2, 7, 2, "queued"))
    observed = snapshot(spec, held, running=running)
    result = plan_delete(spec, observed, NOW, since=NOW - 1)
    (remove,) = of(result, RemovePueueTasks)
    assert remove.pueue_ids == (1, 2) and describe(remove).startswith("- remove pueue tasks 1, 2")
    (wait,) = [a for a in result.actions if isinstance(a, Wait)]
    assert isinstance(wait.then, StopWorker) and wait.until == NOW + 4  # stopGrace 5s
    assert [a.worker for a in of(result, RemoveWorker)] == ["w-2"]
    # then (or at once with --force) its pueue task is killed first, the attempt ended after
    for late in (plan_delete(spec, observed, NOW, since=NOW - 6),
                 plan_delete(spec, observed, NOW, force=True, since=NOW)):
        (kill,) = of(late, KillPueueTask)
        assert (kill.pueue_id, kill.attempt_id) == (0, running[0].id)
    killed = snapshot(spec, view(ours(0, 5, 1, "done", result="killed")),
                      running=(replace(running[0], stop_signalled_at=NOW - 1),))
    (stop,) = of(plan_delete(spec, killed, NOW, force=True, since=NOW), StopWorker)
    assert not stop.counted and [a.task_id for a in stop.attempts] == [5]


def test_pueue_changed_template_rerecords_an_idle_slot_only() -> None:
    spec = pueue_spec()
    old = {**spec.template_digests(), "worker.command": "0" * 16}
    rows = (slot("w-1", spec, template_hash="old", template_digests=old),
            slot("w-2", spec, template_hash="old", template_digests=old, current_task=5))
    result = plan(spec, snapshot(spec, view(ours(0, 5, 1, "running", started=NOW - 5)),
                                 running=(attempt(5, 1, worker_id="w-2"),), slots=rows), NOW)
    (roll,) = of(result, ReplaceWorker)
    assert roll.worker == "w-1" and roll.reason == "worker.command changed"
    assert not roll.counted


# --------------------------------------------------------------------------- review of issue 11


def test_pueue_replicas_0_pauses_the_group_never_parallel_0() -> None:
    """pueue reads parallel 0 as no limit: every waiting task would start at once."""
    spec = pueue_spec(replicas=0)
    result = plan(spec, snapshot(spec, view(parallel=2), due=(DueTask(1, 0, 1),)), NOW)
    changes = of(result, SetPueueGroup)
    assert [(c.parallel, c.running) for c in changes] == [(1, None), (None, False)]
    assert changes[1].reason == "running -> paused (replicas is 0)"
    assert not of(result, SubmitTask)


def test_pueue_dead_slot_ends_only_the_attempts_it_had_when_it_died() -> None:
    """pueue starts its next task in the slot at once: that one must run, not be killed
    because the slot's record still says dead."""
    spec = pueue_spec()
    rows = (slot("w-1", spec, health="dead", health_since=NOW - 10, current_task=6),
            slot("w-2", spec))
    fresh = (attempt(6, 1, started_at=NOW - 2),)
    result = plan(spec, snapshot(spec, view(ours(4, 6, 1, "running", started=NOW - 2)),
                                 running=fresh, slots=rows), NOW)
    assert not of(result, KillPueueTask) and not of(result, ReleaseWorker)
    (revive,) = of(result, ReplaceWorker)  # the slot comes back; its new task runs on
    assert revive.worker == "w-1" and revive.counted and not revive.attempts


def test_pueue_slots_never_fail_so_no_task_is_killed_for_a_spent_budget() -> None:
    spec = pueue_spec()
    rows = (slot("w-1", spec, health="unresponsive", heartbeat_at=NOW - 40, current_task=5,
                 started_at=NOW - 100), slot("w-2", spec))
    spent = {"w-1": tuple(NOW - 60 + i for i in range(10))}
    observed = replace(snapshot(spec, view(ours(3, 5, 1, "running", started=NOW - 100)),
                                running=(attempt(5, 1, started_at=NOW - 100),), slots=rows),
                       restart_history=spent)
    assert [(s.worker, s.dest) for s in plan(spec, observed, NOW).steps] == [("w-1", "dead")]


def test_pueue_stashed_copy_is_handed_on_again_and_a_copy_that_never_starts_stops() -> None:
    spec = pueue_spec()
    stashed = view(ours(0, 5, 1, "stashed"))
    (again,) = of(plan(spec, snapshot(spec, stashed, due=(DueTask(5, 0, 1),)), NOW),
                  SubmitTask)
    assert again.task_id == 5
    failing = view(*(ours(i, 5, 1, "done", result="failed", exit_code=1) for i in range(3)))
    observed = snapshot(spec, failing, due=(DueTask(5, 0, 1),), statuses={5: "queued"})
    assert not of(plan(spec, observed, NOW), SubmitTask)
    from reconciler.report.status import pueue_problems
    (problem,) = pueue_problems(observed, spec)
    assert problem.startswith("pueue ran attempt 1 of task 5 3 times and it never started")


def test_pueue_finished_copies_of_ended_tasks_leave_pueue() -> None:
    """Their results are in the store; kept, pueue's list (each task with its whole
    environment) would grow with every task, and be read on every pass."""
    spec = pueue_spec()
    tasks = view(ours(0, 5, 1, "done", result="success"), ours(1, 6, 1, "done",
                 result="failed", exit_code=1), ours(2, 7, 1, "running", started=NOW - 5))
    statuses = {5: "succeeded", 6: "queued", 7: "succeeded"}
    (drop,) = of(plan(spec, snapshot(spec, tasks, statuses=statuses,
                                     running=(attempt(7, 1),)), NOW), RemovePueueTasks)
    assert drop.pueue_ids == (0,)  # 6 will be retried; 7 still runs


def test_pueue_killed_wrapper_uses_a_try_after_twice_max_attempts() -> None:
    spec = pueue_spec()  # maxAttempts 3
    for number, counted in ((5, False), (6, True)):
        running = (attempt(5, number),)
        ended = view(ours(0, 5, number, "done", result="killed"))
        (release,) = of(plan(spec, snapshot(spec, ended, running=running), NOW),
                        ReleaseWorker)
        assert release.counted is counted


def test_pueue_attempt_pueue_no_longer_has_is_ended_once_its_lease_expires() -> None:
    """`pueue clean` took the finished task of a wrapper that died; a slot above replicas
    is never judged dead, so this is what ends it."""
    spec = pueue_spec(replicas=1)
    rows = (slot("w-1", spec), slot("w-2", spec, current_task=5))
    for lease, ended in ((NOW + 5, False), (NOW - 1, True)):
        running = (attempt(5, 1, worker_id="w-2", lease_expires_at=lease),)
        released = of(plan(spec, snapshot(spec, view(), running=running, slots=rows), NOW),
                      ReleaseWorker)
        assert bool(released) is ended


def test_pueue_group_shared_with_another_pool_is_not_resized_back_and_forth() -> None:
    spec = pueue_spec(replicas=2)
    other = PueueTask(9, GROUP, label_for("other", 1, 1), 0, "queued", None, None, None,
                      None, None)
    shared = replace(view(parallel=3), others=("other",))
    assert not of(plan(spec, snapshot(spec, shared), NOW), SetPueueGroup)
    from reconciler.pueuestatus import PueueState
    from reconciler.pueueview import view_of
    seen = view_of(PueueState("4", {9: other}, {GROUP: PueueGroup(GROUP, "running", 3)}),
                   "p", GROUP)
    assert seen.others == ("other",) and not seen.ours and not seen.foreign
    from reconciler.report.status import pueue_problems
    (problem,) = pueue_problems(snapshot(spec, shared), spec)
    assert "also used by pool(s) other" in problem


def test_pueue_delete_while_the_daemon_is_down_starts_it_first() -> None:
    spec = pueue_spec()
    down = PueueView(False, None, {}, ())
    result = plan_delete(spec, snapshot(spec, down), NOW, since=NOW)
    assert isinstance(result.actions[0], StartPueueDaemon)
    assert not result.empty  # delete goes on until what pueue holds is removed


def test_pueue_config_path_may_start_with_a_tilde() -> None:
    spec = pueue_spec(pueue="{config: ~/.config/pueue/pueue.yml}")
    assert spec.pueue is not None and spec.pueue.group == "p"  # the pool's name
    assert spec.pueue.config == Path.home() / ".config/pueue/pueue.yml"


def test_pueue_delete_again_leaves_a_down_daemon_down() -> None:
    """A delete that finished took everything of the pool out of pueue: a second one
    must not start a daemon the operator stopped."""
    spec = pueue_spec()
    down = snapshot(spec, PueueView(False, None, {}, ()), slots=())
    assert plan_delete(spec, down, NOW, since=NOW, emptied=True).empty
    up = snapshot(spec, view(ours(0, 5, 1, "done", result="killed")), slots=())
    (drop,) = of(plan_delete(spec, up, NOW, since=NOW, emptied=True), RemovePueueTasks)
    assert drop.pueue_ids == (0,)  # finished copies of a deleted pool go too


def test_pueue_attempt_is_ended_once_when_its_slot_died_and_pueue_says_done() -> None:
    spec = pueue_spec()
    rows = (slot("w-1", spec, health="dead", health_since=NOW - 1, current_task=5),
            slot("w-2", spec))
    running = (attempt(5, 1, started_at=NOW - 100, lease_expires_at=NOW - 5),)
    ended = view(ours(3, 5, 1, "done", result="failed", exit_code=1))
    releases = of(plan(spec, snapshot(spec, ended, running=running, slots=rows), NOW),
                  ReleaseWorker)
    assert [[a.attempt_id for a in r.attempts] for r in releases] == [[running[0].id]]
