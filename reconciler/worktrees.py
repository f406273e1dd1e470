"""Git worktree lifecycle for task attempts, and safe branch and path names.

Branch names come from a template filled with task data, so they are checked
against git's ref-name rules here (``git check-ref-format``) before git ever
sees them; worktree paths are built from integers and must resolve under the
worktree root.  Every git call is an argv list with ``--`` before refs and
paths, and nothing here ever resets or cleans the operator's own checkout.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from reconciler.errors import GitError
from reconciler.naming import branch_for, check_branch_name, slugify

GIT_TIMEOUT = 120.0
BRANCH_TRIES = 20  # choices of a branch name: each lost race means another worker got one

__all__ = ["branch_for", "check_branch_name", "slugify"]  # re-exported: naming is pure

def path_under(root: Path, name: str) -> Path:
    """``root / name``, refusing anything that would resolve outside ``root``."""
    root_resolved = root.resolve()
    candidate = (root_resolved / name).resolve()
    if candidate.parent != root_resolved:
        raise GitError(f"worktree path {name!r} escapes {root_resolved}")
    return candidate


def git(repo: Path, args: Sequence[str], *, check: bool = True,
        timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``git -C repo args...``; raise ``GitError`` with git's own message on failure."""
    argv = ["git", "-C", str(repo), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise GitError("git is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise GitError(f"git {args[0]} in {repo} timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(args[:2])} in {repo} failed: {last_line(proc)}")
    return proc


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """git's last line of complaint (its most specific one), or the exit code."""
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


def check_repo(repo: Path, base_ref: str) -> str:
    """Make sure ``repo`` is a git repository with ``base_ref``; return its commit."""
    if not repo.is_dir():
        raise GitError(f"repo {repo} does not exist", hint="set spec.repo to a git repository")
    inside = git(repo, ["rev-parse", "--is-inside-work-tree"], check=False)
    if inside.returncode != 0:
        raise GitError(f"repo {repo} is not a git repository",
                       hint="run `git init` there or point spec.repo at a repository")
    commit = git(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options",
                        f"{base_ref}^{{commit}}"], check=False)
    if commit.returncode != 0:
        raise GitError(f"baseRef {base_ref!r} is not a commit in {repo}",
                       hint="set spec.baseRef to an existing branch, tag or commit")
    return commit.stdout.strip()


def check_worktree_dir(repo: Path, directory: Path | None) -> None:
    """A ``worktrees.dir`` inside the repository must be ignored by it: git shows an
    unignored one as untracked (each worktree a nested repository), so a `git add -A`
    in the repository, by the operator or an agent working there, would commit every
    task's worktree as an embedded repository.  Inside ``.git`` it is never seen."""
    if directory is None:  # the default: the pool's state directory
        return
    top = git(repo, ["rev-parse", "--show-toplevel"], check=False).stdout.strip()
    git_dir = git(repo, ["rev-parse", "--absolute-git-dir"], check=False).stdout.strip()
    if not top:
        return  # a bare repository has no working tree to clutter
    where = directory.resolve()
    root = Path(top).resolve()
    if not where.is_relative_to(root) or (git_dir and where.is_relative_to(Path(git_dir))):
        return
    if where == root:
        raise GitError(f"worktrees.dir {directory} is the repository {root} itself",
                       hint="remove worktrees.dir (the default keeps worktrees in the "
                            "pool's state directory) or point it outside the repository")
    # a trailing slash: a directory-only pattern such as `/.worktrees/` matches too
    ignored = git(repo, ["check-ignore", "-q", "--", f"{where}/"], check=False)
    if ignored.returncode == 1:  # 0: ignored; 128: git could not tell, so say nothing
        relative = where.relative_to(root)
        raise GitError(
            f"worktrees.dir {directory} is inside the repository {root} and git does not "
            "ignore it: every task's worktree would show as untracked there",
            hint=f"add `/{relative}/` to {root}/.gitignore (or .git/info/exclude), or remove "
                 "worktrees.dir to keep worktrees in the pool's state directory")


def branch_exists(repo: Path, branch: str) -> bool:
    proc = git(repo, ["rev-parse", "--verify", "--quiet", "--end-of-options",
                      f"refs/heads/{branch}"], check=False)
    return proc.returncode == 0


