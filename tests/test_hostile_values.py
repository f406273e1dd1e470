"""Hostile values in specs and tasks: nothing drives the terminal, nothing leaks, nothing slips.

Terminal control sequences in task titles, errors and event messages are shown
visibly, never written raw; ``-o json`` keeps them exact. A tmux socket name is
one plain file name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.errors import SpecError
from reconciler.model import EventRow
from reconciler.report import documents, render
from reconciler.spec import load_spec
from tests.e2e import add_task, show_task, tasks
from tests.helpers import error_lines, one_error_line, reconcile, write_spec

# retitles the terminal window (OSC 0 ... BEL), then clears the screen (CSI 2J)
HOSTILE_TITLE = "\x1b]0;pwned\x07\x1b[2J"
VISIBLE_TITLE = "\\x1b]0;pwned\\x07\\x1b[2J"
RAW = ("\x1b", "\x07", "\x9b", "\x7f", "\r")

# --------------------------------------------------------------------------- terminal escapes


def assert_no_raw_controls(output: str) -> None:
    for char in RAW:
        assert char not in output, (char, output)


class TestTerminalEscapes:
    def test_task_list_show_and_events_escape_a_hostile_title(self, host: Path,
                                                              git_repo: Path) -> None:
        spec = write_spec(host)
        task_id = add_task(spec, "do it", title=HOSTILE_TITLE)

        listed = reconcile("task", "list", "-f", str(spec), check=True).stdout
        assert_no_raw_controls(listed)
        assert "pwned" in listed

        shown = reconcile("task", "show", task_id, "-f", str(spec), check=True).stdout
        assert_no_raw_controls(shown)
        assert f"task {task_id}: {VISIBLE_TITLE}" in shown

        events = reconcile("events", "-f", str(spec), check=True).stdout
        assert_no_raw_controls(events)
        assert f"queued: {VISIBLE_TITLE}" in events

    def test_json_output_keeps_the_title_exact(self, host: Path, git_repo: Path) -> None:
        spec = write_spec(host)
        task_id = add_task(spec, "do it", title=HOSTILE_TITLE)
        assert [t["title"] for t in tasks(spec)] == [HOSTILE_TITLE]
        assert show_task(spec, task_id)["title"] == HOSTILE_TITLE
        events = json.loads(reconcile("events", "-f", str(spec), "-o", "json",
                                      check=True).stdout)
        assert f"queued: {HOSTILE_TITLE}" in [e["message"] for e in events]


@pytest.mark.parametrize(("text", "seen"), [
    pytest.param("a\x1b[31mred", "a\\x1b[31mred", id="esc-csi"),
    pytest.param("bell\x07", "bell\\x07", id="bel"),
    pytest.param("nul\x00", "nul\\x00", id="nul"),
    pytest.param("del\x7f", "del\\x7f", id="del"),
    pytest.param("c1-csi\x9b2J", "c1-csi\\x9b2J", id="c1-csi"),
    pytest.param("c1-osc\x9d0;x\x9c", "c1-osc\\x9d0;x\\x9c", id="c1-osc"),
    pytest.param("over\rwrite", "over\\rwrite", id="carriage-return"),
    pytest.param("fake\nline", "fake\\nline", id="newline-in-one-line-field"),
    pytest.param("tab\there", "tab\there", id="tab-kept"),
    pytest.param("naïve → ünïcode", "naïve → ünïcode", id="printable-unicode-kept"),
    pytest.param("fix \u202egnp.exe", "fix \\u202egnp.exe", id="bidi-override"),
    pytest.param("a\u2066b\u2069", "a\\u2066b\\u2069", id="bidi-isolates"),
    pytest.param("one\u2028two\u2029", "one\\u2028two\\u2029", id="line-separators"),
    pytest.param("mark\u200f", "mark\\u200f", id="rtl-mark"),
])
def test_control_characters_are_written_out(text: str, seen: str) -> None:
    assert documents.printable(text) == seen


def test_a_newline_stays_where_the_field_has_lines() -> None:
    assert documents.printable("one\ntwo\x1b", multiline=True) == "one\ntwo\\x1b"


def test_an_event_line_shows_escapes_and_markup_literally(
        capsys: pytest.CaptureFixture[str]) -> None:
    event = EventRow(id=1, at=0.0, kind="task.queued", worker_id="w\x1b[1m", task_id=3,
                     message="queued: \x1b[bold]x[/bold]\nforged line")
    render.render_events([event])
    out = capsys.readouterr().out
    assert_no_raw_controls(out)
    assert "queued: \\x1b[bold]x[/bold]\\nforged line" in out
    assert "w\\x1b[1m task 3" in out
    assert len(out.splitlines()) == 1


def test_any_line_said_is_made_visible(capsys: pytest.CaptureFixture[str]) -> None:
    """Other modules print progress lines through the same ``say``: they are covered too,
    and markup is just text."""
    render.say("step: \x1b]52;c;Y3VybCBldmlsCg==\x07 done\n[bold]next[/bold]", "green")
    out = capsys.readouterr().out
    assert_no_raw_controls(out)
    assert out == "step: \\x1b]52;c;Y3VybCBldmlsCg==\\x07 done\n[bold]next[/bold]\n"


def test_an_error_line_quoting_outside_text_is_made_visible(tmp_path: Path) -> None:
    """An error may quote a path, git's or tmux's output: on stderr too, it cannot drive
    the terminal."""
    name = tmp_path / "spec\x1b]0;pwned\x07.yaml"
    proc = reconcile("validate", "-f", str(name))
    assert proc.returncode == 1
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert "spec\\x1b]0;pwned\\x07.yaml: no such file" in proc.stderr


# --------------------------------------------------------------------------- tmux socket


def spec_with_socket(directory: Path, socket: str) -> Path:
    return write_spec(directory, extra={"tmux": {"socket": socket}})


@pytest.mark.parametrize("socket", [
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot-dot"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("-Lother", id="leading-dash"),
    pytest.param("-", id="dash"),
    pytest.param("", id="empty"),
    pytest.param("a/b", id="slash"),
    pytest.param("../escape", id="parent-path"),
    pytest.param("two words", id="space"),
    pytest.param("rt\n", id="trailing-newline"),
    pytest.param("s\x1b", id="control-character"),
    pytest.param("sóck", id="non-ascii"),
    pytest.param("x" * 65, id="65-characters"),
])
def test_bad_socket_name_is_refused(tmp_path: Path, socket: str) -> None:
    file = spec_with_socket(tmp_path, socket)
    with pytest.raises(SpecError) as caught:
        load_spec(file)
    assert ": spec.tmux.socket: expected a socket name of 1-64 letters" in str(caught.value)


@pytest.mark.parametrize("socket", [
    pytest.param("reconciler", id="default"),
    pytest.param("rt-pool_1.v2", id="every-allowed-kind"),
    pytest.param("_private", id="leading-underscore"),
    pytest.param("9lives", id="leading-digit"),
    pytest.param("a", id="one-character"),
    pytest.param("x" * 64, id="64-characters"),
])
def test_good_socket_name_is_kept(tmp_path: Path, socket: str) -> None:
    assert load_spec(spec_with_socket(tmp_path, socket)).tmux_socket == socket


@pytest.mark.parametrize("socket", [pytest.param(".", id="dot"),
                                    pytest.param("..", id="dot-dot")])
def test_validate_refuses_a_dot_socket(host: Path, socket: str) -> None:
    file = spec_with_socket(host, socket)
    line = one_error_line(reconcile("validate", "-f", str(file)))
    assert "spec.tmux.socket: expected a socket name" in line
    assert "not starting with '.' or '-'" in line
    error_lines(reconcile("diff", "-f", str(file)), count=1)


# --------------------------------------------------------------------------- env values

SECRET = "987654321"


@pytest.mark.parametrize(("env", "path", "what"), [
    pytest.param({"API_TOKEN": int(SECRET)}, "spec.worker.env.API_TOKEN",
                 "expected a string (quote the value), got an integer", id="integer"),
    pytest.param({"API_TOKEN": float(SECRET + ".5")}, "spec.worker.env.API_TOKEN",
                 "expected a string (quote the value), got a number", id="number"),
    pytest.param({"API_TOKEN": True}, "spec.worker.env.API_TOKEN",
                 "expected a string (quote the value), got a boolean", id="boolean"),
    pytest.param({"API_TOKEN": [SECRET]}, "spec.worker.env.API_TOKEN",
                 "expected a string (quote the value), got a list", id="list"),
    pytest.param({"API_TOKEN": {"value": SECRET}}, "spec.worker.env.API_TOKEN",
                 "expected a string (quote the value), got a mapping", id="mapping"),
    pytest.param(f"API_TOKEN={SECRET}", "spec.worker.env",
                 "expected a mapping of environment variable names to strings, got a string",
                 id="env-as-string"),
    pytest.param([f"API_TOKEN={SECRET}"], "spec.worker.env",
                 "expected a mapping of environment variable names to strings, got a list",
                 id="env-as-list"),
])
def test_env_problem_never_shows_the_value(tmp_path: Path, env: object, path: str,
                                           what: str) -> None:
    file = write_spec(tmp_path, extra={"worker": {"command": ["agent"], "env": env}})
    with pytest.raises(SpecError) as caught:
        load_spec(file)
    message = str(caught.value)
    assert f": {path}: {what}" in message
    assert SECRET not in message


def test_env_values_stay_out_of_the_other_fields_problems(tmp_path: Path) -> None:
    """A non-env value is still shown: it is how the operator finds the typo."""
    file = write_spec(tmp_path, extra={"replicas": "three", "worker": {
        "command": ["agent"], "env": {"API_TOKEN": SECRET}}})
    with pytest.raises(SpecError) as caught:
        load_spec(file)
    assert 'spec.replicas: expected a whole number from 0 to 256, got a string "three"' \
        in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize("command", [
    pytest.param(["validate"], id="validate"),
    pytest.param(["validate", "-o", "json"], id="validate-json"),
    pytest.param(["diff"], id="diff"),
    pytest.param(["diff", "-o", "json"], id="diff-json"),
    pytest.param(["apply"], id="apply"),
    pytest.param(["apply", "-o", "json"], id="apply-json"),
])
def test_no_command_prints_a_non_string_env_value(host: Path, git_repo: Path,
                                                  command: list[str]) -> None:
    file = write_spec(host, extra={"worker": {"command": ["agent"],
                                              "env": {"API_TOKEN": int(SECRET)}}})
    proc = reconcile(*command, "-f", str(file))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert "spec.worker.env.API_TOKEN: expected a string (quote the value), got an integer" \
        in proc.stdout + proc.stderr


def test_a_pool_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    """``re.match`` with ``$`` takes "demo\\n": ``--pool`` must not name a directory
    with a newline in it."""
    from reconciler.errors import PoolError
    from reconciler.paths import pool_paths

    for name in ("demo\n", "demo\n\n", "\ndemo"):
        with pytest.raises(PoolError, match="invalid pool name"):
            pool_paths(tmp_path, name)
    assert pool_paths(tmp_path, "demo").name == "demo"
