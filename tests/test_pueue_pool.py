"""``runtime: pueue`` end to end, over the stand-in ``pueue``/``pueued``: a pueue group
is the pool, and the controller gives it the timeouts, retries, health and worktree
isolation pueue lacks (issue 11).  Every test drives the real CLI and a real controller;
``pytest -k pueue`` selects them with the rest of the pueue tests.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.pueuestatus import parse_label
from tests.e2e import add_task, events, reconcile_json, set_spec, show_task, tasks, wait_tasks
from tests.helpers import git, reconcile, wait_for, write_spec
from tests.test_pueue_client import isolated_pueue
from tests.test_pueue_standin import Pueue

GROUP = "agents"


@pytest.fixture(params=["stand-in", "real pueue"])
def pueue(request: pytest.FixtureRequest, host: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Pueue]:
    """An isolated daemon (not started: the pool starts it) on PATH for every command the
    test runs, the controller and pueue's tasks included: the stand-in, and the real
    pueue where it is installed (skipped with the reason otherwise)."""
    made = isolated_pueue(request.param, host / "pueue")
    monkeypatch.setenv("PATH", made.env["PATH"])
    try:
        yield made
    finally:
        made.stop()


def pueue_spec(host: Path, pueue: Pueue, *, replicas: int = 2, supervise: str = "ours",
               tasks_policy: dict[str, Any] | None = None, **extra: Any) -> Path:
    """A pool of ``replicas`` slots in group ``agents`` of the stand-in daemon, with a
    controller that looks at pueue at least every second (pueue rings no bell when a
    task added by hand ends)."""
    return write_spec(host, replicas=replicas, runtime="pueue", extra={
        "pueue": {"group": GROUP, "config": str(pueue.config), "supervise": supervise},
        "controller": {"enabled": True, "interval": "1s"},
        "tasks": {"retryBackoff": "200ms", **(tasks_policy or {})},
        **extra})


def start_pool(spec: Path) -> None:
    applied = reconcile("apply", "-f", str(spec), "--wait", "--timeout", "60s")
    assert applied.returncode == 0, applied.stdout + applied.stderr


def pueue_status(spec: Path) -> dict[str, Any]:
    section: dict[str, Any] = reconcile_json("status", "-f", str(spec))["pueue"]
    return section


def our_pueue_tasks(pueue: Pueue) -> dict[tuple[int, int], dict[str, Any]]:
    """pueue's tasks by (our task id, attempt), read from their labels."""
    found = {}
    for task in pueue.status()["tasks"].values():
        label = parse_label(task["label"])
        if label is not None:
            found[(label[1], label[2])] = task
    return found


def handed_on(spec: Path) -> list[tuple[int, int]]:
    """(task, attempt) of every attempt the controller handed to pueue, in order."""
    return [(e["task_id"], e["fields"]["attempt"]) for e in events(spec, "pueue.queued")]


def test_pueue_pool_runs_ten_tasks_each_on_its_own_branch(host: Path, git_repo: Path,
                                                          pueue: Pueue) -> None:
    spec = pueue_spec(host, pueue, replicas=5)
    planned = reconcile("diff", "-f", str(spec))
    assert planned.returncode == 2 and "+ start pueued: not running" in planned.stdout
    start_pool(spec)
    group = pueue.status()["groups"][GROUP]
    assert group == {"status": "Running", "parallel_tasks": 5}
    batch = host / "tasks.yaml"  # one import: ten `task add` calls cost seconds
    batch.write_text(yaml.safe_dump([{"title": f"feature {n}", "prompt": f"change {n}",
                                      "priority": n % 3} for n in range(10)]))
    reconcile("task", "import", str(batch), "-f", str(spec), check=True)
    ids = [str(t["id"]) for t in tasks(spec)]
    seen: dict[str, str] = {}

    def commands_seen() -> bool:  # only our identifiers reach pueue's sh -c
        # pueue's state file, cheap to poll: finished tasks leave pueue soon
        seen.update((i, t["command"]) for i, t in pueue.saved()["tasks"].items()
                    if parse_label(t["label"]) is not None)
        return bool(seen)
    wait_for(commands_seen, interval=0.02, message="attempts handed to pueue")
    assert not any("change" in command or "feature" in command for command in seen.values())
    wait_tasks(spec, *ids, timeout="120s")

    for task in tasks(spec):
        assert task["status"] == "succeeded", task
        log = git(git_repo, "log", "--format=%s", f"main..{task['branch']}")
        assert log.strip(), f"no commit on {task['branch']}"
    assert sorted(handed_on(spec)) == sorted((int(i), 1) for i in ids)  # each once
    # their results are in the store: pueue's list does not grow with every task
    wait_for(lambda: not our_pueue_tasks(pueue), message="finished tasks out of pueue")
    workers = {w["worker_id"] for i in ids for w in show_task(spec, i)["attempt_details"]}
    assert workers <= {f"w-{n}" for n in range(1, 6)}
    shown = pueue_status(spec)
    assert shown["daemon_up"] and shown["group_status"] == "running"
    assert shown["parallel"] == 5 and shown["ours"] == {"running": 0, "queued": 0}
    assert reconcile("diff", "-f", str(spec)).returncode == 0
    scraped = reconcile("metrics", "-f", str(spec), check=True).stdout
    assert "reconciler_pueue_up 1.0" in scraped.splitlines()

    set_spec(spec, replicas=3)
    planned = reconcile("diff", "-f", str(spec))
    assert planned.returncode == 2
    assert f"  ~ pueue group {GROUP}: parallel 5 -> 3\n" in planned.stdout
    start_pool(spec)
    assert pueue.status()["groups"][GROUP]["parallel_tasks"] == 3
    assert sorted(w["id"] for w in reconcile_json("status", "-f", str(spec))["workers"]) == \
        ["w-1", "w-2", "w-3"]  # the slots above replicas are forgotten


