"""Whether a recorded process is still the one we started (``reconciler.proctree``).

On Linux the answer comes from ``/proc`` rather than psutil, so read commands need
not import psutil; it must agree with psutil to the tick.
"""

from __future__ import annotations

import os
import subprocess
import sys

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
