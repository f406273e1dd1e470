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
from tests.helpers import (
    GIT_IDENTITY,
    git,
    kill_processes_mentioning,
    kill_tmux_servers_under,
    make_repository,
    write_spec,
)

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
    return make_repository(tmp_path / "repo")




@pytest.fixture
def git_remote(tmp_path: Path, git_repo: Path) -> dict[str, Path]:
    """For GitOps sync: a bare repository as the remote (``bare``); ``ops``, the
    operator's clone, holding workers.yaml (pool ``syncpool``, ``replicas: 0``, its
    ``repo`` the ``git_repo`` fixture, written relative: ``../repo``); ``dev``, another
    clone that pushes changes to it (``tests.helpers.push_spec``)."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    ops, dev = tmp_path / "ops", tmp_path / "dev"
    git(tmp_path, "clone", "-q", str(bare), str(ops))
    write_spec(ops, name="syncpool", replicas=0, repo="../repo", runtime="process")
    git(ops, "add", "workers.yaml")
    git(ops, *GIT_IDENTITY, "commit", "-q", "-m", "the pool")
    git(ops, "push", "-q", "origin", "HEAD:main")
    git(tmp_path, "clone", "-q", str(bare), str(dev))
    return {"bare": bare, "ops": ops, "dev": dev}