def unique_branch(repo: Path, branch: str, attempt: int) -> str:
    """``branch`` if free, else ``branch-a<attempt>`` (then ``-2``, ``-3``...): never --force."""
    if not branch_exists(repo, branch):
        return branch
    candidate = check_branch_name(f"{branch}-a{attempt}")
    n = 2
    while branch_exists(repo, candidate):
        candidate = check_branch_name(f"{branch}-a{attempt}-{n}")
        n += 1
    return candidate


@dataclass(frozen=True)
class Worktree:
    path: Path
    branch: str


class BranchTaken(GitError):
    """The branch name was free when it was chosen, but another worker created it first.

    Names are chosen outside the repository lock (``unique_branch`` only reads), and
    git creates a branch only if it does not exist yet (a ref update that must find
    no old value), so of two workers that chose the same name exactly one gets it;
    the other chooses again."""


def make_task_worktree(repo: Path, root: Path, name: str, wanted: str, attempt: int,
                       base_ref: str, *, reuse: bool, lock_dir: Path,
                       record: Callable[[str], bool]) -> tuple[str, bool] | None:
    """Give an attempt its worktree ``root/name`` on a branch of its own; return the branch
    and whether the worktree is new, or None if ``record`` refused (the lease is lost).

    The branch name is chosen outside the repository lock (``unique_branch`` only
    reads refs) and recorded (``record``, before the branch or the worktree exists,
    so no cleanup or prune takes them for an orphan's); git then creates the
    branch only if it does not exist.  Of workers that chose the same name, one
    gets it and the others (``BranchTaken``) choose again: each lost race means
    another worker got a name, so ``BRANCH_TRIES`` bounds only a pathological case.
    ``reuse``: the worker's own worktree, reset (``reuse_worktree``).
    """
    for _ in range(BRANCH_TRIES):
        branch = unique_branch(repo, wanted, attempt)
        if not record(branch):
            return None
        try:
            if reuse:
                return branch, reuse_worktree(repo, root, name, branch, base_ref,
                                              lock_dir=lock_dir)
            add_worktree(repo, root, name, branch, base_ref, lock_dir=lock_dir)
            return branch, True
        except BranchTaken:
            continue
    raise GitError(f"no free branch name for {wanted!r} after {BRANCH_TRIES} tries",
                   hint="other workers keep taking it; check worktrees.branch")


def add_worktree(repo: Path, root: Path, name: str, branch: str, base_ref: str, *,
                 lock_dir: Path | None = None) -> Worktree:
    """Create a worktree at ``root/name`` on the new ``branch`` from ``base_ref``.

    Only git's metadata updates hold the repository lock (``repo_lock(lock_dir)``;
    without ``lock_dir`` the caller serialises): ``git worktree add --no-checkout``
    creates the branch and registers the worktree in a few milliseconds.  The
    checkout of its files, the slow part, runs after the lock is released: the new
    worktree's index and files are nobody else's, and once its ``.git`` file is
    written no prune can take it.  Raises ``BranchTaken`` if ``branch`` exists.

    Concurrent git commands share the repository's ref and config locks, so a
    failure that names a ``.lock`` file is retried briefly; a lock left behind
    by a git process that died (old, and no git process running) is removed.
    """
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_worktree_root(root)
    path = path_under(root, name)
    registered = _registered(repo, path)  # the path is this attempt's (or worker's) alone
    with _locked(lock_dir, repo):
        if (path.exists() or path.is_symlink()) and not registered:
            raise GitError(f"{path} already exists and is not a worktree of {repo}; "
                           "reconciler never deletes what it did not create",
                           hint="move it away, or set worktrees.dir to a directory of its own")
        if registered:  # a worktree of an attempt that died half-way: ours to clear
            remove_worktree(repo, path)
        _register_worktree(repo, path, branch, base_ref)
        mark = _mark_preparing(path)  # before the lock goes: nobody sees it unmarked
    try:
        check_out(path)
    except GitError:  # as `git worktree add` does when its checkout fails: no half worktree
        remove_worktree(repo, path, lock_dir=lock_dir)
        raise
    _prepared(mark)
    return Worktree(path, branch)


