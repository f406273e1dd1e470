"""What the pool benchmarks share: a scratch pool driven through the real CLI, and the
side-by-side supervisors (supervisord, pm2) run on the same trivial program.

Not a benchmark itself (no ``bench_`` prefix).  Everything lives in one temporary
directory; ``ScratchPool.close`` deletes the pool (``delete --force``), and the
baselines stop their own daemons, so nothing outlives a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent

# The trivial program every supervisor restarts: it says it is up (its pid and the time,
# in a file named after it), then sleeps: the equivalent of a worker's first heartbeat.
BEATER = textwrap.dedent("""
    import os, sys, time
    path = sys.argv[1]
    if len(sys.argv) > 2:  # start as our worker does: its imports and a store, then beat
        import sqlite3
        import reconciler.cli, reconciler.worker
        sqlite3.connect(sys.argv[2]).execute("CREATE TABLE IF NOT EXISTS t (x)").close()
    with open(path + ".tmp", "w") as fh:
        fh.write(f"{os.getpid()} {time.time()}")
    os.replace(path + ".tmp", path)
    while True:
        time.sleep(3600)
""")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(values: Sequence[float]) -> str:
    """``p50 X s  p90 Y s  (n=N)`` of a list of seconds."""
    return (f"p50 {statistics.median(values):.3f}s  p90 {percentile(values, 0.9):.3f}s  "
            f"(n={len(values)})")


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.002) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_repo(directory: Path, files: int = 0, extra: dict[str, str] | None = None) -> Path:
    """A generated repository ``directory/repo`` on ``main``: ``files`` small Python files
    in 40 packages, plus ``extra`` (path: text), in one commit."""
    repo = directory / "repo"
    repo.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        path = repo / f"src/pkg{i % 40}/file{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# file {i}\n" + "def f():\n    return 1\n" * 10)
    for name, text in (extra or {}).items():
        (repo / name).write_text(text)
    git = ["git", "-C", str(repo)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "-c", "user.name=b", "-c", "user.email=b@l", "commit", "-q",
                    "--allow-empty", "-m", "generated"], check=True)
    return repo


def reconciler_env(scratch: Path, **extra: str) -> dict[str, str]:
    """The environment for our CLI, workers and controller in a benchmark: ours, with
    compiled modules cached (in ``scratch``) as an installed package has them.  Under
    PYTHONDONTWRITEBYTECODE every process would compile every module it imports again
    (about 80 ms a start), which no user with a pip-installed package pays."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return env | {"PYTHONPYCACHEPREFIX": str(scratch / "pycache")} | extra


class ScratchPool:
    """A pool of ``replicas`` workers in ``directory`` (its own state dir and repository),
    applied with the given spec overrides and deleted by ``close``."""

    def __init__(self, directory: Path, name: str, replicas: int, runtime: str,
                 command: Sequence[str], spec: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.state = directory / f"state-{name}"
        self.spec = directory / f"{name}.yaml"
        document: dict[str, Any] = {
            "apiVersion": "reconciler/v1", "kind": "WorkerPool",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "repo": str(make_repo_once(directory)),
                     "runtime": runtime, "tmux": {"socket": f"b{os.getpid()}-{name}"},
                     "worker": {"command": list(command)}, **(spec or {})}}
        self.spec.write_text(yaml.safe_dump(document))
        self.store = self.state / "pools" / name / "store.db"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # the pool's tmux server keeps its socket in the scratch directory too
        env = reconciler_env(self.directory, RECONCILER_STATE_DIR=str(self.state),
                             TMUX_TMPDIR=str(self.directory))
        return subprocess.run([sys.executable, "-m", "reconciler", *args], env=env,
                              check=check, capture_output=True, text=True, timeout=600,
                              cwd=self.directory)

    def apply(self) -> None:
        self.cli("apply", "-f", str(self.spec), "--wait", "--timeout", "300s")

    def rows(self) -> dict[str, sqlite3.Row]:
        """The workers' rows, read straight from the store (read-only, no CLI in the way)."""
        with contextlib.closing(sqlite3.connect(f"file:{self.store}?mode=ro", uri=True,
                                                timeout=5)) as db:
            db.row_factory = sqlite3.Row
            return {r["id"]: r for r in db.execute(
                "SELECT id, pid, started_at, heartbeat_at FROM workers WHERE removed = 0")}

    def controller_pid(self) -> int | None:
        with contextlib.closing(sqlite3.connect(f"file:{self.store}?mode=ro", uri=True,
                                                timeout=5)) as db:
            row = db.execute("SELECT pid FROM controller WHERE id = 1").fetchone()
        return int(row[0]) if row and row[0] else None

    def wait_heartbeating(self, count: int, timeout: float = 300) -> None:
        wait_until(lambda: sum(1 for r in self.rows().values()
                               if r["heartbeat_at"] and r["pid"]) >= count,
                   timeout, f"{count} workers heartbeating", interval=0.1)

    def tmux_server_pid(self) -> int | None:
        """The pool's tmux server, found through the socket path the pool pinned."""
        try:
            sockets = json.loads((self.store.parent / "tmux-sockets.json").read_text())
        except (OSError, ValueError):
            return None
        for path in sockets.values():
            proc = subprocess.run(["tmux", "-S", path, "display-message", "-p", "#{pid}"],
                                  capture_output=True, text=True, check=False)
            if proc.stdout.strip().isdigit():
                return int(proc.stdout.strip())
        return None

    def close(self) -> None:
        self.cli("delete", "-f", str(self.spec), "--force", check=False)


