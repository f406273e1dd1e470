"""A pool's view of one ``pueue status``: its group, its own attempts, and the tasks
people added to the group by hand (pure: the observer reads pueue once per pass and
hands the state here).

Our tasks are recognised by their label (``reconciler:<pool>:<task>:<attempt>``),
never by pueue's id alone: pueue gives ids out again after ``clean``.  A label seen
twice (``pueue restart`` without ``--in-place`` copies a task, label and all) is
the same attempt: the copy with the highest id is the one that counts, as the
newest.  Another pool's labelled tasks in the same group are that pool's business:
neither ours nor foreign.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.pueuestatus import PueueGroup, PueueState, PueueTask, parse_label

WAITING_STATES = frozenset({"queued", "stashed", "locked"})  # held, not started


@dataclass(frozen=True)
class PueueView:
    daemon_up: bool
    group: PueueGroup | None  # None: the group does not exist (or the daemon is down)
    ours: Mapping[tuple[int, int], PueueTask]  # by (task id, attempt number)
    foreign: tuple[PueueTask, ...]  # in the group, labelled by no pool: added by hand
    version: str | None = None  # the shape pueue printed: "4" (4.0.x) or "3" (3.4.x)

    def waiting_tasks(self) -> set[int]:
        """Our tasks whose attempt pueue holds but has not started."""
        return {key[0] for key, task in self.ours.items() if task.state in WAITING_STATES}

    def running(self) -> tuple[tuple[int, int], ...]:
        """Our attempts pueue runs now (paused ones too: they hold a slot)."""
        return tuple(key for key, task in sorted(self.ours.items())
                     if task.state in ("running", "paused"))


def due_limit(replicas: int) -> int:
    """How many due tasks the observer reads for a pass of a pool of ``replicas`` slots:
    enough to fill every slot twice over after skipping those pueue already holds."""
    return 2 * replicas + 8


def view_of(state: PueueState | None, pool: str, group: str) -> PueueView:
    """``state`` as ``pool`` sees it in ``group``; ``state`` None: the daemon is down."""
    if state is None:
        return PueueView(False, None, {}, ())
    ours: dict[tuple[int, int], PueueTask] = {}
    foreign = []
    for task in state.tasks.values():  # ascending ids: a later copy replaces an earlier
        label = parse_label(task.label)
        if label is not None and label[0] == pool:
            ours[(label[1], label[2])] = task
        elif label is None and task.group == group:
            foreign.append(task)
    return PueueView(True, state.groups.get(group), ours, tuple(foreign), state.version)