def _register_worktree(repo: Path, path: Path, branch: str, base_ref: str) -> None:
    """``git worktree add --no-checkout``: the branch, the worktree's metadata, its HEAD."""
    for attempt in range(5):
        proc = git(repo, ["worktree", "add", "--quiet", "--no-checkout", "-b", branch, "--",
                          str(path), base_ref], check=False)
        if proc.returncode == 0:
            return
        if ".lock" in proc.stderr and attempt < 4:
            if not remove_stale_lock(proc.stderr):
                time.sleep(0.2 * (attempt + 1))
            continue
        if not path.exists() and branch_exists(repo, branch):  # git refused before anything
            raise BranchTaken(f"branch {branch!r} already exists")
        raise GitError(f"git worktree add for {branch!r} failed: {last_line(proc)}")
    raise AssertionError("unreachable")  # pragma: no cover


def check_out(worktree: Path) -> None:
    """Fill a worktree made with ``--no-checkout``: index and files at its HEAD.

    ``checkout --force`` with no other argument does in one call what ``worktree
    add`` would have done (git runs ``reset --hard`` there), and also runs the
    ``post-checkout`` hook (with HEAD as both the old and the new commit, where
    ``worktree add`` passes the null commit as the old one).
    """
    git(worktree, ["checkout", "--force", "--quiet", "--ignore-other-worktrees"])


STALE_LOCK_SECONDS = 30.0
_LOCK_IN_MESSAGE = re.compile(r"'([^']+\.lock)'")


def remove_stale_lock(stderr: str, now: float | None = None) -> bool:
    """Remove the ``*.lock`` file git complained about if nobody can be holding it.

    Only when it is older than ``STALE_LOCK_SECONDS`` and no git process runs
    on the machine: git holds such locks for milliseconds, so an old one with
    no git alive was left by a git that was killed.
    """
    match = _LOCK_IN_MESSAGE.search(stderr)
    if match is None:
        return False
    lock = Path(match.group(1))
    now = time.time() if now is None else now
    try:
        if now - lock.stat().st_mtime < STALE_LOCK_SECONDS or _git_running_in(lock):
            return False
        lock.unlink()
    except OSError:
        return False
    return True


def _git_running_in(lock: Path) -> bool:
    """Whether a git process works in the repository that holds ``lock``."""
    import psutil
    git_dir = next((p for p in lock.parents if p.name == ".git"), lock.parent)
    repo = git_dir.parent
    for proc in psutil.process_iter(["name", "cwd"]):
        cwd = proc.info.get("cwd") or ""
        if proc.info.get("name") == "git" and (cwd == str(repo) or
                                               cwd.startswith(str(repo) + "/")):
            return True
    return False


def commit_wip(worktree: Path, message: str) -> bool:
    """Commit whatever the agent left uncommitted in ``worktree`` to its branch.

    Run after every attempt, whatever its outcome, and before any worktree is
    removed, so no work is lost with it, and only once every process of the
    attempt is gone.  ``--no-verify``: a failing ``pre-commit`` hook must not
    block a rescue; ignored files and the worktree's setup output
    (``exclude_setup_output``) are left out.  A worktree whose files were still
    being made (``is_being_prepared``) is never committed: its "changes" are a
    checkout cut short, not work.  Returns whether a commit was made.
    """
    if is_being_prepared(worktree):
        return False  # its files were never all made: no agent ever worked there
    if not has_uncommitted(worktree):
        return False
    # the attempt's processes are gone when this runs: an index lock in the worktree's
    # own git dir is a killed agent's (a `git commit` cut short), and would block the
    # rescue forever
    own = worktree_git_dir(worktree)
    if own is not None:
        (own / "index.lock").unlink(missing_ok=True)
    git(worktree, ["add", "-A", "--", "."])
    git(worktree, ["-c", "user.name=reconciler", "-c", "user.email=reconciler@localhost",
                   "-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify",
                   "-m", message])
    return True


PREPARING = "reconciler-preparing"  # in a worktree's own git dir while its files are made


def worktree_git_dir(worktree: Path) -> Path | None:
    """The worktree's own git dir (``.git/worktrees/<name>``), read from its ``.git`` file
    without running git; None if it has none."""
    try:
        text = (worktree / ".git").read_text()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    own = Path(text.removeprefix("gitdir:").strip())
    return own if own.is_absolute() else (worktree / own).resolve()


