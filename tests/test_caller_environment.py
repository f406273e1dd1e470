"""One pool, whatever the caller's environment (issue 8 item 4).

A pool is applied from one shell; ``status``, ``diff`` and ``apply`` then run
from shells with another ``TMUX_TMPDIR`` (or none), and from a directory that
holds a ``reconciler/`` folder of its own.  The pool stays the same: the same
worker processes, no restart, no second tmux server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from reconciler.actions import ReplaceWorker, StartWorker
from reconciler.model import ControllerRow, Observation, WorkerRow
from reconciler.planner import plan
from reconciler.report.status import status_document
from reconciler.spec import load_spec
from tests.e2e import apply, diff, events, pool_dir, state_dir, status, tmux_windows, workers
from tests.helpers import processes_mentioning, wait_for, write_spec

pytestmark = pytest.mark.e2e


@pytest.fixture
def other_tmux_dir() -> Iterator[Path]:
    """A second ``TMUX_TMPDIR``, as another shell would have; servers there are killed."""
    directory = Path(tempfile.mkdtemp(prefix="rt-other-"))
    try:
        yield directory
    finally:
        for socket in directory.glob("tmux-*/*"):
            subprocess.run(["tmux", "-S", str(socket), "kill-server"], capture_output=True,
                           check=False)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pool_name() -> Iterator[str]:
    """A pool name no other test uses: with ``TMUX_TMPDIR`` unset, tmux would otherwise
    share ``/tmp/tmux-<uid>/`` with every other test run on the host."""
    name = f"ce-{uuid.uuid4().hex[:10]}"
    yield name
    # a server the bug would have started in the default directory: only ours, by path
    default = Path("/tmp") / f"tmux-{os.getuid()}" / f"rt-{name}"
    if default.exists():
        subprocess.run(["tmux", "-S", str(default), "kill-server"], capture_output=True,
                       check=False)


def _servers_named(socket: str) -> list[Path]:
    """Every socket file named ``socket`` under the usual tmux directories we used."""
    roots = [Path("/tmp")] + [Path(p) for p in Path("/tmp").glob("rt-*")]
    return sorted(p for root in roots for p in root.glob(f"tmux-{os.getuid()}/{socket}")
                  if p.is_socket())


def _worker_processes(state: Path) -> list[int]:
    """The pids of live ``reconcile worker`` processes of this state directory (not the
    tmux server, whose command line is that of the client that started it)."""
    return sorted(p.pid for p in processes_mentioning(str(state))
                  if "worker" in (p.cmdline() or []) and not p.name().startswith("tmux")
                  and p.status() != psutil.STATUS_ZOMBIE)


@pytest.mark.parametrize("caller_tmpdir", [pytest.param("unset", id="TMUX_TMPDIR-unset"),
                                           pytest.param("other", id="TMUX_TMPDIR-other")])
def test_commands_from_another_environment_see_the_same_pool(
        host: Path, git_repo: Path, pool_name: str, other_tmux_dir: Path,
        monkeypatch: pytest.MonkeyPatch, caller_tmpdir: str) -> None:
    spec = write_spec(host, name=pool_name, replicas=2)
    apply(spec)
    socket = f"rt-{pool_name}"
    before = {w: row["pid"] for w, row in workers(spec).items()}
    assert all(before.values()), before
    servers = _servers_named(socket)
    assert len(servers) == 1, servers

    if caller_tmpdir == "unset":
        monkeypatch.delenv("TMUX_TMPDIR")
    else:
        monkeypatch.setenv("TMUX_TMPDIR", str(other_tmux_dir))

    seen = status(spec)
    assert {w["id"]: w["pid"] for w in seen["workers"]} == before, seen
    assert all(w["health"] in ("healthy", "working") for w in seen["workers"]), seen
    assert seen["ok"], seen["problems"]
    pending = diff(spec)
    assert pending.returncode == 0, pending.stdout + pending.stderr
    applied = apply(spec)
    assert "Nothing to do" in applied.stdout or "0 change(s)" in applied.stdout, applied.stdout

    after = workers(spec)
    assert {w: row["pid"] for w, row in after.items()} == before
    assert [row["restarts"] for row in after.values()] == [0, 0]
    assert _servers_named(socket) == servers, "a second tmux server was started"
    assert len(_worker_processes(state_dir(host))) == 2
    assert not events(spec, "worker_restarted")


def test_apply_from_another_environment_starts_workers_on_the_pool_server(
        host: Path, git_repo: Path, pool_name: str, other_tmux_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart and a scale-up done from another shell land on the pool's own server."""
    spec = write_spec(host, name=pool_name, replicas=2)
    apply(spec)
    socket = f"rt-{pool_name}"
    servers = _servers_named(socket)
    assert len(servers) == 1, servers
    w1 = workers(spec)["w-1"]["pid"]
    os.kill(workers(spec)["w-2"]["pid"], 9)
    wait_for(lambda: not workers(spec)["w-2"]["pid"], message="w-2 to die")

    applied_from = os.environ["TMUX_TMPDIR"]
    monkeypatch.setenv("TMUX_TMPDIR", str(other_tmux_dir))
    write_spec(host, name=pool_name, replicas=3)
    apply(spec)
    after = workers(spec)
    assert after["w-1"]["pid"] == w1
    assert after["w-2"]["pid"] and after["w-3"]["pid"], after
    assert _servers_named(socket) == servers, "a second tmux server was started"
    assert not list(other_tmux_dir.glob("tmux-*/*"))
    assert len(_worker_processes(state_dir(host))) == 3
    monkeypatch.setenv("TMUX_TMPDIR", applied_from)  # that shell sees all three windows
    assert tmux_windows(socket) == ["w-1", "w-2", "w-3"]


