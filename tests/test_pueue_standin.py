"""The pueue stand-in (``tests/pueue_standin``) keeps pueue's contract, driven through its
real ``pueue``/``pueued`` executables with an isolated state directory per test.

The expected behaviour is pueue's (v4.0.4 source; ``standin.py`` cites a file for each);
``tests/fixtures/pueue`` holds pueue's own state file and ``status --json`` documents of
both shapes, against which the output's structure is compared.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.helpers import ROOT, gone, wait_for

STANDIN = ROOT / "tests" / "pueue_standin"
FIXTURES = ROOT / "tests" / "fixtures" / "pueue"
# chrono's RFC 3339: 0, 3, 6 or 9 fraction digits, "Z" for a zero offset, else +HH:MM
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?"
                       r"(Z|[+-]\d\d:\d\d)")
WAIT = 10.0


def assert_local_timestamp(text: str) -> None:
    """Ours: RFC 3339 in the local zone, written "Z" when that is UTC (chrono's use_z)."""
    assert TIMESTAMP.fullmatch(text), text
    stamp = datetime.fromisoformat(text)
    assert stamp.utcoffset() == datetime.now().astimezone().utcoffset()
    assert text.endswith("Z") == (stamp.utcoffset() == timedelta(0)), text


class Pueue:
    """One isolated pueue: its config path (the state directory is its parent)."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.root = root
        self.config = root / "pueue.yml"
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith("PUEUE_")}
        # the scripts' `#!/usr/bin/env python3` finds this interpreter first (a pyenv shim
        # there would double the cost of every call)
        self.env["PATH"] = os.pathsep.join([str(STANDIN), str(Path(sys.executable).parent),
                                            os.environ["PATH"]])
        self.orphans: list[int] = []  # process groups a test left behind on purpose

    def run(self, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["pueue", "--config", str(self.config), *args], env=self.env,
                              capture_output=True, text=True, timeout=WAIT, check=False)
        if code is not None:
            assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        return proc

    def start(self, **env: str) -> None:
        """``pueued -d``: it returns at once, so wait for the daemon to listen."""
        with (self.root / "pueued.out").open("a") as out:
            proc = subprocess.run(["pueued", "-d", "--config", str(self.config)],
                                  env={**self.env, **env}, stdout=out, stderr=out,
                                  timeout=WAIT, check=False)
        assert proc.returncode == 0
        wait_for(self.listening, timeout=WAIT, interval=0.02, message="the daemon")

    def listening(self) -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.root / f"pueue_{getpass.getuser()}.socket"))
            except OSError:
                return False
        return True

    def pid(self) -> int:
        return int((self.root / "pueue.pid").read_text())

    def status(self, *args: str) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.run("status", "--json", *args).stdout)
        return state

    def task(self, task_id: int) -> dict[str, Any]:
        task: dict[str, Any] = self.status()["tasks"][str(task_id)]
        return task

    def kind(self, task_id: int) -> str:
        """The status' variant (4.0.x shape): Queued, Running, Done..."""
        kind: str = next(iter(self.task(task_id)["status"]))
        return kind

    def result(self, task_id: int) -> Any:
        return self.task(task_id)["status"]["Done"]["result"]

    def saved(self) -> dict[str, Any]:
        """The state file (4.0.x shape), which the daemon rewrites on every change: cheap
        to poll while waiting; what tests assert comes from ``pueue status``."""
        state: dict[str, Any] = json.loads((self.root / "state.json").read_text())
        return state

    def wait_kind(self, task_id: int, kind: str) -> None:
        wait_for(lambda: kind in self.saved()["tasks"][str(task_id)]["status"],
                 timeout=WAIT, interval=0.02, message=f"task {task_id} {kind}")

    def running(self) -> set[int]:
        return {int(i) for i, task in self.status()["tasks"].items()
                if "Running" in task["status"]}

    def wait_running(self, expected: set[int]) -> None:
        wait_for(lambda: {int(i) for i, task in self.saved()["tasks"].items()
                          if "Running" in task["status"]} == expected,
                 timeout=WAIT, interval=0.02, message=f"running {expected}")
        assert self.running() == expected

    def is_daemon(self, pid: int) -> bool:
        """Ours, not a process that has since taken a dead daemon's pid."""
        try:
            return any(part.endswith("pueued") for part in psutil.Process(pid).cmdline())
        except psutil.Error:
            return False

    def add(self, *args: str) -> int:
        return int(self.run("add", "-p", *args).stdout)

    def stop(self) -> None:
        """End what this test started: the daemon (its pid from its pid file) and any
        task process group left running on purpose."""
        pid_file = self.root / "pueue.pid"
        if pid_file.exists() and not gone(pid := self.pid()) and self.is_daemon(pid):
            # each task leads its own process group; should the daemon lose one, end it too
            with contextlib.suppress(psutil.Error):
                self.orphans += [child.pid for child in psutil.Process(pid).children()]
            os.kill(pid, signal.SIGTERM)  # a graceful shutdown, as `pueue shutdown`
            try:
                wait_for(lambda: gone(pid), timeout=WAIT, interval=0.02)
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
        for pgid in self.orphans:
            kill_group(pgid)


def group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and not gone(proc.pid):
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def kill_group(pgid: int) -> None:
    if group_members(pgid):
        os.killpg(pgid, signal.SIGKILL)


def shape(value: Any) -> Any:
    """A JSON value's structure: keys and nesting kept, leaves reduced to their type;
    ``envs`` reduced to "a map of strings" (its keys are the caller's environment)."""
    if isinstance(value, dict):
        return {key: "envs" if key == "envs" and isinstance(item, dict)
                and all(isinstance(each, str) for each in item.values()) else shape(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def timestamps(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [ts for key, item in value.items()
                for ts in ([item] if key in ("created_at", "enqueued_at", "start", "end")
                           and isinstance(item, str) else timestamps(item))]
    return []


@pytest.fixture
def pueue(tmp_path: Path) -> Iterator[Pueue]:
    one = Pueue(tmp_path / "pq")
    try:
        yield one
    finally:
        one.stop()


def test_pueue_and_pueued_say_they_are_the_standin(pueue: Pueue) -> None:
    for program in ("pueue", "pueued"):
        for key, version in ((None, "4.0.4"), ("3", "3.4.1")):
            env = {**pueue.env, **({"PUEUE_STANDIN_VERSION": key} if key else {})}
            proc = subprocess.run([program, "--version"], env=env, capture_output=True,
                                  text=True, timeout=WAIT, check=True)
            assert proc.stdout == f"{program} {version} (reconciler test stand-in)\n"
    for script in ("pueue", "pueued"):
        assert os.access(STANDIN / script, os.X_OK)


def test_pueue_client_without_a_daemon_exits_1_with_one_line(pueue: Pueue) -> None:
    proc = pueue.run("status", code=1)
    assert proc.stderr == ("Error: Couldn't find a configuration file. "
                           "Did you start the daemon yet?\n")
    pueue.start()
    pueue.run("shutdown")
    wait_for(lambda: not (pueue.root / "pueue.pid").exists(), timeout=WAIT, interval=0.05)
    proc = pueue.run("add", "true", code=1)
    (line,) = proc.stderr.splitlines()
    assert "while connecting to daemon. Did you start it?" in line
    bare = subprocess.run(["pueue", "status"], env=pueue.env, capture_output=True, text=True,
                          timeout=WAIT, check=False)
    assert bare.returncode == 1
    assert "PUEUE_STANDIN_DIR" in bare.stderr


def test_pueue_daemon_forks_keeps_a_pid_file_and_shuts_down(pueue: Pueue) -> None:
    pueue.start()
    assert (pueue.root / "pueued.out").read_text() == "Pueued is now running in the background\n"
    pid = pueue.pid()
    assert not gone(pid)
    second = subprocess.run(["pueued", "--config", str(pueue.config)], env=pueue.env,
                            capture_output=True, text=True, timeout=WAIT, check=False)
    assert second.returncode == 1
    (line,) = second.stderr.splitlines()
    assert "another daemon seems to be running" in line
    assert pueue.pid() == pid
    assert pueue.run("shutdown").stdout == "Daemon is shutting down\n"
    wait_for(lambda: gone(pid), timeout=WAIT, interval=0.05, message="the daemon to exit")
    assert not (pueue.root / "pueue.pid").exists()
    assert json.loads((pueue.root / "state.json").read_text())["groups"]["default"]


def test_pueue_standin_dir_variable_stands_for_the_config_path(pueue: Pueue) -> None:
    env = {**pueue.env, "PUEUE_STANDIN_DIR": str(pueue.root)}
    daemon = subprocess.run(["pueued", "-d"], env=env, stdout=subprocess.DEVNULL,
                            timeout=WAIT, check=True)
    assert daemon.returncode == 0
    wait_for(pueue.listening, timeout=WAIT, interval=0.02, message="the daemon")
    added = subprocess.run(["pueue", "add", "-p", "true"], env=env, capture_output=True,
                           text=True, timeout=WAIT, check=True)
    assert added.stdout == "0\n"
    saved = json.loads((pueue.root / "state.json").read_text())
    assert saved["tasks"]["0"]["command"] == "true"
    assert not pueue.config.exists()


def test_pueue_pueued_runs_in_the_foreground_and_stops_on_sigterm(pueue: Pueue) -> None:
    daemon = subprocess.Popen(["pueued", "--config", str(pueue.config)], env=pueue.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(pueue.listening, timeout=WAIT, interval=0.02)
        assert pueue.pid() == daemon.pid
        task = pueue.add("sleep", "30")
        pueue.wait_kind(task, "Running")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=WAIT) == 0
    finally:
        if daemon.poll() is None:
            pueue.orphans += [child.pid for child in psutil.Process(daemon.pid).children()]
            daemon.kill()
        daemon.wait(timeout=WAIT)
    # the graceful shutdown killed the task and saved that
    done = json.loads((pueue.root / "state.json").read_text())["tasks"][str(task)]
    assert done["status"]["Done"]["result"] == "Killed"


def test_pueue_add_takes_each_flag_and_runs_in_the_captured_environment(
        pueue: Pueue, tmp_path: Path) -> None:
    pueue.start(DAEMON_ONLY="from the daemon")
    work = tmp_path / "work"
    work.mkdir()
    pueue.run("group", "add", "held")
    pueue.run("pause", "-g", "held")
    proc = pueue.run("add", "-g", "held", "true")
    assert proc.stdout == ("New task added (id 0).\n"
                           "The group of this task is currently paused!\n")
    script = 'printf "%s|" $WORDS "$ADDED" "${DAEMON_ONLY-unset}" "$PUEUE_GROUP" > out'
    task = pueue.add("--label", "the label", "--priority", "7", "--working-directory",
                     os.path.relpath(work), "-g", "held", "--", "WORDS='a  b'", ";", script)
    assert task == 1
    stashed = pueue.add("--stashed", "-l", "s", "true")
    tasks = pueue.status()["tasks"]
    saved = tasks[str(task)]
    # the words joined with single spaces (quoting is the caller's job), as given
    assert saved["command"] == saved["original_command"] == f"WORDS='a  b' ; {script}"
    assert (saved["label"], saved["priority"], saved["path"]) == ("the label", 7, str(work))
    assert saved["group"] == "held"
    assert "Queued" in saved["status"]
    assert tasks[str(stashed)]["status"] == {"Stashed": {"enqueue_at": None}}
    pueue.env["ADDED"] = "at add time"
    unseen = pueue.add("-g", "held", "-w", str(work), 'printf %s "$ADDED" > out2')
    proc = pueue.run("add", "-g", "nope", "true", code=1)
    assert proc.stderr == ("Group nope doesn't exists. "
                           "Use one of these: [\"default\", \"held\"]\n")
    pueue.run("start", "-g", "held")
    for each in (0, task, unseen):
        pueue.wait_kind(each, "Done")
    assert (work / "out").read_text() == "a|b||unset|held|"
    assert (work / "out2").read_text() == "at add time"
    tasks = pueue.status()["tasks"]
    envs = tasks[str(task)]["envs"]
    assert (envs["PUEUE_GROUP"], envs["PUEUE_WORKER_ID"]) == ("held", "0")
    assert "DAEMON_ONLY" not in envs
    assert "Stashed" in tasks[str(stashed)]["status"]  # it never starts by itself


def test_pueue_starts_by_priority_then_id_within_the_parallel_limit(
        pueue: Pueue, tmp_path: Path) -> None:
    pueue.start()
    gates = tmp_path / "gates"
    gates.mkdir()
    for name in "abcdef":
        os.mkfifo(gates / name)

    def release(name: str) -> None:
        """Its task waits to open the fifo for reading: opening it for writing ends that."""
        with (gates / name).open("w"):
            pass

    pueue.run("group", "add", "w", "--parallel", "2")
    pueue.run("pause", "-g", "w")
    ids = {name: pueue.add("-g", "w", "-w", str(gates), "-o", str(priority), f": < {name}")
           for name, priority in (("a", 0), ("b", 0), ("c", 5), ("d", 1), ("e", 5))}
    pueue.run("start", "-g", "w")

    def wait_running(*names: str) -> None:
        pueue.wait_running({ids[name] for name in names})

    wait_running("c", "e")
    tasks = pueue.status()["tasks"]
    assert [tasks[str(ids[name])]["envs"]["PUEUE_WORKER_ID"] for name in "ce"] == ["0", "1"]
    for released, now_running in (("c", ("e", "d")), ("e", ("d", "a")), ("d", ("a", "b"))):
        release(released)
        wait_running(*now_running)
    assert pueue.task(ids["d"])["envs"]["PUEUE_WORKER_ID"] == "0"  # the lowest free slot
    pueue.run("parallel", "0", "-g", "w")  # 0: no limit
    third = pueue.add("-g", "w", "-w", str(gates), ": < f")
    pueue.wait_running({ids["a"], ids["b"], third})
    for name in "abf":
        release(name)
    for each in (*ids.values(), third):
        pueue.wait_kind(each, "Done")
    tasks = pueue.status()["tasks"]
    assert {tasks[str(each)]["status"]["Done"]["result"]
            for each in (*ids.values(), third)} == {"Success"}


def make_fixture_like_tasks(pueue: Pueue, tmp_path: Path) -> None:
    """The tasks of ``status-v4.json``: Success and Failed(1) in "default", a running and
    a queued (priority 5) task in "workers", plus a stashed one."""
    pueue.run("group", "add", "workers")
    assert pueue.add("-l", "lint", "true") == 0
    assert pueue.add("false") == 1
    pueue.wait_kind(1, "Done")
    assert pueue.add("-g", "workers", "-l", "task-17", "sleep", "30") == 2
    pueue.wait_kind(2, "Running")
    assert pueue.add("-g", "workers", "-o", "5", "-l", "task-18", "sleep", "30") == 3
    assert pueue.add("--stashed", "ls") == 4


def test_pueue_status_json_has_the_4_0_shape(pueue: Pueue, tmp_path: Path) -> None:
    pueue.start()
    make_fixture_like_tasks(pueue, tmp_path)
    out = pueue.run("status", "--json").stdout
    state = json.loads(out)
    assert out == json.dumps(state, separators=(",", ":"), ensure_ascii=False) + "\n"
    fixture = json.loads((FIXTURES / "status-v4.json").read_text())
    stashed = json.loads((FIXTURES / "state-v4.0.0.json").read_text())["tasks"]["2"]
    ours = {key: task for key, task in state["tasks"].items() if key != "4"}
    assert shape({**state, "tasks": ours}) == shape(fixture)
    assert shape(state["tasks"]["4"]) == shape(stashed)
    assert state["tasks"]["1"]["status"]["Done"]["result"] == {"Failed": 1}
    assert list(state["tasks"]["0"]) == list(fixture["tasks"]["0"])  # the field order too
    for ts in timestamps(fixture):
        assert TIMESTAMP.fullmatch(ts), ts
    for ts in timestamps(state):
        assert_local_timestamp(ts)
    only = pueue.status("--group", "workers")
    assert set(only["tasks"]) == {"2", "3"}
    assert set(only["groups"]) == {"default", "workers"}
    assert pueue.status("--group", "nope")["tasks"] == {}


def test_pueue_status_json_has_the_3_4_shape_when_asked(pueue: Pueue, tmp_path: Path) -> None:
    pueue.start(PUEUE_STANDIN_VERSION="3")
    pueue.run("group", "add", "workers")
    assert pueue.add("-l", "lint", "true") == 0
    assert pueue.add("false") == 1
    wait_for(lambda: pueue.status()["tasks"]["1"]["status"] == {"Done": {"Failed": 1}},
             timeout=WAIT, interval=0.05)
    pueue.add("-g", "workers", "-l", "task-17", "sleep", "30")
    wait_for(lambda: pueue.status()["tasks"]["2"]["status"] == "Running", timeout=WAIT,
             interval=0.05)
    pueue.add("-g", "workers", "-o", "5", "-l", "task-18", "sleep", "30")
    pueue.add("--stashed", "ls")
    state = pueue.status()
    fixture = json.loads((FIXTURES / "status-v3.json").read_text())
    ours = {key: task for key, task in state["tasks"].items() if key != "4"}
    assert shape({**state, "tasks": ours}) == shape(fixture)
    tasks = state["tasks"]
    assert [tasks[key]["status"] for key in "0123"] == [
        {"Done": "Success"}, {"Done": {"Failed": 1}}, "Running", "Queued"]
    assert list(tasks["0"]) == list(fixture["tasks"]["0"])
    # v3.4.1 message_handler/add.rs creates tasks Locked; only `edit` sets prev_status
    # again (the fixture, written by hand, says "Queued")
    assert {task["prev_status"] for task in tasks.values()} == {"Locked"}
    assert tasks["4"]["status"] == {"Stashed": {"enqueue_at": None}}
    assert (tasks["4"]["enqueued_at"], tasks["4"]["start"], tasks["4"]["end"]) == (
        None, None, None)
    assert (tasks["3"]["start"], tasks["3"]["end"]) == (None, None)
    for ts in timestamps(state):
        assert_local_timestamp(ts)


def test_pueue_kill_sends_sigkill_to_the_whole_process_group(
        pueue: Pueue, tmp_path: Path) -> None:
    pueue.start()
    pgid_file = tmp_path / "pgid"
    # ignores SIGTERM, and has a child of its own
    task = pueue.add(f"trap '' TERM; echo $$ > {pgid_file}; sleep 30 & sleep 30; wait")
    pueue.wait_kind(task, "Running")
    wait_for(lambda: pgid_file.exists() and pgid_file.read_text().strip(), timeout=WAIT,
             interval=0.05)
    pgid = int(pgid_file.read_text())
    pueue.orphans.append(pgid)
    wait_for(lambda: len(group_members(pgid)) >= 3, timeout=WAIT, interval=0.05)
    assert pueue.run("kill", "--signal", "sigterm", str(task)).stdout == (
        f"Tasks are being killed: {task}\n")
    assert pueue.kind(task) == "Running"  # it ignores SIGTERM: kill -s sent only that
    assert pueue.run("kill", str(task)).stdout == f"Tasks are being killed: {task}\n"
    pueue.wait_kind(task, "Done")
    assert pueue.result(task) == "Killed"
    wait_for(lambda: not group_members(pgid), timeout=WAIT, interval=0.05,
             message="the whole process group to die")
    proc = pueue.run("kill", "99", code=1)
    assert proc.stderr == "The command failed for tasks: 99\n"
    assert pueue.run("kill", str(task), code=1).stderr == (
        f"The command failed for tasks: {task}\n")


def test_pueue_kill_of_a_group_pauses_it_when_it_has_queued_tasks(pueue: Pueue) -> None:
    pueue.start()
    pueue.run("group", "add", "g")
    first = pueue.add("-g", "g", "sleep", "30")
    pueue.wait_kind(first, "Running")
    second = pueue.add("-g", "g", "true")
    proc = pueue.run("kill", "-g", "g")
    assert proc.stdout == ('All tasks of group "g" are being killed. '
                           "The group will also be paused!!!\n")
    pueue.wait_kind(first, "Done")
    assert pueue.result(first) == "Killed"
    state = pueue.status()
    assert state["groups"]["g"]["status"] == "Paused"
    assert "Queued" in state["tasks"][str(second)]["status"]
    pueue.run("kill", "-g", "nope", code=1)
    pueue.run("kill", "-g", "default")  # nothing queued: stays running
    assert pueue.status()["groups"]["default"]["status"] == "Running"


def test_pueue_restart_in_place_requeues_a_done_task_under_its_id(
        pueue: Pueue, tmp_path: Path) -> None:
    pueue.start()
    flag = tmp_path / "flag"
    task = pueue.add(f"test -e {flag}")
    pueue.wait_kind(task, "Done")
    assert pueue.result(task) == {"Failed": 1}
    running = pueue.add("sleep", "30")
    pueue.wait_kind(running, "Running")
    flag.touch()
    proc = pueue.run("restart", "--in-place", str(task), str(running), "7")
    assert proc.stdout == f"Restarted tasks: [{task}]\n"
    assert proc.stderr == f"Couldn't restart tasks: [{running}, 7]\n"
    assert "Queued" in pueue.task(task)["status"]  # the running task holds the only slot
    pueue.run("kill", str(running))
    pueue.wait_kind(task, "Done")
    assert pueue.result(task) == "Success"
    assert set(pueue.status()["tasks"]) == {str(task), str(running)}
    copy = pueue.run("restart", str(task)).stdout  # not in place: a new task
    assert copy == f"Restarted tasks: [{task}]\n"
    tasks = pueue.status()["tasks"]
    assert set(tasks) == {str(task), str(running), "2"}
    assert tasks["2"]["command"] == f"test -e {flag}"
    pueue.run("restart", code=1)


def test_pueue_pause_stops_the_group_and_its_running_tasks_start_resumes(
        pueue: Pueue, tmp_path: Path) -> None:
    pueue.start()
    pueue.run("group", "add", "g")
    gate = tmp_path / "gate"
    first = pueue.add("-g", "g", f"while [ ! -e {gate} ]; do sleep 0.1; done")
    second = pueue.add("-g", "g", "true")
    pueue.wait_kind(first, "Running")
    shell = psutil.Process(pid_of_task(pueue, first))
    assert pueue.run("pause", "-g", "g").stdout == 'Group "g" is being paused.\n'
    state = pueue.status()
    assert state["groups"]["g"]["status"] == "Paused"
    assert "Paused" in state["tasks"][str(first)]["status"]
    wait_for(lambda: shell.status() == psutil.STATUS_STOPPED, timeout=WAIT, interval=0.05)
    gate.touch()  # it is stopped: it cannot see the gate, and nothing else may start
    assert pueue.kind(second) == "Queued"
    assert pueue.run("start", "-g", "g").stdout == 'Group "g" is being resumed.\n'
    pueue.wait_kind(second, "Done")
    assert pueue.result(first) == "Success"
    third = pueue.add("-g", "g", f"while [ -e {gate} ]; do sleep 0.1; done")
    pueue.wait_kind(third, "Running")
    pueue.run("pause", "--wait", "-g", "g")  # --wait: the group only
    assert pueue.kind(third) == "Running"
    assert pueue.status()["groups"]["g"]["status"] == "Paused"
    gate.unlink()
    pueue.wait_kind(third, "Done")
    pueue.run("pause", "-g", "nope", code=1)


def pid_of_task(pueue: Pueue, task_id: int) -> int:
    """The task's shell: the daemon's child running ``sh -c COMMAND``."""
    daemon = psutil.Process(pueue.pid())
    command = pueue.task(task_id)["command"]
    (child,) = [c for c in daemon.children() if c.cmdline()[-1:] == [command]]
    return child.pid


def test_pueue_clean_removes_done_tasks_and_ids_are_given_out_again(pueue: Pueue) -> None:
    pueue.start()
    pueue.add("true")
    pueue.add("false")
    pueue.wait_kind(1, "Done")
    proc = pueue.run("clean", "--successful-only")
    assert proc.stdout == "All successfully finished tasks have been removed\n"
    assert set(pueue.status()["tasks"]) == {"1"}
    pueue.run("clean")
    assert pueue.status()["tasks"] == {}
    assert pueue.add("true") == 0  # the highest id plus one: 0 again
    pueue.wait_kind(0, "Done")
    sleeper = pueue.add("sleep", "30")
    pueue.wait_kind(sleeper, "Running")
    assert pueue.run("clean", "-g", "default").stdout == (
        "All finished tasks have been removed from group 'default'\n")
    assert set(pueue.status()["tasks"]) == {"1"}
    assert pueue.add("true") == 2  # not 0: only ids above the highest are reused


def test_pueue_remove_takes_out_tasks_that_do_not_run(pueue: Pueue) -> None:
    """remove.rs: Queued and Done tasks go (logs too); a running one is refused and the
    command still succeeds for the others; only refusals exit 1."""
    pueue.start()
    done = pueue.add("true")
    pueue.wait_kind(done, "Done")
    running = pueue.add("sleep", "30")
    pueue.wait_kind(running, "Running")
    queued = pueue.add("true")  # parallel 1: waits behind the sleeper
    proc = pueue.run("remove", str(done), str(queued), str(running))
    assert proc.stdout == (f"Tasks removed from list: {done}, {queued}\n"
                           f"The command failed for tasks: {running}\n")
    assert set(pueue.status()["tasks"]) == {str(running)}
    assert not (pueue.root / "task_logs" / f"{done}.log").exists()
    refused = pueue.run("rm", str(running), code=1)
    assert refused.stderr == f"The command failed for tasks: {running}\n"
    pueue.run("remove", code=2)  # at least one id
    pueue.run("kill", str(running))


def test_pueue_groups_are_added_listed_sized_and_removed(pueue: Pueue) -> None:
    pueue.start()
    assert pueue.run("group", "add", "big", "-p", "3").stdout == (
        'New group "big" has been created\n')
    assert pueue.run("group", "add", "big", code=1).stderr == 'Group "big" already exists\n'
    assert json.loads(pueue.run("group", "--json").stdout) == {
        "big": {"status": "Running", "parallel_tasks": 3},
        "default": {"status": "Running", "parallel_tasks": 1}}
    assert pueue.run("parallel", "2", "-g", "big").stdout == (
        'Parallel tasks setting for group "big" adjusted\n')
    assert pueue.status()["groups"]["big"]["parallel_tasks"] == 2
    pueue.add("-g", "big", "true")
    assert pueue.run("group", "remove", "big", code=1).stderr == (
        "You cannot remove a group, if there're still tasks in it.\n")
    pueue.run("group", "remove", "default", code=1)
    pueue.wait_kind(0, "Done")
    pueue.run("clean")
    assert pueue.run("group", "remove", "big").stdout == 'Group "big" has been removed\n'
    assert set(pueue.status()["groups"]) == {"default"}
    pueue.run("parallel", "2", "-g", "big", code=1)
    assert pueue.run().stdout == 'Group "default" (1 parallel): running\n'  # `status`


def test_pueue_task_whose_directory_vanished_failed_to_spawn(
        pueue: Pueue, tmp_path: Path) -> None:
    pueue.start()
    gone_dir = tmp_path / "vanishing"
    gone_dir.mkdir()
    pueue.run("pause")
    task = pueue.add("-w", str(gone_dir), "true")
    gone_dir.rmdir()
    pueue.run("start")
    pueue.wait_kind(task, "Done")
    (message,) = pueue.result(task)["FailedToSpawn"].splitlines()
    assert message.startswith(f"Failed to spawn child {task} with err: Os {{ code: 2")
    pueue.run("add", "-w", str(gone_dir), "true", code=1)  # the client canonicalizes -w


def test_pueue_daemon_killed_with_sigkill_restarts_with_running_killed_and_queued_paused(
        pueue: Pueue, tmp_path: Path) -> None:
    pueue.start()
    pgid_file = tmp_path / "pgid"
    pueue.run("group", "add", "idle")
    pueue.run("group", "add", "stash")
    running = pueue.add(f"echo $$ > {pgid_file}; sleep 30")
    queued = pueue.add("true")
    pueue.add("-g", "idle", "true")
    pueue.add("-g", "stash", "--stashed", "true")
    pueue.wait_kind(running, "Running")
    wait_for(lambda: pgid_file.exists() and pgid_file.read_text().strip(), timeout=WAIT,
             interval=0.05)
    pueue.orphans.append(int(pgid_file.read_text()))
    pueue.wait_kind(2, "Done")
    old = pueue.pid()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: gone(old), timeout=WAIT, interval=0.05)
    pueue.run("status", code=1)
    pueue.start()  # over the stale pid file and socket
    assert pueue.pid() != old
    state = pueue.status()
    done = state["tasks"][str(running)]["status"]["Done"]
    assert done["result"] == "Killed"
    assert_local_timestamp(done["end"])
    assert "Queued" in state["tasks"][str(queued)]["status"]
    assert {name: group["status"] for name, group in state["groups"].items()} == {
        "default": "Paused", "idle": "Running", "stash": "Running"}
    pueue.run("start")
    pueue.wait_kind(queued, "Done")


def test_pueue_restores_pueues_own_4_0_state_file(pueue: Pueue) -> None:
    shutil.copy(FIXTURES / "state-v4.0.0.json", pueue.root / "state.json")
    pueue.start()
    state = pueue.status()
    fixture = json.loads((FIXTURES / "state-v4.0.0.json").read_text())
    assert shape(state["groups"]) == shape(fixture["groups"])
    assert state["groups"]["default"]["status"] == "Paused"  # tasks 4 and 5 are queued
    assert state["groups"]["test"]["status"] == "Running"
    killed = state["tasks"]["3"]["status"]["Done"]
    assert killed["result"] == "Killed"
    assert killed["start"] == fixture["tasks"]["3"]["status"]["Running"]["start"]
    for key in ("0", "1", "2", "4", "5"):
        assert state["tasks"][key] == fixture["tasks"][key]


def test_pueue_usage_errors_exit_2_with_an_error_line(pueue: Pueue) -> None:
    pueue.start()
    for args in (["add", "--no-such-flag", "x"], ["kill", "x"], ["add"], ["frobnicate"],
                 ["add", "--priority", "-5", "x"], ["add", "-l", "-x", "--", "x"]):
        proc = pueue.run(*args, code=2)  # clap's usage exit code
        (line,) = proc.stderr.splitlines()
        assert line.startswith("error: ")
    assert pueue.status()["tasks"] == {}
    # a hyphen value in one word is a value, as clap reads it
    assert pueue.task(pueue.add("--priority=-5", "--", "true"))["priority"] == -5
