"""The runtime port: how the executor starts and removes one worker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.model import RuntimeInstance


@dataclass(frozen=True)
class Started:
    pid: int
    create_time: float | None


class Runtime(Protocol):
    name: str

    def start(self, worker_id: str, argv: Sequence[str]) -> Started:
        """Start ``argv`` as worker ``worker_id`` and return its process id."""

    def remove(self, worker_id: str, instance: RuntimeInstance | None, grace: float) -> None:
        """Make sure nothing of ``worker_id`` runs any more (killing its tree if alive)."""

    def request_stop(self, instance: RuntimeInstance) -> None:
        """Ask the worker to finish its current task and exit (SIGTERM to the worker only)."""

    def is_running(self, instance: RuntimeInstance) -> bool:
        """Whether the worker process of ``instance`` is still alive."""
