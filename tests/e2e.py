"""Drive a pool through the real CLI and read its state back, for end-to-end tests.

Everything here goes through ``reconcile`` subprocesses (or tmux and git
themselves), never through the package's internals, so a test reads what an
operator would see.  ``spec`` is the path of a ``workers.yaml`` written by
``tests.helpers.write_spec``; ``host`` is the directory the ``host`` fixture
yields.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import git, reconcile, wait_for

# --------------------------------------------------------------------------- where things are


def state_dir(host: Path) -> Path:
    """The state directory the ``host`` fixture points ``RECONCILER_STATE_DIR`` at."""
    return host / "state"


def pool_dir(host: Path, pool: str = "testpool") -> Path:
    return state_dir(host) / "pools" / pool


# --------------------------------------------------------------------------- commands


def reconcile_json(*args: str) -> Any:
    """Run a read command with ``-o json`` (it must succeed) and parse its document."""
    return json.loads(reconcile(*args, "-o", "json", check=True).stdout)


def apply(spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``apply --wait``: returns once every worker has started (fails the test otherwise)."""
    return reconcile("apply", "-f", str(spec), "--wait", "--timeout", "60s", *extra, check=True)


def diff(spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``diff`` as is: exit 0 in sync, 2 changes pending, 1 error."""
    return reconcile("diff", "-f", str(spec), *extra)


def delete(spec: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return reconcile("delete", "-f", str(spec), *extra, check=True)


def set_spec(spec: Path, **changes: Any) -> None:
    """Edit the spec file in place (``replicas=5``, ``command=[...]``...)."""
    document = yaml.safe_load(spec.read_text())
    for key, value in changes.items():
        if key == "command":
            document["spec"]["worker"]["command"] = value
        else:
            document["spec"][key] = value
    spec.write_text(yaml.safe_dump(document, sort_keys=False))


# --------------------------------------------------------------------------- workers


def status(spec: Path) -> dict[str, Any]:
    """``status -o json`` (exit 3 just means "unhealthy": the document is still there)."""
    proc = reconcile("status", "-f", str(spec), "-o", "json")
    assert proc.returncode in (0, 3), proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def workers(spec: Path) -> dict[str, dict[str, Any]]:
    """The workers of ``status``, by id."""
    return {w["id"]: w for w in status(spec)["workers"]}


def live_workers(spec: Path) -> list[str]:
    """The ids of the workers that have a process."""
    return [w["id"] for w in status(spec)["workers"] if w["pid"]]


def worker_pid(spec: Path, worker_id: str) -> int:
    pid: int = workers(spec)[worker_id]["pid"]
    assert pid, f"{worker_id} has no process"
    return pid


def replaced(spec: Path, worker_id: str, old_pid: int) -> int | None:
    """The new pid of ``worker_id`` once it runs in another process than ``old_pid``."""
    pid: int | None = workers(spec).get(worker_id, {}).get("pid")
    return pid if pid and pid != old_pid else None


def kill_worker(spec: Path, worker_id: str) -> int:
    """SIGKILL the worker's process and wait until ``status`` shows it without one.

    Only for a pool without a controller (which would replace the worker at once).
    Returns the killed pid.
    """
    pid = worker_pid(spec, worker_id)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker_id not in live_workers(spec), message=f"{worker_id} to die")
    return pid


def wait_healthy(spec: Path, replicas: int, timeout: float = 20) -> None:
    """Wait until the pool has ``replicas`` workers, each healthy or working."""
    def healthy() -> bool:
        found = workers(spec).values()
        return len(found) == replicas and all(w["health"] in ("healthy", "working")
                                              for w in found)
    wait_for(healthy, timeout=timeout, message=f"{replicas} healthy worker(s)")


def events(spec: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Every event of the pool (oldest first), or those of one ``kind``."""
    found: list[dict[str, Any]] = reconcile_json("events", "-f", str(spec), "--limit", "100000")
    return [e for e in found if kind is None or e["kind"] == kind]


# --------------------------------------------------------------------------- tasks


def add_task(spec: Path, prompt: str | None = None, *, title: str = "t",
             prompt_file: Path | None = None, priority: int | None = None) -> str:
    """``task add``; returns the new task's id."""
    args = ["task", "add", "-f", str(spec), "--title", title]
    if prompt is not None:
        args += ["--prompt", prompt]
    if prompt_file is not None:
        args += ["--prompt-file", str(prompt_file)]
    if priority is not None:
        args += ["--priority", str(priority)]
    return reconcile(*args, check=True).stdout.strip()


def enqueue(spec: Path, directory: Path, count: int, prompt: str = "do it") -> None:
    """Import ``count`` tasks titled ``task N`` with prompt ``<prompt> N``."""
    tasks_file = directory / "tasks.yaml"
    tasks_file.write_text(yaml.safe_dump([{"title": f"task {i}", "prompt": f"{prompt} {i}"}
                                          for i in range(1, count + 1)]))
    reconcile("task", "import", str(tasks_file), "-f", str(spec), check=True)


def wait_tasks(spec: Path, *task_ids: str, timeout: str = "60s") -> None:
    """``task wait`` for these tasks (all of them if none is named); fails on a timeout."""
    reconcile("task", "wait", *task_ids, "-f", str(spec), "--timeout", timeout, check=True)


def tasks(spec: Path) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = reconcile_json("task", "list", "-f", str(spec))
    return result


def show_task(spec: Path, task_id: str | int) -> dict[str, Any]:
    """``task show``: the task with its ``attempt_details``."""
    result: dict[str, Any] = reconcile_json("task", "show", str(task_id), "-f", str(spec))
    return result


def running_attempt(spec: Path, task_id: str) -> dict[str, Any]:
    """Wait until the task's latest attempt runs an agent process, and return it."""
    def started() -> dict[str, Any] | None:
        attempts = show_task(spec, task_id)["attempt_details"]
        last = attempts[-1] if attempts else None
        return last if last and last["status"] == "running" and last["pid"] else None
    result: dict[str, Any] = wait_for(started, message=f"task {task_id} to run")
    return result


# --------------------------------------------------------------------------- tmux and git


def tmux_windows(socket: str) -> list[str]:
    """The names of every window on the tmux server ``-L socket`` (none if it is down)."""
    proc = subprocess.run(["tmux", "-L", socket, "list-windows", "-a", "-F", "#{window_name}"],
                          capture_output=True, text=True, check=False)
    return sorted(proc.stdout.split()) if proc.returncode == 0 else []


def worktree_paths(repo: Path) -> list[str]:
    return [line.removeprefix("worktree ") for line in
            git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]
