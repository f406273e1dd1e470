"""A stand-in for pueue's client ``pueue`` and daemon ``pueued``, for reconciler's tests.

pueue (https://github.com/Nukesor/pueue) cannot be installed on our build machines, so the
integration tests run these two scripts instead.  They follow pueue 4.0.4's source (tag
``v4.0.4``; 3.4.1 for the 3.x JSON shape); every behaviour cites the file it follows.
Paths below are relative to that repository unless they name another crate.

Where it lives and how to switch it (all documented here, nowhere else):

- State directory: ``--config PATH`` / ``-c PATH`` (pueue's config file option,
  ``pueue/src/client/cli.rs`` ``CliArguments.config``) makes the file's parent directory
  the state directory; without it, ``$PUEUE_STANDIN_DIR`` names the directory.  With
  neither the commands fail: the stand-in never falls back to the user's home and does not
  read ``$PUEUE_CONFIG_PATH`` (a real pueue user's variable).  The directory holds what
  pueue splits over ``pueue_directory`` and ``runtime_directory``
  (``pueue_lib/src/settings.rs``): ``state.json``, ``pueue.pid``,
  ``pueue_<user>.socket`` and ``task_logs/<id>.log``.  SIMPLIFIED: the config file's
  contents are never read; ``pueued`` only creates it (empty but for a comment) when it is
  missing, as ``pueue/src/daemon/mod.rs`` ``run`` saves a default config.
- ``PUEUE_STANDIN_VERSION=3`` in ``pueued``'s environment makes ``status --json`` print
  pueue 3.4.x's shape; unset or ``4`` prints 4.0.x's.  The state file is always 4.0.x's.

SIMPLIFIED throughout: client and daemon speak one JSON line each way over the unix socket
(pueue speaks CBOR after a shared-secret handshake, ``pueue_lib/src/network``); no
dependencies (``--after``), delays, aliases, callbacks, ``log``/``follow``/``wait``/``edit``/
``env``/``stash``/``enqueue``/``switch``/``remove``/``reset``, and no config settings (all at
their defaults: ``restart_in_place`` false, ``pause_*_on_failure`` false, shell ``sh -c``).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

Json = dict[str, Any]

VERSIONS = {"3": "3.4.1", "4": "4.0.4"}
MARKER = "(reconciler test stand-in)"
DEFAULT_GROUP = "default"  # pueue_lib/src/state.rs PUEUE_DEFAULT_GROUP
# pueue/src/daemon/task_handler.rs `run` sleeps 300 ms a loop.  SIMPLIFIED: 50 ms, so
# tests wait less; nothing may depend on the period.
TICK = 0.05


def version_key() -> str:
    key = os.environ.get("PUEUE_STANDIN_VERSION", "4")
    if key not in VERSIONS:
        fail(f"Error: PUEUE_STANDIN_VERSION must be 3 or 4, not {key!r}")
    return key


def version_text(program: str) -> str:
    # clap's `version` prints "<name> <version>" (pueue/src/client/cli.rs `#[command(version)]`)
    return f"{program} {VERSIONS[version_key()]} {MARKER}"


def fail(message: str, code: int = 1) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(code)


def now() -> str:
    """The local time as pueue's JSON writes it: chrono's ``Serialize`` for ``DateTime``
    (chrono 0.4.42 ``src/datetime/serde.rs``) calls ``write_rfc3339`` with
    ``SecondsFormat::AutoSi`` and ``use_z = true`` (``src/format/formatting.rs``): 0, 3, 6
    or 9 fraction digits, whichever is exact, and ``Z`` for a zero offset, else ``+HH:MM``."""
    ns = time.time_ns()
    secs, nano = divmod(ns, 10**9)
    local = datetime.fromtimestamp(secs).astimezone()
    if nano == 0:
        fraction = ""
    elif nano % 10**6 == 0:
        fraction = f".{nano // 10**6:03}"
    elif nano % 1000 == 0:
        fraction = f".{nano // 1000:06}"
    else:
        fraction = f".{nano:09}"
    offset = int(local.utcoffset().total_seconds())  # type: ignore[union-attr]
    if offset == 0:
        zone = "Z"
    else:
        hours, minutes = divmod(abs(offset) // 60, 60)
        zone = f"{'+' if offset > 0 else '-'}{hours:02}:{minutes:02}"
    return local.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone


class Paths:
    """Where the stand-in keeps things (see the module docstring)."""

    def __init__(self, config: str | None) -> None:
        self.config = Path(config).absolute() if config else None
        if self.config is not None:
            self.root = self.config.parent
        elif os.environ.get("PUEUE_STANDIN_DIR"):
            self.root = Path(os.environ["PUEUE_STANDIN_DIR"]).absolute()
        else:
            fail("Error: the pueue stand-in needs --config PATH or $PUEUE_STANDIN_DIR")
        self.state = self.root / "state.json"
        self.pid = self.root / "pueue.pid"  # settings.rs `pid_path`
        self.socket = self.root / f"pueue_{getpass.getuser()}.socket"  # `unix_socket_path`
        self.logs = self.root / "task_logs"  # pueue_lib/src/log.rs `get_log_path`


# ---------------------------------------------------------------------------- the daemon


def process_exists(pid: int) -> bool:
    """pueue/src/process_helper/linux.rs `process_exists`: procfs ``is_alive`` (not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def rust_io_error(err: OSError) -> str:
    """Roughly Rust's ``{:?}`` of an ``io::Error``, as pueue puts it in ``FailedToSpawn``."""
    kinds = {2: "NotFound", 13: "PermissionDenied", 1: "PermissionDenied", 20: "NotADirectory"}
    kind = kinds.get(err.errno or 0, "Uncategorized")
    return f'Os {{ code: {err.errno}, kind: {kind}, message: "{err.strerror}" }}'


def status_of(task: Json) -> tuple[str, Json]:
    """A 4.0.x task status ``{"Running": {...}}`` as ("Running", {...})."""
    ((kind, info),) = task["status"].items()
    return kind, info


def kind_of(task: Json) -> str:
    return status_of(task)[0]


# pueue_lib/src/task.rs `Task::is_running` (Running or Paused), `is_done`, `is_queued`
# (SIMPLIFIED: no delayed stashes, so Queued only), and pause.rs/start.rs's own filters.
def is_running(task: Json) -> bool:
    return kind_of(task) in ("Running", "Paused")


def is_done(task: Json) -> bool:
    return kind_of(task) == "Done"


def is_queued(task: Json) -> bool:
    return kind_of(task) == "Queued"


def is_unpaused(task: Json) -> bool:
    return kind_of(task) == "Running"


def is_paused(task: Json) -> bool:
    return kind_of(task) == "Paused"


def is_startable(task: Json) -> bool:
    return kind_of(task) in ("Paused", "Queued", "Stashed")


def is_removable(task: Json) -> bool:
    """message_handler/remove.rs `remove`'s filter: Queued, Stashed, Done or Locked."""
    return kind_of(task) in ("Queued", "Stashed", "Done", "Locked")


def task_response(message: str, ids: list[int], tasks: dict[int, Json],
                  matches: Callable[[Json], bool]) -> Json:
    """pueue/src/daemon/network/response_helper.rs `task_action_response_helper` and
    `compile_task_response` (unknown ids are ids the action failed for)."""
    good = [str(i) for i in ids if i in tasks and matches(tasks[i])]
    bad = [str(i) for i in ids if i not in tasks or not matches(tasks[i])]
    if not bad:
        return {"success": f"{message}: {', '.join(good)}"}
    if not good:
        return {"failure": f"The command failed for tasks: {', '.join(bad)}"}
    return {"success": f"{message}: {', '.join(good)}\n"
                       f"The command failed for tasks: {', '.join(bad)}"}


class Daemon:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.version = version_key()
        self.tasks: dict[int, Json] = {}
        self.groups: dict[str, Json] = {}
        # pueue/src/daemon/internal_state/children.rs: group -> worker id -> (task id, child)
        self.children: dict[str, dict[int, tuple[int, subprocess.Popen[bytes]]]] = {}
        self.shutdown = False
        self.signalled = False
        self.shutdown_after_reply = False

    # ------------------------------------------------------------------ state and files

    def restore(self) -> None:
        """pueue/src/daemon/internal_state/state.rs `InternalState::restore_state`: running
        or paused tasks become Done/Killed (the daemon went away under them), Locked ones
        Stashed, tasks of unknown groups move to "default", and every group that still has
        a Queued task is paused "to prevent unwanted execution of tasks due to a system
        crash".  An unreadable state is replaced by a clean one (daemon/mod.rs `run`)."""
        self.groups = {DEFAULT_GROUP: {"status": "Running", "parallel_tasks": 1}}
        if not self.paths.state.exists():
            return
        try:
            data = json.loads(self.paths.state.read_text())
            tasks = {int(key): task for key, task in data["tasks"].items()}
            groups = dict(data["groups"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            print(f"Failed to restore previous state: {err}; using clean state instead.",
                  file=sys.stderr)
            return
        self.tasks, self.groups = tasks, groups
        for task in self.tasks.values():
            kind, info = status_of(task)
            if kind in ("Running", "Paused"):
                task["status"] = {"Done": {"enqueued_at": info["enqueued_at"],
                                           "start": info["start"], "end": now(),
                                           "result": "Killed"}}
            if kind == "Locked":
                task["status"] = {"Stashed": {"enqueue_at": None}}
            if task["group"] not in self.groups:
                task["group"] = DEFAULT_GROUP
                self.groups.setdefault(DEFAULT_GROUP, {"status": "Running", "parallel_tasks": 1})
            if is_queued(task):
                self.groups[task["group"]]["status"] = "Paused"

    def save(self) -> None:
        """state.rs `save`: write ``state.json.partial``, then rename it over ``state.json``."""
        state = {"tasks": {str(i): self.tasks[i] for i in sorted(self.tasks)},
                 "groups": {name: self.groups[name] for name in sorted(self.groups)}}
        partial = self.paths.root / "state.json.partial"
        partial.write_text(json.dumps(state, separators=(",", ":"), ensure_ascii=False))
        partial.replace(self.paths.state)

    def render(self) -> Json:
        """The state as ``status --json`` prints it: ``serde_json::to_string(&state)`` in
        pueue/src/client/commands/state/mod.rs `print_state`; task fields in the order of
        pueue_lib/src/task.rs `Task` (4.0.4), or of v3.4.1's `Task` for version 3."""
        tasks = {str(i): self.tasks[i] if self.version == "4" else self.as_v3(self.tasks[i])
                 for i in sorted(self.tasks)}
        return {"tasks": tasks, "groups": {name: self.groups[name] for name in sorted(self.groups)}}

    @staticmethod
    def as_v3(task: Json) -> Json:
        """pueue 3.4.1's shape (v3.4.1 pueue_lib/src/task.rs): unit statuses are bare strings,
        ``Done`` wraps the result, ``enqueued_at``/``start``/``end`` are task fields.
        ``prev_status`` is "Locked": v3.4.1 message_handler/add.rs creates every task with
        ``TaskStatus::Locked`` and only ``edit`` changes ``prev_status`` afterwards.
        SIMPLIFIED: a task that restore marks Killed gets an ``end``, as in 4.0.x (3.4.1's
        state_helper.rs `restore_state` left it null)."""
        kind, info = status_of(task)
        status: Any = kind
        if kind == "Done":
            status = {"Done": info["result"]}
        elif kind == "Stashed":
            status = {"Stashed": {"enqueue_at": info["enqueue_at"]}}
        shaped = {key: task[key] for key in ("id", "created_at")}
        shaped["enqueued_at"] = info.get("enqueued_at")
        shaped.update((key, task[key]) for key in (
            "original_command", "command", "path", "envs", "group", "dependencies", "priority",
            "label"))
        shaped.update(status=status, prev_status="Locked", start=info.get("start"),
                      end=info.get("end"))
        return shaped

    # ------------------------------------------------------------------------ processes

    def next_task_id(self) -> int | None:
        """pueue/src/daemon/process_handler/spawn.rs `get_next_task_id`: a Queued task of a
        running group with a free slot (``parallel_tasks`` 0 means no limit); the highest
        priority first, then the lowest id."""
        candidates = []
        for task in self.tasks.values():
            group = self.groups.get(task["group"])
            if not is_queued(task) or group is None or group["status"] != "Running":
                continue
            limit = group["parallel_tasks"]
            if limit == 0 or len(self.children.setdefault(task["group"], {})) < limit:
                candidates.append(task)
        candidates.sort(key=lambda task: (-task["priority"], task["id"]))
        return candidates[0]["id"] if candidates else None

    def spawn(self, task_id: int) -> None:
        """spawn.rs `spawn_process`: ``sh -c COMMAND`` (process_helper/unix.rs
        `get_shell_command`) in the task's directory with only the environment captured at
        ``add`` plus ``PUEUE_GROUP`` and ``PUEUE_WORKER_ID`` (the lowest free worker slot of
        the group, internal_state/children.rs `get_next_group_worker`), as the leader of a
        new process group (``ProcessGroup::leader()``), stdout and stderr into the task's
        log, stdin a pipe.  A spawn error makes the task Done/FailedToSpawn."""
        task = self.tasks.get(task_id)
        if task is None:
            return
        kind, info = status_of(task)
        if kind not in ("Queued", "Stashed", "Locked"):
            return
        enqueued_at = info["enqueued_at"] if kind == "Queued" else now()
        group = task["group"]
        pool = self.children.setdefault(group, {})
        worker = next(i for i in range(len(pool) + 1) if i not in pool)
        envs = {**task["envs"], "PUEUE_GROUP": group, "PUEUE_WORKER_ID": str(worker)}
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.paths.logs / f"{task_id}.log"
        with log_path.open("wb") as log:
            try:
                child = subprocess.Popen(["sh", "-c", task["command"]], cwd=task["path"],
                                         env=envs, stdin=subprocess.PIPE, stdout=log,
                                         stderr=log, process_group=0)
            except (OSError, ValueError) as err:
                error = rust_io_error(err) if isinstance(err, OSError) else str(err)
                message = f"Failed to spawn child {task_id} with err: {error}"
                log.write(f"Pueue error, failed to spawn task. Check your command.\n"
                          f"{message}".encode())
                task["status"] = {"Done": {"enqueued_at": enqueued_at, "start": now(),
                                           "end": now(), "result": {"FailedToSpawn": message}}}
                self.save()
                return
        pool[worker] = (task_id, child)
        task["status"] = {"Running": {"enqueued_at": enqueued_at, "start": now()}}
        task["envs"] = envs  # spawn.rs: "Overwrite the task's environment variables"
        self.save()

    def handle_finished(self) -> None:
        """process_handler/finish.rs `handle_finished_tasks`: exit code 0 is Success, another
        code ``Failed(code)``, death by a signal (no code) ``Killed``."""
        changed = False
        for pool in self.children.values():
            for worker, (task_id, child) in list(pool.items()):
                code = child.poll()
                if code is None:
                    continue
                del pool[worker]
                if child.stdin is not None:
                    child.stdin.close()
                result: Any = "Success" if code == 0 else "Killed" if code < 0 else {
                    "Failed": code}
                task = self.tasks[task_id]
                _, info = status_of(task)
                task["status"] = {"Done": {"enqueued_at": info["enqueued_at"],
                                           "start": info["start"], "end": now(),
                                           "result": result}}
                changed = True
        if changed:
            self.save()

    def child_of(self, task_id: int) -> subprocess.Popen[bytes] | None:
        for pool in self.children.values():
            for child_task, child in pool.values():
                if child_task == task_id:
                    return child
        return None

    def signal_task(self, task_id: int, signum: int) -> bool:
        """Signal the task's whole process group: process-wrap 9.0.3
        ``src/std/process_group.rs`` `signal_imp` is ``killpg(pgid, sig)``, and its
        `start_kill` (what pueue's `kill_child` calls) sends SIGKILL."""
        child = self.child_of(task_id)
        if child is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)
        return True

    def running_ids(self) -> list[int]:
        return sorted(tid for pool in self.children.values() for tid, _ in pool.values())

    def select(self, selection: Json, matches: Callable[[Json], bool]) -> list[int]:
        if "ids" in selection:
            return list(selection["ids"])
        if "group" in selection:
            return [i for i, task in sorted(self.tasks.items())
                    if task["group"] == selection["group"] and matches(task)]
        return self.running_ids()

    def tick(self) -> None:
        """task_handler.rs `run`: reap finished children, then either finish a shutdown
        (once no child is left) or start what may start."""
        self.handle_finished()
        if self.signalled and not self.shutdown:
            self.initiate_shutdown()
        if self.shutdown:
            if not self.running_ids():
                # task_handler.rs `handle_shutdown`: remove the socket and the pid file
                self.paths.socket.unlink(missing_ok=True)
                self.paths.pid.unlink(missing_ok=True)
                sys.exit(0)
            return
        while (task_id := self.next_task_id()) is not None:
            self.spawn(task_id)

    def initiate_shutdown(self) -> None:
        """process_handler/mod.rs `initiate_shutdown`: kill every task, pausing no group
        (restore pauses those with queued tasks)."""
        self.shutdown = True
        for task_id in self.running_ids():
            self.signal_task(task_id, signal.SIGKILL)

    # ------------------------------------------------------------------------- requests

    def missing_group(self, name: str) -> Json | None:
        """response_helper.rs `ensure_group_exists`."""
        if name in self.groups:
            return None
        names = ", ".join(f'"{group}"' for group in sorted(self.groups))
        return {"failure": f"Group {name} doesn't exists. Use one of these: [{names}]"}

    def handle(self, request: Json) -> Json:
        """pueue/src/daemon/network/message_handler/mod.rs `handle_request`."""
        kind = request["request"]
        selection = request.get("selection", {})
        if "group" in selection and (missing := self.missing_group(selection["group"])):
            return missing  # kill.rs, pause.rs and start.rs check a selected group first
        handler: Callable[[Json], Json] = getattr(self, f"on_{kind}")
        return handler(request)

    def on_status(self, request: Json) -> Json:
        return {"state": self.render()}

    def on_add(self, request: Json) -> Json:
        """message_handler/add.rs `add_task`: the group must exist; a new task is Queued, or
        Stashed with ``--stashed``; its id is the highest id plus one (state.rs
        `add_task`), so ids freed by ``clean`` at the top are given out again."""
        if missing := self.missing_group(request["group"]):
            return missing
        task_id = max(self.tasks, default=-1) + 1
        created = now()
        status = ({"Stashed": {"enqueue_at": None}} if request["stashed"]
                  else {"Queued": {"enqueued_at": now()}})
        self.tasks[task_id] = {
            "id": task_id, "created_at": created, "original_command": request["command"],
            "command": request["command"], "path": request["path"], "envs": request["envs"],
            "group": request["group"], "dependencies": [], "priority": request["priority"],
            "label": request["label"], "status": status}
        self.save()
        return {"added": task_id,
                "group_is_paused": self.groups[request["group"]]["status"] == "Paused"}

    def on_kill(self, request: Json) -> Json:
        """message_handler/kill.rs and process_handler/kill.rs `kill`.  Killing a group
        pauses it when it has queued tasks (`should_pause_group`); killing all pauses every
        group when any group has one.  Without ``--signal`` the process group gets SIGKILL."""
        selection, signame = request["selection"], request["signal"]
        if "ids" in selection:
            response = task_response("Tasks are being killed", selection["ids"], self.tasks,
                                     is_running)
            if "failure" in response:
                return response
        elif signame:
            where = f" of group {selection['group']}" if "group" in selection else ""
            response = {"success": f"Sending signal {signame} to all running tasks{where}."}
        elif "group" in selection:
            response = {"success": f'All tasks of group "{selection["group"]}" are being '
                                   f"killed. The group will also be paused!!!"}
        else:
            response = {"success": "All tasks are being killed. All groups will be paused!!!"}
        if "group" in selection and any(is_queued(task) for task in self.tasks.values()
                                        if task["group"] == selection["group"]):
            self.groups[selection["group"]]["status"] = "Paused"
        if "all" in selection and any(is_queued(task) for task in self.tasks.values()):
            for group in self.groups.values():
                group["status"] = "Paused"
        signum = SIGNALS[signame] if signame else signal.SIGKILL
        for task_id in self.select(selection, is_running):
            self.signal_task(task_id, signum)
        self.save()
        return response

    def on_pause(self, request: Json) -> Json:
        """message_handler/pause.rs and process_handler/pause.rs `pause`: the group stops
        starting tasks and, unless ``--wait``, its running tasks get SIGSTOP and are Paused."""
        selection = request["selection"]
        if "ids" in selection:
            response = task_response("Tasks have been paused", selection["ids"], self.tasks,
                                     is_unpaused)
            if "failure" in response:
                return response
        elif "group" in selection:
            self.groups[selection["group"]]["status"] = "Paused"
            response = {"success": f'Group "{selection["group"]}" is being paused.'}
        else:
            for group in self.groups.values():
                group["status"] = "Paused"
            response = {"success": "All groups are being paused."}
        if not request["wait"]:
            for task_id in self.select(selection, is_unpaused):
                task = self.tasks.get(task_id)
                if task and is_unpaused(task) and self.signal_task(task_id, signal.SIGSTOP):
                    task["status"] = {"Paused": status_of(task)[1]}
        self.save()
        return response

    def on_start(self, request: Json) -> Json:
        """message_handler/start.rs and process_handler/start.rs `start`: a group is set
        running and its paused tasks get SIGCONT; given ids, paused tasks are resumed and
        queued or stashed ones started at once, whatever the group's limit."""
        selection = request["selection"]
        if "ids" in selection:
            response = task_response("Tasks have been started/resumed", selection["ids"],
                                     self.tasks, is_startable)
            if "failure" in response:
                return response
        elif "group" in selection:
            self.groups[selection["group"]]["status"] = "Running"
            response = {"success": f'Group "{selection["group"]}" is being resumed.'}
        else:
            for group in self.groups.values():
                group["status"] = "Running"
            response = {"success": "All groups are being resumed."}
        for task_id in self.select(selection, is_paused):
            task = self.tasks.get(task_id)
            if task and is_paused(task) and self.signal_task(task_id, signal.SIGCONT):
                task["status"] = {"Running": status_of(task)[1]}
            elif "ids" in selection and self.child_of(task_id) is None:
                self.spawn(task_id)
        self.save()
        return response

    def on_restart(self, request: Json) -> Json:
        """message_handler/restart.rs `restart`: a Done task is Queued again (or Stashed)
        under the same id; other tasks are left alone."""
        response = task_response("Tasks has restarted", request["ids"], self.tasks, is_done)
        for task_id in request["ids"]:
            task = self.tasks.get(task_id)
            if task and is_done(task):
                task["status"] = ({"Stashed": {"enqueue_at": None}} if request["stashed"]
                                  else {"Queued": {"enqueued_at": now()}})
        self.save()
        return response

    def on_remove(self, request: Json) -> Json:
        """message_handler/remove.rs `remove`: tasks that are not running or paused leave
        the list, with their logs (`clean_log_handles`); running ones must be killed
        first and are reported as failed.  SIMPLIFIED: no dependency check (the stand-in's
        tasks never depend on one another)."""
        response = task_response("Tasks removed from list", request["ids"], self.tasks,
                                 is_removable)
        for task_id in request["ids"]:
            if task_id in self.tasks and is_removable(self.tasks[task_id]):
                del self.tasks[task_id]
                (self.paths.logs / f"{task_id}.log").unlink(missing_ok=True)
        self.save()
        return response

    def on_clean(self, request: Json) -> Json:
        """message_handler/clean.rs `clean`: remove Done tasks (only successful ones with
        ``-s``, only the group's with ``-g``; an unknown group is no error) and their logs."""
        group, successful = request["group"], request["successful_only"]
        for task_id, task in list(self.tasks.items()):
            kind, info = status_of(task)
            if kind != "Done" or (successful and info["result"] != "Success"):
                continue
            if group is not None and task["group"] != group:
                continue
            del self.tasks[task_id]
            (self.paths.logs / f"{task_id}.log").unlink(missing_ok=True)
        self.save()
        only = " successfully" if successful else ""
        where = f" from group '{group}'" if group is not None else ""
        return {"success": f"All{only} finished tasks have been removed{where}"}

    def on_group_list(self, request: Json) -> Json:
        return {"groups": {name: self.groups[name] for name in sorted(self.groups)}}

    def on_group_add(self, request: Json) -> Json:
        """message_handler/group.rs `group` (Add): new groups run, 1 parallel task unless
        ``--parallel`` (internal_state/state.rs `create_group`)."""
        name = request["name"]
        if name in self.groups:
            return {"failure": f'Group "{name}" already exists'}
        parallel = request["parallel"]
        self.groups[name] = {"status": "Running",
                             "parallel_tasks": 1 if parallel is None else parallel}
        self.children[name] = {}
        self.save()
        return {"success": f'New group "{name}" has been created'}

    def on_group_remove(self, request: Json) -> Json:
        """message_handler/group.rs `group` (Remove)."""
        name = request["name"]
        if missing := self.missing_group(name):
            return missing
        if name == DEFAULT_GROUP:
            return {"failure": "You cannot delete the default group"}
        if any(task["group"] == name for task in self.tasks.values()):
            return {"failure": "You cannot remove a group, if there're still tasks in it."}
        del self.groups[name]
        self.children.pop(name, None)
        self.save()
        return {"success": f'Group "{name}" has been removed'}

    def on_parallel(self, request: Json) -> Json:
        """message_handler/parallel.rs `set_parallel_tasks` (0 means no limit).
        SIMPLIFIED: saved at once (pueue saves on its next state change)."""
        if missing := self.missing_group(request["group"]):
            return missing
        self.groups[request["group"]]["parallel_tasks"] = request["parallel_tasks"]
        self.save()
        return {"success": f'Parallel tasks setting for group "{request["group"]}" adjusted'}

    def on_shutdown(self, request: Json) -> Json:
        """message_handler/mod.rs: answer first, then `initiate_shutdown`."""
        self.shutdown_after_reply = True
        return {"success": "Daemon is shutting down"}

    # ---------------------------------------------------------------------------- serve

    def serve(self) -> None:
        listener = self.bind()

        def on_signal(signum: int, frame: object) -> None:
            # daemon/mod.rs `setup_signal_panic_handling`: SIGINT/SIGTERM shut down gracefully
            self.signalled = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        listener.settimeout(TICK)
        while True:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                conn = None
            if conn is not None:
                self.shutdown_after_reply = False
                with conn:
                    conn.settimeout(5)
                    reply = self.answer(conn)
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps(reply).encode() + b"\n")
                if self.shutdown_after_reply:
                    self.initiate_shutdown()
            self.tick()

    def answer(self, conn: socket.socket) -> Json:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        try:
            return self.handle(json.loads(data))
        except (ValueError, KeyError, AttributeError, TypeError) as err:
            return {"failure": f"Couldn't deserialize message: {err}"}

    def bind(self) -> socket.socket:
        """pueue/src/daemon/network/socket/unix.rs `get_listener`: a socket file that answers
        means another daemon; a dead one is removed.  Permissions 0700 (settings default)."""
        path = self.paths.socket
        if path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                except OSError:
                    path.unlink()
                else:
                    self.paths.pid.unlink(missing_ok=True)
                    fail("Error: There seems to be an active pueue daemon.")
        listener = socket.socket(socket.AF_UNIX)
        try:
            listener.bind(str(path))
        except OSError as err:
            self.paths.pid.unlink(missing_ok=True)
            fail(f'Error: I/O error at path "{path}" while binding unix socket to path: {err}')
        path.chmod(0o700)
        listener.listen(1024)
        return listener


SIGNALS = {"sigint": signal.SIGINT, "sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM,
           "sigcont": signal.SIGCONT, "sigstop": signal.SIGSTOP}


def parse_signal(text: str) -> str:
    """pueue_lib/src/message/request.rs `Signal`: case-insensitive ``sigint``/``int``/``2``
    and so on; strum's Display prints the longest name (``sigterm``)."""
    names = {"int": "sigint", "2": "sigint", "kill": "sigkill", "9": "sigkill",
             "term": "sigterm", "15": "sigterm", "cont": "sigcont", "18": "sigcont",
             "stop": "sigstop", "19": "sigstop"}
    lowered = text.lower()
    name = lowered if lowered in SIGNALS else names.get(lowered)
    if name is None:
        raise argparse.ArgumentTypeError(f"invalid value '{text}' for '--signal <SIGNAL>'")
    return name


class Parser(argparse.ArgumentParser):
    """clap exits 2 on a usage error (clap_builder/src/util/mod.rs ``USAGE_CODE``) with an
    ``error: ...`` line.  SIMPLIFIED: only that first line, in argparse's words."""

    def error(self, message: str) -> NoReturn:
        fail(f"error: {message}", 2)


def pueued_main(executable: Path, argv: list[str] | None = None) -> None:
    """``pueued``: pueue/src/daemon/cli.rs; pueue/src/bin/pueued.rs `main`."""
    parser = Parser(prog="pueued", allow_abbrev=False)
    parser.add_argument("-V", "--version", action="version", version=version_text("pueued"))
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("-d", "--daemonize", action="store_true")
    parser.add_argument("-c", "--config")
    parser.add_argument("-p", "--profile")
    args = parser.parse_args(argv)
    paths = Paths(args.config)
    version_key()
    if args.daemonize:
        # pueued.rs `fork_daemon`: start the same binary again without -d (stdio inherited:
        # whoever captures our output waits for the daemon too) and return at once.
        again = [str(executable)]
        if args.config:
            again += ["--config", args.config]
        subprocess.Popen(again)
        print("Pueued is now running in the background")
        return
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(exist_ok=True)
    if paths.config is not None and not paths.config.exists():
        paths.config.write_text("# written by the reconciler pueue stand-in; not read\n")
    # daemon/pid.rs `create_pid_file`: refuse while the recorded daemon lives (its message,
    # on one line)
    if paths.pid.exists():
        with contextlib.suppress(ValueError, OSError):
            if process_exists(int(paths.pid.read_text())):
                fail("Error: Pid file already exists and another daemon seems to be running. "
                     "Please stop the daemon beforehand or delete the file manually: "
                     f'"{paths.pid}"')
    paths.pid.write_text(str(os.getpid()))
    daemon = Daemon(paths)
    daemon.restore()
    daemon.save()  # daemon/mod.rs `run`: "Save the state once at the very beginning."
    daemon.serve()


# ---------------------------------------------------------------------------- the client


def request(paths: Paths, message: Json) -> Json:
    """One request, one reply.  A missing daemon is pueue_lib/src/network/socket/unix.rs
    `get_client_stream`'s IoPathError, under the client's "Failed to initialize client."
    (pueue/src/bin/pueue.rs); color_eyre prints it over several lines, we print one."""
    with socket.socket(socket.AF_UNIX) as conn:
        try:
            conn.connect(str(paths.socket))
        except OSError as err:
            fail(f'Error: Failed to initialize client. I/O error at path "{paths.socket}" '
                 f"while connecting to daemon. Did you start it? {err.strerror} "
                 f"(os error {err.errno})")
        conn.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    reply: Json = json.loads(data)
    return reply


def handle_response(reply: Json) -> None:
    """pueue/src/client/commands/mod.rs `handle_response`: success text to stdout, a
    failure's text to stderr and exit 1."""
    if "failure" in reply:
        fail(reply["failure"])
    print(reply["success"])


def selection(args: argparse.Namespace) -> Json:
    """client/commands/mod.rs `selection_from_params`: --all, else --group, else ids, else
    the default group."""
    if args.all:
        return {"all": True}
    if args.group is not None:
        return {"group": args.group}
    if args.task_ids:
        return {"ids": args.task_ids}
    return {"group": DEFAULT_GROUP}


def task_id(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid value '{text}': not a task id")
    return int(text)


def group_line(name: str, group: Json) -> str:
    """client/display_helper.rs `get_group_headline`, unstyled."""
    return f'Group "{name}" ({group["parallel_tasks"]} parallel): {group["status"].lower()}'


def cmd_add(paths: Paths, args: argparse.Namespace) -> None:
    """pueue/src/client/commands/add.rs `add_task`: the words are joined with spaces; the
    directory is ``-w`` canonicalized or the current one; the environment is captured."""
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        fail("error: the following required arguments were not provided: <COMMAND>...", 2)
    if args.working_directory is not None:
        try:
            path = str(Path(args.working_directory).resolve(strict=True))
        except OSError:
            fail("Error: Failed to canonicalize given working directory path")
    else:
        path = str(Path.cwd())
    reply = request(paths, {"request": "add", "command": " ".join(words), "path": path,
                            "envs": dict(os.environ), "stashed": args.stashed,
                            "group": args.group or DEFAULT_GROUP, "priority": args.priority,
                            "label": args.label})
    if "added" not in reply:
        handle_response(reply)
        return
    if args.print_task_id:
        print(reply["added"])
        return
    output = f"New task added (id {reply['added']})."
    if reply["group_is_paused"]:
        output += "\nThe group of this task is currently paused!"
    print(output)


def cmd_status(paths: Paths, args: argparse.Namespace) -> None:
    """client/commands/state/mod.rs `print_state`: ``--json`` prints the state compactly;
    ``--group`` keeps only that group's tasks (every group stays listed; an unknown group is
    no error).  SIMPLIFIED: no query language; the table is a plain list."""
    if args.query:
        fail("error: the pueue stand-in does not implement status queries", 2)
    state = request(paths, {"request": "status"})["state"]
    if args.group is not None:
        state["tasks"] = {key: task for key, task in state["tasks"].items()
                          if task["group"] == args.group}
    if args.json:
        print(json.dumps(state, separators=(",", ":"), ensure_ascii=False))
        return
    for name, group in state["groups"].items():
        if args.group in (None, name):
            print(group_line(name, group))
            for task in state["tasks"].values():
                if task["group"] == name:
                    status = task["status"]
                    kind = status if isinstance(status, str) else next(iter(status))
                    print(f"  {task['id']}  {kind}  {task['label'] or ''}  {task['command']}")


def cmd_restart(paths: Paths, args: argparse.Namespace) -> None:
    """client/commands/restart.rs `restart`: the client picks the Done tasks among the ids;
    in place they are requeued under their ids, otherwise added anew as copies.  Ids it
    cannot restart are reported on stderr, and that is not an error (exit 0)."""
    if not args.task_ids:
        fail("Error: Please provide the ids of the tasks you want to restart.")
    tasks = request(paths, {"request": "status"})["state"]["tasks"]

    def done(task: Json | None) -> bool:
        return task is not None and isinstance(task["status"], dict) and "Done" in task["status"]

    good = [i for i in args.task_ids if done(tasks.get(str(i)))]
    bad = [i for i in args.task_ids if not done(tasks.get(str(i)))]
    if args.in_place and not args.not_in_place:
        reply = request(paths, {"request": "restart", "ids": good, "stashed": args.stashed})
        if "failure" in reply and good:
            fail(f"Error: {reply['failure']}")
    else:
        for i in good:
            task = tasks[str(i)]
            reply = request(paths, {"request": "add", "command": task["original_command"],
                                    "path": task["path"], "envs": task["envs"],
                                    "stashed": args.stashed, "group": task["group"],
                                    "priority": task["priority"], "label": task["label"]})
            if "failure" in reply:
                fail(f"Error: {reply['failure']}")
    if good:
        print(f"Restarted tasks: {good}")
    if bad:
        print(f"Couldn't restart tasks: {bad}", file=sys.stderr)


def cmd_group(paths: Paths, args: argparse.Namespace) -> None:
    """client/commands/group.rs `group`: list (``--json``: the groups map), add, remove."""
    if args.group_cmd == "add":
        handle_response(request(paths, {"request": "group_add", "name": args.name,
                                        "parallel": args.parallel}))
    elif args.group_cmd == "remove":
        handle_response(request(paths, {"request": "group_remove", "name": args.name}))
    else:
        groups = request(paths, {"request": "group_list"})["groups"]
        if args.json:
            print(json.dumps(groups, separators=(",", ":")))
        else:
            print("\n".join(group_line(name, group) for name, group in groups.items()))


def cmd_parallel(paths: Paths, args: argparse.Namespace) -> None:
    """client/commands/parallel.rs `parallel`.  SIMPLIFIED: without a number the groups are
    listed (pueue asks for the list and then prints nothing)."""
    if args.parallel_tasks is None:
        args.json, args.group_cmd = False, None
        cmd_group(paths, args)
        return
    handle_response(request(paths, {"request": "parallel", "group": args.group or DEFAULT_GROUP,
                                    "parallel_tasks": args.parallel_tasks}))


def client_parser() -> Parser:
    """pueue/src/client/cli.rs, the options the stand-in implements."""
    parser = Parser(prog="pueue", allow_abbrev=False)
    parser.add_argument("-V", "--version", action="version", version=version_text("pueue"))
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--color", choices=["auto", "never", "always"], default="auto")
    parser.add_argument("-c", "--config")
    parser.add_argument("-p", "--profile")
    sub = parser.add_subparsers(dest="cmd")
    add = sub.add_parser("add")
    add.add_argument("-w", "--working-directory")
    add.add_argument("-s", "--stashed", action="store_true")
    add.add_argument("-g", "--group")
    add.add_argument("-o", "--priority", type=int, default=0)
    add.add_argument("-l", "--label")
    add.add_argument("-p", "--print-task-id", action="store_true")
    # clap's trailing_var_arg: from the first word on, everything is the command
    add.add_argument("command", nargs=argparse.REMAINDER)
    status = sub.add_parser("status")
    status.add_argument("-j", "--json", action="store_true")
    status.add_argument("-g", "--group")
    status.add_argument("query", nargs="*")
    for name in ("kill", "pause", "start"):
        each = sub.add_parser(name)
        each.add_argument("task_ids", nargs="*", type=task_id)
        each.add_argument("-g", "--group")
        each.add_argument("-a", "--all", action="store_true")
        if name == "kill":
            each.add_argument("-s", "--signal", type=parse_signal)
        if name == "pause":
            each.add_argument("-w", "--wait", action="store_true")
    restart = sub.add_parser("restart", aliases=["re"])
    restart.add_argument("task_ids", nargs="*", type=task_id)
    restart.add_argument("-i", "--in-place", action="store_true")
    restart.add_argument("--not-in-place", action="store_true")
    restart.add_argument("-s", "--stashed", action="store_true")
    group = sub.add_parser("group")
    group.add_argument("-j", "--json", action="store_true")
    group_sub = group.add_subparsers(dest="group_cmd")
    group_add = group_sub.add_parser("add")
    group_add.add_argument("name")
    group_add.add_argument("-p", "--parallel", type=task_id)
    group_sub.add_parser("remove").add_argument("name")
    parallel = sub.add_parser("parallel")
    parallel.add_argument("parallel_tasks", nargs="?", type=task_id)
    parallel.add_argument("-g", "--group")
    # client/cli.rs `Remove` (alias rm): at least one id; client/commands/remove.rs asks
    # for confirmation only with `show_confirmation_questions`, false by default
    remove = sub.add_parser("remove", aliases=["rm"])
    remove.add_argument("task_ids", nargs="+", type=task_id)
    clean = sub.add_parser("clean", aliases=["cleanup", "clear"])
    clean.add_argument("-s", "--successful-only", action="store_true")
    clean.add_argument("-g", "--group")
    sub.add_parser("shutdown")
    return parser


# add's options that take a value (client/cli.rs `Add`); none sets allow_hyphen_values
ADD_VALUE_OPTIONS = ("-w", "--working-directory", "-g", "--group", "-o", "--priority",
                     "-l", "--label")


def refuse_hyphen_values(argv: list[str]) -> None:
    """clap (4.x, clap_builder parser.rs): after an option that takes a value, a word that
    starts with ``-`` is read as a flag, not as the value, unless the option allows
    hyphen values or negative numbers, which pueue's ``add`` options do not: so
    ``--priority -5`` fails ("a value is required ...") and ``--priority=-5`` works.
    argparse would take ``-5`` as the value; the stand-in must not be kinder than pueue."""
    words = argv[argv.index("add") + 1:] if "add" in argv else []
    for option, value in itertools.pairwise(words):
        if option == "--":
            return
        if option in ADD_VALUE_OPTIONS and value.startswith("-"):
            name = option if option.startswith("--") else \
                ADD_VALUE_OPTIONS[ADD_VALUE_OPTIONS.index(option) + 1]
            fail(f"error: a value is required for '{name} <{name[2:].upper()}>' but none "
                 "was supplied", 2)


def pueue_main(argv: list[str] | None = None) -> None:
    """``pueue``: pueue/src/bin/pueue.rs `main` and client/commands/mod.rs `handle_command`;
    no subcommand means ``status``."""
    refuse_hyphen_values(sys.argv[1:] if argv is None else argv)
    args = client_parser().parse_args(argv)
    paths = Paths(args.config)
    if paths.config is not None and not paths.config.exists():
        fail("Error: Couldn't find a configuration file. Did you start the daemon yet?")
    cmd = args.cmd or "status"
    if cmd == "status" and args.cmd is None:
        args.json, args.group, args.query = False, None, []
    if cmd == "add":
        cmd_add(paths, args)
    elif cmd == "status":
        cmd_status(paths, args)
    elif cmd in ("kill", "pause", "start"):
        message: Json = {"request": cmd, "selection": selection(args)}
        if cmd == "kill":
            message["signal"] = args.signal
        if cmd == "pause":
            message["wait"] = args.wait
        handle_response(request(paths, message))
    elif cmd in ("restart", "re"):
        cmd_restart(paths, args)
    elif cmd == "group":
        cmd_group(paths, args)
    elif cmd == "parallel":
        cmd_parallel(paths, args)
    elif cmd in ("remove", "rm"):
        handle_response(request(paths, {"request": "remove", "ids": args.task_ids}))
    elif cmd in ("clean", "cleanup", "clear"):
        handle_response(request(paths, {"request": "clean", "group": args.group,
                                        "successful_only": args.successful_only}))
    elif cmd == "shutdown":
        handle_response(request(paths, {"request": "shutdown"}))
