"""Workers as windows of one tmux session on the pool's dedicated server.

The server is addressed by its absolute socket path, pinned in the pool's
directory when the pool first starts it (``reconciler.tmuxcli.pool_socket``),
so a command run with another ``TMUX_TMPDIR`` uses the same server.

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
from reconciler.tmuxcli import (
    POOL_OPTION,
    SERVER_OPTION,
    default_socket_path,
    pin_socket,
    pool_socket,
    run_tmux,
    server_missing,
)

TMUX_CONF = f"""\
# written by reconciler: options for the pool's own tmux server
set-option -g {SERVER_OPTION} on
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
        self.socket = socket  # the spec's name; the server is addressed by its path
        self.session = session
        self.config = config
        self.tag = tag or str(config.parent)

    def server(self, name: str | None = None) -> str:
        """The absolute socket path of the pool's server for ``name`` (the spec's)."""
        return pool_socket(self.config.parent, name or self.socket, self.config)

    def _server_for_start(self) -> str:
        """The server a new window goes to, pinned before any server is started there.
        A pinned path whose directory is gone (a reboot cleared its ``TMUX_TMPDIR``)
        holds no server: the pool then starts afresh where ``-L`` would put it now."""
        path = self.server()
        if not Path(path).parent.is_dir():
            path = default_socket_path(self.socket)
            # ``-S`` does not create tmux's per-user directory as ``-L`` does
            Path(path).parent.mkdir(mode=0o700, exist_ok=True)
        pin_socket(self.config.parent, self.socket, path)
        return path

    def _session_exists(self, server: str) -> bool:
        proc = run_tmux(server, ["has-session", "-t", f"={self.session}"], check=False)
        return proc.returncode == 0

    def start(self, worker_id: str, argv: Sequence[str]) -> Started:
        if not self.config.exists():
            self.config.write_text(TMUX_CONF)
            self.config.chmod(0o600)
        server = self._server_for_start()
        # started in the pool's directory, whatever the caller's (or the server's) is
        cwd = ["-c", str(self.config.parent.absolute())]
        if self._session_exists(server):
            args = ["new-window", "-d", "-t", f"={self.session}:", "-n", worker_id, *cwd]
        else:
            args = ["new-session", "-d", "-s", self.session, "-n", worker_id, *cwd, "-x", "200",
                    "-y", "50"]
        # one tmux invocation: the window is tagged before any observer can list it
        window = f"={self.session}:={worker_id}"
        args += ["-P", "-F", "#{window_id} #{pane_pid}", "--", *tmux_literal_argv(argv),
                 ";", "set-option", "-w", "-t", window, POOL_OPTION,
                 tmux_literal_argv([self.tag])[0],
                 ";", "set-option", "-w", "-t", window, "remain-on-exit", "on"]
        proc = run_tmux(server, args, config=self.config)
        _window_id, _, pid_text = proc.stdout.strip().partition(" ")
        if not pid_text.isdigit():
            raise RuntimeBackendError(f"tmux did not report a pid for {worker_id}: {proc.stdout!r}")
        pid = int(pid_text)
        return Started(pid, create_time_of(pid))

    def remove(self, worker_id: str, instance: RuntimeInstance | None, grace: float) -> None:
        if instance is not None and instance.alive and instance.pid:
            kill_supervised(instance.pid, grace)
        if instance is not None and instance.handle:
            proc = run_tmux(self.server(instance.socket), ["kill-window", "-t", instance.handle],
                            check=False)
            if proc.returncode != 0 and not server_missing(proc) \
                    and "can't find window" not in proc.stderr:
                raise RuntimeBackendError(
                    f"could not close the tmux window of {worker_id}: {proc.stderr.strip()}")

    def request_stop(self, instance: RuntimeInstance) -> None:
        request_stop(instance.pid)

    def is_running(self, instance: RuntimeInstance) -> bool:
        return process_matches(instance.pid, None)
