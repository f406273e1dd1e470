"""Typed errors.

Every failure a user can cause or fix is a ``ReconcilerError``; the CLI turns
one into a single line (what, where, how to fix) and exit code 1.  Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base class of errors that are reported to the user as one line."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and the hint on one line, as printed by the CLI."""
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class SpecError(ReconcilerError):
    """The workers.yaml file is unreadable, malformed or invalid."""

    def __init__(self, message: str, *, hint: str | None = None,
                 problems: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint=hint)
        # Every problem found, one line each; ``message`` is the first.
        self.problems = problems or (message,)


class PreflightError(ReconcilerError):
    """``diff`` or ``apply`` found what the pool would run badly with on this host; every
    problem is kept, one line each (``message`` is the first's), so one run names them
    all."""

    def __init__(self, problems: tuple[ReconcilerError, ...]) -> None:
        super().__init__(problems[0].message, hint=problems[0].hint)
        self.problems = tuple(problem.one_line() for problem in problems)


class StoreError(ReconcilerError):
    """The pool's SQLite store could not be read or written."""


class TaskError(ReconcilerError):
    """A task id or task file given by the user is wrong."""


class PoolError(ReconcilerError):
    """The pool could not be found, chosen or locked."""


class LockHeldError(PoolError):
    """Another ``reconcile`` command holds the pool's lock."""


class GitError(ReconcilerError):
    """A git command failed, or a ref or path name is invalid."""


class RuntimeBackendError(ReconcilerError):
    """tmux or the process runtime failed to start, stop or inspect a worker."""


class PueueStatusError(ReconcilerError):
    """``pueue status --json`` printed something that is not a pueue state document."""
