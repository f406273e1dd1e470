"""Tests for specs/fake-agent (the demo's simulated agent), run as a real
subprocess in real git repos."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FAKE_AGENT

FAST = "0.05"
RUN_TIMEOUT = 30.0
IDENT = ["-c", "user.name=Test Setup", "-c", "user.email=setup@example.invalid"]

TRICKY_PROMPTS = {
    "shell-and-tmux": '$(touch CANARY); echo "`touch CANARY`"\n C-c #{session_name}',
    "escaped-backticks": '$(touch CANARY); echo "\\`touch CANARY\\`"\n C-c #{session_name}',
    "quotes-semicolons-newlines": (
        'it\'s "quoted"; true && touch CANARY || `touch CANARY`\n'
        "line two\ttab $HOME ${PATH} %s {} \\n\n\nC-c C-d Enter #{pane_id}\n"
    ),
    "crlf-unicode-no-trailing-newline": "first line\r\nzweite Zeile — ünïcødé ✓ 🚀\r\n  \t",
}


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's env without anything that would steer git or the agent."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GIT_") and k not in {"FAKE_AGENT_SECONDS", "EMAIL"}
    }
    env.update(extra)
    return env


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *IDENT, *args],
        cwd=repo,
        env=clean_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD").strip()


def commit_count(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "HEAD").strip())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("# scratch\n", encoding="utf-8")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "initial")
    return path


def run_agent(
    repo: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(FAKE_AGENT), *args],
        cwd=repo,
        env=env if env is not None else clean_env(),
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Popen handles registered here are killed and reaped whatever the test outcome."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=RUN_TIMEOUT)


def spawn_agent(
    procs: list[subprocess.Popen[bytes]], repo: Path, *args: str
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_AGENT), *args],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    procs.append(proc)
    return proc


def read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float = 10.0) -> bytes:
    """Read the child's stdout until `needle` shows up (fail after `timeout`)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while needle not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {needle!r}; got {seen!r}"
            if sel.select(remaining):
                chunk = os.read(fd, 4096)
                assert chunk, f"stdout closed before {needle!r}; got {seen!r}"
                seen += chunk
    return seen


def assert_no_canary(tmp_path: Path) -> None:
    assert not [p for p in tmp_path.rglob("*") if "CANARY" in p.name]


# --- success ------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["argv", "prompt-file"])
@pytest.mark.parametrize("prompt", list(TRICKY_PROMPTS.values()), ids=list(TRICKY_PROMPTS))
def test_success_commits_byte_identical_prompt(
    tmp_path: Path, repo: Path, prompt: str, via: str
) -> None:
    before = head(repo)
    if via == "argv":
        source = ["--prompt", prompt]
    else:
        prompt_file = tmp_path / "prompt.txt"
        prompt_file.write_bytes(prompt.encode("utf-8"))
        source = ["--prompt-file", str(prompt_file)]

    result = run_agent(repo, *source, "--seconds", FAST, "--title", "tricky")

    assert result.returncode == 0, result.stderr
    sha = git(repo, "rev-parse", "--short", "HEAD").strip()
    assert f"fake-agent: committed {sha}".encode() in result.stdout
    assert git(repo, "rev-parse", "HEAD~1").strip() == before
    assert git(repo, "log", "-1", "--format=%s").strip() == "fake-agent: tricky"
    changed = git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(changed) == ["AGENT_NOTES.md", "PROMPT.txt"]
    committed = subprocess.run(
        ["git", "show", "HEAD:PROMPT.txt"], cwd=repo, env=clean_env(), capture_output=True
    ).stdout
    assert committed == prompt.encode("utf-8")
    assert (repo / "PROMPT.txt").read_bytes() == prompt.encode("utf-8")
    assert git(repo, "status", "--porcelain") == ""
    assert_no_canary(tmp_path)


def test_notes_file_appended_and_title_defaults_to_first_line(repo: Path) -> None:
    long_first_line = "Implement the widget " + "x" * 80
    prompt = f"{long_first_line}\nmore detail\n"
    notes = repo / "NOTES.md"
    notes.write_text("# Notes\nexisting", encoding="utf-8")  # no trailing newline
    git(repo, "add", "NOTES.md")
    git(repo, "commit", "-q", "-m", "notes")

    result = run_agent(repo, "--prompt", prompt, "--seconds", FAST, "--notes-file", "NOTES.md")

    assert result.returncode == 0, result.stderr
    title = long_first_line[:60]
    assert git(repo, "log", "-1", "--format=%s").strip() == f"fake-agent: {title}"
    text = notes.read_text(encoding="utf-8")
    assert text.startswith("# Notes\nexisting\n")
    assert f"\n## {title}\n" in text
    assert "done" in text.lower()
    assert not (repo / "AGENT_NOTES.md").exists()


def test_second_run_appends_another_section(repo: Path) -> None:
    for title in ("first task", "second task"):
        result = run_agent(repo, "--prompt", title, "--seconds", FAST)
        assert result.returncode == 0, result.stderr
    notes = (repo / "AGENT_NOTES.md").read_text(encoding="utf-8")
    assert notes.index("## first task") < notes.index("## second task")
    assert commit_count(repo) == 3


