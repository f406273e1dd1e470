"""Workers as windows of one tmux session on the pool's dedicated socket.

The worker process *is* the window's command (argv after ``--``); nothing is
ever typed into a pane.  ``remain-on-exit`` keeps a dead pane so the observer
can read its exit status or signal.  Each window carries the user option
``@reconciler-pool`` naming the pool's state directory, so windows the
operator opens in the session, or another pool's, are never mistaken for
workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reconciler.errors import RuntimeBackendError
from reconciler.model import RuntimeInstance
from reconciler.proctree import create_time_of, kill_supervised, process_matches, request_stop
from reconciler.runtimes.base import Started
from reconciler.tmuxcli import run_tmux, server_missing

POOL_OPTION = "@reconciler-pool"
TMUX_CONF = """\
# written by reconciler: options for the pool's own tmux server
set-option -g remain-on-exit on
set-option -g history-limit 20000
set-option -g status-left-length 40
"""


def tmux_literal_argv(argv: Sequence[str]) -> list[str]:
    """Protect argv elements from tmux's own command parsing.

    tmux splits its argument list at any argument that *ends* in ``;`` (even
    after ``--``), unless the ``;`` is escaped as ``\\;``; it then drops that
    backslash.  Escaping every trailing ``;`` makes the command run verbatim.
    """
    return [element[:-1] + "\\;" if element.endswith(";") else element for element in argv]


class TmuxRuntime:
    name = "tmux"

    def __init__(self, socket: str, session: str, config: Path, tag: str = "") -> None:
        self.socket = socket
        self.session = session
        self.config = config
        self.tag = tag or str(config.parent)

    def _session_exists(self) -> bool:
        proc = run_tmux(self.socket, ["has-session", "-t", f"={self.session}"], check=False)
        return proc.returncode == 0

    def start(self, worker_id: str, argv: Sequence[str]) -> Started:
        if not self.config.exists():
            self.config.write_text(TMUX_CONF)
            self.config.chmod(0o600)
        if self._session_exists():
            args = ["new-window", "-d", "-t", f"={self.session}:", "-n", worker_id]
        else:
            args = ["new-session", "-d", "-s", self.session, "-n", worker_id, "-x", "200",
                    "-y", "50"]
        # one tmux invocation: the window is tagged before any observer can list it
        window = f"={self.session}:={worker_id}"
        args += ["-P", "-F", "#{window_id} #{pane_pid}", "--", *tmux_literal_argv(argv),
                 ";", "set-option", "-w", "-t", window, POOL_OPTION,
                 tmux_literal_argv([self.tag])[0],
                 ";", "set-option", "-w", "-t", window, "remain-on-exit", "on"]
        proc = run_tmux(self.socket, args, config=self.config)
        _window_id, _, pid_text = proc.stdout.strip().partition(" ")
        if not pid_text.isdigit():
            raise RuntimeBackendError(f"tmux did not report a pid for {worker_id}: {proc.stdout!r}")
        pid = int(pid_text)
        return Started(pid, create_time_of(pid))

    def remove(self, worker_id: str, instance: RuntimeInstance | None, grace: float) -> None:
        if instance is not None and instance.alive and instance.pid:
            kill_supervised(instance.pid, grace)
        if instance is not None and instance.handle:
            socket = instance.socket or self.socket
            proc = run_tmux(socket, ["kill-window", "-t", instance.handle], check=False)
            if proc.returncode != 0 and not server_missing(proc) \
                    and "can't find window" not in proc.stderr:
                raise RuntimeBackendError(
                    f"could not close the tmux window of {worker_id}: {proc.stderr.strip()}")

    def request_stop(self, instance: RuntimeInstance) -> None:
        request_stop(instance.pid)

    def is_running(self, instance: RuntimeInstance) -> bool:
        return process_matches(instance.pid, None)
