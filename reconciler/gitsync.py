"""GitOps sync, the git part: fetch the followed ref and read the spec at a commit.

Nothing here touches the operator's working tree, index, branches or
remote-tracking refs.  A fetch writes one private ref per pool,
``refs/reconciler/sync/<pool>`` (and the objects it needs), without FETCH_HEAD
and without running ``gc``; the spec is read with ``git cat-file`` at the
commit, never checked out.  ``diff`` only reads that ref: it shows the commit
as last fetched, and how long ago, instead of fetching (a fetch changes the
repository, and ``diff`` changes nothing on the host).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.errors import GitError, SpecError
from reconciler.limits import MAX_YAML_BYTES
from reconciler.spec import PoolSpec, parse_spec
from reconciler.sync import SyncConfig, SyncDrift, check_path, private_ref, split_ref
from reconciler.worktrees import git, last_line

FETCH_TIMEOUT = 30.0  # a remote that hangs costs the sync thread this much, never a pass


@dataclass(frozen=True)
class SyncSource:
    """Where the followed spec lives: a repository's root and the file's path in it."""

    root: Path
    path: str  # relative to root, '/'-separated

    @property
    def file(self) -> Path:
        """The file in the working tree: relative paths in the spec resolve from its
        directory, whichever commit the text comes from."""
        return self.root / self.path


def locate(spec_file: Path, config: SyncConfig) -> SyncSource:
    """The repository holding ``spec_file`` and the spec's path in it (``config.path``,
    else the file's own); ``GitError`` when the file is not in a repository."""
    top = git(spec_file.parent, ["rev-parse", "--show-toplevel"], check=False) \
        if spec_file.parent.is_dir() else None
    if top is None or top.returncode != 0 or not top.stdout.strip():
        raise GitError(f"{spec_file} is not in a git repository: there is nothing to sync",
                       hint="commit the spec to a repository whose remote has the ref, or "
                            "run the controller without sync")
    root = Path(top.stdout.strip()).resolve()
    path = config.path
    if path is None:
        try:
            path = spec_file.resolve().relative_to(root).as_posix()
        except ValueError as exc:
            raise GitError(f"{spec_file} is outside its repository {root}",
                           hint="set spec.sync.path (or --sync-path)") from exc
    return SyncSource(root, check_path(path))


def fetch(source: SyncSource, config: SyncConfig, pool: str,
          timeout: float = FETCH_TIMEOUT) -> str:
    """Fetch ``config.ref``'s branch from its remote into the pool's private ref and
    return the commit; ``GitError`` (one line) when the remote is unknown, unreachable
    or slow, or has no such branch."""
    remote, branch = check_remote(source, config)
    target = private_ref(pool)
    argv = ["git", "-C", str(source.root), "fetch", "--quiet", "--no-tags",
            "--no-write-fetch-head", "--no-recurse-submodules", "--no-auto-gc",
            "--refmap=", "--",  # --refmap=: not even remote-tracking refs move
            remote, f"+refs/heads/{branch}:{target}"]
    # no prompt for a password: a controller has no one to answer it
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as proc:
        try:
            _out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise GitError(f"git fetch {remote} {branch} timed out after "
                           f"{timeout:.0f}s", hint="is the remote reachable?") from exc
    if proc.returncode != 0:
        raise GitError(f"git fetch {remote} {branch} failed: {_first_error(err, proc.returncode)}")
    commit = fetched_commit(source.root, pool)
    if commit is None:  # cannot happen after a fetch that succeeded; said plainly if it does
        raise GitError(f"{target} is missing after fetching {config.ref}")
    return commit


def check_remote(source: SyncSource, config: SyncConfig) -> tuple[str, str]:
    """The ref's remote and branch, once the remote is one of the repository's (only
    reads: ``controller --sync`` checks this before it starts)."""
    remote, branch = split_ref(config.ref)
    remotes = git(source.root, ["remote"]).stdout.split()
    if remote not in remotes:
        raise GitError(f"sync ref {config.ref}: {source.root} has no remote named {remote!r}",
                       hint="`git remote -v` lists them; set spec.sync.ref or --sync-ref")
    return remote, branch


def _first_error(stderr: str, code: int) -> str:
    """git's own reason: its first ``fatal:``/``error:`` line (the lines after it are
    advice such as "Please make sure you have the correct access rights")."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("fatal:", "error:")):
            return line
    return lines[0] if lines else f"exit {code}"


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """End the fetch we started and whatever it started (ssh, git-remote-https)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.communicate()


def fetched_commit(root: Path, pool: str) -> str | None:
    """The commit last fetched for ``pool`` (only reads), or None before any fetch."""
    proc = git(root, ["rev-parse", "--verify", "--quiet", "--end-of-options",
                      f"{private_ref(pool)}^{{commit}}"], check=False)
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def spec_text_at(source: SyncSource, commit: str) -> str:
    """The spec file's text at ``commit`` (read from git's objects; nothing checked out)."""
    obj = f"{commit}:{source.path}"
    size = git(source.root, ["cat-file", "-s", "--", obj], check=False)
    if size.returncode != 0:
        raise SpecError(f"{source.path}: no such file at {commit[:12]} ({last_line(size)})",
                        hint="commit the spec there, or set spec.sync.path")
    if int(size.stdout.strip() or 0) > MAX_YAML_BYTES:
        raise SpecError(f"{source.path}: larger than {MAX_YAML_BYTES} bytes at {commit[:12]}")
    blob = subprocess.run(["git", "-C", str(source.root), "cat-file", "blob", "--", obj],
                          capture_output=True, timeout=FETCH_TIMEOUT, check=False,
                          stdin=subprocess.DEVNULL)
    if blob.returncode != 0:
        raise GitError(f"cannot read {source.path} at {commit[:12]}")
    try:
        return blob.stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{source.path}: not UTF-8 text at {commit[:12]} (save the file as "
                        "UTF-8)") from exc


def load_at(source: SyncSource, commit: str) -> PoolSpec:
    """The spec at ``commit``, validated and typed as if it were the working tree's file
    (its relative paths resolve from that file's directory); ``SpecError`` with
    ``file:line:col`` when it is invalid."""
    return parse_spec(spec_text_at(source, commit), label=source.path,
                      base_dir=source.file.parent, source_path=source.file)


def drift(spec_file: Path, config: SyncConfig, pool: str,
          running: tuple[int, str, str | None] | None, fetched_at: float | None,
          local_hash: str | None = None) -> SyncDrift:
    """For ``diff``: the spec at the ref as last fetched against ``running`` (generation,
    document hash, git commit), and against the file given (``local_hash``).  Only reads
    git: no fetch (see the module's docstring)."""
    try:
        source = locate(spec_file, config)
    except GitError as exc:
        return SyncDrift(config.ref, config.path or spec_file.name, None, None,
                         running[0] if running else None, running[2] if running else None,
                         None, exc.one_line())
    commit = fetched_commit(source.root, pool)
    base = SyncDrift(config.ref, source.path, commit, fetched_at if commit else None,
                     running[0] if running else None, running[2] if running else None, None)
    if commit is None:
        return replace(base, problem="the controller fetches it (`reconcile controller "
                                     "--sync`, or spec.sync)")
    try:
        spec = load_at(source, commit)
    except (SpecError, GitError) as exc:
        return replace(base, problem=f"the spec there is invalid: {exc.one_line()}")
    return replace(base, differs=running is None or spec.document_hash != running[1],
                   local_differs=None if local_hash is None
                   else spec.document_hash != local_hash)
