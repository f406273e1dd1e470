"""End to end with the controller on: crashes, hangs, crash loops, poison tasks, chaos.

Each test breaks a real pool (SIGKILL, SIGSTOP, tmux kill-server, a task that
kills its worker) and asserts what an operator would check in the morning:
every task succeeded or failed with a reason, workers back or ``failed`` within
budget, no duplicate workers, no stray process, no orphan worktree.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.lock import is_locked, pool_lock
from reconciler.model import AttemptRow
from reconciler.paths import pool_paths
from reconciler.runtimes import spawn
from reconciler.store.sqlite import Store
from tests.e2e import (
    add_task,
    apply,
    delete,
    diff,
    enqueue,
    events,
    kill_worker,
    pool_dir,
    replaced,
    set_spec,
    show_task,
    state_dir,
    status,
    tasks,
    tmux_windows,
    wait_healthy,
    wait_tasks,
    worker_pid,
    workers,
    worktree_paths,
)
from tests.helpers import (
    gone,
    one_error_line,
    processes_mentioning,
    reconcile,
    reconcile_background,
    wait_for,
    write_spec,
)

pytestmark = pytest.mark.e2e


def controlled_spec(host: Path, replicas: int = 2, **extra: Any) -> Path:
    sections: dict[str, Any] = {
        "controller": {"enabled": True, "interval": "300ms"},
        "restartPolicy": {"backoff": "300ms", "maxRestarts": 5, "window": "10m"},
        "health": {"heartbeatInterval": "200ms", "unresponsiveAfter": "3s", "deadAfter": "8s"},
    }
    for key, value in extra.items():
        sections[key] = {**sections.get(key, {}), **value}
    return write_spec(host, replicas=replicas, extra=sections)


def test_controller_replaces_a_crashed_worker_and_records_why(host: Path,
                                                               git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=2)
    apply(spec)
    document = status(spec)
    assert document["ok"] and document["controller"]["running"]
    old = worker_pid(spec, "w-2")
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: replaced(spec, "w-2", old), timeout=15, message="w-2 replaced")
    assert new != old
    health = [e["message"] for e in events(spec, "worker.health") if e["worker_id"] == "w-2"]
    assert any("healthy → dead: process gone" in m for m in health), health
    assert diff(spec).returncode == 0
    assert tmux_windows("rt-testpool") == ["w-1", "w-2"]
    delete(spec)
    after = reconcile("status", "-f", str(spec))  # stopped on purpose: not a problem
    assert after.returncode == 0
    assert "controller: stopped (the pool was deleted)" in after.stdout


def test_crash_loop_backs_off_then_fails_and_restart_revives(host: Path,
                                                             git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=1, restartPolicy={"maxRestarts": 3, "backoff": "1s"})
    apply(spec)
    deadline = time.monotonic() + 60
    while workers(spec)["w-1"]["health"] != "failed":
        pid = workers(spec)["w-1"]["pid"]
        if pid:
            os.kill(pid, signal.SIGKILL)
        assert time.monotonic() < deadline, "w-1 never went to failed"
        time.sleep(0.1)
    restarts = [e["at"] for e in events(spec, "worker.restarted") if e["worker_id"] == "w-1"]
    assert len(restarts) == 3
    deaths = [e["at"] for e in events(spec, "worker.health")
              if e["worker_id"] == "w-1" and e["fields"]["to"] == "dead"]
    # each restart's wait, counted from the death before it: none for the first crash,
    # then backoff (1s) and twice that, each jittered by ±25%
    waits = [at - max(d for d in deaths if d <= at) for at in restarts]
    assert waits[0] < 0.5 and 0.7 <= waits[1] < waits[2], f"restart waits: {waits}"
    time.sleep(2)  # no spawn after failed
    assert [e for e in events(spec, "worker.restarted") if e["worker_id"] == "w-1"] \
        == [e for e in events(spec, "worker.restarted") if e["worker_id"] == "w-1"][:3]
    assert workers(spec)["w-1"]["pid"] is None
    unhealthy = reconcile("status", "-f", str(spec))
    assert unhealthy.returncode == 3 and "w-1 is failed" in unhealthy.stdout
    reconcile("restart", "w-1", "-f", str(spec), check=True)
    wait_healthy(spec, replicas=1)  # back after `reconcile restart`
    assert reconcile("status", "-f", str(spec)).returncode == 0


def test_hung_worker_goes_unresponsive_then_dead_then_is_replaced(host: Path,
                                                                  git_repo: Path) -> None:
    # runtime: process, because tmux resumes a stopped pane process at once (SIGCONT)
    spec = controlled_spec(host, replicas=1)
    set_spec(spec, runtime="process")
    apply(spec)
    old = worker_pid(spec, "w-1")
    os.kill(old, signal.SIGSTOP)
    try:
        wait_for(lambda: replaced(spec, "w-1", old), timeout=30, message="hung w-1 replaced")
    finally:
        if not gone(old):
            os.kill(old, signal.SIGCONT)
    path = [e["message"].split(":")[0] for e in events(spec, "worker.health")
            if e["worker_id"] == "w-1"]
    assert "healthy → unresponsive" in path and "unresponsive → dead" in path, path
    wait_for(lambda: gone(old), timeout=10, message="the hung process to be killed")


def test_controller_crash_adopts_workers_without_duplicates(host: Path, git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=3)
    apply(spec)
    before = {w: d["pid"] for w, d in workers(spec).items()}
    controller_pid = status(spec)["controller"]["pid"]
    os.kill(controller_pid, signal.SIGKILL)
    wait_for(lambda: not status(spec)["controller"]["running"], message="controller down")
    down = reconcile("status", "-f", str(spec))
    assert down.returncode == 3 and "the controller is down" in down.stdout
    enqueue(spec, host, 6)  # workers keep working while the controller is down
    wait_tasks(spec)
    assert [t["status"] for t in tasks(spec)] == ["succeeded"] * 6
    apply(spec)
    assert status(spec)["controller"]["running"]
    assert {w: d["pid"] for w, d in workers(spec).items()} == before
    assert tmux_windows("rt-testpool") == ["w-1", "w-2", "w-3"]
    controllers = [p for p in processes_mentioning(str(state_dir(host)))  # not its reaper
                   if "controller" in p.cmdline() and spawn.__file__ not in p.cmdline()]
    assert len(controllers) == 1


def test_poison_task_fails_after_max_attempts_within_the_restart_budget(
        host: Path, git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=2, tasks={"maxAttempts": 2})
    apply(spec)
    poison = add_task(spec, "[kill-worker]", title="poison")
    wait_tasks(spec, poison)
    shown = show_task(spec, poison)
    assert shown["status"] == "failed"
    assert [a["status"] for a in shown["attempt_details"]] == ["lost", "lost"]
    wait_healthy(spec, replicas=2)
    assert status(spec)["ok"]
    fine = add_task(spec, "ok", title="fine")
    wait_tasks(spec, fine)
    assert [t["status"] for t in tasks(spec)] == ["failed", "succeeded"]
    agents = [p for p in processes_mentioning("[kill-worker]")]
    assert not agents or all(gone(p.pid) for p in agents)


def test_killed_tmux_server_is_restored_by_the_controller(host: Path, git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=2)
    apply(spec)
    subprocess.run(["tmux", "-L", "rt-testpool", "kill-server"], check=True)
    wait_for(lambda: tmux_windows("rt-testpool") == ["w-1", "w-2"]
             and all(w["pid"] for w in workers(spec).values()), timeout=20,
             message="the pool back in a new tmux server")
    enqueue(spec, host, 2)
    wait_tasks(spec)
    assert [t["status"] for t in tasks(spec)] == ["succeeded"] * 2


def test_graceful_scale_down_keeps_the_short_task_and_requeues_the_long_one(
        host: Path, git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=2, worker={"stopGrace": "10s"})
    apply(spec)
    short = add_task(spec, "[seconds=5]", title="short")  # long enough to be seen running
    long = add_task(spec, "[hang]", title="long")
    wait_for(lambda: all(t["status"] == "running" for t in tasks(spec)), message="both running")
    set_spec(spec, replicas=0)
    apply(spec)
    by_id = {str(t["id"]): t for t in tasks(spec)}
    short_task = show_task(spec, short)
    long_task = show_task(spec, long)
    assert by_id[short]["status"] == "succeeded"
    assert [a["status"] for a in short_task["attempt_details"]] == ["succeeded"]
    assert long_task["status"] == "queued" and long_task["attempts"] == 0
    assert [a["status"] for a in long_task["attempt_details"]] == ["lost"]
    assert status(spec)["workers"] == []


def test_chaos_every_task_succeeds_despite_random_kills(host: Path, git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=4, restartPolicy={"maxRestarts": 100},
                           tasks={"maxAttempts": 10})
    apply(spec)
    # the store-side view (one success per task, leases never overlapping); the agent-side
    # ledger at a larger scale is tests/test_chaos_ledger.py
    count = 50
    enqueue(spec, host, count, prompt="chaos [seconds=0.3]")
    rng = random.Random(7)
    kills = 0
    end = time.monotonic() + 20  # SIGKILL a random worker every 2s for 20s
    while time.monotonic() < end:
        time.sleep(2)
        alive = [w for w in workers(spec).values() if w["pid"]]
        if alive:
            os.kill(rng.choice(alive)["pid"], signal.SIGKILL)
            kills += 1
    wait_tasks(spec, timeout="180s")
    rows = tasks(spec)
    assert [t["status"] for t in rows] == ["succeeded"] * count
    with Store(pool_dir(host) / "store.db") as store:  # one read, not 100 `task show`s
        attempts = store.attempts()
    assert len(attempts) - count <= kills, f"{len(attempts) - count} re-runs for {kills} kills"
    by_task: dict[int, list[AttemptRow]] = {}
    for attempt in attempts:
        by_task.setdefault(attempt.task_id, []).append(attempt)
    for task_attempts in by_task.values():
        assert sum(a.status == "succeeded" for a in task_attempts) == 1
        spans = sorted((a.started_at, a.ended_at or 0.0) for a in task_attempts)
        for (_, end_a), (start_b, _) in itertools.pairwise(spans):
            assert end_a <= start_b, "two live leases on one task"
    delete(spec)
    assert worktree_paths(git_repo) == [str(git_repo)]
    wait_for(lambda: not processes_mentioning(str(state_dir(host))), timeout=15,
             message="no stray process")


def test_rate_limited_agent_pauses_claiming_without_using_attempts(host: Path,
                                                                   git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=1, tasks={"maxAttempts": 1},
                           worker={"rateLimit": {"exitCodes": [75],
                                                 "resetPattern": r"resets at (\d+)"}})
    apply(spec)
    resets = int(time.time()) + 12  # room for the CLI calls below on a loaded machine
    limited = add_task(spec, f"[rate-limit-until={resets}]", title="limited", priority=5)
    other = add_task(spec, "ok", title="other")
    wait_for(lambda: status(spec)["claiming_paused_until"], message="claiming to pause")
    assert status(spec)["claiming_paused_until"] == resets
    assert {t["title"]: t["status"] for t in tasks(spec)} == {"limited": "queued",
                                                             "other": "queued"}
    assert "claiming paused until" in reconcile("status", "-f", str(spec)).stdout
    wait_tasks(spec, limited, other)
    shown = show_task(spec, limited)
    assert shown["status"] == "succeeded" and shown["attempts"] == 1  # maxAttempts 1 sufficed
    assert [a["status"] for a in shown["attempt_details"]] == ["rate_limited", "succeeded"]
    assert min(a["started_at"] for a in shown["attempt_details"][1:]) >= resets


def test_diff_shows_the_health_transitions_a_pass_would_record(host: Path,
                                                              git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)  # no controller: nobody records them but apply
    apply(spec)
    kill_worker(spec, "w-1")
    plan = json.loads(diff(spec, "-o", "json").stdout)
    assert plan["transitions"][0]["from"] == "healthy"
    assert plan["transitions"][0]["to"] == "dead"
    text = diff(spec).stdout
    assert "Health transitions this pass records:" in text and "w-1: healthy → dead" in text


def test_a_foreground_controller_takes_over_from_the_one_apply_started(
        host: Path, git_repo: Path) -> None:
    """Issue 12: under systemd, `reconcile controller` must end up the pool's controller,
    not exit because apply's detached one holds the lock; a second foreground one is
    refused (two would take the pool from each other as systemd restarts them)."""
    spec = controlled_spec(host, replicas=1)
    apply(spec)
    detached = status(spec)["controller"]["pid"]
    assert (f"controller: running (pid {detached}, started by apply)"
            in reconcile("status", "-f", str(spec)).stdout)
    foreground = reconcile_background("controller", "-f", str(spec))
    try:
        wait_for(lambda: status(spec)["controller"]["pid"] == foreground.pid, timeout=30,
                 message="the foreground controller to take over")
        wait_for(lambda: gone(detached), timeout=10, message="the detached one to exit")
        second = reconcile("controller", "--pool", "testpool", timeout=30)
        assert (f"another foreground controller runs for pool testpool (pid {foreground.pid})"
                in one_error_line(second))
        apply(spec)  # sees the foreground one and starts no other
        assert status(spec)["controller"]["pid"] == foreground.pid
        assert (f"controller: running (pid {foreground.pid}, in the foreground)"
                in reconcile("status", "-f", str(spec)).stdout)
    finally:
        foreground.terminate()
        foreground.wait(timeout=30)
    delete(spec)


def test_a_foreground_controller_still_applying_is_not_taken_for_apply_s(
        host: Path, git_repo: Path) -> None:
    """The mark of apply's controller was written only after `controller -f` applied, so
    while that apply waited, a second foreground controller read the mark a killed
    detached one left, and stopped the first (found by an independent review)."""
    spec = controlled_spec(host, replicas=0)
    apply(spec)
    detached = status(spec)["controller"]["pid"]
    os.kill(detached, signal.SIGKILL)  # its "started by apply" mark stays behind
    wait_for(lambda: gone(detached), timeout=10, message="the detached controller gone")
    paths = pool_paths(state_dir(host), "testpool")

    def registered() -> bool:
        with Store(paths.store) as store:
            found = store.controller()
        return is_locked(paths.controller_lock) and found is not None \
            and found.pid == first.pid
    try:
        with pool_lock(paths.lock, what="test: hold apply", timeout=5):
            first = reconcile_background("controller", "-f", str(spec))
            wait_for(registered, timeout=20, message="the first foreground controller to "
                     "take the lock and register (its apply then waits for ours)")
            second = reconcile("controller", "--pool", "testpool", timeout=30)
            assert "another foreground controller runs" in one_error_line(second)
            assert first.poll() is None  # not stopped by the second
    finally:  # the pool lock let go first: its apply goes on, then it stops
        first.terminate()
        first.wait(timeout=30)
    delete(spec)
