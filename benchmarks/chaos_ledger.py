"""The chaos ledger suite: drain a queue while killing the pool, then audit it.

It builds a throwaway pool (its own temporary directory, state directory, git
repository, ``TMUX_TMPDIR`` and tmux socket: never your tmux server or state),
whose agent is ``benchmarks/ledger_agent.py``.  Every agent writes a ledger
outside the store (``start``/``end`` lines with pid and time) and holds a
per-task ``flock`` for its whole life, so two agents alive at once on one task
leave a ``duplicate`` line.  Some agents (tasks whose id is a multiple of 17,
first attempt) SIGKILL their own worker and keep working for 3-5 s: for odd
multiples (17, 51...) the launcher does it (``kill -9 $PPID`` a millisecond
after the fork, before the worker can record the agent's pid), for even ones
the agent does it once started (``os.kill(os.getppid(), SIGKILL)``).

Then it applies the pool with its controller on, enqueues the tasks, and for
``--duration`` seconds SIGKILLs a random worker or agent every
``--interval`` seconds; it also SIGKILLs the controller twice (and restarts it
with ``apply`` one interval later, as an operator would) and kills the tmux
server once.  It waits for every task to finish, deletes the pool, and checks:

* lost = 0: every task succeeded, or failed for good with its reason recorded;
* concurrent duplicates = 0: no ``duplicate`` line in the ledger;
* double completions (extra ``end`` lines of a task) <= the kills that hit a
  finished-but-unrecorded attempt: the agent had written ``end`` before the
  kill but the store still showed the attempt running (counted at kill time);
* orphan worktrees = 0 (``git worktree list`` and the worktree directory);
* orphan processes = 0 (no agent of the ledger, and nothing naming the
  temporary directory, alive after ``delete``), zombies = 0.

Full size (what issue 7 asks for):
``.venv/bin/python benchmarks/chaos_ledger.py --tasks 500 --workers 8 --duration 100``.
``tests/test_chaos_ledger.py`` runs it small.  Exit 0 when every requirement
holds, 1 when one fails, 2 when the pool could not even be set up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

HERE = Path(__file__).resolve().parent
AGENT = HERE / "ledger_agent.py"
POOL = "chaos"
CLI = [sys.executable, "-m", "reconciler"]
FINAL = frozenset({"succeeded", "failed", "cancelled"})
ORPHAN_GRACE = 2.0  # seconds after delete returns
GIT_IDENTITY = ["-c", "user.name=chaos", "-c", "user.email=chaos@localhost"]
# Starts the agent; first, for the agents chosen to kill their worker "early", it does
# so (``kill -9 $PPID``: a millisecond after the fork, before the worker can have
# recorded the agent's pid), then execs the agent, which keeps the pid.  No braces:
# the pool would read them as placeholders.
LAUNCHER = """n=$1; mode=$2; shift 2
if [ "$n" -gt 0 ] && [ "$RECONCILER_ATTEMPT" = 1 ] && [ $((RECONCILER_TASK_ID % n)) -eq 0 ]; then
  k=$((RECONCILER_TASK_ID / n))
  if [ "$mode" = all ] || [ "$mode" = odd -a $((k % 2)) -eq 1 ]; then kill -9 "$PPID"; fi
