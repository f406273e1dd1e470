"""Launcher: ``python -I -S reconciler/runtimes/spawn.py LOG EXIT -- ARGV...``.

Standard library only: it runs as a file, without site-packages, to start fast.

Starts ARGV detached (new session, stdin from /dev/null, output appended to
LOG, 0600), prints its pid and exits.  ARGV's parent is a small reaper forked
from the launcher, in a session of its own: only a parent learns how its child
ended, so the reaper waits for ARGV and writes its exit status to EXIT (JSON,
``{"pid": N, "returncode": R}``, R negative for a signal, as subprocess gives
it) before the process is reaped.  Whoever sees the pid gone can therefore
read how it ended; while the pid is still a zombie, the status is being
written.  The reaper does nothing else and exits with its child.

It stays lean because one lives beside every worker: ``os`` and the C half of
``signal`` only (no ``subprocess``, ``json`` or ``signal``'s enums), so it keeps
about 2.7 MiB of its own memory, what an idle interpreter needs
(``benchmarks/bench_processes.py`` measures it).
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's C half: numbers, no enums
import os
import sys


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        print("usage: spawn.py LOG EXIT -- ARGV...", file=sys.stderr)
        return 2
    log_path, exit_path, argv = args[0], args[1], args[3:]
    report_read, report_write = os.pipe()
    if os.fork() == 0:  # the reaper
        os.close(report_read)
        _reap(log_path, exit_path, argv, report_write)  # never returns
    os.close(report_write)
    with os.fdopen(report_read, "r") as report:
        answer = report.read().strip()
    if not answer.isdigit():
        print(answer or f"cannot start {argv[0]}", file=sys.stderr)
        return 1
    print(answer, flush=True)
    return 0


def _reap(log_path: str, exit_path: str, argv: list[str], report: int) -> None:
    """Start ``argv``, tell the launcher its pid (or why not) through ``report``, then
    wait for it, record how it ended, and exit."""
    code = 1
    try:
        os.setsid()  # out of the caller's session: no terminal's signal reaches it
        _detach_standard_streams()  # the launcher's caller reads its output until EOF
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            pid = os.posix_spawnp(
                argv[0], argv, dict(os.environ), setsid=True,
                # what Python ignores, the child gets back as the default (as subprocess does)
                setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ),
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                              (os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)])
        except OSError as exc:
            os.write(report, f"cannot start {argv[0]}: {exc.strerror}".encode())
            return
        finally:
            os.close(fd)
        os.write(report, str(pid).encode())
        os.close(report)
        report = -1
        # look without reaping, write, then reap: the pid vanishes only once EXIT is there
        _write_exit(exit_path, pid, _returncode_once_exited(pid))
        os.waitpid(pid, 0)
        code = 0
    finally:  # whatever happened, the reaper only ever exits (it has nobody to tell)
        if report >= 0:
            os.close(report)
        os._exit(code)


def _returncode_once_exited(pid: int) -> int:
    """Wait for the child to exit, leaving it unreaped; its status as subprocess's
    returncode (negative: the signal that ended it)."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # PEP 475: EINTR retried
    if info is None:  # only with WNOHANG
        raise ChildProcessError(pid)
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status  # CLD_KILLED or CLD_DUMPED: the signal's number


def _write_exit(path: str, pid: int, returncode: int) -> None:
    """EXIT, replaced whole (0600): a reader never sees half a record."""
    partial = f"{path}.{os.getpid()}"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b'{"pid": %d, "returncode": %d}' % (pid, returncode))
    finally:
        os.close(fd)
    os.replace(partial, path)  # noqa: PTH105 - pathlib would cost the reaper memory


def _detach_standard_streams() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
