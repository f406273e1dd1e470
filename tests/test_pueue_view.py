"""A pool's view of ``pueue status``: its own attempts by label (never by id alone),
the tasks added to its group by hand, and no other pool's."""

from __future__ import annotations

from pathlib import Path

from reconciler.pueuestatus import (
    PueueGroup,
    PueueState,
    PueueTask,
    TaskResult,
    TaskState,
    label_for,
    parse_status,
)
from reconciler.pueueview import view_of

FIXTURES = Path(__file__).parent / "fixtures" / "pueue"


def task(pueue_id: int, label: str | None, state: TaskState = "queued",
         group: str = "agents", result: TaskResult | None = None) -> PueueTask:
    return PueueTask(pueue_id, group, label, 0, state, result, None, None, None, None)


def test_pueue_view_sorts_ours_foreign_and_other_pools() -> None:
    state = PueueState("4", {
        0: task(0, label_for("agents", 7, 1), "done", result="killed"),
        1: task(1, label_for("agents", 7, 2), "running"),
        2: task(2, label_for("other", 7, 1), "running"),       # another pool's
        3: task(3, "lint"),                                     # added by hand
        4: task(4, None, "running"),                            # added by hand, no label
        5: task(5, None, group="default"),                      # another group: not ours
        6: task(6, label_for("agents", 8, 1), "paused"),
    }, {"agents": PueueGroup("agents", "running", 4)})
    view = view_of(state, "agents", "agents")
    assert view.daemon_up and view.group == PueueGroup("agents", "running", 4)
    assert {key: t.id for key, t in view.ours.items()} == {(7, 1): 0, (7, 2): 1, (8, 1): 6}
    assert [t.id for t in view.foreign] == [3, 4]
    assert view.running() == ((7, 2), (8, 1))


def test_pueue_view_takes_the_newest_copy_of_a_label() -> None:
    """``pueue restart`` without ``--in-place`` copies a task and its label; after a
    ``clean`` pueue hands out low ids again: the highest id is the newest copy."""
    state = PueueState("4", {
        2: task(2, label_for("agents", 3, 1), "done", result="failed"),
        9: task(9, label_for("agents", 3, 1), "running")}, {})
    assert view_of(state, "agents", "agents").ours[(3, 1)].id == 9
    assert view_of(state, "agents", "agents").copies == {(3, 1): 2}


def test_pueue_view_never_lets_a_finished_copy_hide_a_live_one() -> None:
    """Review of issue 11: `pueue restart` (not in place) of an earlier copy that ended
    before it started makes a newer copy that will end at once; the live copy must keep
    counting, or the live attempt would be taken for one that died."""
    live = label_for("agents", 3, 1)
    state = PueueState("4", {
        2: task(2, live, "running"),
        5: task(5, live, "done", result="failed"),
        6: task(6, label_for("agents", 4, 1), "stashed"),
        7: task(7, label_for("agents", 4, 1), "queued"),
        8: task(8, label_for("agents", 4, 1), "done", result="failed")}, {})
    view = view_of(state, "agents", "agents")
    assert (view.ours[(3, 1)].id, view.ours[(4, 1)].id) == (2, 7)
    assert view.copies == {(3, 1): 2, (4, 1): 3}


def test_pueue_view_of_a_down_daemon_or_a_missing_group() -> None:
    down = view_of(None, "agents", "agents")
    assert not down.daemon_up and down.group is None and not down.ours and not down.foreign
    state = parse_status((FIXTURES / "status-v4.json").read_text())
    view = view_of(state, "agents", "workers")
    assert view.daemon_up and view.group is not None and view.group.parallel_tasks == 1
    assert [t.label for t in view.foreign] == ["task-17", "task-18"]  # by hand, to us
    assert view_of(state, "agents", "nope").group is None
