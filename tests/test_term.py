"""Plain terminal text (``reconciler.report.term``): the columns read commands print."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.paths import pool_paths
from reconciler.report.term import clip, colour_wanted, columns, fit, paint, say, width
from reconciler.store.sqlite import Store


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_columns_line_up_under_their_headers_and_no_line_ends_in_spaces() -> None:
    out = io.StringIO()
    lines = columns(("id", "title", "commits"), [["7", "short", "12"],
                                                  ["1234", "a much longer title", "3"]],
                    right=("id",), stream=out)
    assert lines == ["  ID  TITLE                COMMITS",
                     "   7  short                12",
                     "1234  a much longer title  3"]


def test_wide_and_combining_characters_take_their_real_width() -> None:
    assert width("日本") == 4 and width("e\u0301") == 1 and width("abc") == 3
    assert width("สิ") == 1 and width("कु") == 1  # vowel signs (Mn) take no column
    assert width("a\u200bb\u202e") == 2  # zero-width space, a bidi control (Cf)
    lines = columns(("a", "b"), [["日本", "x"], ["ab", "y"]], stream=io.StringIO())
    assert lines[1] == "日本  x" and lines[2] == "ab    y"


def test_fit_cuts_only_on_a_terminal() -> None:
    """Issue 12: piped or redirected output is never cut mid-word; a terminal gets
    columns that fit."""
    title = "Refactor the session middleware so that tokens rotate"
    controller, terminal = os.openpty()
    with open(terminal, "w") as tty, open(os.devnull, "w") as redirected:
        assert fit(title, 20, stream=tty) == "Refactor the sessio…"
        assert fit(title, 20, stream=redirected) == title
    os.close(controller)
    reader, writer = os.pipe()
    with open(writer, "w") as pipe:
        assert fit(title, 20, stream=pipe) == title
    os.close(reader)


def test_clip_cuts_by_columns_and_says_so() -> None:
    assert clip("short", 10) == "short"
    assert clip("a longer title", 8) == "a longe…" and width(clip("a longer title", 8)) == 8
    assert clip("日本語のタイトル", 7) == "日本語…" and width(clip("日本語のタイトル", 7)) == 7


def test_colour_only_on_a_terminal_and_never_under_no_color(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert paint("ok", "green", stream=io.StringIO()) == "ok"
    assert paint("ok", "green", stream=FakeTerminal()) == "\x1b[32mok\x1b[0m"
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_wanted(FakeTerminal())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not colour_wanted(FakeTerminal())
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert colour_wanted(io.StringIO())


def test_coloured_cells_are_padded_by_their_text_not_their_escape_codes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    lines = columns(("w", "health", "pid"), [["w-1", ("dead", "red"), "1"],
                                             ["w-2", ("healthy", "green"), "22"]],
                    right=("pid",), stream=io.StringIO())
    assert lines[1] == "w-1  \x1b[31mdead\x1b[0m       1"
    assert lines[2] == "w-2  \x1b[32mhealthy\x1b[0m   22"


def test_say_makes_controls_visible_before_it_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = io.StringIO()
    say("title \x1b]0;pwned\x07\nnext", "red", stream=out)
    assert out.getvalue() == "\x1b[31mtitle \\x1b]0;pwned\\x07\nnext\x1b[0m\n"


@pytest.mark.parametrize("tasks", [3, 2000])
def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path, tasks: int) -> None:
    """``reconcile task list | head -1``: the pipe closes under us; we stop quietly, with
    the status a shell gives a command ended by SIGPIPE.  A short listing fails only at
    the final flush, and only with buffered output (PYTHONUNBUFFERED hides it)."""
    with Store(pool_paths(tmp_path / "state", "p").create().store) as store:
        store.add_tasks([(f"task {i}", "p", 0) for i in range(tasks)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line
    try:
        proc = subprocess.run([sys.executable, "-P", "-m", "reconciler", "--state-dir",
                               str(tmp_path / "state"), "task", "list", "--all"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=60, check=False, env=env)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (141, "")


def test_events_follow_writes_each_line_as_it_happens_into_a_pipe(tmp_path: Path) -> None:
    """``reconcile events --follow | grep``: a pipe is block-buffered, so each event must
    be flushed as it is printed, or nothing shows until the follower ends."""
    state = tmp_path / "state"
    with Store(pool_paths(state, "p").create().store) as store:
        store.add_tasks([("first", "p", 0)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    follower = subprocess.Popen([sys.executable, "-P", "-m", "reconciler", "--state-dir",
                                 str(state), "events", "--follow"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
    try:
        assert follower.stdout is not None
        ready, _, _ = select.select([follower.stdout], [], [], 20)
        assert ready, "no line came through the pipe"
        assert b"task.queued" in follower.stdout.readline()
    finally:
        follower.kill()
        follower.wait()
        if follower.stdout is not None:
            follower.stdout.close()
