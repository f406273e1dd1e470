"""GitOps sync, the pure part: what to follow, and what to do about the commit found there.

A pool can follow a branch, as Flux and Argo CD make a cluster follow one: the
controller fetches ``spec.sync.ref`` (or ``reconcile controller --sync``), reads
the spec file at that commit and applies it when it differs from what runs.
Everything here decides; ``reconciler.gitsync`` reads git and ``reconciler.syncer``
acts (through ``operations.apply``, the one way a generation is recorded).

The last outcome is kept in the store's meta table under ``SYNC_KEY`` as one JSON
document (``SyncState``), so ``status`` reads it without touching git.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from reconciler.durations import parse_duration
from reconciler.errors import GitError, SpecError
from reconciler.naming import check_branch_name

SYNC_KEY = "sync_state"  # in the store's meta: the last sync outcome (a SyncState, as JSON)
DEFAULT_REF = "origin/main"
DEFAULT_INTERVAL = 60.0
SYNC_REF_PREFIX = "refs/reconciler/sync/"  # where fetched commits are kept, one ref per pool
_REMOTE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class SyncConfig:
    """What a pool follows: ``ref`` (REMOTE/BRANCH), the spec's ``path`` in the repository
    (None: where the applied spec file is), and how often to fetch."""

    ref: str = DEFAULT_REF
    path: str | None = None
    interval: float = DEFAULT_INTERVAL

    @property
    def remote(self) -> str:
        return split_ref(self.ref)[0]

    @property
    def branch(self) -> str:
        return split_ref(self.ref)[1]


def split_ref(ref: str) -> tuple[str, str]:
    """``origin/main`` as (``origin``, ``main``); ``GitError`` when either part is not a
    name git would take (the remote is split off at the first ``/``)."""
    remote, sep, branch = ref.partition("/")
    if not sep or not _REMOTE.fullmatch(remote) or remote.endswith((".", ".lock")):
        raise GitError(f"sync ref {ref!r} is not REMOTE/BRANCH",
                       hint="e.g. origin/main: a remote of the spec file's repository, "
                            "then a branch")
    try:
        check_branch_name(branch)
    except GitError as exc:
        raise GitError(f"sync ref {ref!r}: {exc.message}",
                       hint="name a branch of the remote, e.g. origin/main") from exc
    return remote, branch


def check_path(path: str) -> str:
    """A path inside the repository: relative, no ``..``, no empty part; else ``SpecError``."""
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise SpecError(f"sync path {path!r} is not a plain path inside the repository",
                        hint="give it relative to the repository's root, e.g. "
                             "deploy/workers.yaml, without '..'")
    return path


def private_ref(pool: str) -> str:
    """The ref a pool's fetched commit is kept under (never a branch or a remote-tracking
    ref of the operator's: fetching must not move what they see)."""
    check_branch_name(pool)
    return SYNC_REF_PREFIX + pool


def config_of(document: Mapping[str, Any]) -> SyncConfig | None:
    """``spec.sync`` of a checked spec document (defaults filled in), or None."""
    section = document.get("spec", {}).get("sync")
    if section is None:
        return None
    return SyncConfig(section.get("ref", DEFAULT_REF), section.get("path"),
                      parse_duration(section.get("interval", "1m")))


@dataclass(frozen=True)
class SyncFlags:
    """``reconcile controller --sync`` and its ``--sync-*`` options (None: not given)."""

    forced: bool = False
    ref: str | None = None
    path: str | None = None
    interval: float | None = None


def effective_config(base: SyncConfig | None, forced: bool, ref: str | None = None,
                     path: str | None = None,
                     interval: float | None = None) -> SyncConfig | None:
    """What to follow now: the newest generation's ``spec.sync`` (``base``) with the
    controller's flags over it; ``forced`` (``--sync``, or any ``--sync-*`` flag) turns
    sync on even when the spec has no such section. None: no sync."""
    if base is None and not (forced or ref or path or interval):
        return None
    config = base or SyncConfig()
    if ref:
        config = replace(config, ref=ref)
    if path:
        config = replace(config, path=path)
    if interval:
        config = replace(config, interval=interval)
    return config


