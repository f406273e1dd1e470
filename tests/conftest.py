"""Shared fixtures: an isolated host (own tmux socket dir, own state dir), real git repos.

Every test that uses ``host`` gets its own ``TMUX_TMPDIR`` and
``RECONCILER_STATE_DIR``; at the end every tmux server under that directory is
killed and every process whose command line names the test's state directory
is killed, so a failing test cannot leak workers into the next one.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import state_dir
from tests.helpers import GIT_IDENTITY, git, kill_processes_mentioning, kill_tmux_servers_under

# Every process a test starts (each CLI call, worker and controller) imports the
# package.  Where PYTHONDONTWRITEBYTECODE is set, as on some CI machines, each would
# compile every module again (about 80 ms a process), so compiled modules are cached
# outside the tree instead: in a private directory made for this run (a fixed path in
# /tmp could be made first by another user, who would plant the code we run), which
# the pytest-xdist workers inherit with the environment.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
if "PYTHONPYCACHEPREFIX" not in os.environ:
    _pycache = tempfile.mkdtemp(prefix="reconciler-tests-pycache-")
    os.environ["PYTHONPYCACHEPREFIX"] = _pycache
    atexit.register(shutil.rmtree, _pycache, ignore_errors=True)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Isolate tmux and reconciler state for one test; clean up whatever it leaves."""
    # tmux socket paths must stay short (sun_path is 108 bytes): not under tmp_path
    tmux_dir = Path(tempfile.mkdtemp(prefix="rt-"))
    state = state_dir(tmp_path)
    monkeypatch.setenv("TMUX_TMPDIR", str(tmux_dir))
    monkeypatch.setenv("RECONCILER_STATE_DIR", str(state))
    monkeypatch.delenv("TMUX", raising=False)
    try:
        yield tmp_path
    finally:
        kill_tmux_servers_under(tmux_dir)
        kill_processes_mentioning(str(state))
        shutil.rmtree(tmux_dir, ignore_errors=True)


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A real repository on branch main with one commit."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# test repo\n")
    git(repo, "add", "README.md")
    git(repo, *GIT_IDENTITY, "commit", "-q", "-m", "initial")
    return repo