def is_being_prepared(worktree: Path) -> bool:
    """Whether the worktree's files were still being made (checked out, or reset for the
    next task) when whoever made them stopped."""
    own = worktree_git_dir(worktree)
    return own is not None and (own / PREPARING).exists()


def _mark_preparing(worktree: Path) -> Path | None:
    """Mark the worktree as being made (``is_being_prepared``); the mark, to remove once
    it is made.  A worker killed half-way leaves it, so nothing takes the half-made
    files for an agent's work."""
    own = worktree_git_dir(worktree)
    if own is None:
        return None
    mark = own / PREPARING
    mark.write_text("")
    return mark


def _prepared(mark: Path | None) -> None:
    if mark is not None:
        mark.unlink(missing_ok=True)


@contextmanager
def _preparing(worktree: Path) -> Iterator[None]:
    """Marked as being made until the block ends without an error."""
    mark = _mark_preparing(worktree)
    yield
    _prepared(mark)


def has_uncommitted(worktree: Path) -> bool:
    """Whether ``worktree`` holds work that is not on its branch: changes, or untracked
    files that are neither ignored nor setup output."""
    status = git(worktree, ["status", "--porcelain", "--untracked-files=normal"])
    return bool(status.stdout.strip())


SETUP_EXCLUDES = "reconciler-setup-excludes"
SETUP_OUTPUT = "reconciler-setup-output"  # one path per line: what setup created
SETUP_STAMP = "reconciler-setup-stamp"
_SETUP_MARKER = "# setup output (reconciler)"


def exclude_setup_output(worktree: Path) -> list[str]:
    """Keep what setup created (untracked now, e.g. a ``.venv``) out of every commit made
    in ``worktree``, the agent's own ``git add -A`` included; return the new paths.

    Each path becomes an anchored pattern in a file of the worktree's own git
    directory, named by ``core.excludesFile`` in the worktree's own config
    (``extensions.worktreeConfig``, set once on the repository: other
    worktrees and the main checkout are not affected).  The user's global
    excludes file is copied in first, since this setting replaces it here.
    Paths recorded by an earlier setup in the same worktree stay excluded.
    """
    status = git(worktree, ["status", "--porcelain", "-z", "--untracked-files=normal"])
    created = [entry[3:] for entry in status.stdout.split("\0") if entry.startswith("?? ")]
    if not created:
        return []
    git_dir = _git_dir(worktree)
    known = setup_output(worktree)
    everything = known + [path for path in created if path not in known]
    previous = git(worktree, ["config", "--path", "--get", "core.excludesFile"], check=False)
    source = Path(previous.stdout.strip()) if previous.stdout.strip() else \
        _default_global_excludes()
    text = _read_text(source)
    # ours already (an earlier setup here): keep only what it had inherited
    inherited = text.split(_SETUP_MARKER)[0] if source == git_dir / SETUP_EXCLUDES else text
    patterns = "".join(f"{pattern}\n" for pattern in _anchored(everything))
    (git_dir / SETUP_OUTPUT).write_text("".join(f"{path}\n" for path in everything))
    (git_dir / SETUP_EXCLUDES).write_text(
        f"{inherited.rstrip()}\n{_SETUP_MARKER}\n{patterns}".lstrip("\n"))
    git(worktree, ["config", "extensions.worktreeConfig", "true"])
    git(worktree, ["config", "--worktree", "core.excludesFile", str(git_dir / SETUP_EXCLUDES)])
    return created


def clear_setup_output(worktree: Path) -> None:
    """Remove what an earlier setup created in a reused worktree (and every other
    untracked or ignored file), so a setup that runs again starts clean."""
    git(worktree, ["clean", "-ffdxq"])
    (_git_dir(worktree) / SETUP_OUTPUT).unlink(missing_ok=True)


def setup_output(worktree: Path) -> list[str]:
    """The paths setup created in ``worktree`` (as ``exclude_setup_output`` recorded them)."""
    text = _read_text(_git_dir(worktree) / SETUP_OUTPUT)
    return [line for line in text.splitlines() if line]


