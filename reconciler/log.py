"""The pool's log lines, written through the standard library's ``logging``.

Every worker and the controller log, and every CLI call may warn; loguru cost
each of them tens of milliseconds and megabytes at start (it pulls in asyncio
and multiprocessing), for a few lines a minute (issue 9: lean processes).
``logger`` keeps loguru's call style (``logger.info("task {} done", 7)``:
``str.format`` placeholders, formatted only when there are arguments), so the
modules that log read as before; ``log_to`` replaces loguru's ``add``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

_LOGGER = logging.getLogger("reconciler")
_LOGGER.propagate = False  # the lines go where ``log_to`` says, never to the root logger
_LOGGER.setLevel(logging.DEBUG)


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
        _LOGGER.debug(_Message(text, args))

    def info(self, text: str, *args: Any) -> None:
        _LOGGER.info(_Message(text, args))

    def warning(self, text: str, *args: Any) -> None:
        _LOGGER.warning(_Message(text, args))

    def error(self, text: str, *args: Any) -> None:
        _LOGGER.error(_Message(text, args))

    def exception(self, text: str, *args: Any) -> None:
        """An error with the traceback of the exception being handled."""
        _LOGGER.error(_Message(text, args), exc_info=True)


logger = Logger()

# A line's time, as ``log_to``'s ``time`` argument names it.
CLOCK = "%(asctime)s"
CLOCK_FORMATS = {"clock": "%H:%M:%S", "timestamp": "%Y-%m-%d %H:%M:%S"}


def log_to(stream: TextIO, template: str, *, level: str = "DEBUG", time: str = "clock",
           replace: bool = False) -> logging.Handler:
    """Write lines at ``level`` and above to ``stream``.  ``template`` uses ``{time}``,
    ``{level}`` and ``{message}``; ``time`` is ``clock`` (``19:41:07``) or ``timestamp``
    (``2026-11-29 19:41:07.123``).  ``replace`` drops every destination set before."""
    if replace:
        for old in list(_LOGGER.handlers):
            _LOGGER.removeHandler(old)
    clock = CLOCK + (".%(msecs)03d" if time == "timestamp" else "")
    pattern = (template.replace("%", "%%")
               .replace("{time}", clock).replace("{level}", "%(levelname)s")
               .replace("{message}", "%(message)s"))
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(pattern, datefmt=CLOCK_FORMATS[time]))
    handler.setLevel(level)
    _LOGGER.addHandler(handler)
    return handler


def stop_logging_to(handler: logging.Handler) -> None:
    _LOGGER.removeHandler(handler)


def warnings_to_stderr() -> None:
    """What a CLI call shows of library logging: warnings and errors, one short line each."""
    log_to(sys.stderr, "warning: {message}", level="WARNING", replace=True)
