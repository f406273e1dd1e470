"""The smallest possible tmux client: argv lists on a dedicated ``-L`` socket.

Never the user's default server (DESIGN rule 2), never typed keys: a worker
process is always the window's command, given as argv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import RuntimeBackendError

TMUX_TIMEOUT = 15.0


def tmux_available() -> bool:
    return shutil.which("tmux") is not None


def run_tmux(socket: str, args: Sequence[str], *, config: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``tmux -L socket [-f config] args...`` and return the completed process."""
    argv = ["tmux", "-L", socket]
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
        raise RuntimeBackendError(f"tmux -L {socket} {args[0]} timed out") from exc
    if check and proc.returncode != 0:
        raise RuntimeBackendError(
            f"tmux -L {socket} {args[0]} failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def server_missing(proc: subprocess.CompletedProcess[str]) -> bool:
    """True when tmux failed only because no server runs on the socket."""
    err = proc.stderr
    return proc.returncode != 0 and ("no server running" in err or "error connecting" in err
                                     or "No such file or directory" in err
                                     or "server exited" in err or "lost server" in err)
