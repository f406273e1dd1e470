"""The pool's log lines (``reconciler.log``): the formats workers and the controller write.

Operators and tests grep these files, so the line shapes loguru wrote are kept:
``2026-11-29 19:41:07.123 INFO message`` in a log file, ``19:41:07 w-1 INFO
message`` on a worker's terminal.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.log import log_to, logger


@pytest.fixture(autouse=True)
def restore_handlers() -> Iterator[None]:
    """Each test's destinations are dropped afterwards (the logger is process-wide)."""
    package_logger = logging.getLogger("reconciler")
    before = list(package_logger.handlers)
    yield
    for handler in list(package_logger.handlers):
        package_logger.removeHandler(handler)
    for handler in before:
        package_logger.addHandler(handler)


def test_a_log_file_line_has_the_date_milliseconds_level_and_message(tmp_path: Path) -> None:
    path = tmp_path / "w-1.log"
    with path.open("a") as file:
        log_to(file, "{time} {level} {message}", time="timestamp", replace=True)
        logger.info("task {} attempt {}: {}", 7, 1, "Fix login")
        logger.warning("heartbeat failed: {}; retrying", "disk full")
    lines = path.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"
    assert re.fullmatch(rf"{stamp} INFO task 7 attempt 1: Fix login", lines[0]), lines
    assert re.fullmatch(rf"{stamp} WARNING heartbeat failed: disk full; retrying",
                        lines[1]), lines


def test_a_terminal_line_names_the_worker_and_keeps_only_its_level() -> None:
    stream = io.StringIO()
    log_to(stream, "{time} w-1 {level} {message}", level="INFO", replace=True)
    logger.debug("not shown")
    logger.info("w-1 started (pid {}), pool {}", 42, "demo")
    assert re.fullmatch(r"\d\d:\d\d:\d\d w-1 INFO w-1 started \(pid 42\), pool demo\n",
                        stream.getvalue()), stream.getvalue()


def test_text_is_formatted_only_with_arguments_so_braces_and_percents_pass_through() -> None:
    stream = io.StringIO()
    log_to(stream, "{message}", replace=True)
    logger.error("task {title} 100% done")  # a task's title may hold either
    logger.error("task {} said {}", 3, "{not a placeholder} 50%")
    assert stream.getvalue().splitlines() == ["task {title} 100% done",
                                              "task 3 said {not a placeholder} 50%"]


def test_an_exception_is_logged_with_its_traceback() -> None:
    stream = io.StringIO()
    log_to(stream, "{level} {message}", replace=True)
    try:
        raise ValueError("the disk is on fire")
    except ValueError:
        logger.exception("task {}: unexpected error", 9)
    text = stream.getvalue()
    assert text.startswith("ERROR task 9: unexpected error\nTraceback (most recent call last):")
    assert "ValueError: the disk is on fire" in text


def test_replace_drops_every_earlier_destination() -> None:
    first, second = io.StringIO(), io.StringIO()
    log_to(first, "{message}", replace=True)
    log_to(second, "{message}", replace=True)
    logger.warning("only once")
    assert (first.getvalue(), second.getvalue()) == ("", "only once\n")
