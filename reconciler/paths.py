"""Where a pool keeps its state: ``<state dir>/pools/<name>/``.

The state directory defaults to ``$XDG_STATE_HOME/reconciler`` (or
``~/.local/state/reconciler``) and is overridden by ``--state-dir`` or
``RECONCILER_STATE_DIR``.  Every directory is created 0700 (DESIGN rule 4):
it holds prompts, logs and the task store.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import PoolError

POOL_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def default_state_dir() -> Path:
    env = os.environ.get("RECONCILER_STATE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "reconciler"


PSEUDO_FILESYSTEMS = (Path("/proc"), Path("/sys"))
STATE_DIR_HINT = "pass --state-dir (or set RECONCILER_STATE_DIR to) a directory on a real disk"


def check_state_dir(path: Path) -> Path:
    """Refuse a state directory that can never hold a pool's state.

    That is a path that exists but is not a directory, or one under a kernel
    pseudo-filesystem (``/proc``, ``/sys``).  A missing directory is fine: it is
    created when first needed.
    """
    try:
        resolved = path.expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise PoolError(f"state directory {path}: cannot resolve it ({exc})",
                        hint=STATE_DIR_HINT) from exc
    for pseudo in PSEUDO_FILESYSTEMS:
        if resolved.is_relative_to(pseudo):
            raise PoolError(f"state directory {path} is under {pseudo}, a kernel "
                            "pseudo-filesystem that cannot hold files", hint=STATE_DIR_HINT)
    if resolved.exists() and not resolved.is_dir():
        raise PoolError(f"state directory {path} exists but is not a directory",
                        hint=STATE_DIR_HINT)
    return path


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700, or check the directory that is there.

    A directory we did not create keeps its mode (pointed at ``/tmp``, a chmod
    would break the host); one that another user owns, or that others may write
    to, is refused: they could swap the store or plant a worktree.
    """
    try:
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = path.stat()
        if created and info.st_mode & 0o777 != 0o700:
            path.chmod(0o700)  # ours: the umask does not get a say
        elif not created and (info.st_uid != os.getuid() or info.st_mode & 0o022):
            raise PoolError(f"{path} is owned by uid {info.st_uid} with mode "
                            f"{info.st_mode & 0o7777:o}: others could write there",
                            hint="use a directory of your own that only you can write to "
                                 "(e.g. chmod 700 it), or another --state-dir")
    except OSError as exc:
        raise PoolError(f"cannot create the directory {path}: {exc.strerror or exc}",
                        hint=STATE_DIR_HINT) from exc
    return path


@dataclass(frozen=True)
class PoolPaths:
    """Every path that belongs to one pool."""

    state_dir: Path
    name: str

    @property
    def root(self) -> Path:
        return self.state_dir / "pools" / self.name

    @property
    def store(self) -> Path:
        return self.root / "store.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def prompts(self) -> Path:
        return self.root / "prompts"

    @property
    def default_worktrees(self) -> Path:
        return self.root / "worktrees"

    def worktree_root(self, configured: Path | None) -> Path:
        """Where the pool's worktrees go: the spec's ``worktrees.dir``, else its own."""
        return configured or self.default_worktrees

    @property
    def lock(self) -> Path:
        return self.root / "apply.lock"

    @property
    def repo_locks(self) -> Path:
        """Shared by every pool in the state directory: pools may share a repository."""
        return self.state_dir / "locks"

    @property
    def controller_lock(self) -> Path:
        return self.root / "controller.lock"

    @property
    def tmux_conf(self) -> Path:
        return self.root / "tmux.conf"

    def create(self) -> PoolPaths:
        for directory in (self.state_dir, self.state_dir / "pools", self.root, self.logs,
                          self.prompts):
            ensure_private_dir(directory)
        return self

    def exists(self) -> bool:
        return self.store.exists()


def pool_paths(state_dir: Path, name: str) -> PoolPaths:
    if not POOL_NAME.fullmatch(name):  # match() would take "demo\n"
        raise PoolError(f"invalid pool name {name!r}",
                        hint="use 1-40 lowercase letters, digits and '-'")
    return PoolPaths(check_state_dir(state_dir), name)


def known_pools(state_dir: Path) -> list[str]:
    pools = state_dir / "pools"
    if not pools.is_dir():
        return []
    return sorted(p.name for p in pools.iterdir() if (p / "store.db").exists())


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a 0600 file (prompts, logs: they may hold secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def open_private_append(path: Path) -> int:
    """Open ``path`` for appending as a 0600 file and return the descriptor."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def not_a_regular_file(path: Path) -> str | None:
    """Why a new file must not take ``path``'s place (a rename over it would turn a device
    such as /dev/null, a FIFO, a socket or a symbolic link into a plain file), or None
    when nothing is there or it is a regular file."""
    import stat

    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory"
    if stat.S_ISLNK(mode):
        return "is a symbolic link (name the file it points to)"
    kind = ("a character device" if stat.S_ISCHR(mode) else "a block device"
            if stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "not a regular file")
    return f"is {kind}, not a regular file"