def test_pueue_task_past_its_timeout_is_retried_then_fails(host: Path, git_repo: Path,
                                                           pueue: Pueue) -> None:
    """The wrapper stops the agent at tasks.timeout, as a worker does; the attempt is a
    timeout and the planner hands the next attempt to pueue after the backoff."""
    spec = pueue_spec(host, pueue, tasks_policy={"timeout": "1s", "maxAttempts": 2},
                      worker={"stopGrace": "1s"})
    start_pool(spec)
    task = add_task(spec, "[hang]", title="hangs")
    wait_tasks(spec, task, timeout="60s")
    shown = show_task(spec, task)
    assert shown["status"] == "failed"
    assert [a["status"] for a in shown["attempt_details"]] == ["timeout", "timeout"]
    assert handed_on(spec) == [(int(task), 1), (int(task), 2)]


def test_pueue_failed_task_is_retried_with_a_new_attempt(host: Path, git_repo: Path,
                                                        pueue: Pueue) -> None:
    spec = pueue_spec(host, pueue, tasks_policy={"maxAttempts": 3})
    start_pool(spec)
    task = add_task(spec, "[fail]", title="fails")
    wait_tasks(spec, task, timeout="60s")
    shown = show_task(spec, task)
    assert shown["status"] == "failed" and shown["attempts"] == 3
    assert [a["status"] for a in shown["attempt_details"]] == ["failed"] * 3
    assert [a["exit_code"] for a in shown["attempt_details"]] == [1, 1, 1]
    assert handed_on(spec) == [(int(task), n) for n in (1, 2, 3)]


def test_pueue_daemon_killed_mid_run_loses_nothing(host: Path, git_repo: Path,
                                                   pueue: Pueue) -> None:
    """SIGKILL the daemon while two attempts run: its children run on, orphaned.  The
    controller starts it again; pueue marks the attempts Killed and pauses the group
    (its queue held tasks); the controller ends the attempts (their agents first),
    requeues them without using up a try, resumes the group, and every task succeeds."""
    spec = pueue_spec(host, pueue, tasks_policy={"maxAttempts": 1})
    start_pool(spec)
    ids = [add_task(spec, f"[seconds=6] work {n}", title=f"task {n}") for n in range(2)]
    ids.append(add_task(spec, "[seconds=1] waits", title="queued"))  # pueue holds it
    wait_for(lambda: sum(t["status"] == "running" for t in tasks(spec)) == 2,
             message="two attempts running")
    slots = reconcile_json("status", "-f", str(spec))["workers"]
    assert sorted(w["current_task"] for w in slots) == [int(ids[0]), int(ids[1])]
    assert all(w["health"] == "working" and w["runtime"] == "pueue" for w in slots)
    daemon = pueue.pid()
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: not pueue.is_daemon(daemon), message="the daemon gone")
    wait_tasks(spec, *ids, timeout="120s")

    assert all(t["status"] == "succeeded" for t in tasks(spec))
    lost = [a for i in ids for a in show_task(spec, i)["attempt_details"]
            if a["status"] == "lost"]
    # each of the two was ended, or its orphaned wrapper recorded it first; maxAttempts
    # is 1 and every task succeeded: the daemon's death used up no try
    assert 1 <= len(lost) <= 2, lost
    assert all("killed by someone else, or by a pueue daemon" in a["error"] for a in lost)
    kinds = [e["kind"] for e in events(spec)]
    assert "pueue.down" in kinds and "pueue.up" in kinds
    down = next(e for e in events(spec, "pueue.down"))
    assert down["severity"] == "critical"
    assert reconcile_json("report", "-f", str(spec))["pueue"]["daemon_down"] == 1
    assert pueue.status()["groups"][GROUP]["status"] == "Running"


