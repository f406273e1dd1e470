"""Observe a pool's tmux windows with one ``list-panes -a`` call per server."""

from __future__ import annotations

import re

from reconciler.errors import RuntimeBackendError
from reconciler.model import RuntimeInstance
from reconciler.tmuxcli import POOL_OPTION, run_tmux, server_flag, server_missing, tmux_available

_FIELDS = ("session_name", "window_name", "window_id", "pane_pid", "pane_dead",
           "pane_dead_status", "pane_dead_signal", POOL_OPTION)
_FORMAT = "\t".join("#{" + f + "}" for f in _FIELDS)
WORKER_NAME = re.compile(r"^w-[1-9][0-9]*$")


def tmux_instances(server: str, session: str, tag: str,
                   socket_name: str | None = None) -> list[RuntimeInstance]:
    """Every worker pane of ``session`` on ``server`` (a socket path, or a name for
    ``-L``), alive or exited (remain-on-exit); each carries ``socket_name``.

    Only windows named like a worker *and* tagged with this pool's ``tag``
    count: a window the operator opened in the session is left alone.
    """
    socket = server
    if not tmux_available():
        return []
    proc = run_tmux(socket, ["list-panes", "-a", "-F", _FORMAT], check=False)
    if proc.returncode != 0 and not server_missing(proc):
        # the server may have been exiting (its last window just closed): ask once more
        proc = run_tmux(socket, ["list-panes", "-a", "-F", _FORMAT], check=False)
    if proc.returncode != 0:
        if server_missing(proc):
            return []
        raise RuntimeBackendError(f"tmux {' '.join(server_flag(socket))} list-panes failed: "
                                  f"{proc.stderr.strip() or proc.returncode}")
    found: list[RuntimeInstance] = []
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != len(_FIELDS):
            continue
        name, window, window_id, pid, dead, status, sig, owner = parts
        if name != session or owner != tag or not WORKER_NAME.match(window):
            continue
        found.append(RuntimeInstance(
            worker_id=window, runtime="tmux", pid=int(pid) if pid.isdigit() else None,
            alive=dead != "1", exit_status=int(status) if status.isdigit() else None,
            exit_signal=int(sig) if sig.isdigit() else None, handle=window_id,
            socket=socket_name or socket))
    return found