def test_a_pool_applied_before_socket_paths_were_pinned_is_found_from_anywhere(
        host: Path, git_repo: Path, pool_name: str, other_tmux_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool applied by an earlier version has no pinned path: its running server is
    found by the pool's own tmux.conf on its command line, and pinned by the next start."""
    spec = write_spec(host, name=pool_name, replicas=1)
    apply(spec)
    pin = pool_dir(host, pool_name) / "tmux-sockets.json"
    servers = _servers_named(f"rt-{pool_name}")
    assert json.loads(pin.read_text()) == {f"rt-{pool_name}": str(servers[0])}
    pin.unlink()
    before = workers(spec)["w-1"]["pid"]

    monkeypatch.setenv("TMUX_TMPDIR", str(other_tmux_dir))
    assert diff(spec).returncode == 0
    write_spec(host, name=pool_name, replicas=2)
    apply(spec)
    assert workers(spec)["w-1"]["pid"] == before
    assert _servers_named(f"rt-{pool_name}") == servers
    assert json.loads(pin.read_text()) == {f"rt-{pool_name}": str(servers[0])}


# --------------------------------------------------------------------------- heartbeats


def _beating_row(now: float, **changes: Any) -> WorkerRow:
    row = WorkerRow(id="w-1", runtime="tmux", tmux_socket="rt-testpool", pid=None,
                    pid_create_time=None, spec_id=1, template_hash=None, template_digests={},
                    state="idle", current_task=None, started_at=now - 100,
                    heartbeat_at=now - 0.6, restarts=0, drain_requested=False,
                    exited_at=None, exit_code=None, removed=False, health="healthy")
    return replace(row, **changes)


def test_a_worker_that_heartbeats_is_never_restarted_for_a_window_nobody_sees(
        tmp_path: Path) -> None:
    """No window and no confirmed process, but a heartbeat 0.6s old: no restart, a
    problem in ``status`` and a wait in ``diff``; once the heartbeat is stale, a restart."""
    spec = load_spec(write_spec(tmp_path, replicas=1))
    now = 1_000_000.0
    row = _beating_row(now, template_hash=spec.template_hash())
    seen = Observation(pool="testpool", observed_at=now, workers=(row,))
    decided = plan(spec, seen, now)
    assert not [a for a in decided.changes if isinstance(a, ReplaceWorker | StartWorker)], \
        decided.actions
    assert [type(a.then).__name__ for a in decided.waiting] == ["ReplaceWorker"]
    assert "not while it heartbeats" in decided.waiting[0].why
    # even one an older version already took for dead (its backoff long over)
    believed_dead = replace(seen, workers=(replace(row, health="dead", health_since=now - 30),))
    assert not plan(spec, believed_dead, now).changes
    document = status_document(seen, now, spec)
    assert document["workers"][0]["health"] != "dead"
    assert any("w-1 heartbeats" in p and "no tmux window" in p
               for p in document["problems"]), document["problems"]

    scale_down = plan(replace(spec, replicas=0), seen, now)
    assert [type(a).__name__ for a in scale_down.changes] == ["DrainWorker"]

    later = now + spec.health.unresponsive_after + 30  # it stopped heartbeating long ago
    stale = plan(spec, replace(seen, observed_at=later), later)
    assert [type(getattr(a, "then", a)).__name__ for a in stale.actions] == ["ReplaceWorker"]
    assert all("heartbeats" not in getattr(a, "why", "") for a in stale.actions), stale.actions


# --------------------------------------------------------------------------- launch directory


@pytest.mark.parametrize("runtime", [pytest.param("tmux", id="tmux"),
                                     pytest.param("process", id="process")])
def test_apply_from_a_directory_with_a_reconciler_folder(host: Path, git_repo: Path,
                                                         runtime: str) -> None:
    """The parent of a clone (often ``~``) holds a ``reconciler/`` folder: workers and the
    controller started from there import this package, not that folder, and run in the
    pool's directory."""
    elsewhere = host / "home"
    (elsewhere / "reconciler").mkdir(parents=True)
    (elsewhere / "reconciler" / "__init__.py").write_text(
        'raise ImportError("the folder in the launch directory was imported")\n')
    spec = write_spec(host, replicas=2, runtime=runtime,
                      extra={"controller": {"enabled": True}})
    script = Path(sys.executable).parent / "reconcile"
    proc = subprocess.run([str(script), "apply", "-f", str(spec), "--wait", "--timeout", "60s"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: status(spec)["controller"]["running"], message="the controller")
    found = workers(spec)
    assert all(w["pid"] and w["health"] in ("healthy", "working") for w in found.values()), found
    for pid in [w["pid"] for w in found.values()] + [status(spec)["controller"]["pid"]]:
        assert psutil.Process(pid).cwd() == str(pool_dir(host)), pid
    assert len(events(spec, "worker_restarted")) == 0


# --------------------------------------------------------------------------- controller backoff


def test_a_controller_that_died_at_start_is_not_relaunched_on_every_pass(
        tmp_path: Path) -> None:
    """It used to be relaunched on every pass (208 launches in one ``apply --wait``)."""
    spec = load_spec(write_spec(tmp_path, replicas=0, extra={"controller": {"enabled": True}}))
    now = 1_000_000.0
    crashed = ControllerRow(pid=4_000_000, pid_create_time=1.0, started_at=now - 1,
                            heartbeat_at=now - 1, stop_requested=False)
    seen = Observation(pool="testpool", observed_at=now, controller=crashed,
                       controller_alive=False)
    decided = plan(spec, seen, now)
    assert not decided.changes, decided.actions
    assert [type(a.then).__name__ for a in decided.waiting] == ["StartController"]
    assert "controller backoff" in decided.waiting[0].why
    later = now + 5
    assert [type(a).__name__ for a in plan(spec, seen, later).changes] == ["StartController"]
    # one that ran (it heartbeat after its launch) is started again at once
    ran = replace(crashed, started_at=now - 3, heartbeat_at=now - 1)
    assert [type(a).__name__ for a in plan(spec, replace(seen, controller=ran), now).changes] \
        == ["StartController"]


@pytest.mark.parametrize("runtime", ["process", "tmux"])
def test_apply_shows_what_a_worker_that_crashed_at_start_printed(host: Path, git_repo: Path,
                                                                 runtime: str) -> None:
    """Issue 8 item 4: a worker that crashed at start left ``apply --wait`` with only "did
    not converge"; its traceback was in a file or a dead pane nobody pointed to."""
    broken = host / "broken-site"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(  # site.py survives a raise here: exit hard
        "import os, sys\n"
        "if 'worker' in sys.argv and '--' not in sys.argv:\n"  # the worker, not its launcher
        "    sys.stderr.write('RuntimeError: simulated crash before the first heartbeat\\n')\n"
        "    sys.stderr.flush()\n"
        "    os._exit(1)\n")
    spec = write_spec(host, replicas=1, runtime=runtime,
                      extra={"restartPolicy": {"backoff": "30s"}})
    env = {**os.environ, "PYTHONPATH": str(broken)}
    proc = subprocess.run([sys.executable, "-m", "reconciler", "apply", "-f", str(spec),
                           "--wait", "--timeout", "4s"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 1
    assert "w-1 exited before its first heartbeat; the last lines it printed:" in proc.stderr
    assert "RuntimeError: simulated crash before the first heartbeat" in proc.stderr
    subprocess.run([sys.executable, "-m", "reconciler", "delete", "-f", str(spec)],
                   capture_output=True, check=True, timeout=120)
