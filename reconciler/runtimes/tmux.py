"""Workers as windows of one tmux session on the pool's dedicated socket.

The worker process *is* the window's command (argv after ``--``); nothing is
ever typed into a pane.  ``remain-on-exit`` keeps a dead pane so the observer
can read its exit status or signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import RuntimeBackendError
from reconciler.model import RuntimeInstance
from reconciler.proctree import create_time_of, kill_tree, process_matches, request_stop
from reconciler.runtimes.base import Started
from reconciler.tmuxcli import run_tmux, server_missing

TMUX_CONF = """\
# written by reconciler: options for the pool's own tmux server
set-option -g remain-on-exit on
set-option -g history-limit 20000
set-option -g status-left-length 40
"""


class TmuxRuntime:
    name = "tmux"

    def __init__(self, socket: str, session: str, config: Path) -> None:
        self.socket = socket
        self.session = session
        self.config = config

    def _session_exists(self) -> bool:
        proc = run_tmux(self.socket, ["has-session", "-t", f"={self.session}"], check=False)
        return proc.returncode == 0

    def start(self, worker_id: str, argv: Sequence[str]) -> Started:
        if not self.config.exists():
            self.config.write_text(TMUX_CONF)
            self.config.chmod(0o600)
        if self._session_exists():
            args = ["new-window", "-d", "-t", f"={self.session}:", "-n", worker_id,
                    "-P", "-F", "#{window_id} #{pane_pid}", "--", *argv]
        else:
            args = ["new-session", "-d", "-s", self.session, "-n", worker_id, "-x", "200",
                    "-y", "50", "-P", "-F", "#{window_id} #{pane_pid}", "--", *argv]
        proc = run_tmux(self.socket, args, config=self.config)
        window_id, _, pid_text = proc.stdout.strip().partition(" ")
        if not pid_text.isdigit():
            raise RuntimeBackendError(f"tmux did not report a pid for {worker_id}: {proc.stdout!r}")
        # the server may predate our config (a socket shared by several pools)
        run_tmux(self.socket, ["set-option", "-w", "-t", window_id, "remain-on-exit", "on"],
                 check=False)
        pid = int(pid_text)
        return Started(pid, create_time_of(pid))

    def remove(self, worker_id: str, instance: RuntimeInstance | None, grace: float) -> None:
        if instance is not None and instance.alive and instance.pid:
            kill_tree(instance.pid, grace)
        if instance is not None and instance.handle:
            proc = run_tmux(self.socket, ["kill-window", "-t", instance.handle], check=False)
            if proc.returncode != 0 and not server_missing(proc) \
                    and "can't find window" not in proc.stderr:
                raise RuntimeBackendError(
                    f"could not close the tmux window of {worker_id}: {proc.stderr.strip()}")

    def request_stop(self, instance: RuntimeInstance) -> None:
        request_stop(instance.pid)

    def is_running(self, instance: RuntimeInstance) -> bool:
        return process_matches(instance.pid, None)
