"""Durations written as strings such as ``500ms``, ``30s``, ``15m``, ``1h`` or ``1h30m``."""

from __future__ import annotations

import re
import time

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ``ValueError`` with the accepted forms."""
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 500ms, 30s, 15m, 1h or 1h30m")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """Render seconds compactly for humans: ``850ms``, ``42s``, ``3m05s``, ``2h10m``."""
    if seconds < 0:
        seconds = 0.0
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def day_start(now: float, *, days: int = 0) -> float:
    """Local midnight that began the day of ``now`` (``days`` later: the next ones), the
    day a budget counts (``budget.perDayUsd``)."""
    day = time.localtime(now)
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday + days, 0, 0, 0, 0, 0, -1))