def test_pueue_tasks_added_by_hand_are_supervised_under_supervise_all(
        host: Path, git_repo: Path, pueue: Pueue) -> None:
    """`pueue add` straight into the group: a failing command is restarted in place until
    it has run maxAttempts times; one running past tasks.timeout + stopGrace is killed,
    and retried the same way (a kill reads as a timeout); status shows both, and our own
    tasks run beside them."""
    spec = pueue_spec(host, pueue, supervise="all",
                      tasks_policy={"timeout": "1s", "maxAttempts": 2},
                      worker={"stopGrace": "500ms"})
    start_pool(spec)
    failing = pueue.add("--group", GROUP, "--", "exit 3")
    sleeping = pueue.add("--group", GROUP, "--", "sleep 60")

    def settled() -> bool:
        by_hand = {t["id"]: t for t in pueue_status(spec)["added_by_hand"]}
        return all(by_hand.get(i, {}).get("restarts") == 1 and by_hand[i]["state"] == "done"
                   for i in (failing, sleeping))
    wait_for(settled, timeout=90, message="the hand-added tasks supervised")
    assert pueue.result(failing) == {"Failed": 3} and pueue.result(sleeping) == "Killed"
    restarted = [e["fields"]["pueue_id"] for e in events(spec, "pueue.restarted")]
    assert sorted(restarted) == sorted([failing, sleeping])
    killed = [e["fields"]["pueue_id"] for e in events(spec, "pueue.killed")]
    assert killed == [sleeping] * 2  # each run past tasks.timeout + stopGrace
    by_hand = pueue_status(spec)["added_by_hand"]
    assert {(t["id"], t["result"], t["exit_code"]) for t in by_hand} == {
        (failing, "failed", 3), (sleeping, "killed", None)}
    text = reconcile("status", "-f", str(spec)).stdout
    assert "2 added by hand (2 done)" in text
    report = reconcile_json("report", "-f", str(spec))["pueue"]
    assert (report["hand_added_restarted"], report["hand_added_killed_past_timeout"]) == (2, 2)
    assert report["hand_added_now"] == {"failed": 1, "killed": 1}
    assert "tasks added by hand: restarted" in reconcile("report", "-f", str(spec)).stdout

    ours = add_task(spec, "still ours", title="ours")
    wait_tasks(spec, ours)
    assert show_task(spec, ours)["status"] == "succeeded"


def test_pueue_group_of_another_pool_is_refused(host: Path, git_repo: Path,
                                               pueue: Pueue) -> None:
    """Two controllers on one group would set its size back and forth, and each take the
    other's tasks for its own (seen in a newcomer's walk)."""
    spec = pueue_spec(host, pueue)
    start_pool(spec)
    other = write_spec(host, name="otherpool", runtime="pueue", filename="other.yaml",
                       extra={"pueue": {"group": GROUP, "config": str(pueue.config)}})
    for command in ("diff", "apply"):
        refused = reconcile(command, "-f", str(other))
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"pueue group {GROUP} is already the pool of testpool" in refused.stderr
    assert reconcile("delete", "-f", str(spec)).returncode == 0
    assert reconcile("diff", "-f", str(other)).returncode == 2  # free again


def test_pueue_cancelled_task_is_taken_out_of_pueue(host: Path, git_repo: Path,
                                                    pueue: Pueue) -> None:
    spec = pueue_spec(host, pueue, replicas=1)
    start_pool(spec)
    first = add_task(spec, "[seconds=30] long", title="long")
    second = add_task(spec, "never runs", title="cancelled")
    wait_for(lambda: len(our_pueue_tasks(pueue)) == 2, message="both handed to pueue")
    reconcile("task", "cancel", second, "-f", str(spec), check=True)
    wait_for(lambda: set(our_pueue_tasks(pueue)) == {(int(first), 1)},
             message="the cancelled one removed from pueue")
    reconcile("task", "cancel", first, "-f", str(spec), check=True)
    wait_tasks(spec, first, second)
    assert [t["status"] for t in tasks(spec)] == ["cancelled", "cancelled"]


def test_pueue_pool_deleted_leaves_nothing_in_pueue_to_start(host: Path, git_repo: Path,
                                                             pueue: Pueue) -> None:
    """`delete --force`: the attempts pueue runs are killed and their tasks requeued
    without using up a try; the ones it holds queued are removed, and the killed ones
    after them, so nothing of the deleted pool starts later or stays in pueue.  The
    group stays (others may queue there)."""
    spec = pueue_spec(host, pueue, tasks_policy={"maxAttempts": 1})
    start_pool(spec)
    ids = [add_task(spec, f"[seconds=30] long {n}", title=f"task {n}") for n in range(4)]
    wait_for(lambda: sum(t["status"] == "running" for t in tasks(spec)) == 2
             and len(our_pueue_tasks(pueue)) == 4, message="two running, two queued in pueue")
    deleted = reconcile("delete", "-f", str(spec), "--force")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "- remove pueue tasks " in deleted.stdout

    assert not our_pueue_tasks(pueue)  # killed, then removed with the queued ones
    assert [t["status"] for t in tasks(spec)] == ["queued"] * 4  # no try used up
    assert {e["task_id"] for e in events(spec, "attempt.lost")} == {int(i) for i in ids[:2]}
    assert pueue.status()["groups"][GROUP]["status"] == "Running"
    # a copy pueue still had somewhere (a daemon's saved state) starts nothing either
    late = reconcile("run-task", "--pool", "testpool", "--task", ids[3], "--attempt", "1")
    assert late.returncode == 2 and "the pool was deleted" in late.stderr
