"""A pool's view of one ``pueue status``: its group, its own attempts, and the tasks
people added to the group by hand (pure: the observer reads pueue once per pass and
hands the state here).

Our tasks are recognised by their label (``reconciler:<pool>:<task>:<attempt>``),
never by pueue's id alone: pueue gives ids out again after ``clean``.  A label seen
twice (``pueue restart`` without ``--in-place`` copies a task, label and all; we hand
an attempt on again when pueue's run of it ended before it started) is the same
attempt: the copy that runs counts first, then one that waits, then the newest that
ended -- a finished copy must never hide a live one.  ``copies`` says how many
there are.  Another pool's labelled tasks in the same group are that pool's
business: neither ours nor foreign.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.pueuestatus import PueueGroup, PueueState, PueueTask, parse_label

WAITING_STATES = frozenset({"queued", "stashed", "locked"})  # held, not started
LIVE_STATES = frozenset({"running", "paused"})
# which copy of a label counts: live, then waiting (stashed last: it waits for a hand),
# then ended; the newest within each
_RANK = {"running": 4, "paused": 4, "queued": 3, "locked": 3, "stashed": 2}


@dataclass(frozen=True)
class PueueView:
    daemon_up: bool
    group: PueueGroup | None  # None: the group does not exist (or the daemon is down)
    ours: Mapping[tuple[int, int], PueueTask]  # by (task id, attempt number)
    foreign: tuple[PueueTask, ...]  # in the group, labelled by no pool: added by hand
    version: str | None = None  # the shape pueue printed: "4" (4.0.x) or "3" (3.4.x)
    copies: Mapping[tuple[int, int], int] | None = None  # pueue tasks per label of ours
    others: tuple[str, ...] = ()  # other pools whose labelled tasks are in this group

    def running(self) -> tuple[tuple[int, int], ...]:
        """Our attempts pueue runs now (paused ones too: they hold a slot)."""
        return tuple(key for key, task in sorted(self.ours.items())
                     if task.state in ("running", "paused"))


MAX_HANDOFFS = 3  # copies of one attempt pueue may end before it starts: then we stop


def not_started(view: PueueView, statuses: Mapping[int, str]) -> list[str]:
    """Attempts pueue ran ``MAX_HANDOFFS`` times without the wrapper ever starting them
    (it could not reach the store, or failed before): what ``status`` names."""
    return [f"pueue ran attempt {attempt} of task {task_id} {MAX_HANDOFFS} times and it "
            f"never started (see `pueue log {task.id}`); the task waits until those copies "
            "are removed (`pueue remove`)"
            for (task_id, attempt), task in sorted(view.ours.items())
            if task.state == "done" and (view.copies or {}).get((task_id, attempt), 1)
            >= MAX_HANDOFFS and statuses.get(task_id) == "queued"]


def due_limit(replicas: int) -> int:
    """How many due tasks the observer reads for a pass of a pool of ``replicas`` slots:
    enough to fill every slot twice over after skipping those pueue already holds."""
    return 2 * replicas + 8


def view_of(state: PueueState | None, pool: str, group: str) -> PueueView:
    """``state`` as ``pool`` sees it in ``group``; ``state`` None: the daemon is down."""
    if state is None:
        return PueueView(False, None, {}, ())
    ours: dict[tuple[int, int], PueueTask] = {}
    copies: dict[tuple[int, int], int] = {}
    others: set[str] = set()
    foreign = []
    for task in state.tasks.values():  # ascending ids: the newest of a rank wins
        label = parse_label(task.label)
        if label is not None and label[0] == pool:
            key = (label[1], label[2])
            copies[key] = copies.get(key, 0) + 1
            held = ours.get(key)
            if held is None or _RANK.get(task.state, 0) >= _RANK.get(held.state, 0):
                ours[key] = task
        elif label is None and task.group == group:
            foreign.append(task)
        elif label is not None and task.group == group:
            others.add(label[0])
    return PueueView(True, state.groups.get(group), ours, tuple(foreign), state.version,
                     copies, tuple(sorted(others)))
