"""``reconcile dashboard`` in a real tmux pane (its own server), and ``status --watch``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from reconciler.report.dashboard import sparkline
from tests.e2e import add_task, apply, delete
from tests.helpers import one_error_line, reconcile, wait_for, write_spec

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def tmux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", "dashboard-test", *args], capture_output=True,
                          text=True, check=False, timeout=30)


def test_the_dashboard_shows_the_pool_live_and_q_quits(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=2, runtime="process", command=SLEEPER,
                      extra={"worker": {"command": SLEEPER}})
    try:
        assert apply(spec, "--wait").returncode == 0
        task = add_task(spec, title="watch me work")
        command = [sys.executable, "-m", "reconciler", "--state-dir",
                   os.environ["RECONCILER_STATE_DIR"], "dashboard", "-f", str(spec)]
        started = tmux("new-session", "-d", "-x", "150", "-y", "40", "--", *command)
        assert started.returncode == 0, started.stderr

        def screen() -> str:
            return tmux("capture-pane", "-p").stdout

        shown = wait_for(lambda: "watch me work" in (s := screen()) and s,
                         message="the dashboard to show the task")
        rows = {line.split()[1]: line for line in shown.splitlines()
                if line.startswith("│ w-")}
        assert "working" in rows["w-1"] + rows["w-2"]
        assert f"{task} watch me work" in shown and "healthy" in shown
        assert "queue: 0 queued, 1 running" in shown and "controller: disabled" in shown
        assert "attempt.started" in shown  # the latest events
        tmux("send-keys", "q")
        wait_for(lambda: tmux("has-session").returncode != 0, message="q to quit")
    finally:
        tmux("kill-server")
        delete(spec, "--force")


def test_the_dashboard_needs_a_terminal(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=0)
    assert apply(spec).returncode == 0
    line = one_error_line(reconcile("dashboard", "-f", str(spec)))
    assert "needs a terminal" in line and "status --watch" in line


def test_status_watch_prints_again_and_again(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=0)
    assert apply(spec).returncode == 0
    watcher = subprocess.Popen([sys.executable, "-m", "reconciler", "status", "--watch",
                                "--interval", "200ms", "-f", str(spec)],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        stamps, lines = [], []
        for line in watcher.stdout:  # it prints forever: stop at the second print
            lines.append(line)
            if line.startswith("--- "):
                stamps.append(line)
            if len(stamps) == 2:
                break
        assert "pool testpool: no workers\n" in lines
    finally:
        watcher.kill()
        watcher.wait()
        if watcher.stdout is not None:
            watcher.stdout.close()


def test_the_sparkline_scales_to_its_highest_bucket() -> None:
    assert sparkline([0, 0, 0]) == "▁▁▁"
    assert sparkline([0, 4, 8]) == "▁▅█"


def test_a_refresh_faster_than_100ms_is_refused(host: Path, git_repo: Path) -> None:
    """``--interval 0s`` was a busy loop printing 24 MB in ten minutes."""
    spec = write_spec(host, replicas=0)
    assert apply(spec).returncode == 0
    for command in (["status", "--watch"], ["dashboard"]):
        for interval in ("0s", "1ms", "99ms"):
            line = one_error_line(reconcile(*command, "--interval", interval, "-f", str(spec)))
            assert f"--interval {interval} is too short: the least is 100ms" in line
