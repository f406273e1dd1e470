"""``task list`` at scale (issue 9): a page as text, saying how many more there are and how
to see them (``--limit N``, ``--all``); ``-o json`` every task, streamed from the store's
cursor as a valid array, one object per line (memory and time at 100,000 tasks:
``benchmarks/bench_store.py``)."""

from __future__ import annotations

import io
import json
from collections import Counter
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path

import pytest

from reconciler.commands import TASK_PAGE
from reconciler.paths import pool_paths
from reconciler.report.documents import print_json_array, task_document
from reconciler.store.sqlite import Store
from tests.e2e import state_dir
from tests.helpers import reconcile


@pytest.mark.parametrize("count", [0, 1, 3])
def test_a_streamed_array_is_the_json_of_the_list(count: int) -> None:
    items = [{"id": i, "title": f"t{i}", "at": None} for i in range(count)]
    out = io.StringIO()
    with redirect_stdout(out):
        print_json_array(iter(items))
    assert json.loads(out.getvalue()) == items
    assert out.getvalue().count("\n") == (1 if count == 0 else count + 2)  # a line each


@pytest.fixture
def big_pool(host: Path) -> int:
    """Pool ``p`` with more tasks than a page, two of them cancelled; returns the count."""
    count = TASK_PAGE + 7
    paths = pool_paths(state_dir(host), "p").create()
    with Store(paths.store) as store:
        ids = store.add_tasks([(f"task {i}", "p", 0) for i in range(count)])
        store.cancel_task(ids[0])
        store.cancel_task(ids[-1])
    return count


def _listed_ids(text: str) -> list[int]:
    return [int(line.split()[0]) for line in text.splitlines()[1:]
            if line.split() and line.split()[0].isdigit()]


def test_task_list_shows_a_page_and_says_how_to_see_more(big_pool: int) -> None:
    text = reconcile("task", "list", "--pool", "p", check=True).stdout
    assert _listed_ids(text) == list(range(1, TASK_PAGE + 1))
    assert f"showing the first {TASK_PAGE} of {big_pool} tasks; --limit N shows more, " \
           "--all shows every one" in text
    text = reconcile("task", "list", "--pool", "p", "--limit", "3", check=True).stdout
    assert _listed_ids(text) == [1, 2, 3] and f"first 3 of {big_pool}" in text
    text = reconcile("task", "list", "--pool", "p", "--all", check=True).stdout
    assert len(_listed_ids(text)) == big_pool and "showing" not in text
    text = reconcile("task", "list", "--pool", "p", "--status", "cancelled", check=True).stdout
    assert _listed_ids(text) == [1, big_pool] and "showing" not in text


def test_task_list_json_streams_every_task(big_pool: int) -> None:
    proc = reconcile("task", "list", "--pool", "p", "-o", "json", check=True)
    listed = json.loads(proc.stdout)
    assert [t["id"] for t in listed] == list(range(1, big_pool + 1))
    assert Counter(t["status"] for t in listed) == {"queued": big_pool - 2, "cancelled": 2}
    assert all(t["commits"] is None for t in listed)  # never applied: no repository
    limited = json.loads(reconcile("task", "list", "--pool", "p", "-o", "json", "--limit", "2",
                                   check=True).stdout)
    assert [t["id"] for t in limited] == [1, 2]


def test_limit_and_all_exclude_each_other(big_pool: int) -> None:
    proc = reconcile("task", "list", "--pool", "p", "--limit", "3", "--all")
    assert proc.returncode != 0 and "not allowed with" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_task_document_is_asdict_of_the_task(tmp_path: Path) -> None:
    """``task_document`` copies the fields shallowly (for speed): still exactly ``asdict``."""
    with Store(tmp_path / "store.db") as store:
        store.add_tasks([("t", "p", 3)])
        task = store.tasks()[0]
    assert list(task_document(task).items()) == list(asdict(task).items())
