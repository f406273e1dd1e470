"""Never twice at once, nothing outlives its attempt (issue 7, items 1, 2, 4 and 5).

Each test drives real workers, agents, tmux and SQLite.  The agent below keeps
an agent-side ledger outside the store and holds an exclusive ``flock`` on a
per-task file for as long as any of its processes lives (the kernel drops it
when the last one dies, even by SIGKILL), so a second agent on the same task
while the first still works is caught structurally, not by timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.marks import MARK_VAR, attempt_mark, pool_key
from reconciler.paths import pool_paths
from reconciler.taskrun import run_command
from tests.e2e import (
    add_task,
    events,
    replaced,
    show_task,
    state_dir,
    status,
    wait_tasks,
    worker_pid,
    workers,
)
from tests.helpers import gone, reconcile, wait_for, write_spec

pytestmark = pytest.mark.e2e

# The task title says what the agent does: ``kill_worker`` (first attempt: SIGKILL its
# own worker), ``daemon`` (first attempt: leave a double-forked child that keeps the
# task's lock and the output pipe), ``ignore_term``, ``seconds=N`` (first attempt's work).
LEDGER_AGENT = textwrap.dedent("""
    import fcntl, json, os, signal, sys, time
    ledger = sys.argv[1]
    title = os.environ["RECONCILER_TASK_TITLE"]
    task, attempt = os.environ["RECONCILER_TASK_ID"], int(os.environ["RECONCILER_ATTEMPT"])
    opts = dict(w.split("=", 1) for w in title.split() if "=" in w)
    first = attempt == 1

    def note(kind, **more):
        line = json.dumps({"kind": kind, "task": task, "attempt": attempt,
                           "pid": os.getpid(), "t": time.time(), **more})
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (line + "\\n").encode())
        os.close(fd)

    lock = open(os.path.join(os.path.dirname(ledger), f"task-{task}.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        note("duplicate")
    note("start")
    if "ignore_term" in title:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    work = float(opts.get("seconds", "0.2")) if first else 0.2
    if first and "daemon" in title:
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:  # the daemon: keeps the lock and stdout, works on
                note("daemon")
                time.sleep(work)
                note("end", by="daemon")
                os._exit(0)
            os._exit(0)
        os.wait()
        work = 0.1
    if first and "kill_worker" in title:
        os.kill(os.getppid(), signal.SIGKILL)
    print("working", flush=True)
    time.sleep(work)
    note("end")
""")


def _ledger_spec(host: Path, *, replicas: int, extra: dict[str, Any]) -> tuple[Path, Path]:
    agent = host / "ledger_agent.py"
    agent.write_text(LEDGER_AGENT)
    ledger = host / "ledger" / "ledger.jsonl"
    ledger.parent.mkdir()
    spec = write_spec(host, replicas=replicas, command=[sys.executable, str(agent), str(ledger)],
                      extra=extra)
    return spec, ledger


def _ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _controller(stop_grace: str = "1s", backoff: str = "100ms") -> dict[str, Any]:
    return {"controller": {"enabled": True, "interval": "200ms"},
            "worker": {"stopGrace": stop_grace},
            "restartPolicy": {"backoff": backoff, "maxRestarts": 10},
            "tasks": {"maxAttempts": 3, "retryBackoff": "100ms"}}


def test_a_task_is_not_rerun_while_a_process_of_its_dead_attempt_still_works(
        host: Path, git_repo: Path) -> None:
    """Item 1: the first attempt's agent leaves a double-forked child working on the task
    and kills its worker.  Before, nobody knew of that child: the task was requeued and
    ran again beside it (the ledger's lock caught two at once)."""
    spec, ledger = _ledger_spec(host, replicas=1, extra=_controller())
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    task = add_task(spec, title="kill_worker daemon seconds=4")
    wait_tasks(spec, task, timeout="60s")

    lines = _ledger(ledger)
    assert not [x for x in lines if x["kind"] == "duplicate"], lines
    assert show_task(spec, task)["status"] == "succeeded"
    daemon = next(x for x in lines if x["kind"] == "daemon")
    assert gone(daemon["pid"])
    second = next(x for x in lines if x["kind"] == "start" and x["attempt"] == 2)
    assert not [x for x in lines if x["kind"] == "end" and x.get("by") == "daemon"
                and x["t"] > second["t"]], "the daemon worked on after the rerun started"
    reconcile("delete", "-f", str(spec), check=True)


def _crash_and_wait_for_restart(spec: Path, worker: str) -> None:
    old = worker_pid(spec, worker)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: replaced(spec, worker, old) and workers(spec)[worker]["health"]
             == "healthy", timeout=30, message=f"{worker} restarted at once")


def test_a_dead_workers_agent_is_ended_at_once_not_when_its_slot_restarts(
        host: Path, git_repo: Path) -> None:
    """Item 2: with a long restart backoff the dead worker's agent (which ignores SIGTERM)
    used to work on, and its task to sit ``running``, until the slot restarted."""
    spec, ledger = _ledger_spec(host, replicas=2,
                                extra=_controller(stop_grace="1s", backoff="60s"))
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    for worker in ("w-1", "w-2"):  # a first crash restarts at once: use it up
        _crash_and_wait_for_restart(spec, worker)
    task = add_task(spec, title="kill_worker ignore_term seconds=60")
    first = wait_for(lambda: next((x for x in _ledger(ledger) if x["kind"] == "start"), None),
                     timeout=30, message="the first attempt to start")
    killed_at = time.time()
    wait_for(lambda: gone(first["pid"]), timeout=10,
             message="the dead worker's agent to be killed")
    wait_tasks(spec, task, timeout="30s")
    ended_within = time.time() - killed_at
    assert ended_within < 20, ended_within  # far below the 45-75 s the backoff would take
    attempts = show_task(spec, task)["attempt_details"]
    assert [a["status"] for a in attempts] == ["lost", "succeeded"], attempts
    assert not [x for x in _ledger(ledger) if x["kind"] == "duplicate"]
    # the dead slot (a second crash) still waits for its backoff: ending the attempt
    # did not restart it
    dead = [w for w in workers(spec).values() if w["health"] in ("dead", "recovering")]
    assert dead, status(spec)
    reconcile("delete", "-f", str(spec), check=True)


def test_delete_force_waits_once_for_all_agents_that_ignore_sigterm(
        host: Path, git_repo: Path) -> None:
    """Item 5: the agents of three workers ignore SIGTERM.  Each used to get its own
    stopGrace, one after another, while the pool lock was held."""
    grace = 5.0  # one grace after another would take 15 s or more
    spec, ledger = _ledger_spec(host, replicas=3,
                                extra={"worker": {"stopGrace": f"{grace:g}s"}})
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    for n in range(3):
        add_task(spec, title=f"ignore_term seconds=120 n={n}")
    agents = wait_for(lambda: [x for x in _ledger(ledger) if x["kind"] == "start"]
                      if len([x for x in _ledger(ledger) if x["kind"] == "start"]) == 3
                      else None, timeout=30, message="three agents to start")
    started = time.monotonic()
    deleting = subprocess.Popen([sys.executable, "-m", "reconciler", "delete", "-f", str(spec),
                                 "--force"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deleting.wait(timeout=60)  # (that it reads stopping, never dead: test_convergence)
    took = time.monotonic() - started
    assert deleting.returncode == 0
    assert took < grace + 5, f"delete --force took {took:.1f}s"
    for agent in agents:
        assert gone(agent["pid"])
    kinds = [e["kind"] for e in events(spec)]
    assert kinds.count("attempt.stopping") == 3 and kinds.count("attempt.killing") == 3


def _leave_daemon(tmp_path: Path, *, then: str) -> list[str]:
    script = tmp_path / "daemon.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open({str(tmp_path / 'daemon.pid')!r}, "w") as fh:
                    fh.write(str(os.getpid()))
                time.sleep(120)  # holds the output pipe all along
                os._exit(0)
            os._exit(0)
        os.wait()
        print("left a daemon", flush=True)
        {then}
    """))
    return [sys.executable, str(script)]


@pytest.mark.parametrize("then,status_", [("time.sleep(60)", "timeout"),
                                           ("sys.exit(0)", "succeeded")])
def test_a_double_forked_daemon_neither_outlives_its_attempt_nor_holds_it(
        tmp_path: Path, then: str, status_: str) -> None:
    """Item 4: a daemon kept the output pipe open, so a 1 s timeout was recorded
    seconds late, and it survived the attempt.  Killed by the attempt's mark now."""
    started = time.time()
    result = run_command(_leave_daemon(tmp_path, then=then), cwd=tmp_path,
                         env=dict(os.environ), log=tmp_path / "task.log", timeout=1.0,
                         grace=0.5, should_cancel=lambda: False, echo=False,
                         mark=(pool_key(tmp_path), 7))
    took = time.time() - started
    assert result.status == status_, result
    assert took < 4.0, f"run_command took {took:.1f}s"
    assert result.ended_at is not None
    if status_ == "timeout":
        assert result.ended_at - started < 1.6, "the timeout's own time is recorded"
    daemon = int((tmp_path / "daemon.pid").read_text())
    wait_for(lambda: gone(daemon), timeout=2, message="the daemon to be killed")
    assert "left a daemon" in (tmp_path / "task.log").read_text()


def test_a_process_of_an_ended_attempt_is_killed_by_a_pass_and_shown_by_diff(
        host: Path, git_repo: Path) -> None:
    """Item 1: processes of the pool that no running attempt owns are detected and
    killed on every pass; ``diff`` names them and kills nothing."""
    spec = write_spec(host, replicas=1)
    reconcile("apply", "-f", str(spec), "--wait", check=True)
    task = add_task(spec)
    wait_tasks(spec, task)
    attempt_id = 1  # the store's first attempt
    key = pool_key(pool_paths(state_dir(host), "testpool").root)
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             env={**os.environ, MARK_VAR: attempt_mark(key, attempt_id)},
                             start_new_session=True)
    try:
        wait_for(lambda: MARK_VAR.encode() in Path(f"/proc/{stray.pid}/environ").read_bytes(),
                 timeout=5, message="the stray to start")
        shown = reconcile("diff", "-f", str(spec))
        assert f"kill attempt {attempt_id}" in shown.stdout, shown.stdout
        assert stray.poll() is None, "diff must not kill"
        reconcile("apply", "-f", str(spec), check=True)
        assert stray.wait(timeout=10) == -signal.SIGKILL
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
    reconcile("delete", "-f", str(spec), check=True)
