"""Whether a recorded process is still the one we started (``reconciler.proctree``).

On Linux the answer comes from ``/proc`` rather than psutil, so read commands need
not import psutil; it must agree with psutil to the tick.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

from reconciler import proctree
from reconciler.proctree import create_time_of, process_matches


def test_create_time_is_psutils_to_the_tick_and_psutil_gives_the_same(
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (os.getpid(), child.pid):
            assert create_time_of(pid) == psutil.Process(pid).create_time()
            assert process_matches(pid, psutil.Process(pid).create_time())
            assert not process_matches(pid, psutil.Process(pid).create_time() - 5)  # recycled
            assert proctree._psutil_state_and_start(pid) == ("R", create_time_of(pid))
    finally:
        child.kill()
        child.wait()


def test_a_zombie_or_a_gone_process_does_not_match() -> None:
    child = subprocess.Popen(["true"])
    started = create_time_of(child.pid)
    assert started is not None
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
    assert not process_matches(child.pid, started)
    child.wait()
    assert not process_matches(child.pid, started) and create_time_of(child.pid) is None
    assert not process_matches(None, None) and not process_matches(0, None)


def test_a_process_name_with_parentheses_and_spaces_is_read_right(tmp_path: Path) -> None:
    """``/proc/PID/stat`` puts the name in parentheses, and a name may hold ``) ``."""
    odd = tmp_path / "a) b (c) Z 1"
    odd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    child = subprocess.Popen([str(odd), "30"])
    try:
        assert psutil.Process(child.pid).name() == "a) b (c) Z 1"
        assert create_time_of(child.pid) == psutil.Process(child.pid).create_time()
        assert process_matches(child.pid, None)
    finally:
        child.kill()
        child.wait()


def test_psutils_answer_tells_a_zombie_too() -> None:
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    try:
        found = proctree._psutil_state_and_start(child.pid)
        assert found is not None and found[0] == "Z"
    finally:
        child.wait()
    assert proctree._psutil_state_and_start(child.pid) is None