# --------------------------------------------------------------------------- deciding


@dataclass(frozen=True)
class Checked:
    """A commit at the ref, read and validated once: the document hash of the spec there,
    or the one-line error (``file:line:col: ...``) that kept it from being valid."""

    commit: str
    document_hash: str | None
    error: str | None = None


@dataclass(frozen=True)
class Decision:
    """What the syncer does with the commit it fetched: ``check`` it (new commit),
    ``apply`` it (valid, differs from what runs), nothing (``in_sync``), or keep the
    running generation (``invalid``: said once, when it was checked)."""

    kind: str  # check | apply | in_sync | invalid
    reason: str


def decide(commit: str, checked: Checked | None, running_hash: str | None) -> Decision:
    """Pure: whether the commit fetched needs checking, applying, or nothing.

    The spec at the ref is the source of truth: whenever its document differs from the
    newest applied one (a new commit, or a local ``apply`` since), it is applied again.
    A commit is read and validated once; an invalid one is not reported again until
    the ref moves.
    """
    if checked is None or checked.commit != commit:
        return Decision("check", f"new commit {commit[:12]}")
    if checked.document_hash is None:
        return Decision("invalid", f"the spec at {commit[:12]} is invalid: {checked.error}")
    if checked.document_hash != running_hash:
        return Decision("apply", f"the spec at {commit[:12]} differs from what runs")
    return Decision("in_sync", f"the pool runs the spec at {commit[:12]}")


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class SyncState:
    """The last sync outcome, as ``status`` and ``diff`` read it from the store's meta."""

    ref: str
    path: str  # in the repository
    repo: str  # the repository's root (where the spec file is)
    interval: float
    fetched_commit: str | None = None
    fetched_at: float | None = None
    synced_commit: str | None = None  # the commit whose spec the pool was last found running
    synced_generation: int | None = None
    synced_at: float | None = None
    error: str | None = None  # the last error (fetch, read, validation, apply); None: none
    error_at: float | None = None
    checked_at: float | None = None  # the last attempt, successful or not
    invalid_commit: str | None = None  # the commit whose spec did not validate (error says
    # why): a restarted controller does not report it again

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def state_from_json(text: str | None) -> SyncState | None:
    """The recorded state, or None when there is none (or it is not one we wrote)."""
    if not text:
        return None
    try:
        data = json.loads(text)
        return SyncState(**data)
    except (ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- drift


@dataclass(frozen=True)
class SyncDrift:
    """What ``diff`` says of sync: the commit at the ref as last fetched (``diff`` never
    fetches), the generation that runs, and whether the spec there differs from it
    (None: not known, ``problem`` says why)."""

    ref: str
    path: str
    fetched_commit: str | None
    fetched_at: float | None
    running_generation: int | None
    running_commit: str | None
    differs: bool | None
    problem: str | None = None
    local_differs: bool | None = None  # the file diff was given is not the one at the ref

    @property
    def pending(self) -> bool:
        """The controller would apply the spec at the ref: a change ``diff`` reports."""
        return bool(self.differs)

    def describe(self) -> str:
        """One line for ``diff``'s text output."""
        if self.fetched_commit is None:
            return f"sync: {self.ref}:{self.path} not fetched yet" + (
                f" ({self.problem})" if self.problem else "")
        at = f"sync: {self.ref}:{self.path} at {self.fetched_commit[:12]}"
        running = f"generation {self.running_generation}" + (
            f" (commit {self.running_commit[:12]})" if self.running_commit else "")
        if self.problem:
            return f"{at}: {self.problem}; {running} keeps running"
        local = ("; your file differs from the one at the ref, so the plan above shows "
                 "what applying it would do, and the next sync would undo that (push it "
                 "instead)") if self.local_differs else ""
        if self.differs:
            return (f"{at} differs from what runs ({running}): the controller applies it "
                    f"at its next sync{local}")
        return f"{at}: in sync, {running} runs it{local}"