def reuse_worktree(repo: Path, root: Path, name: str, branch: str, base_ref: str, *,
                   lock_dir: Path | None = None) -> bool:
    """Make ``root/name`` a clean checkout of the new ``branch`` at ``base_ref``, reusing
    the worktree if it is there; return True if it had to be created anew.

    Reuse resets everything an earlier task left (changes, untracked and ignored
    files) except the setup output, then starts the branch from ``base_ref``:
    a few milliseconds, against a whole checkout for a new worktree.  Only the
    creation of the branch holds the repository lock (as every branch creation
    does, so ``reconcile prune`` never sees a branch whose attempt it has not
    seen); the reset and the checkout of ``base_ref`` are this worker's alone.
    ``BranchTaken`` if the branch exists.  A worktree that cannot be reset is
    removed and made anew.
    """
    path = path_under(root, name)
    if path.is_dir() and _registered(repo, path):
        spared = [arg for pattern in _anchored(setup_output(path)) for arg in ("-e", pattern)]
        try:
            with _preparing(path):  # killed half-way, the reset is never taken for work
                git(path, ["reset", "--quiet", "--hard"])
                git(path, ["clean", "-ffdxq", *spared])
                base = git(path, ["rev-parse", "--verify", "--quiet", "--end-of-options",
                                  f"{base_ref}^{{commit}}"]).stdout.strip()
                git(path, ["checkout", "--quiet", "--detach", base, "--"])  # files: unlocked
                with _locked(lock_dir, repo):  # the branch: as in add_worktree, locked
                    proc = git(path, ["checkout", "--quiet", "-b", branch, "--"],
                               check=False)
            if proc.returncode == 0:
                return False
            if branch_exists(repo, branch):
                raise BranchTaken(f"branch {branch!r} already exists")
            raise GitError(f"git checkout -b {branch!r} failed: {last_line(proc)}")
        except BranchTaken:
            raise
        except GitError:
            remove_worktree(repo, path, lock_dir=lock_dir)
    add_worktree(repo, root, name, branch, base_ref, lock_dir=lock_dir)
    return True


def setup_digest(worktree: Path, setup: Sequence[Sequence[str]], inputs: Sequence[str]) -> str:
    """What decides whether setup must run again in a reused worktree: its commands and
    the content of its declared input files (a missing file counts as missing)."""
    digest = hashlib.sha256(repr([list(argv) for argv in setup]).encode())
    for name in inputs:
        digest.update(b"\0" + name.encode() + b"\0")
        try:
            digest.update(path_under_tree(worktree, name).read_bytes())
        except (OSError, GitError):
            digest.update(b"<missing>")
    return digest.hexdigest()


def path_under_tree(worktree: Path, name: str) -> Path:
    """``worktree / name`` for a relative file name, refusing one that leaves the tree."""
    candidate = (worktree / name).resolve()
    if not candidate.is_relative_to(worktree.resolve()):
        raise GitError(f"{name!r} is outside the worktree")
    return candidate


def setup_stamp(worktree: Path) -> Path:
    """Where a reused worktree remembers the ``setup_digest`` its setup last succeeded at."""
    return _git_dir(worktree) / SETUP_STAMP


def current_branch(worktree: Path) -> str:
    return git(worktree, ["symbolic-ref", "--quiet", "--short", "HEAD"]).stdout.strip()


def move_worktree(repo: Path, path: Path, new_path: Path) -> None:
    """Move a worktree (kept for its uncommitted work) out of a worker's way."""
    git(repo, ["worktree", "move", "--", str(path), str(new_path)])


def _anchored(paths: Sequence[str]) -> list[str]:
    return [f"/{_escape_pattern(path)}" for path in paths]


def _git_dir(worktree: Path) -> Path:
    return Path(git(worktree, ["rev-parse", "--absolute-git-dir"]).stdout.strip())


def _escape_pattern(path: str) -> str:
    """A path as a gitignore pattern that matches exactly it."""
    escaped = re.sub(r"([\\*?\[\]!#])", r"\\\1", path)
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


