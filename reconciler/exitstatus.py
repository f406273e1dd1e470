"""Exit statuses as people read them: ``exit 1``, ``killed by SIGKILL (exit 137)``,
``terminated by SIGTERM (exit 143)`` -- never subprocess's ``-15`` (pure).

Python reports a process killed by signal N as return code ``-N``; a shell, and
every operator, knows it as ``128 + N``.  One wording everywhere a status is shown:
``status``, ``task show``, events and the reasons of a plan.
"""

from __future__ import annotations

import signal

# what a signal did, in the words a shell's users know (SIGTERM asks, SIGKILL does not)
_VERBS = {signal.SIGTERM: "terminated by", signal.SIGINT: "interrupted by",
          signal.SIGHUP: "hung up by"}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(code: int | None, killed_by: int | None = None) -> str:
    """``code`` as subprocess gives it (negative: killed by that signal), or
    ``killed_by`` a signal number; ``exit status unknown`` when neither is known."""
    if killed_by is None and code is not None and code < 0:
        killed_by = -code
    if killed_by:
        verb = _VERBS.get(killed_by, "killed by")  # type: ignore[call-overload]
        return f"{verb} {signal_name(killed_by)} (exit {128 + killed_by})"
    if code is None:
        return "exit status unknown"
    return f"exit {code}"