_REPO: dict[Path, Path] = {}


def make_repo_once(directory: Path) -> Path:
    if directory not in _REPO:
        _REPO[directory] = make_repo(directory)
    return _REPO[directory]


def read_beat(path: Path) -> tuple[int, float] | None:
    try:
        pid, at = path.read_text().split()
        return int(pid), float(at)
    except (OSError, ValueError):
        return None


class Supervisord:
    """``supervisord`` running ``programs`` copies of the beater, each restarted on exit."""

    def __init__(self, directory: Path, programs: int, executable: str) -> None:
        self.directory = directory / "supervisord"
        self.directory.mkdir(parents=True)
        beater = self.directory / "beater.py"
        beater.write_text(BEATER)
        self.beats = [self.directory / f"beat-{i}" for i in range(programs)]
        conf = [f"[supervisord]\nnodaemon=true\nlogfile={self.directory}/supervisord.log\n"
                f"pidfile={self.directory}/supervisord.pid\n"
                f"[unix_http_server]\nfile={self.directory}/s.sock\n"
                "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
                "supervisor.rpcinterface:make_main_rpcinterface\n"]
        for i, beat in enumerate(self.beats):
            conf.append(f"[program:w{i}]\ncommand={sys.executable} {beater} {beat}\n"
                        "autorestart=true\nstartsecs=0\nstdout_logfile=NONE\n"
                        "stderr_logfile=NONE\n")
        (self.directory / "supervisord.conf").write_text("".join(conf))
        self.process = subprocess.Popen([executable, "-c",
                                         str(self.directory / "supervisord.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: all(read_beat(b) for b in self.beats), 30,
                   "supervisord's programs to start")

    def daemon_pids(self) -> list[int]:
        return [self.process.pid]

    def close(self) -> None:
        stop_tree(self.process.pid)
        self.process.wait(timeout=30)


class Pm2:
    """pm2 (its own ``PM2_HOME``) running ``programs`` copies of the beater; with
    ``worker_start``, each copy first imports what our worker imports and opens a
    store, so the restart compares supervisors on the same program start."""

    def __init__(self, directory: Path, programs: int, executable: str, *,
                 worker_start: bool = False) -> None:
        self.executable = executable
        self.directory = directory / "pm2"
        self.directory.mkdir(parents=True)
        beater = self.directory / "beater.py"
        beater.write_text(BEATER)
        self.env = reconciler_env(self.directory, PM2_HOME=str(self.directory / "home"))
        self.beats = [self.directory / f"beat-{i}" for i in range(programs)]
        store = [str(self.directory / "store.db")] if worker_start else []
        for i, beat in enumerate(self.beats):
            self.pm2("start", str(beater), "--name", f"w{i}", "--interpreter",
                     sys.executable, "--", str(beat), *store)
        wait_until(lambda: all(read_beat(b) for b in self.beats), 60,
                   "pm2's programs to start")

    def pm2(self, *args: str) -> None:
        subprocess.run([self.executable, *args], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def daemon_pids(self) -> list[int]:
        pid_file = self.directory / "home" / "pm2.pid"
        with contextlib.suppress(OSError, ValueError):
            return [int(pid_file.read_text())]
        return []

    def close(self) -> None:
        pids = self.daemon_pids()
        self.pm2("kill")
        for pid in pids:  # pm2 kill stops its daemon and programs; make sure of it
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(timeout=10)


def stop_tree(pid: int) -> None:
    """SIGTERM ``pid`` (a daemon this run started) and SIGKILL what of it is left."""
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(pid)
        children = parent.children(recursive=True)
        parent.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs([parent, *children], timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def find_tool(name: str, candidates: Iterable[Path]) -> str | None:
    """``name`` on PATH, or in one of ``candidates`` (a benchmark-only install)."""
    found = shutil.which(name)
    if found:
        return found
    return next((str(c) for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


TOOLS = ROOT / "benchmarks" / ".tools"  # benchmark-only installs (git-ignored)


def supervisord_executable() -> str | None:
    return find_tool("supervisord", [TOOLS / "sv" / "bin" / "supervisord"])


def pm2_executable() -> str | None:
    return find_tool("pm2", [TOOLS / "pm2" / "node_modules" / ".bin" / "pm2"])


INSTALL_HINT = ("install the baselines for benchmarks only: python3 -m venv "
                "benchmarks/.tools/sv && benchmarks/.tools/sv/bin/pip install supervisor; "
                "mkdir -p benchmarks/.tools/pm2 && (cd benchmarks/.tools/pm2 && "
                "echo '{}' > package.json && npm install pm2)  # pm2 needs Node.js and npm")


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of ``pids`` (every thread), 0 for the ones gone."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def wakeups(pid: int) -> int:
    """Context switches of every thread of ``pid``: each sleep that ended is one wake-up."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    return total
