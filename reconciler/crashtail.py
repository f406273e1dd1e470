"""The last words of a pool's children that died before their first heartbeat.

A worker or controller that crashes at start (a broken environment, an import
error) never writes to the store, so ``status`` can only say it is gone.  What
it printed is still on the host: a process-runtime worker's ``logs/w-N.out``,
the dead tmux pane (``remain-on-exit`` keeps it), the controller's
``logs/controller.out``.  ``apply`` shows its tail when the pool does not come
up, instead of leaving the operator to find it.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.model import Observation, RuntimeInstance
from reconciler.paths import PoolPaths
from reconciler.taskrun import log_tail
from reconciler.tmuxcli import pool_socket, run_tmux

TAIL_LINES = 12
TAIL_BYTES = 8192


def crash_tails(paths: PoolPaths, observation: Observation) -> list[tuple[str, str]]:
    """``(who, last lines)`` of every worker, and the controller, that is gone without
    ever having heartbeat since it started."""
    tails: list[tuple[str, str]] = []
    for row in observation.workers:
        instance = observation.instance(row.id)
        if instance is not None and instance.alive:
            continue
        ran = row.heartbeat_at is not None and row.started_at is not None \
            and row.heartbeat_at >= row.started_at
        if ran or row.started_at is None:
            continue
        text = _pane_tail(paths, instance) if instance is not None and instance.handle \
            else _file_tail(paths.logs / f"{row.id}.out")
        if text:
            tails.append((row.id, text))
    record = observation.controller
    if observation.controller_alive is False and record is not None \
            and not record.stop_requested and record.heartbeat_at is None:
        text = _file_tail(paths.logs / "controller.out")
        if text:
            tails.append(("controller", text))
    return tails


def _file_tail(path: Path) -> str:
    return _last_lines(log_tail(path, TAIL_BYTES))


def _pane_tail(paths: PoolPaths, instance: RuntimeInstance) -> str:
    if not instance.socket or not instance.handle:
        return ""
    socket = pool_socket(paths.root, instance.socket, paths.tmux_conf)
    proc = run_tmux(socket, ["capture-pane", "-p", "-t", instance.handle, "-S", "-200"],
                    check=False)
    return _last_lines(proc.stdout) if proc.returncode == 0 else ""


def _last_lines(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-TAIL_LINES:])