def _default_global_excludes() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "git" / "ignore"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _registered(repo: Path, path: Path) -> bool:
    """Whether git knows ``path`` as a worktree of ``repo``, read from the worktrees'
    metadata (``$GIT_COMMON_DIR/worktrees/<id>/gitdir`` points back at each one's
    ``.git``, gitrepository-layout(5)) rather than ``git worktree list``: no git
    process, and nothing to fail while another worktree's metadata is half written."""
    wanted = path / ".git"
    try:
        entries = list(os.scandir(_common_dir(repo) / "worktrees"))
    except OSError:
        return False
    for entry in entries:
        text = _read_text(Path(entry.path) / "gitdir").strip()
        if text and (Path(text) == wanted or Path(text).resolve() == wanted.resolve()):
            return True
    return False


@lru_cache(maxsize=64)
def _common_dir(repo: Path) -> Path:
    """The repository's common git directory (where every worktree's metadata lives)."""
    # relative to ``repo`` unless absolute (``--path-format`` needs git 2.31)
    return (repo / git(repo, ["rev-parse", "--git-common-dir"]).stdout.strip()).resolve()


def list_worktrees(repo: Path) -> list[str]:
    """Paths of every worktree git knows for ``repo`` (one ``git worktree list`` call)."""
    proc = git(repo, ["worktree", "list", "--porcelain"], check=False)
    return [line.removeprefix("worktree ") for line in proc.stdout.splitlines()
            if line.startswith("worktree ")]


def remove_worktree(repo: Path, path: Path, *, lock_dir: Path | None = None) -> None:
    """Remove a task's worktree (never the main checkout); its branch stays.

    With ``lock_dir``, the worktree's files are deleted first, outside the
    repository lock (they are this worker's alone, and the work on them was
    committed or kept before a removal is asked for), and only the removal of
    git's metadata holds the lock; without it the caller holds the lock.
    ``git worktree prune`` runs only when ``remove`` failed: pruning while
    another worker is half-way through ``worktree add`` deletes that worker's
    administrative directory.
    """
    if path.resolve() == repo.resolve():
        raise GitError(f"refusing to remove the repository's own checkout {repo}")
    if lock_dir is not None and (path / ".git").is_file() and _registered(repo, path):
        _delete_files_of(path)
    with _locked(lock_dir, repo):
        proc = git(repo, ["worktree", "remove", "--force", "--", str(path)], check=False)
        if proc.returncode != 0:
            if (path / ".git").is_file():  # a worktree git could not remove: ours, delete it
                shutil.rmtree(path, ignore_errors=True)
            git(repo, ["worktree", "prune"], check=False)


def _delete_files_of(worktree: Path) -> None:
    """Delete everything in ``worktree`` but its ``.git`` file (which keeps it registered
    and safe from a prune until ``git worktree remove``); never follows a symlink.  A
    worktree that vanishes meanwhile (the attempt's own wrapper cleaning up as it is
    ended) has nothing left to delete."""
    try:
        entries = list(os.scandir(worktree))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name == ".git":
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                Path(entry.path).unlink()


def _locked(lock_dir: Path | None, repo: Path) -> AbstractContextManager[None]:
    """``repo_lock`` if a lock directory is given; else the caller holds the lock."""
    return repo_lock(lock_dir, repo) if lock_dir is not None else nullcontext()


def check_worktree_root(root: Path) -> None:
    """Refuse a worktree root that another user owns or that others may write to: they
    could plant a directory or a symlink where an agent's worktree is about to be."""
    info = root.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise GitError(f"worktree root {root} is owned by uid {info.st_uid} with mode "
                       f"{info.st_mode & 0o7777:o}: others could write there",
                       hint="use a directory of your own that only you can write to "
                            "(worktrees.dir), e.g. chmod 700 it")


@contextmanager
def repo_lock(lock_dir: Path, repo: Path) -> Iterator[None]:
    """Serialise changes to git's worktree metadata on one repository, across workers
    and pools: ``worktree add --no-checkout``, ``worktree remove``, ``prune``, ``move``.

    git locks refs and the index itself, but not its worktree metadata: a ``worktree
    add`` reads every other worktree's metadata and fails ("failed to read
    .../commondir") while another add or remove is half-way through it, and a
    prune can delete a worktree that is being added.  Checkouts and file
    deletions are no metadata and run outside it.
    """
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha256(str(repo.resolve()).encode()).hexdigest()[:16]
    fd = os.open(lock_dir / f"repo-{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
