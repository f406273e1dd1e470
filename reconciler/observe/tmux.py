"""Observe a pool's tmux windows with one ``list-panes -a`` call per pass."""

from __future__ import annotations

from reconciler.model import RuntimeInstance
from reconciler.tmuxcli import run_tmux, server_missing, tmux_available

_FIELDS = ("session_name", "window_name", "window_id", "pane_pid", "pane_dead",
           "pane_dead_status", "pane_dead_signal")
_FORMAT = "\t".join("#{" + f + "}" for f in _FIELDS)


def tmux_instances(socket: str, session: str) -> list[RuntimeInstance]:
    """Every pane of ``session`` on ``socket``, alive or exited (remain-on-exit)."""
    if not tmux_available():
        return []
    proc = run_tmux(socket, ["list-panes", "-a", "-F", _FORMAT], check=False)
    if proc.returncode != 0:
        if server_missing(proc):
            return []
        run_tmux(socket, ["list-panes", "-a", "-F", _FORMAT])  # raises with the message
    found: list[RuntimeInstance] = []
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != len(_FIELDS):
            continue
        name, window, window_id, pid, dead, status, sig = parts
        if name != session:
            continue
        found.append(RuntimeInstance(
            worker_id=window, runtime="tmux", pid=int(pid) if pid.isdigit() else None,
            alive=dead != "1", exit_status=int(status) if status.isdigit() else None,
            exit_signal=int(sig) if sig.isdigit() else None, handle=window_id))
    return found
