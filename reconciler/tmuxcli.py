"""The smallest possible tmux client: argv lists on a pool's own server.

Never the user's default server (DESIGN rule 2), never typed keys: a worker
process is always the window's command, given as argv.

A server is addressed by the absolute path of its socket (``tmux -S``), never
by name alone: ``tmux -L NAME`` resolves NAME under the caller's
``$TMUX_TMPDIR``, so a command run from another shell (a systemd unit, cron,
an ssh session) would see no server, or start a second one.  The first time a
pool starts a server on the spec's ``tmux.socket`` name, the path ``-L NAME``
gives in that environment is pinned in the pool's directory
(``tmux-sockets.json``); from then on every command uses it, whatever its
environment.  The operator can still attach with ``tmux -L NAME attach`` from
the shell the pool was applied from, or ``tmux -S PATH attach`` from anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import RuntimeBackendError

TMUX_TIMEOUT = 15.0
SOCKETS_FILE = "tmux-sockets.json"  # in the pool's directory: socket name -> absolute path
POOL_OPTION = "@reconciler-pool"  # on each worker window: the state directory of its pool
SERVER_OPTION = "@reconciler-server"  # global, from the config a pool starts its server with


def tmux_available() -> bool:
    return shutil.which("tmux") is not None


def server_flag(socket: str) -> list[str]:
    """``-S PATH`` for an absolute socket path, ``-L NAME`` for a bare name."""
    return ["-S", socket] if os.sep in socket else ["-L", socket]


def run_tmux(socket: str, args: Sequence[str], *, config: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``tmux -S socket [-f config] args...`` (``-L`` for a bare name) and return the
    completed process."""
    argv = ["tmux", *server_flag(socket)]
    if config is not None:
        argv += ["-f", str(config)]
    argv += list(args)
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                              timeout=TMUX_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise RuntimeBackendError(
            "tmux is not installed", hint="install tmux, or set `runtime: process` in the spec",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise RuntimeBackendError(f"tmux {' '.join(server_flag(socket))} {args[0]} timed out") \
            from exc
    if check and proc.returncode != 0:
        raise RuntimeBackendError(f"tmux {' '.join(server_flag(socket))} {args[0]} failed: "
                                  f"{proc.stderr.strip() or proc.returncode}")
    return proc


def server_missing(proc: subprocess.CompletedProcess[str]) -> bool:
    """True when tmux failed only because no server runs on the socket."""
    err = proc.stderr
    return proc.returncode != 0 and ("no server running" in err or "error connecting" in err
                                     or "No such file or directory" in err
                                     or "server exited" in err or "lost server" in err)


def foreign_server(socket: str) -> bool:
    """True when a tmux server answers on ``socket`` that no pool started: its global
    ``@reconciler-server`` option is unset (servers started before that option existed
    are still known by a window tagged ``@reconciler-pool``).  A pool that put its
    windows there would mix them with someone's own sessions, and its tmux options
    (``remain-on-exit``, which the observer needs) would not be set."""
    marked = run_tmux(socket, ["show-options", "-gqv", SERVER_OPTION], check=False)
    if marked.returncode != 0 or marked.stdout.strip():
        return False  # no server (or none we can reach), or one of ours
    windows = run_tmux(socket, ["list-windows", "-a", "-F", f"#{{{POOL_OPTION}}}"], check=False)
    return windows.returncode == 0 and not any(line.strip() for line in
                                               windows.stdout.splitlines())


# --------------------------------------------------------------------------- socket paths


def default_socket_path(name: str) -> str:
    """Where ``tmux -L name`` puts its server in this process's environment: under
    ``$TMUX_TMPDIR`` if it names a directory, else ``/tmp``, in ``tmux-<uid>/``."""
    base = os.environ.get("TMUX_TMPDIR") or ""
    if not base or not Path(base).is_dir():
        base = "/tmp"  # noqa: S108 - tmux's own default, not a file we create
    return str(Path(os.path.realpath(base)) / f"tmux-{os.getuid()}" / name)


def pinned_sockets(pool_root: Path) -> dict[str, str]:
    """The socket paths pinned for the pool (none for a pool no server was started for)."""
    try:
        data = json.loads((pool_root / SOCKETS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)
            and Path(v).is_absolute()}


def pin_socket(pool_root: Path, name: str, path: str) -> None:
    """Record ``path`` as the pool's server for socket ``name`` (0600, replaced whole)."""
    pinned = pinned_sockets(pool_root)
    if pinned.get(name) == path:
        return
    pinned[name] = path
    target = pool_root / SOCKETS_FILE
    partial = pool_root / f".{SOCKETS_FILE}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(pinned, indent=1, sort_keys=True).encode())
    finally:
        os.close(fd)
    partial.replace(target)


def pool_socket(pool_root: Path, name: str, config: Path | None = None) -> str:
    """The absolute socket path of the pool's server for socket ``name``.

    The pinned one; else, for a pool applied before paths were pinned, the socket of
    the running server started with the pool's ``config`` (found by its command
    line, whatever ``TMUX_TMPDIR`` it was started with); else where ``tmux -L name``
    would put it in this environment (a server not started yet).
    """
    pinned = pinned_sockets(pool_root).get(name)
    if pinned:
        return pinned
    found = running_server_socket(config, name) if config is not None and config.exists() \
        else None
    return found or default_socket_path(name)


def running_server_socket(config: Path, name: str) -> str | None:
    """The listening socket named ``name`` of a running tmux server whose command line
    names ``config`` (every server a pool starts is given its own config file)."""
    import psutil
    needle = str(config)
    for proc in psutil.process_iter(["name", "cmdline", "uids"]):
        with contextlib.suppress(psutil.Error):
            if not (proc.info["name"] or "").startswith("tmux") \
                    or needle not in (proc.info["cmdline"] or []) \
                    or proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                continue
            for conn in proc.net_connections(kind="unix"):
                path = conn.laddr if isinstance(conn.laddr, str) else ""
                if path and Path(path).name == name and Path(path).is_socket():
                    return path
    return None