@pytest.mark.parametrize("steps", [1, 3, 5], ids=lambda n: f"steps={n}")
def test_progress_lines_printed(repo: Path, steps: int) -> None:
    result = run_agent(
        repo,
        "--prompt",
        "do things",
        "--title",
        "My Task",
        "--seconds",
        FAST,
        "--steps",
        str(steps),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    expected = [f"fake-agent: [{i}/{steps}] thinking about My Task" for i in range(1, steps + 1)]
    assert lines[:steps] == expected
    assert lines[steps].startswith("fake-agent: committed ")


def test_works_without_git_identity(tmp_path: Path, repo: Path) -> None:
    home = tmp_path / "empty-home"
    home.mkdir()
    env = clean_env(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
    )
    for var in ("EMAIL", "USER", "LOGNAME"):
        env.pop(var, None)
    # Sanity check: plain git really has no usable identity in this environment.
    probe = subprocess.run(
        ["git", "-c", "user.useConfigOnly=true", "var", "GIT_COMMITTER_IDENT"],
        cwd=repo,
        env=env,
        capture_output=True,
    )
    assert probe.returncode != 0

    result = run_agent(repo, "--prompt", "no identity here", "--seconds", FAST, env=env)

    assert result.returncode == 0, result.stderr
    assert git(repo, "log", "-1", "--format=%an <%ae>").strip() == (
        "fake-agent <fake-agent@localhost>"
    )


def test_seconds_from_env(repo: Path) -> None:
    started = time.monotonic()
    result = run_agent(repo, "--prompt", "env timing", env=clean_env(FAKE_AGENT_SECONDS="0.05"))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10


def test_seconds_marker_overrides_option(repo: Path) -> None:
    started = time.monotonic()
    result = run_agent(repo, "--prompt", "quick [seconds=0.05] please", "--seconds", "120")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10


# --- failure modes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(["--prompt", "please [fail] now"], 1, id="marker-fail"),
        pytest.param(["--prompt", "plain", "--fail"], 1, id="option-fail"),
        pytest.param(["--prompt", "odd ending [exit=7]"], 7, id="marker-exit-7"),
        pytest.param(["--prompt", "plain", "--exit-code", "5"], 5, id="option-exit-code-5"),
    ],
)
def test_nonzero_exit_without_commit(repo: Path, args: list[str], expected: int) -> None:
    before = head(repo)
    result = run_agent(repo, *args, "--seconds", FAST)
    assert result.returncode == expected, result.stderr
    assert head(repo) == before
    assert b"committed" not in result.stdout
    assert not (repo / "PROMPT.txt").exists()
    assert git(repo, "status", "--porcelain") == ""


def test_exit_zero_marker_commits(repo: Path) -> None:
    result = run_agent(repo, "--prompt", "fine [exit=0]", "--seconds", FAST)
    assert result.returncode == 0, result.stderr
    assert commit_count(repo) == 2


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--prompt", "boom [crash]"], id="marker-crash"),
        pytest.param(["--prompt", "boom", "--crash"], id="option-crash"),
    ],
)
def test_crash_dies_by_sigkill_after_first_progress_line(repo: Path, args: list[str]) -> None:
    before = head(repo)
    result = run_agent(repo, *args, "--title", "boom", "--seconds", FAST, "--steps", "3")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.decode().splitlines() == ["fake-agent: [1/3] thinking about boom"]
    assert head(repo) == before


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--prompt", "stall", "--hang"], id="option-hang"),
        pytest.param(["--prompt", "stall [hang]"], id="marker-hang"),
    ],
)
def test_hang_keeps_running(
    repo: Path, spawned: list[subprocess.Popen[bytes]], args: list[str]
) -> None:
    before = head(repo)
    proc = spawn_agent(spawned, repo, *args, "--seconds", FAST)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)
    assert proc.poll() is None
    proc.kill()
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    assert b"fake-agent: hanging" in out
    assert head(repo) == before


def test_sigterm_prints_interrupted_and_exits_143(
    repo: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    proc = spawn_agent(spawned, repo, "--prompt", "stall", "--hang", "--seconds", FAST)
    seen = read_until(proc, b"fake-agent: hanging")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 143
    assert b"fake-agent: interrupted" in seen + out


def test_git_failure_exits_3(tmp_path: Path) -> None:
    not_a_repo = tmp_path / "plain"
    not_a_repo.mkdir()
    env = clean_env(GIT_CEILING_DIRECTORIES=str(tmp_path))
    result = run_agent(not_a_repo, "--prompt", "nowhere to commit", "--seconds", FAST, env=env)
    assert result.returncode == 3
    assert b"git" in result.stderr
    assert b"committed" not in result.stdout


def test_prompt_or_prompt_file_required(repo: Path) -> None:
    result = run_agent(repo, "--seconds", FAST)
    assert result.returncode == 2
    assert b"--prompt" in result.stderr
