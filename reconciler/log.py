"""The pool's log lines, written through the standard library's ``logging``.

Every worker and the controller log, and every CLI call may warn; loguru cost
each of them tens of milliseconds and megabytes at start (it pulls in asyncio
and multiprocessing), for a few lines a minute (issue 9: lean processes).
``logger`` keeps loguru's call style (``logger.info("task {} done", 7)``:
``str.format`` placeholders, formatted only when there are arguments), so the
modules that log read as before; ``log_to`` replaces loguru's ``add``.

``logging`` itself (about 10 ms) is imported only when a line is logged or a
destination set, so a CLI call that logs nothing, such as ``status``, never pays
for it.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import logging

_stderr_pending = False  # ``warnings_to_stderr`` was asked for before ``logging`` loaded


@functools.cache
def _package_logger() -> logging.Logger:
    import logging

    package = logging.getLogger("reconciler")
    package.propagate = False  # lines go where ``log_to`` says, never to the root logger
    package.setLevel(logging.DEBUG)
    if _stderr_pending:
        _add_handler(package, sys.stderr, "warning: {message}", "WARNING", "clock")
    return package


class _Message:
    """A message formatted with ``str.format`` only when a handler writes it."""

    def __init__(self, text: str, args: tuple[Any, ...]) -> None:
        self.text = text
        self.args = args

    def __str__(self) -> str:
        return self.text.format(*self.args) if self.args else self.text


class Logger:
    """loguru's calls that this package makes, on top of ``logging``."""

    def debug(self, text: str, *args: Any) -> None:
        _package_logger().debug(_Message(text, args))

    def info(self, text: str, *args: Any) -> None:
        _package_logger().info(_Message(text, args))

    def warning(self, text: str, *args: Any) -> None:
        _package_logger().warning(_Message(text, args))

    def error(self, text: str, *args: Any) -> None:
        _package_logger().error(_Message(text, args))

    def exception(self, text: str, *args: Any) -> None:
        """An error with the traceback of the exception being handled."""
        _package_logger().error(_Message(text, args), exc_info=True)


logger = Logger()

# A line's time, as ``log_to``'s ``time`` argument names it.
CLOCK = "%(asctime)s"
CLOCK_FORMATS = {"clock": "%H:%M:%S", "timestamp": "%Y-%m-%d %H:%M:%S"}


def log_to(stream: TextIO, template: str, *, level: str = "DEBUG", time: str = "clock",
           replace: bool = False) -> logging.Handler:
    """Write lines at ``level`` and above to ``stream``.  ``template`` uses ``{time}``,
    ``{level}`` and ``{message}``; ``time`` is ``clock`` (``19:41:07``) or ``timestamp``
    (``2026-11-29 19:41:07.123``).  ``replace`` drops every destination set before."""
    package = _package_logger()
    if replace:
        for old in list(package.handlers):
            package.removeHandler(old)
    return _add_handler(package, stream, template, level, time)


def _add_handler(package: logging.Logger, stream: TextIO, template: str, level: str,
                 time: str) -> logging.Handler:
    import logging

    clock = CLOCK + (".%(msecs)03d" if time == "timestamp" else "")
    pattern = (template.replace("%", "%%")
               .replace("{time}", clock).replace("{level}", "%(levelname)s")
               .replace("{message}", "%(message)s"))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(pattern, datefmt=CLOCK_FORMATS[time]))
    handler.setLevel(level)
    package.addHandler(handler)
    return handler


def stop_logging_to(handler: logging.Handler) -> None:
    _package_logger().removeHandler(handler)


def warnings_to_stderr() -> None:
    """What a CLI call shows of library logging: warnings and errors, one short line each.
    Set up when the first line is logged, if ``logging`` is not loaded yet."""
    global _stderr_pending
    if _package_logger.cache_info().currsize:
        log_to(sys.stderr, "warning: {message}", level="WARNING", replace=True)
    else:
        _stderr_pending = True