fi
exec "$@"
"""


@dataclass(frozen=True)
class Config:
    tasks: int = 500
    workers: int = 8
    duration: float = 100.0  # seconds of kills
    interval: float = 2.0  # one worker or agent kill per interval
    seed: int = 7
    wait_timeout: float = 600.0  # for the queue to drain after the kills
    kill_worker_every: int = 17  # agents of these tasks kill their own worker (attempt 1)
    early: str = "odd"  # which of them do it from the launcher: none, odd (by id // N), all
    restart_backoff: str = "1s"  # restartPolicy.backoff (the default)
    keep: bool = False  # keep the temporary directory (for a post-mortem)
    verbose: bool = False


def sigkill(pid: int) -> bool:
    """SIGKILL a process this run started; False if it is already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Figures:
    tasks: int = 0
    workers: int = 0
    duration: float = 0.0
    kills_worker: int = 0
    kills_agent: int = 0
    kills_controller: int = 0
    kills_tmux_server: int = 0
    workers_killed_by_their_agent: int = 0
    controller_restarts: int = 0
    attempts: int = 0
    retries: int = 0  # attempts - tasks
    succeeded: int = 0
    failed_explained: int = 0
    lost: int = 0
    double_completions: int = 0  # end lines beyond the first, summed over tasks
    tasks_completed_twice: int = 0
    kills_hitting_finished_unrecorded: int = 0
    concurrent_duplicates: int = 0  # duplicate lines in the ledger
    tasks_run_twice_at_once: int = 0
    orphan_worktrees: int = 0
    orphan_processes: int = 0
    zombies: int = 0
    elapsed: float = 0.0
    drained: bool = False  # every task finished within the wait timeout
    delete_ok: bool = False
    failures: list[str] = field(default_factory=list)  # the requirements that do not hold
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


class SetupError(Exception):
    """The pool could not be built or applied: no figures to report."""


# --------------------------------------------------------------------------- the ledger


def read_ledger(ledger: Path) -> list[dict[str, Any]]:
    path = ledger / "ledger.jsonl"
    if not path.exists():
        return []
    lines = []
    for raw in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(raw))
    return lines


