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

import psutil
import pytest

from tests.helpers import processes_mentioning, reconcile, wait_for, write_spec
from tests.test_e2e_pool import (
    apply,
    enqueue,
    set_spec,
    status,
    tasks,
    tmux_windows,
    worktree_paths,
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


def workers(spec: Path) -> dict[str, dict[str, Any]]:
    return {w["id"]: w for w in status(spec)["workers"]}


def events(spec: Path, kind: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(reconcile(
        "events", "-f", str(spec), "-o", "json", "--limit", "100000", check=True).stdout)
    return [e for e in found if kind is None or e["kind"] == kind]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def replaced(spec: Path, worker_id: str, old_pid: int) -> int | None:
    pid = workers(spec).get(worker_id, {}).get("pid")
    return pid if pid and pid != old_pid else None


def test_controller_replaces_a_crashed_worker_and_records_why(host: Path,
                                                               git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=2)
    apply(spec)
    document = status(spec)
    assert document["ok"] and document["controller"]["running"]
    old = workers(spec)["w-2"]["pid"]
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: replaced(spec, "w-2", old), timeout=15, message="w-2 replaced")
    assert new != old
    health = [e["message"] for e in events(spec, "worker.health") if e["worker_id"] == "w-2"]
    assert any("healthy → dead: process gone" in m for m in health), health
    assert reconcile("diff", "-f", str(spec)).returncode == 0
    assert tmux_windows("rt-testpool") == ["w-1", "w-2"]
    reconcile("delete", "-f", str(spec), check=True)
    after = reconcile("status", "-f", str(spec))  # stopped on purpose: not a problem
    assert after.returncode == 0 and "controller: down" in after.stdout


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
    gaps = [b - a for a, b in itertools.pairwise(restarts)]
    assert gaps[1] > gaps[0], f"restart delays did not grow: {gaps}"
    time.sleep(2)  # no spawn after failed
    assert [e for e in events(spec, "worker.restarted") if e["worker_id"] == "w-1"] \
        == [e for e in events(spec, "worker.restarted") if e["worker_id"] == "w-1"][:3]
    assert workers(spec)["w-1"]["pid"] is None
    unhealthy = reconcile("status", "-f", str(spec))
    assert unhealthy.returncode == 3 and "w-1 is failed" in unhealthy.stdout
    reconcile("restart", "w-1", "-f", str(spec), check=True)
    wait_for(lambda: workers(spec)["w-1"]["health"] in ("healthy", "working"), timeout=20,
             message="w-1 back after `reconcile restart`")
    assert reconcile("status", "-f", str(spec)).returncode == 0


def test_hung_worker_goes_unresponsive_then_dead_then_is_replaced(host: Path,
                                                                  git_repo: Path) -> None:
    # runtime: process, because tmux resumes a stopped pane process at once (SIGCONT)
    spec = controlled_spec(host, replicas=1)
    set_spec(spec, runtime="process")
    apply(spec)
    old = workers(spec)["w-1"]["pid"]
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
    reconcile("task", "wait", "-f", str(spec), "--timeout", "60s", check=True)
    assert [t["status"] for t in tasks(spec)] == ["succeeded"] * 6
    apply(spec)
    assert status(spec)["controller"]["running"]
    assert {w: d["pid"] for w, d in workers(spec).items()} == before
    assert tmux_windows("rt-testpool") == ["w-1", "w-2", "w-3"]
    controllers = [p for p in processes_mentioning(str(host / "state"))
                   if "controller" in p.cmdline()]
    assert len(controllers) == 1


def test_poison_task_fails_after_max_attempts_within_the_restart_budget(
        host: Path, git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=2, tasks={"maxAttempts": 2})
    apply(spec)
    poison = reconcile("task", "add", "-f", str(spec), "--title", "poison",
                       "--prompt", "[kill-worker]", check=True).stdout.strip()
    reconcile("task", "wait", poison, "-f", str(spec), "--timeout", "60s", check=True)
    shown = json.loads(reconcile("task", "show", poison, "-f", str(spec), "-o", "json",
                                 check=True).stdout)
    assert shown["status"] == "failed"
    assert [a["status"] for a in shown["attempt_details"]] == ["lost", "lost"]
    wait_for(lambda: all(w["health"] in ("healthy", "working") for w in workers(spec).values())
             and len(workers(spec)) == 2, timeout=20, message="workers healthy again")
    assert status(spec)["ok"]
    fine = reconcile("task", "add", "-f", str(spec), "--title", "fine", "--prompt", "ok",
                     check=True).stdout.strip()
    reconcile("task", "wait", fine, "-f", str(spec), "--timeout", "60s", check=True)
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
    reconcile("task", "wait", "-f", str(spec), "--timeout", "60s", check=True)
    assert [t["status"] for t in tasks(spec)] == ["succeeded"] * 2


def test_graceful_scale_down_keeps_the_short_task_and_requeues_the_long_one(
        host: Path, git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=2, worker={"stopGrace": "10s"})
    apply(spec)
    short = reconcile("task", "add", "-f", str(spec), "--title", "short", "--prompt",
                      "[seconds=3]", check=True).stdout.strip()
    long = reconcile("task", "add", "-f", str(spec), "--title", "long", "--prompt", "[hang]",
                     check=True).stdout.strip()
    wait_for(lambda: all(t["status"] == "running" for t in tasks(spec)), message="both running")
    set_spec(spec, replicas=0)
    apply(spec)
    by_id = {str(t["id"]): t for t in tasks(spec)}
    short_task = json.loads(reconcile("task", "show", short, "-f", str(spec), "-o", "json",
                                      check=True).stdout)
    long_task = json.loads(reconcile("task", "show", long, "-f", str(spec), "-o", "json",
                                     check=True).stdout)
    assert by_id[short]["status"] == "succeeded"
    assert [a["status"] for a in short_task["attempt_details"]] == ["succeeded"]
    assert long_task["status"] == "queued" and long_task["attempts"] == 0
    assert [a["status"] for a in long_task["attempt_details"]] == ["lost"]
    assert status(spec)["workers"] == []


def test_chaos_every_task_succeeds_despite_random_kills(host: Path, git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=4, restartPolicy={"maxRestarts": 100},
                           tasks={"maxAttempts": 10})
    apply(spec)
    count = 100
    enqueue(spec, host, count, prompt="chaos [seconds=0.3]")
    rng = random.Random(7)
    kills = 0
    end = time.monotonic() + 40  # SIGKILL a random worker every 2s for 40s
    while time.monotonic() < end:
        time.sleep(2)
        alive = [w for w in workers(spec).values() if w["pid"]]
        if alive:
            os.kill(rng.choice(alive)["pid"], signal.SIGKILL)
            kills += 1
    reconcile("task", "wait", "-f", str(spec), "--timeout", "180s", check=True)
    rows = tasks(spec)
    assert [t["status"] for t in rows] == ["succeeded"] * count
    attempts = [a for t in rows for a in json.loads(reconcile(
        "task", "show", str(t["id"]), "-f", str(spec), "-o", "json").stdout)["attempt_details"]]
    assert len(attempts) - count <= kills, f"{len(attempts) - count} re-runs for {kills} kills"
    by_task: dict[int, list[dict[str, Any]]] = {}
    for attempt in attempts:
        by_task.setdefault(attempt["task_id"], []).append(attempt)
    for task_attempts in by_task.values():
        assert sum(a["status"] == "succeeded" for a in task_attempts) == 1
        spans = sorted((a["started_at"], a["ended_at"]) for a in task_attempts)
        for (_, end_a), (start_b, _) in itertools.pairwise(spans):
            assert end_a <= start_b, "two live leases on one task"
    reconcile("delete", "-f", str(spec), check=True)
    assert worktree_paths(git_repo) == [str(git_repo)]
    wait_for(lambda: not processes_mentioning(str(host / "state")), timeout=15,
             message="no stray process")


def test_rate_limited_agent_pauses_claiming_without_using_attempts(host: Path,
                                                                   git_repo: Path) -> None:
    spec = controlled_spec(host, replicas=1, tasks={"maxAttempts": 1},
                           worker={"rateLimit": {"exitCodes": [75],
                                                 "resetPattern": r"resets at (\d+)"}})
    apply(spec)
    resets = int(time.time()) + 8
    limited = reconcile("task", "add", "-f", str(spec), "--title", "limited", "--priority", "5",
                        "--prompt", f"[rate-limit-until={resets}]", check=True).stdout.strip()
    other = reconcile("task", "add", "-f", str(spec), "--title", "other", "--prompt", "ok",
                      check=True).stdout.strip()
    wait_for(lambda: status(spec)["claiming_paused_until"], message="claiming to pause")
    assert status(spec)["claiming_paused_until"] == resets
    assert {t["title"]: t["status"] for t in tasks(spec)} == {"limited": "queued",
                                                             "other": "queued"}
    assert "claiming paused until" in reconcile("status", "-f", str(spec)).stdout
    reconcile("task", "wait", limited, other, "-f", str(spec), "--timeout", "60s", check=True)
    shown = json.loads(reconcile("task", "show", limited, "-f", str(spec), "-o", "json",
                                 check=True).stdout)
    assert shown["status"] == "succeeded" and shown["attempts"] == 1  # maxAttempts 1 sufficed
    assert [a["status"] for a in shown["attempt_details"]] == ["rate_limited", "succeeded"]
    assert min(a["started_at"] for a in shown["attempt_details"][1:]) >= resets


def test_diff_shows_the_health_transitions_a_pass_would_record(host: Path,
                                                              git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)  # no controller: nobody records them but apply
    apply(spec)
    os.kill(workers(spec)["w-1"]["pid"], signal.SIGKILL)
    wait_for(lambda: not workers(spec)["w-1"]["pid"], message="w-1 to die")
    plan = json.loads(reconcile("diff", "-f", str(spec), "-o", "json").stdout)
    assert plan["transitions"][0]["from"] == "healthy"
    assert plan["transitions"][0]["to"] == "dead"
    text = reconcile("diff", "-f", str(spec)).stdout
    assert "Health transitions this pass records:" in text and "w-1: healthy → dead" in text
