"""GitOps sync (issue 12): what to follow, what to do with a commit, and git read right.

The pure parts (``reconciler.sync``) are tested with I/O forbidden.  The git part and
the syncer run against real repositories: a bare repository as the remote, a clone
holding the spec, and a second clone that pushes to it, with a real SQLite store and
``replicas: 0`` so that applying starts no process (the controller's e2e test, in
``test_e2e_sync.py``, runs real workers).
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import GitError, SpecError
from reconciler.gitsync import SyncSource, drift, fetch, load_at, locate
from reconciler.paths import pool_paths
from reconciler.spec import load_spec
from reconciler.store.sqlite import Store
from reconciler.sync import (
    SYNC_KEY,
    Checked,
    SyncConfig,
    SyncDrift,
    SyncFlags,
    SyncState,
    decide,
    effective_config,
    split_ref,
    state_from_json,
)
from reconciler.syncer import Syncer
from tests.helpers import git, push_spec, reconcile, write_spec

A, B = "a" * 40, "b" * 40


@pytest.fixture
def no_io(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any file, process or database access fails the test: the deciding is pure."""

    def forbidden(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("sync's pure part reached real I/O")

    for module, name in ((subprocess, "Popen"), (subprocess, "run"), (builtins, "open"),
                         (sqlite3, "connect"), (os, "kill")):
        monkeypatch.setattr(module, name, forbidden)
    yield


# --------------------------------------------------------------------------- pure


@pytest.mark.usefixtures("no_io")
class TestWhatToFollow:
    @pytest.mark.parametrize(("ref", "parts"), [
        pytest.param("origin/main", ("origin", "main"), id="plain"),
        pytest.param("upstream/release/2.x", ("upstream", "release/2.x"), id="nested-branch"),
    ])
    def test_a_ref_is_a_remote_then_a_branch(self, ref: str, parts: tuple[str, str]) -> None:
        assert split_ref(ref) == parts

    @pytest.mark.parametrize("ref", [
        pytest.param("main", id="no-remote"),
        pytest.param("-o/main", id="remote-like-an-option"),
        pytest.param("origin/", id="no-branch"),
        pytest.param("origin/a..b", id="dots"),
        pytest.param("origin/HEAD", id="head"),
    ])
    def test_a_ref_git_would_refuse_is_refused(self, ref: str) -> None:
        with pytest.raises(GitError, match="sync ref"):
            split_ref(ref)

    def test_flags_override_the_spec_and_turn_sync_on(self) -> None:
        spec = SyncConfig("origin/main", "deploy/workers.yaml", 60.0)
        assert effective_config(None, False) is None
        assert effective_config(spec, False) == spec
        assert effective_config(None, True) == SyncConfig("origin/main", None, 60.0)
        assert effective_config(spec, False, ref="up/prod", interval=5.0) == \
            SyncConfig("up/prod", "deploy/workers.yaml", 5.0)
        assert effective_config(None, False, path="w.yaml") == \
            SyncConfig("origin/main", "w.yaml", 60.0)


@pytest.mark.usefixtures("no_io")
class TestDecide:
    @pytest.mark.parametrize(("checked", "running", "kind"), [
        pytest.param(None, "h1", "check", id="first-look"),
        pytest.param(Checked(B, "h1"), "h1", "check", id="the-ref-moved"),
        pytest.param(Checked(A, "h2"), "h1", "apply", id="differs-from-what-runs"),
        pytest.param(Checked(A, "h2"), None, "apply", id="nothing-applied-yet"),
        pytest.param(Checked(A, "h1"), "h1", "in_sync", id="runs-it"),
        pytest.param(Checked(A, None, "w.yaml:3:5: bad"), "h1", "invalid", id="invalid"),
    ])
    def test_decision(self, checked: Checked | None, running: str | None, kind: str) -> None:
        assert decide(A, checked, running).kind == kind

    def test_an_invalid_commit_names_its_problem(self) -> None:
        decision = decide(A, Checked(A, None, "w.yaml:3:5: spec.replicas: bad"), "h1")
        assert "w.yaml:3:5: spec.replicas: bad" in decision.reason

    def test_state_round_trips_and_garbage_reads_as_none(self) -> None:
        state = SyncState("origin/main", "w.yaml", "/r", 60.0, fetched_commit=A, error="x")
        assert state_from_json(state.to_json()) == state
        assert state_from_json("") is None
        assert state_from_json("{not json") is None
        assert state_from_json('{"unknown": 1}') is None

    @pytest.mark.parametrize(("found", "pending", "words"), [
        pytest.param(SyncDrift("o/m", "w.yaml", A, 1.0, 3, B, True), True,
                     "differs from what runs (generation 3 (commit bbbbbbbbbbbb))",
                     id="drift"),
        pytest.param(SyncDrift("o/m", "w.yaml", A, 1.0, 3, A, False), False,
                     "in sync, generation 3", id="in-sync"),
        pytest.param(SyncDrift("o/m", "w.yaml", A, 1.0, 3, B, None, "invalid: w.yaml:2:1"),
                     False, "invalid: w.yaml:2:1; generation 3", id="invalid"),
        pytest.param(SyncDrift("o/m", "w.yaml", None, None, 3, B, None), False,
                     "not fetched yet", id="never-fetched"),
        pytest.param(SyncDrift("o/m", "w.yaml", A, 1.0, 3, A, False, local_differs=True),
                     False, "your file differs from the one at the ref, so the plan above "
                     "shows what applying it would do, and the next sync would undo that",
                     id="local-file-behind"),
    ])
    def test_drift_lines(self, found: SyncDrift, pending: bool, words: str) -> None:
        assert found.pending is pending
        assert words in found.describe()


def test_the_spec_section_is_typed(tmp_path: Path) -> None:
    plain = load_spec(write_spec(tmp_path))
    assert plain.sync is None
    synced = load_spec(write_spec(tmp_path, extra={"sync": {"ref": "up/prod"}}))
    assert synced.sync == SyncConfig("up/prod", None, 60.0)


# --------------------------------------------------------------------------- real git


class TestGit:
    def test_fetch_moves_only_its_private_ref_and_reads_without_checkout(
            self, git_remote: dict[str, Path]) -> None:
        ops = git_remote["ops"]
        before = git(ops, "for-each-ref", "refs/heads", "refs/remotes")
        pushed = push_spec(git_remote["dev"], "three", replicas=3)
        source = locate(ops / "workers.yaml", SyncConfig())
        assert source == SyncSource(ops.resolve(), "workers.yaml")
        assert fetch(source, SyncConfig(), "syncpool") == pushed
        assert git(ops, "for-each-ref", "refs/heads", "refs/remotes") == before
        assert not (ops / ".git" / "FETCH_HEAD").exists()
        assert git(ops, "status", "--porcelain") == ""
        spec = load_at(source, pushed)
        assert spec.replicas == 3
        # relative paths resolve as for the working tree's file, not the commit
        assert spec.repo == (ops.parent / "repo").resolve()
        assert spec.source_path == ops.resolve() / "workers.yaml"

    def test_an_invalid_spec_at_the_commit_is_located(self, git_remote: dict[str, Path]) -> None:
        pushed = push_spec(git_remote["dev"], "broken", replicas="many")
        source = locate(git_remote["ops"] / "workers.yaml", SyncConfig())
        fetch(source, SyncConfig(), "syncpool")
        with pytest.raises(SpecError, match=r"^workers\.yaml:\d+:\d+: spec\.replicas: "):
            load_at(source, pushed)

    @pytest.mark.parametrize(("config", "message"), [
        pytest.param(SyncConfig("nowhere/main"), "has no remote named 'nowhere'",
                     id="unknown-remote"),
        pytest.param(SyncConfig("origin/nope"), "git fetch origin nope failed: fatal:",
                     id="unknown-branch"),
    ])
    def test_a_fetch_that_cannot_work_says_why(self, git_remote: dict[str, Path],
                                                config: SyncConfig, message: str) -> None:
        source = locate(git_remote["ops"] / "workers.yaml", config)
        with pytest.raises(GitError, match=message):
            fetch(source, config, "syncpool")

    def test_a_spec_outside_git_cannot_be_synced(self, tmp_path: Path) -> None:
        loose = tmp_path / "loose"
        loose.mkdir()
        with pytest.raises(GitError, match="is not in a git repository"):
            locate(write_spec(loose), SyncConfig())

    def test_drift_reads_the_last_fetch_and_never_fetches(self,
                                                          git_remote: dict[str, Path]) -> None:
        ops = git_remote["ops"]
        spec_file = ops / "workers.yaml"
        running = load_spec(spec_file)
        runs = (1, running.document_hash, "c" * 40)
        assert drift(spec_file, SyncConfig(), "syncpool", runs, None).fetched_commit is None
        source = locate(spec_file, SyncConfig())
        first = fetch(source, SyncConfig(), "syncpool")
        assert not drift(spec_file, SyncConfig(), "syncpool", runs, 5.0).pending
        push_spec(git_remote["dev"], "three", replicas=3)  # pushed, not fetched yet
        found = drift(spec_file, SyncConfig(), "syncpool", runs, 5.0)
        assert (found.fetched_commit, found.pending) == (first, False)
        fetch(source, SyncConfig(), "syncpool")
        assert drift(spec_file, SyncConfig(), "syncpool", runs, 5.0).pending


class TestSyncer:
    """``Syncer.sync_once`` against a real remote and store (no controller thread)."""

    def test_follows_pushes_keeps_running_on_a_broken_one_and_reports_once(
            self, host: Path, git_remote: dict[str, Path]) -> None:
        ops, dev = git_remote["ops"], git_remote["dev"]
        reconcile("apply", "-f", str(ops / "workers.yaml"), check=True)
        paths = pool_paths(host / "state", "syncpool")
        syncer = Syncer(paths, SyncFlags(forced=True))
        config = SyncConfig(interval=1.0)
        with Store(paths.store) as store:
            syncer.sync_once(store, config, 100.0)  # the committed spec already runs
            assert len(store.history()) == 1
            state = state_from_json(store.meta_value(SYNC_KEY))
            assert state is not None and state.synced_generation == 1 and state.error is None

            # replicas stay 0 here (no process starts): the e2e test scales real workers
            two = push_spec(dev, "two", tasks={"maxAttempts": 2})
            syncer.sync_once(store, config, 101.0)
            latest = store.history()[-1]
            assert (latest.id, latest.git_commit) == (2, two)
            assert latest.source_path == str(ops.resolve() / "workers.yaml")
            assert store.latest_spec()[1]["spec"]["tasks"]["maxAttempts"] == 2  # type: ignore[index]

            broken = push_spec(dev, "broken", replicas="many")
            for now in (102.0, 103.0):  # said once, however often it is seen
                syncer.sync_once(store, config, now)
            invalid = store.find_events(kind="sync.invalid")
            assert len(invalid) == 1 and invalid[0].severity == "warning"
            assert invalid[0].fields["commit"] == broken
            assert "workers.yaml:" in invalid[0].message \
                and "spec.replicas" in invalid[0].message
            assert "generation 2 keeps running" in invalid[0].message
            assert len(store.history()) == 2
            state = state_from_json(store.meta_value(SYNC_KEY))
            assert state is not None and state.fetched_commit == broken
            assert state.synced_commit == two and state.error_at == 102.0
            # a controller that starts again knows the commit was said to be invalid
            Syncer(paths, SyncFlags(forced=True)).sync_once(store, config, 103.5)
            assert len(store.find_events(kind="sync.invalid")) == 1

            git_remote["bare"].rename(git_remote["bare"].with_name("moved.git"))
            for now in (104.0, 105.0):
                syncer.sync_once(store, config, now)
            failed = store.find_events(kind="sync.failed")
            assert len(failed) == 1 and "git fetch origin main failed" in failed[0].message
            assert len(store.history()) == 2

            git_remote["bare"].with_name("moved.git").rename(git_remote["bare"])
            one = push_spec(dev, "one", replicas=0, tasks={"maxAttempts": 1})
            syncer.sync_once(store, config, 106.0)
            assert store.history()[-1].git_commit == one
            state = state_from_json(store.meta_value(SYNC_KEY))
            assert state is not None and state.error is None and state.synced_commit == one