def ends_by_attempt(lines: list[dict[str, Any]]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """(task, attempt) -> its ``end`` lines."""
    found: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for line in lines:
        if line["event"] == "end":
            found.setdefault((line["task"], line["attempt"]), []).append(line)
    return found


@dataclass(frozen=True)
class Kill:
    """One kill, and the attempts the store showed running just before it."""

    kind: str  # worker, agent, tmux server
    at: float  # time.time() just before the signal
    victims: tuple[tuple[int, int], ...]  # (task, attempt number)
    pid: int | None = None  # the worker or agent killed

    def hit_finished(self, ends: dict[tuple[int, int], list[dict[str, Any]]]
                     ) -> list[tuple[int, int]]:
        """The victims that had finished (their agent wrote ``end``) when the kill
        landed: before it was sent, or while the killed worker was still dying (the
        ``end`` line names it as the agent's parent), or, for an agent kill, at all."""
        return [victim for victim in self.victims
                if any(line["time"] <= self.at
                       or (self.kind == "worker" and line["ppid"] == self.pid)
                       or (self.kind == "agent" and line["pid"] == self.pid)
                       for line in ends.get(victim, []))]


def is_agent(pid: int, ledger: Path) -> bool:
    """``pid`` is a live (not zombie) ledger agent of this run (not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and \
            any(str(ledger) == part for part in proc.cmdline())
    except psutil.Error:
        return False


def live_agents(ledger: Path) -> dict[int, tuple[int, int]]:
    """pid -> (task, attempt) of every agent that started, has not written ``end``,
    and is alive."""
    lines = read_ledger(ledger)
    ended = {line["pid"] for line in lines if line["event"] == "end"}
    return {line["pid"]: (line["task"], line["attempt"]) for line in lines
            if line["event"] == "start" and line["pid"] not in ended
            and is_agent(line["pid"], ledger)}


# --------------------------------------------------------------------------- the pool


class Pool:
    """One throwaway pool, driven through the real CLI."""

    def __init__(self, workdir: Path, config: Config) -> None:
        self.config = config
        self.workdir = workdir
        self.state = workdir / "state"
        self.repo = workdir / "repo"
        self.ledger = workdir / "ledger"
        self.tmux_dir = workdir / "tmux"
        self.socket = f"chaos-{os.getpid()}"
        self.spec = workdir / "workers.yaml"
        self.store_path = self.state / "pools" / POOL / "store.db"
        self.worktrees = self.state / "pools" / POOL / "worktrees"
        self.env = {k: v for k, v in os.environ.items() if k != "TMUX"}
        self.env |= {"TMUX_TMPDIR": str(self.tmux_dir), "RECONCILER_STATE_DIR": str(self.state)}

    def log(self, message: str) -> None:
        if self.config.verbose:
            print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    def cli(self, *args: str, check: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*CLI, "--state-dir", str(self.state), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise SetupError(f"reconcile {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.repo), *args], check=True,
                              capture_output=True, text=True).stdout

    def create(self) -> None:
        for directory in (self.state, self.repo, self.ledger, self.tmux_dir):
            directory.mkdir(mode=0o700)
        self.git("init", "-q", "-b", "main")
        (self.repo / "README.md").write_text("# chaos ledger\n")
        self.git("add", "README.md")
        self.git(*GIT_IDENTITY, "commit", "-q", "-m", "initial")
        every, early = self.config.kill_worker_every, self.config.early
        command = [sys.executable, str(AGENT), "--ledger", str(self.ledger),
                   "--kill-worker-every", str(every), "--early", early]
        if every > 0 and early != "none":
            command = ["/bin/sh", "-c", LAUNCHER, "launcher", str(every), early, *command]
        document = {
            "apiVersion": "reconciler/v1", "kind": "WorkerPool", "metadata": {"name": POOL},
            "spec": {
                "replicas": self.config.workers, "repo": str(self.repo), "baseRef": "main",
                "runtime": "tmux", "tmux": {"socket": self.socket},
                "worker": {"command": command, "stopGrace": "5s"},
                "worktrees": {"cleanup": "always"},
                "tasks": {"timeout": "2m", "maxAttempts": 10, "retryBackoff": "200ms"},
                "health": {"heartbeatInterval": "200ms", "unresponsiveAfter": "3s",
                           "deadAfter": "8s"},
                "restartPolicy": {"maxRestarts": 1000, "window": "10m", "resetAfter": "10s",
                                  "backoff": self.config.restart_backoff},
                "controller": {"enabled": True, "interval": "300ms"},
            }}
        self.spec.write_text(yaml.safe_dump(document, sort_keys=False))

    def apply(self, wait: bool = False) -> bool:
        extra = ["--wait", "--timeout", "60s"] if wait else []
        proc = self.cli("apply", "-f", str(self.spec), *extra, check=wait)
        return proc.returncode == 0

    def enqueue(self, count: int) -> None:
        tasks_file = self.workdir / "tasks.yaml"
        tasks_file.write_text(yaml.safe_dump([{"title": f"chaos {i}", "prompt": f"task {i}"}
                                              for i in range(1, count + 1)]))
        self.cli("task", "import", str(tasks_file), "-f", str(self.spec), check=True)

    def status(self) -> dict[str, Any]:
        proc = self.cli("status", "-f", str(self.spec), "-o", "json")
        try:
            document: dict[str, Any] = json.loads(proc.stdout)
        except ValueError:
            return {"workers": [], "controller": {}}
        return document

    @contextlib.contextmanager
    def store(self) -> Iterator[sqlite3.Connection]:
        """The store, read-only (never a write from the audit)."""
        db = sqlite3.connect(f"file:{self.store_path}?mode=ro", uri=True, timeout=30)
        try:
            yield db
        finally:
            db.close()

    def running_attempts(self, worker_id: str | None = None) -> list[tuple[int, int]]:
        """(task, attempt number) of the attempts the store shows running."""
        query = "SELECT task_id, number FROM attempts WHERE status = 'running'"
        params: tuple[str, ...] = ()
        if worker_id is not None:
            query += " AND worker_id = ?"
            params = (worker_id,)
        with self.store() as db:
            return [(int(t), int(n)) for t, n in db.execute(query, params)]

    def tasks(self) -> list[tuple[int, str, str | None]]:
        with self.store() as db:
            return [(int(i), str(s), e) for i, s, e in
                    db.execute("SELECT id, status, last_error FROM tasks ORDER BY id")]

    def first_attempt_tasks(self) -> set[int]:
        with self.store() as db:
            return {int(r[0]) for r in db.execute(
                "SELECT task_id FROM attempts WHERE number = 1")}

    def attempt_count(self) -> int:
        with self.store() as db:
            return int(db.execute("SELECT count(*) FROM attempts").fetchone()[0])

    def kill_tmux_server(self) -> bool:
        proc = subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env,
                              capture_output=True, check=False)
        return proc.returncode == 0

    def ours(self) -> list[psutil.Process]:
        """Live processes of this run: anything naming the temporary directory
        (agents, by their ``--ledger``; workers and controller, by ``--state-dir``;
        the tmux server, by its config file)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):  # zombies have no command line
                if proc.pid != os.getpid() and \
                        any(str(self.workdir) in part for part in proc.cmdline()):
                    found.append(proc)
        return found

    def zombies(self) -> list[int]:
        """Our agents that are zombies (dead, never reaped)."""
        agents = {line["pid"] for line in read_ledger(self.ledger) if line["event"] == "start"}
        found = []
        for pid in agents:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    found.append(pid)
        return found

    def cleanup(self) -> None:
        """Kill what the run left behind (by pid, ours only) and remove the directory."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env,
                       capture_output=True, check=False)
        procs = self.ours()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=5)
        if not self.config.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------- chaos


class Chaos:
    """Kills, counted, with the finished-but-unrecorded attempts each one hit."""

    def __init__(self, pool: Pool, figures: Figures, rng: random.Random) -> None:
        self.pool = pool
        self.figures = figures
        self.rng = rng
        self.kills: list[Kill] = []  # judged once the ledger is complete

    def hits(self) -> list[dict[str, Any]]:
        """The kills that hit a finished-but-unrecorded attempt: the store still showed
        it running, but its agent had written ``end`` (its result may be lost, and the
        task rerun: a double completion no pool could avoid)."""
        ends = ends_by_attempt(read_ledger(self.pool.ledger))
        return [{"kind": kill.kind, "task": task, "attempt": attempt, "at": round(kill.at, 3)}
                for kill in self.kills for task, attempt in kill.hit_finished(ends)]

    def kill_worker_or_agent(self) -> str | None:
        kinds = ["worker", "agent"]
        self.rng.shuffle(kinds)
        for kind in kinds:
            done = self.kill_worker() if kind == "worker" else self.kill_agent()
            if done:
                return kind
        return None

    def kill_worker(self) -> bool:
        alive = [w for w in self.pool.status().get("workers", []) if w.get("pid")]
        if not alive:
            return False
        victim = self.rng.choice(alive)
        running = self.pool.running_attempts(victim["id"])
        at = time.time()
        if not sigkill(victim["pid"]):
            return False
        self.figures.kills_worker += 1
        self.pool.log(f"killed worker {victim['id']} (pid {victim['pid']}) at {at:.3f}, "
                      f"running {running}")
        self.kills.append(Kill("worker", at, tuple(running), victim["pid"]))
        return True

    def kill_agent(self) -> bool:
        agents = live_agents(self.pool.ledger)
        if not agents:
            return False
        pid = self.rng.choice(sorted(agents))
        at = time.time()
        if not sigkill(pid):
            return False
        self.figures.kills_agent += 1
        self.pool.log(f"killed agent {pid} of task {agents[pid]}")
        self.kills.append(Kill("agent", at, (agents[pid],), pid))
        return True

    def kill_controller(self) -> bool:
        pid = self.pool.status().get("controller", {}).get("pid")
        if not pid:
            return False
        if not sigkill(pid):
            return False
        self.figures.kills_controller += 1
        self.pool.log(f"killed the controller (pid {pid})")
        return True

    def kill_tmux_server(self) -> bool:
        running = self.pool.running_attempts()
        at = time.time()
        if not self.pool.kill_tmux_server():
            return False
        self.figures.kills_tmux_server += 1
        self.pool.log(f"killed the tmux server, running {running}")
        self.kills.append(Kill("tmux server", at, tuple(running)))
        return True

    def restart_controller(self) -> bool:
        if self.pool.apply():
            self.figures.controller_restarts += 1
            self.pool.log("restarted the controller (apply)")
            return True
        return False

    def run(self, duration: float, interval: float) -> None:
        """A worker or agent kill every ``interval``; the controller at 30% and 70% of
        the ticks (restarted one tick later), the tmux server at 50%.  A kill that
        finds nothing to kill (the controller between restarts) is tried again at the
        next tick."""
        ticks = int(duration // interval)
        due_controller = [max(1, round(ticks * 0.3)), max(1, round(ticks * 0.7))]
        due_tmux = [max(1, round(ticks * 0.5))]
        pending_controller = pending_tmux = 0
        controller_down = False
        start = time.monotonic()
        for tick in range(1, ticks + 1):
            time.sleep(max(0.0, start + tick * interval - time.monotonic()))
            if controller_down:
                controller_down = not self.restart_controller()
            self.kill_worker_or_agent()
            pending_controller += due_controller.count(tick)
            pending_tmux += due_tmux.count(tick)
            if pending_controller and not controller_down and self.kill_controller():
                pending_controller -= 1
                controller_down = True
            if pending_tmux and self.kill_tmux_server():
                pending_tmux -= 1
        if controller_down:
            self.restart_controller()


# --------------------------------------------------------------------------- the run


def wait_drained(pool: Pool, timeout: float) -> bool:
    """Wait until every task is final; restart the controller if it is down."""
    deadline = time.monotonic() + timeout
    next_check = 0.0
    while time.monotonic() < deadline:
        if all(status in FINAL for _, status, _ in pool.tasks()):
            return True
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + 5
            if not pool.status().get("controller", {}).get("running"):
                pool.apply()
        time.sleep(0.5)
    return False


def launcher_kills(task_ids: set[int], every: int, early: str) -> int:
    """How many first attempts killed their worker from the launcher (see LAUNCHER)."""
    if every <= 0 or early == "none":
        return 0
    return sum(1 for task in task_ids if task % every == 0
               and (early == "all" or (task // every) % 2 == 1))


def audit(pool: Pool, figures: Figures, deleted_at: float) -> None:
    """Count what the requirements are about, after the pool was deleted (at
    ``deleted_at``, when ``delete`` returned)."""
    config = figures.tasks
    rows = pool.tasks()
    figures.attempts = pool.attempt_count()
    figures.retries = figures.attempts - config
    figures.succeeded = sum(status == "succeeded" for _, status, _ in rows)
    figures.failed_explained = sum(status == "failed" and bool(error) for _, status, error in rows)
    unexplained = [(task, status) for task, status, error in rows
                   if status != "succeeded" and not (status == "failed" and error)]
    figures.lost = len(unexplained) + max(0, config - len(rows))
    lines = read_ledger(pool.ledger)
    ends = Counter(line["task"] for line in lines if line["event"] == "end")
    figures.double_completions = sum(n - 1 for n in ends.values() if n > 1)
    figures.tasks_completed_twice = sum(n > 1 for n in ends.values())
    duplicates = [line for line in lines if line["event"] == "duplicate"]
    figures.concurrent_duplicates = len(duplicates)
    figures.tasks_run_twice_at_once = len({line["task"] for line in duplicates})
    # the launcher's kills are counted from the rule, not the ledger: the kernel's SIGTERM
    # as the worker dies (PR_SET_PDEATHSIG) may end it before the agent could note one
    late = sum(line["event"] == "killed-worker" and not line.get("early") for line in lines)
    figures.workers_killed_by_their_agent = late + launcher_kills(
        pool.first_attempt_tasks(), pool.config.kill_worker_every, pool.config.early)
    listed = [line.removeprefix("worktree ") for line in
              pool.git("worktree", "list", "--porcelain").splitlines()
              if line.startswith("worktree ")]
    stray_worktrees = [p for p in listed if Path(p) != pool.repo]
    left_in_dir = sorted(str(p) for p in pool.worktrees.iterdir()) \
        if pool.worktrees.is_dir() else []
    figures.orphan_worktrees = len(set(stray_worktrees) | set(left_in_dir))
    # alive after delete: still there after a short grace for its last kills to land,
    # or (an agent) writing to the ledger after delete returned
    time.sleep(max(0.0, deleted_at + ORPHAN_GRACE - time.time()))
    leftovers = {proc.pid: _describe(proc) for proc in pool.ours()}
    for line in read_ledger(pool.ledger):
        if line["time"] > deleted_at:
            leftovers.setdefault(line["pid"], f"{line['pid']} ledger agent of task "
                                 f"{line['task']}, {line['event']} after delete")
    figures.orphan_processes = len(leftovers)
    # a dead orphan is reaped by init, which may take a moment (or never, in a container)
    deadline = time.monotonic() + 10
    while (zombies := pool.zombies()) and time.monotonic() < deadline:
        time.sleep(0.5)
    figures.zombies = len(zombies)
    figures.details = {
        "not_final_or_unexplained": unexplained[:20],
        "duplicates": [{k: line[k] for k in ("task", "attempt", "pid", "holder")}
                       for line in duplicates[:20]],
        "completed_twice": sorted(task for task, n in ends.items() if n > 1)[:50],
        "orphan_worktrees": sorted(set(stray_worktrees) | set(left_in_dir))[:20],
        "orphan_processes": sorted(leftovers.values())[:20],
        "zombies": zombies[:20],
    }


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:160]}"
    except psutil.Error:
        return str(proc.pid)


def judge(figures: Figures) -> None:
    checks = [
        (figures.drained, "not every task finished within the wait timeout"),
        (figures.delete_ok, "`reconcile delete` failed"),
        (figures.lost == 0, f"{figures.lost} task(s) lost"),
        (figures.concurrent_duplicates == 0,
         f"{figures.concurrent_duplicates} concurrent duplicate(s): two agents alive at once "
         f"on {figures.tasks_run_twice_at_once} task(s)"),
        (figures.double_completions <= figures.kills_hitting_finished_unrecorded,
         f"{figures.double_completions} double completion(s) for only "
         f"{figures.kills_hitting_finished_unrecorded} kill(s) that hit a finished-but-"
         "unrecorded attempt"),
        (figures.orphan_worktrees == 0, f"{figures.orphan_worktrees} orphan worktree(s)"),
        (figures.orphan_processes == 0, f"{figures.orphan_processes} orphan process(es)"),
        (figures.zombies == 0, f"{figures.zombies} zombie(s)"),
    ]
    figures.failures = [message for ok, message in checks if not ok]


def run(config: Config) -> Figures:
    """Build a pool, attack it, audit it, and clean up; returns the figures.

    Raises ``SetupError`` if the pool could not be built or applied.
    """
    figures = Figures(tasks=config.tasks, workers=config.workers, duration=config.duration)
    started = time.monotonic()
    # short: the tmux socket path under it must fit in sun_path (108 bytes)
    pool = Pool(Path(tempfile.mkdtemp(prefix="rcl-")), config)
    try:
        pool.create()
        pool.apply(wait=True)
        pool.enqueue(config.tasks)
        chaos = Chaos(pool, figures, random.Random(config.seed))
        chaos.run(config.duration, config.interval)
        figures.drained = wait_drained(pool, config.wait_timeout)
        figures.delete_ok = pool.cli("delete", "-f", str(pool.spec)).returncode == 0
        audit(pool, figures, deleted_at=time.time())
        hits = chaos.hits()
        figures.kills_hitting_finished_unrecorded = len(hits)
        figures.details["hits"] = hits[:50]
        if config.keep:
            figures.details["workdir"] = str(pool.workdir)
    finally:
        pool.cleanup()
    figures.elapsed = round(time.monotonic() - started, 1)
    judge(figures)
    return figures


# --------------------------------------------------------------------------- output


def table(figures: Figures) -> str:
    rows = [
        ("tasks", figures.tasks),
        ("workers", figures.workers),
        ("duration of kills", f"{figures.duration:g} s"),
        ("kills: worker", figures.kills_worker),
        ("kills: agent", figures.kills_agent),
        ("kills: controller", figures.kills_controller),
        ("kills: tmux server", figures.kills_tmux_server),
        ("workers killed by their agent", figures.workers_killed_by_their_agent),
        ("controller restarts (apply)", figures.controller_restarts),
        ("attempts", figures.attempts),
        ("retries (attempts - tasks)", figures.retries),
        ("succeeded", figures.succeeded),
        ("failed, reason recorded", figures.failed_explained),
        ("lost", figures.lost),
        ("double completions", figures.double_completions),
        ("kills hitting finished-but-unrecorded", figures.kills_hitting_finished_unrecorded),
        ("concurrent duplicates", figures.concurrent_duplicates),
        ("tasks with two agents at once", figures.tasks_run_twice_at_once),
        ("orphan worktrees", figures.orphan_worktrees),
        ("orphan processes", figures.orphan_processes),
        ("zombies", figures.zombies),
        ("elapsed", f"{figures.elapsed:g} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append("")
    if figures.ok:
        lines.append("PASS: every requirement holds")
    else:
        lines += [f"FAIL: {message}" for message in figures.failures]
        for key in ("duplicates", "completed_twice", "not_final_or_unexplained",
                    "orphan_worktrees", "orphan_processes", "zombies", "hits"):
            if figures.details.get(key):
                lines.append(f"  {key}: {figures.details[key]}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chaos_ledger", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    parser.add_argument("--tasks", type=int, default=defaults.tasks,
                        help="tasks to drain (default %(default)s)")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="replicas (default %(default)s)")
    parser.add_argument("--duration", type=float, default=defaults.duration,
                        help="seconds of kills (default %(default)s)")
    parser.add_argument("--interval", type=float, default=defaults.interval,
                        help="seconds between worker/agent kills (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="random seed (default %(default)s)")
    parser.add_argument("--wait-timeout", type=float, default=defaults.wait_timeout,
                        help="seconds to wait for the queue to drain after the kills "
                        "(default %(default)s)")
    parser.add_argument("--kill-worker-every", type=int, default=defaults.kill_worker_every,
                        metavar="N", help="agents of tasks whose id is a multiple of N kill "
                        "their own worker on their first attempt (0: none)")
    parser.add_argument("--early", choices=["none", "odd", "all"], default=defaults.early,
                        help="which of those agents kill their worker from the launcher, "
                        "before it can record their pid (odd: ids N, 3N, 5N...; the others "
                        "do it from Python once started; default %(default)s)")
    parser.add_argument("--restart-backoff", default=defaults.restart_backoff,
                        help="the pool's restartPolicy.backoff (default %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (ledger, state, repo) afterwards")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each kill to stderr")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.workers < 1 or args.duration < 0 or args.interval <= 0:
        parser.error("--tasks and --workers must be at least 1, --duration at least 0, "
                     "--interval above 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    config = Config(tasks=args.tasks, workers=args.workers, duration=args.duration,
                    interval=args.interval, seed=args.seed, wait_timeout=args.wait_timeout,
                    kill_worker_every=args.kill_worker_every, early=args.early,
                    restart_backoff=args.restart_backoff, keep=args.keep,
                    verbose=args.verbose)
    try:
        figures = run(config)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps({**asdict(figures), "ok": figures.ok}, indent=2))
    else:
        print(table(figures))
        if "workdir" in figures.details:
            print(f"kept: {figures.details['workdir']} (ledger, state, repository)")
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
