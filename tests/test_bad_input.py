"""Bad input to task commands and the state directory: one ``error:`` line and exit 1.

Covers text that is not UTF-8 (surrogates from argv or JSON escapes), ids that do
not fit SQLite's integers, files that are not regular or too large (they would
hang or never end), ``promptFile`` outside the task file's directory, state
directories that cannot hold state, and prompts too large for the environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from reconciler.attempt import MAX_ENV_PROMPT, agent_env
from reconciler.errors import TaskError
from reconciler.taskfile import MAX_PROMPT, MAX_TASK_FILE, NewTask, read_task_file
from tests.e2e import add_task, apply, tasks, wait_tasks
from tests.helpers import FAKE_AGENT, one_error_line, reconcile, write_spec

# A command that must end quickly: a hang (e.g. reading a FIFO) fails the test instead.
QUICK = 30


def _run(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return reconcile(*args, "-f", str(spec), timeout=QUICK)


def _queued(spec: Path) -> list[object]:
    return list(json.loads(_run(spec, "task", "list", "-o", "json").stdout or "[]"))


# --------------------------------------------------------------------------- text and numbers


def test_a_json_surrogate_pair_is_one_character(host: Path) -> None:
    """JSON writes a character beyond the BMP as two escapes (RFC 8259 section 7); read as
    JSON (issue 12), they are the one character they stand for."""
    spec = write_spec(host)
    tasks_file = host / "tasks.json"
    tasks_file.write_text('[{"title": "smile \\ud83d\\ude42"}]')
    assert _run(spec, "task", "import", str(tasks_file)).returncode == 0
    assert _queued(spec)[0]["title"] == "smile \U0001f642"  # type: ignore[index]


@pytest.mark.parametrize(("document", "expected"), [
    pytest.param('[{"title": "t", "prompt": "x\\ud83d"}]', "is not valid UTF-8 text",
                 id="half-a-surrogate-pair-in-prompt"),
    pytest.param('[{"title": "t", "prompt": "\\ud800"}]', "the prompt is not valid UTF-8",
                 id="lone-surrogate-in-prompt"),
    pytest.param('[{"title": "t", "priority": 99999999999999999999}]', "out of range",
                 id="priority-beyond-64-bits"),
])
def test_task_import_refuses_text_and_numbers_sqlite_cannot_store(
        host: Path, document: str, expected: str) -> None:
    spec = write_spec(host)
    tasks_file = host / "tasks.json"
    tasks_file.write_text(document)
    line = one_error_line(_run(spec, "task", "import", str(tasks_file)))
    assert line.startswith(f"error: {tasks_file}:1:"), line
    assert expected in line
    assert not _queued(spec)


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(["task", "add", "--title", "bad \udcff byte"],
                 "--title: the task title is not valid UTF-8 text", id="title-undecodable-argv"),
    pytest.param(["task", "add", "--title", "t", "--prompt", "\udcff"],
                 "--prompt: the prompt is not valid UTF-8 text", id="prompt-undecodable-argv"),
    pytest.param(["task", "show", "99999999999999999999"], "argument ID: task id", id="show"),
    pytest.param(["task", "cancel", str(2**63)], "out of range", id="cancel"),
    pytest.param(["task", "retry", str(2**64)], "out of range", id="retry"),
    pytest.param(["task", "wait", "1", str(2**70)], "out of range", id="wait"),
    pytest.param(["task", "add", "--title", "t", "--priority", str(2**63)],
                 "argument --priority: priority", id="priority"),
])
def test_task_commands_refuse_argv_sqlite_cannot_store(host: Path, args: list[str],
                                                       expected: str) -> None:
    spec = write_spec(host)
    add_task(spec, title="seed")
    assert expected in one_error_line(_run(spec, *args))
    assert len(_queued(spec)) == 1


# --------------------------------------------------------------------------- files we read


def _fifo(directory: Path) -> Path:
    fifo = directory / "fifo"
    os.mkfifo(fifo)
    return fifo


@pytest.mark.parametrize(("make", "expected"), [
    pytest.param(lambda d: d, "is a directory", id="directory"),
    pytest.param(lambda d: Path("/dev/zero"), "is not a regular file", id="dev-zero"),
    pytest.param(_fifo, "is not a regular file", id="fifo"),
    pytest.param(lambda d: d / "missing.yaml", "no such file", id="missing"),
])
def test_task_import_reads_only_regular_files(host: Path, make: Callable[[Path], Path],
                                              expected: str) -> None:
    spec = write_spec(host)
    target = make(host)
    line = one_error_line(_run(spec, "task", "import", str(target)))
    assert line.startswith(f"error: {target}: {expected}"), line


@pytest.mark.parametrize(("make", "expected"), [
    pytest.param(lambda d: d, "is a directory", id="directory"),
    pytest.param(lambda d: Path("/dev/zero"), "is not a regular file", id="dev-zero"),
    pytest.param(_fifo, "is not a regular file", id="fifo"),
])
def test_task_add_reads_only_a_regular_prompt_file(host: Path, make: Callable[[Path], Path],
                                                   expected: str) -> None:
    spec = write_spec(host)
    target = make(host)
    line = one_error_line(_run(spec, "task", "add", "--title", "t", "--prompt-file",
                               str(target)))
    assert line.startswith(f"error: --prompt-file {target}: {expected}"), line


def test_prompt_and_task_files_are_capped(host: Path) -> None:
    spec = write_spec(host)
    big = host / "big.txt"
    big.write_bytes(b"a" * (MAX_PROMPT + 1))
    line = one_error_line(_run(spec, "task", "add", "--title", "t", "--prompt-file", str(big)))
    assert "larger than the limit of 1 MiB" in line
    listed = host / "tasks.yaml"
    listed.write_text("- title: big\n  promptFile: big.txt\n")
    line = one_error_line(_run(spec, "task", "import", str(listed)))
    assert line.startswith(f"error: {listed}:2:15: task 0: cannot read promptFile big.txt: "
                           "is larger than the limit of 1 MiB"), line
    huge = host / "huge.yaml"
    huge.write_text("# padding\n" * (MAX_TASK_FILE // 10 + 1) + "- title: t\n")
    assert "larger than the limit" in one_error_line(_run(spec, "task", "import", str(huge)))
    assert not _queued(spec)
    big.write_bytes(b"a" * MAX_PROMPT)  # exactly the limit is fine
    assert _run(spec, "task", "import", str(listed)).returncode == 0


def test_prompt_file_must_be_utf8(host: Path) -> None:
    spec = write_spec(host)
    (host / "latin1.txt").write_bytes("café".encode("latin-1"))
    listed = host / "tasks.yaml"
    listed.write_text("- title: t\n  promptFile: latin1.txt\n")
    line = one_error_line(_run(spec, "task", "import", str(listed)))
    assert "cannot read promptFile latin1.txt: not UTF-8 text (byte 3)" in line


# --------------------------------------------------------------------------- promptFile confinement


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    """A task file's directory, with a secret next to (not under) it."""
    folder = tmp_path / "batch"
    (folder / "prompts").mkdir(parents=True)
    (folder / "prompts" / "inside.md").write_text("inside\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    return folder


@pytest.mark.parametrize("name", [
    pytest.param("../secret.txt", id="dot-dot"),
    pytest.param("ABSOLUTE", id="absolute"),
    pytest.param("prompts/link.md", id="symlink-pointing-outside"),
])
def test_prompt_file_outside_the_task_files_directory_is_refused(batch: Path, name: str) -> None:
    secret = batch.parent / "secret.txt"
    (batch / "prompts" / "link.md").symlink_to(secret)
    name = str(secret) if name == "ABSOLUTE" else name
    listed = batch / "tasks.yaml"
    listed.write_text(f"- title: t\n  promptFile: {name}\n")
    with pytest.raises(TaskError) as caught:
        read_task_file(listed)
    assert caught.value.message.startswith(f"{listed}:2:15: task 0: promptFile {name} is "
                                           f"outside {batch.resolve()}")
    assert caught.value.hint is not None and "--allow-outside" in caught.value.hint
    assert read_task_file(listed, allow_outside=True) == [NewTask("t", "secret\n")]


def test_prompt_file_under_the_directory_is_read_even_through_a_symlinked_directory(
        batch: Path) -> None:
    alias = batch.parent / "alias"
    alias.symlink_to(batch)
    listed = alias / "tasks.yaml"
    listed.write_text("- title: t\n  promptFile: prompts/inside.md\n")
    assert read_task_file(listed) == [NewTask("t", "inside\n")]


def test_task_import_allow_outside_option(host: Path, batch: Path) -> None:
    spec = write_spec(host)
    listed = batch / "tasks.yaml"
    listed.write_text("- title: t\n  promptFile: ../secret.txt\n")
    assert "--allow-outside" in one_error_line(_run(spec, "task", "import", str(listed)))
    assert not _queued(spec)
    _run(spec, "task", "import", str(listed), "--allow-outside")
    assert len(_queued(spec)) == 1


# --------------------------------------------------------------------------- the state directory


@pytest.mark.parametrize(("where", "expected"), [
    pytest.param("FILE", "exists but is not a directory", id="regular-file"),
    pytest.param("FILE/sub", "cannot create the directory", id="under-a-regular-file"),
    pytest.param("/proc/reconciler-state", "is under /proc", id="proc"),
    pytest.param("/proc/self", "is under /proc", id="proc-existing"),
])
@pytest.mark.parametrize("via", ["option", "environment"])
def test_state_dir_that_cannot_hold_state(host: Path, monkeypatch: pytest.MonkeyPatch,
                                          where: str, expected: str, via: str) -> None:
    spec = write_spec(host)
    (host / "file").write_text("not a directory\n")
    state = where.replace("FILE", str(host / "file"))
    args = ["task", "add", "--title", "t", "-f", str(spec)]
    if via == "option":
        proc = reconcile("--state-dir", state, *args, timeout=QUICK)
    else:
        monkeypatch.setenv("RECONCILER_STATE_DIR", state)
        proc = reconcile(*args, timeout=QUICK)
    line = one_error_line(proc)
    assert expected in line and "RECONCILER_STATE_DIR" in line, line
    assert (host / "file").read_text() == "not a directory\n"


# --------------------------------------------------------------------------- large prompts run


def test_agent_environment_holds_only_a_small_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_TASK_PROMPT", "inherited")
    values = {"task.prompt": "p" * MAX_ENV_PROMPT, "task.prompt_file": "/x/task-1.txt"}
    env = agent_env((("API", "k"),), values)
    assert env["RECONCILER_TASK_PROMPT"] == values["task.prompt"]
    assert env["RECONCILER_TASK_PROMPT_FILE"] == "/x/task-1.txt" and env["API"] == "k"
    env = agent_env((), {**values, "task.prompt": "é" * (MAX_ENV_PROMPT // 2 + 1)})
    assert "RECONCILER_TASK_PROMPT" not in env
    assert env["RECONCILER_TASK_PROMPT_FILE"] == "/x/task-1.txt"


def test_a_one_mebibyte_prompt_runs_through_its_prompt_file(host: Path, git_repo: Path) -> None:
    command = [str(FAKE_AGENT), "--prompt-file", "{task.prompt_file}", "--title", "{task.title}",
               "--seconds", "0.1"]
    spec = write_spec(host, replicas=1, command=command)
    line = "Refactor the module, then run the tests. 0123456789 ünïcode ✓\n"
    body = (line * (MAX_PROMPT // len(line.encode()) - 1)).encode()
    prompt = body + b"x" * (MAX_PROMPT - len(body) - 1) + b"\n"
    assert len(prompt) == MAX_PROMPT  # the largest prompt a task may have
    prompt_file = host / "prompt.txt"
    prompt_file.write_bytes(prompt)
    apply(spec)
    task_id = add_task(spec, title="big prompt", prompt_file=prompt_file)
    wait_tasks(spec, task_id, timeout="90s")
    (task,) = tasks(spec)
    assert task["status"] == "succeeded", task
    shown = subprocess.run(["git", "-C", str(git_repo), "show", f"{task['branch']}:PROMPT.txt"],
                           capture_output=True, check=True).stdout
    assert shown == prompt


def test_large_task_files_import_as_json_json_lines_and_plain_yaml(host: Path) -> None:
    """Issue 12: a plain JSON file of 5,000 tasks was refused as "document expands to
    more than 20000 values (alias bomb?)".  JSON has no aliases; JSON Lines streams; a
    long plain YAML list is fine too (only what aliases add is capped)."""
    spec = write_spec(host, replicas=0)
    tasks = [{"title": f"task {n}", "prompt": f"do {n}", "priority": n % 7}
             for n in range(5000)]
    as_json = host / "tasks.json"
    as_json.write_text(json.dumps(tasks))
    as_lines = host / "tasks.jsonl"
    as_lines.write_text("\n".join(json.dumps(t) for t in tasks[:300]) + "\n\n")
    as_yaml = host / "tasks.yaml"
    as_yaml.write_text(yaml.safe_dump(tasks[:4000]))
    for path, count in ((as_json, 5000), (as_lines, 300), (as_yaml, 4000)):
        done = reconcile("task", "import", str(path), "-f", str(spec), "-o", "json")
        assert done.returncode == 0, done.stderr
        assert len(json.loads(done.stdout)["ids"]) == count


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("bad.jsonl", '{"title": "a"}\n{"title": 3}\n', "bad.jsonl:2: task 1: `title` must be"),
    ("bad.jsonl", '{"title": "a"}\n{oops\n', "bad.jsonl:2:2: malformed JSON: "),
    ("bad.json", '[{"title": "a"},\n {"title": "b", "colour": 1}]',
     "bad.json:2:17: task 1: unknown key `colour`"),
    ("bad.json", '[{"title": "a"}', "bad.json:1:16: malformed JSON: "),
    ("empty.jsonl", "\n\n", "empty.jsonl: no tasks (one JSON object per line"),
])
def test_json_task_files_name_the_line_that_is_wrong(host: Path, name: str, text: str,
                                                     expected: str) -> None:
    spec = write_spec(host, replicas=0)
    bad = host / name
    bad.write_text(text)
    refused = reconcile("task", "import", str(bad), "-f", str(spec))
    assert refused.returncode == 1
    assert expected in one_error_line(refused)
