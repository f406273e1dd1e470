"""Leave a trace when a process dies (issue 7 item 7).

A process of the pool that dies of SIGBUS (a store file's mapped ``-shm`` on
a full or immutable disk), SIGSEGV, SIGFPE, SIGILL or SIGABRT writes Python's
``faulthandler`` report (the signal and every thread's stack) into its own
log; an exception that nothing caught is written there too, with its
traceback, before the process exits.  SIGKILL cannot be caught: the pool
sees that one from the outside (the exit status).

Call ``enable_crash_log(log_path)`` once, early in a process's ``main``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import TextIO

_log: TextIO | None = None  # kept open for the process's lifetime: faulthandler writes to its fd


def enable_crash_log(log_path: Path, *, who: str = "process") -> TextIO:
    """Send fatal-signal reports and uncaught exceptions of this process to ``log_path``
    (appended, 0600) as well as to stderr; returns the open log file.  Calling it again
    switches to the new path."""
    global _log
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log = os.fdopen(fd, "a", buffering=1)
    faulthandler.enable(file=log, all_threads=True)
    previous, _log = _log, log
    if previous is not None:
        previous.close()

    def record(kind: str, exc_type: type[BaseException], exc: BaseException | None,
               tb: TracebackType | None) -> None:
        with contextlib.suppress(OSError, ValueError):  # the disk may be full
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {who} (pid {os.getpid()}) "
                      f"{kind}:\n{''.join(traceback.format_exception(exc_type, exc, tb))}")
            log.flush()

    def on_exception(exc_type: type[BaseException], exc: BaseException,
                     tb: TracebackType | None) -> None:
        if not issubclass(exc_type, KeyboardInterrupt):
            record("died of an uncaught exception", exc_type, exc, tb)
        sys.__excepthook__(exc_type, exc, tb)

    def on_thread_exception(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread else "?"
        record(f"thread {name} died of an uncaught exception", args.exc_type, args.exc_value,
               args.exc_traceback)
        threading.__excepthook__(args)

    sys.excepthook = on_exception
    threading.excepthook = on_thread_exception
    return log

