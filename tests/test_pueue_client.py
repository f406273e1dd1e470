"""The pueue client (``reconciler/runtimes/pueue.py``) over the stand-in ``pueue`` and
``pueued``: the daemon started and waited for, groups, and an attempt handed to pueue,
which runs ``reconcile run-task`` for it with only our identifiers, quoted for ``sh -c``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.pueuestatus import parse_label
from reconciler.runtimes.pueue import PueueClient, PueueError, run_task_command
from tests.e2e import add_task, apply, show_task
from tests.helpers import wait_for, write_spec
from tests.test_pueue_standin import Pueue


class RealPueue(Pueue):
    """The real pueue on PATH, kept apart from the user's own daemon: a config of its
    own names this directory for its state, socket and pid file (pueue_lib
    settings.rs ``Shared``: ``pueue_directory``, ``runtime_directory``; 3.4 and 4.0)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.env["PATH"] = os.environ["PATH"]  # not the stand-in's directory
        self.config.write_text(f"shared:\n  pueue_directory: {json.dumps(str(root))}\n"
                               f"  runtime_directory: {json.dumps(str(root))}\n")


def isolated_pueue(kind: str, root: Path) -> Pueue:
    """The stand-in (``kind`` "stand-in") or the real pueue, isolated under ``root``; the
    real one only where it is installed, else the test is skipped saying so (the
    contract test: `pytest -k pueue -rs` prints why)."""
    if kind == "real pueue":
        if shutil.which("pueue") is None or shutil.which("pueued") is None:
            pytest.skip("pueue and pueued are not on PATH: the contract test against the "
                        "real pueue needs them (cargo install pueue)")
        return RealPueue(root)
    return Pueue(root)


@pytest.fixture(params=["stand-in", "real pueue"])
def pueue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pueue]:
    """Each test runs over the stand-in, and over the real pueue where it is installed."""
    made = isolated_pueue(request.param, tmp_path / "pueue")
    try:
        yield made
    finally:
        made.stop()


def client_of(pueue: Pueue) -> PueueClient:
    return PueueClient(config=pueue.config, env=pueue.env)


def test_pueue_client_starts_the_daemon_and_waits_for_it(pueue: Pueue) -> None:
    client = client_of(pueue)
    assert not client.daemon_running()
    with pytest.raises(PueueError, match="pueue status failed: "):
        client.status()
    client.start_daemon()
    assert client.daemon_running() and pueue.listening()
    assert set(client.status().groups) == {"default"}


def test_pueue_client_sets_up_groups(pueue: Pueue) -> None:
    pueue.start()
    client = client_of(pueue)
    client.add_group("agents", 2)
    client.set_parallel("agents", 4)
    client.pause_group("agents")
    group = client.status().groups["agents"]
    assert (group.status, group.parallel_tasks) == ("paused", 4)
    client.start_group("agents")
    assert client.status().groups["agents"].status == "running"
    with pytest.raises(PueueError) as refused:
        client.set_parallel("nope", 1)
    assert refused.value.one_line().startswith("pueue parallel failed: ")
    assert "\n" not in refused.value.one_line()


def test_pueue_runs_a_handed_attempt_through_run_task(pueue: Pueue, host: Path,
                                                      git_repo: Path) -> None:
    """The state directory's name holds a space, quotes and ``$(...)``: sh -c must see
    one word, run nothing, and run-task must get the very path."""
    pueue.start()
    client = client_of(pueue)
    client.add_group("agents", 1)
    spec = write_spec(host, replicas=0)
    apply(spec)
    task = add_task(spec, title="sh -c must never see this: $(touch owned)")
    state = host / "state"
    odd = host / "st ate'$(touch owned)"
    state.rename(odd)
    try:
        pueue_id = client.add_attempt(group="agents", pool="testpool", task_id=int(task),
                                      attempt=1, priority=-3, state_dir=odd, cwd=git_repo)
        wait_for(lambda: client.status().tasks[pueue_id].state == "done", timeout=60,
                 message="pueue to run the attempt")
        done = client.status().tasks[pueue_id]
        # a negative priority too: clap would read a separate "-3" as a flag
        assert (done.result, done.group, done.priority) == ("success", "agents", -3)
        assert parse_label(done.label) == ("testpool", int(task), 1)
        assert not (git_repo / "owned").exists() and not (host / "owned").exists()
        raw = pueue.task(pueue_id)["command"]
        assert "sh -c must never see" not in raw and "touch owned" in raw  # the path only
        assert shlex.split(raw)[-9:] == ["--state-dir", str(odd), "run-task", "--pool",
                                         "testpool", "--task", task, "--attempt", "1"]
    finally:
        odd.rename(state)
    shown = show_task(spec, task)
    assert shown["status"] == "succeeded" and shown["attempt_details"][0]["worker_id"] == "w-1"


def test_the_command_given_to_pueue_holds_only_our_identifiers(tmp_path: Path) -> None:
    import sys

    words = run_task_command("agents", 12, 3, tmp_path / "a b")
    assert shlex.split(" ".join(words)) == [
        sys.executable, "-m", "reconciler", "--state-dir", str(tmp_path / "a b"), "run-task",
        "--pool", "agents", "--task", "12", "--attempt", "3"]
