"""``reconcile report``: each figure checked against a store whose numbers are worked out
by hand below, the scaling arithmetic included."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.model import AgentReport, RetryPolicy
from reconciler.paths import pool_paths
from reconciler.report.analysis import analyse, erlang_c_wait, percentile, up_time
from reconciler.store.sqlite import Store
from reconciler.store.tasks import EXPORT_COLUMNS, EXPORTS
from tests.helpers import reconcile

HOUR = 3600.0
NOW = 10_000.0
SINCE = NOW - 2 * HOUR  # 2800


def fill(store: Store, shift: float = 0.0) -> None:
    """Four tasks, all created in the window:

    - 1: created 3000; w-1 runs it 3060-3360 (300 s), succeeded, reports $1.00
    - 2: created 3000; w-2 fails it 3300-3400 (100 s), retried 3500-3700 (200 s),
      succeeded, reports $0.50
    - 3: created 6000; w-1 times out 6600-7200 (600 s); no attempt left: failed
    - 4: created 9000; still queued
    """
    retry, once = RetryPolicy(max_attempts=3, backoff=0), RetryPolicy(max_attempts=1)
    for created in (3000.0, 3000.0, 6000.0, 9000.0):
        store.add_tasks([("t", "p", 0)], now=created + shift)
    runs = [  # worker, start, end, outcome, cost, policy
        ("w-1", 3060.0, 3360.0, "succeeded", 1.0, retry),
        ("w-2", 3300.0, 3400.0, "failed", None, retry),
        ("w-2", 3500.0, 3700.0, "succeeded", 0.5, retry),
        ("w-1", 6600.0, 7200.0, "timeout", None, once)]
    for worker, start, end, outcome, cost, policy in runs:
        claim = store.claim_task(worker, 3600, now=start + shift)
        assert claim is not None
        store.finish_attempt(claim, outcome, policy=policy, now=end + shift,
                             report=AgentReport(cost_usd=cost) if cost else None)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    made = Store(pool_paths(tmp_path / "state", "p").create().store)
    fill(made)
    return made


def report_of(store: Store, replicas: int = 2, **extra: Any) -> dict[str, Any]:
    attempts, tasks, restarts = store.report_rows(SINCE)
    return analyse(pool="p", since=SINCE, now=NOW, replicas=replicas, attempts=attempts,
                   tasks=tasks, restarts=restarts, queued=1, running=0,
                   target_wait=300.0, **extra)


def test_the_figures_match_the_hand_worked_store(store: Store) -> None:
    doc = report_of(store)
    assert doc["tasks"] == {"completed": 2, "failed": 1, "success_rate": 2 / 3,
                            "attempts_per_task": 4 / 3, "retry_rate": 1 / 3,
                            "queued_now": 1, "running_now": 0,
                            "oldest_queued_seconds": None}
    assert doc["attempts"] == {"ended": 4, "by_outcome": {"failed": 1, "succeeded": 2,
                                                          "timeout": 1},
                               "timeout_rate": 0.25, "rate_limit_rate": 0.0}
    # run times 100, 200, 300, 600: nearest rank p50 = 2nd, p90 = p99 = 4th
    assert doc["run_time_seconds"] == {"count": 4, "p50": 200.0, "p90": 600.0,
                                       "p99": 600.0, "mean": 300.0}
    # queue waits (first attempts only): 60, 300, 600
    assert doc["queue_wait_seconds"] == {"count": 3, "p50": 300.0, "p90": 600.0,
                                         "p99": 600.0, "mean": 320.0}
    assert doc["cost"] == {"reported_attempts": 2, "total_usd": 1.5, "per_task_usd": 0.5,
                           "per_completed_task_usd": 0.75, "per_hour_usd": 0.75,
                           "input_tokens": 0, "output_tokens": 0}
    assert doc["workers"] == [
        {"worker": "w-1", "completed": 1, "failed": 1, "attempts": 2, "busy_seconds": 900.0,
         "up_seconds": 7200.0, "efficiency": 900 / 7200, "restarts": 0},
        {"worker": "w-2", "completed": 1, "failed": 1, "attempts": 2, "busy_seconds": 300.0,
         "up_seconds": 7200.0, "efficiency": 300 / 7200, "restarts": 0}]
    assert doc["throughput_per_hour"] == [2, 0] and doc["trend"] == "falling"
    assert doc["bottlenecks"] == []
    assert doc["eta_seconds"] == 1 * 300.0 / 2  # one queued task, mean run 300 s, 2 workers


def test_up_time_counts_each_life_inside_the_window() -> None:
    lives = [("w-1", 4000.0, "exited"),                                # up from 2800: 1200
             ("w-1", 5000.0, "restarted"), ("w-1", 5500.0, "restarted"),  # a replacement
             ("w-1", 6000.0, "died"), ("w-1", 6500.0, "stopped"),     # 5000-6000: 1000
             ("w-2", 9500.0, "started"),                               # to now: 500
             ("w-3", 3000.0, "restarted")]                             # up before it too
    up_now = {"w-1": False, "w-2": True, "w-3": True, "w-4": True, "w-5": False}
    assert up_time(lives, SINCE, NOW, up_now) == {
        "w-1": 2200.0, "w-2": 500.0, "w-3": 7200.0,
        "w-4": 7200.0}  # no event in the window, up now: up all of it; w-5: down all of it


def test_efficiency_is_busy_time_over_up_time(store: Store) -> None:
    """fill()'s w-1 is busy 900 s, w-2 300 s.  The log says: w-1 started at 1000 (before
    the window) and died at 8000 (up 5200 s of the window), w-2 started at 3200 and
    exited at 3800 (600 s), w-3 started at 9000 and never worked (1000 s)."""
    spec_id = store.record_applied_spec(source_path=None, source_sha256="s", git_commit=None,
                                        document_hash="h", document="{}", summary="spec")
    for worker, start in (("w-1", 1000.0), ("w-2", 3200.0), ("w-3", 9000.0)):
        store.register_worker(worker, runtime="process", pid=None, pid_create_time=None,
                              spec_id=spec_id, template_hash="t", template_digests={},
                              restarted=False, now=start)
    store.set_health("w-1", "working", "dead", "process gone", now=8000.0)
    store.set_health("w-2", "working", "slow", "no output", now=3500.0)  # not an end
    store.mark_worker_exited("w-2", 0, now=3800.0)
    lives = store.worker_lives(SINCE, NOW)
    assert lives == [("w-2", 3200.0, "started"), ("w-2", 3800.0, "exited"),
                     ("w-1", 8000.0, "died"), ("w-3", 9000.0, "started")]
    doc = report_of(store, lives=lives, up_now={"w-1": False, "w-2": False, "w-3": True})
    found = {w["worker"]: (w["up_seconds"], w["efficiency"]) for w in doc["workers"]}
    assert found == {"w-1": (5200.0, 900 / 5200), "w-2": (600.0, 300 / 600),
                     "w-3": (1000.0, 0.0)}


def test_the_scaling_arithmetic(store: Store) -> None:
    scaling = report_of(store)["scaling"]
    # 4 tasks in 2 h: λ = 2/h; a task's work is its attempts' run time, retries
    # included: 1200 s over 3 finished tasks, S = 400 s; a = 2·400/3600 = 2/9.  M/M/1:
    # P(wait) = a, so the wait is a·S/(1 − a) = (2/9)(400 s)/(7/9) = 114 s, under the
    # 300 s target: 1 worker
    assert scaling["arrivals_per_hour"] == 2.0 and scaling["load"] == pytest.approx(2 / 9)
    assert scaling["needed"] == 1 and scaling["recommended"] == 1
    assert erlang_c_wait(2.0, 400 / HOUR, 1) == pytest.approx(800 / 7 / HOUR)
    assert erlang_c_wait(2.0, 1 / 12, 1) == pytest.approx(60.0 / HOUR)
    assert scaling["arithmetic"] == \
        "λ = 2.00 tasks/h, S = 6m40s, a = λ·S = 0.22; M/M/1: expected wait 1m54s ≤ 5m00s"


@pytest.mark.parametrize(("hourly", "trend"), [
    ([0] * 23 + [5], None),                # minutes old: no trend from the empty hours
    ([0] * 20 + [2, 2, 6, 6], "rising"),   # since its first completion: 2, 2 against 6, 6
    ([4, 4, 4, 4], "flat"), ([6, 6, 1, 1], "falling"), ([0, 0, 0], None)])
def test_the_trend_counts_from_the_first_completion(hourly: list[int],
                                                    trend: str | None) -> None:
    from reconciler.report.analysis import _trend

    assert _trend(hourly) == trend


def test_erlang_c_against_the_textbook() -> None:
    # M/M/2 with a = 1: P(wait) = (a²/2!·2/(2−1)) / (1 + a + a²/2!·2/(2−1)) = 1/3; the
    # wait is P(wait)·S/(c − a) = 1/3 of a service time
    assert erlang_c_wait(1.0, 1.0, 2) == pytest.approx(1 / 3)
    assert erlang_c_wait(2.0, 1.0, 2) is None  # load at the workers: no bound
    # no factorials: a load of 500 with 600 workers is computed, not an OverflowError
    assert 0 < (erlang_c_wait(500.0, 1.0, 600) or 0) < 1e-3
    assert percentile([1, 2, 3, 4], 0.5) == 2 and percentile([], 0.5) is None


def test_the_advice_is_capped_by_memory(store: Store) -> None:
    """A 1 s target needs 3 workers (with a = 2/9 and S = 400 s, M/M/2 waits 5.0 s and
    M/M/3 0.23 s); memory for one more than the one running caps the advice at 2, and
    says so."""
    attempts, tasks, restarts = store.report_rows(SINCE)
    scaling = analyse(pool="p", since=SINCE, now=NOW, replicas=1, attempts=attempts,
                      tasks=tasks, restarts=restarts, queued=0, running=0, target_wait=1.0,
                      memory_per_worker=1e9, memory_available=1.5e9)["scaling"]
    assert (scaling["needed"], scaling["cap"], scaling["recommended"],
            scaling["capped_by"]) == (3, 2, 2, "memory")
    assert erlang_c_wait(2.0, 400 / HOUR, 2) == pytest.approx(5.0 / HOUR, abs=0.01 / HOUR)
    assert erlang_c_wait(2.0, 400 / HOUR, 3) == pytest.approx(0.228 / HOUR, abs=0.001 / HOUR)


def test_a_starved_queue_is_named_by_its_oldest_task(store: Store) -> None:
    """Task 4 has waited since 9000 and started no attempt, so no queue wait shows it;
    its age does (1000 s against run time p90 600 s is not yet 2x; 1300 s is)."""
    assert store.oldest_queued_at() == 9000.0
    calm = report_of(store, oldest_queued_at=9000.0)
    assert calm["tasks"]["oldest_queued_seconds"] == 1000.0 and calm["bottlenecks"] == []
    starved = report_of(store, oldest_queued_at=8700.0)
    assert starved["bottlenecks"] == ["a queued task has waited 21m40s vs run time p90 "
                                      "10m00s: too few workers, or claiming is paused"]


def test_no_advice_without_finished_work() -> None:
    scaling = analyse(pool="p", since=0.0, now=HOUR, replicas=2, attempts=[], tasks={},
                      restarts=[], queued=0, running=0, target_wait=300.0)["scaling"]
    assert scaling == {"recommended": None, "why": "not enough finished work in the window"}


def test_bottlenecks_are_named_with_their_evidence(tmp_path: Path) -> None:
    """w-1 fails 3 of 3 while the pool fails 3 of 9; 2 of the 5 bad outcomes are rate
    limits; queue waits of about an hour against runs of 50 s (the last claim takes the
    task a rate limit gave back: its second attempt has no queue wait, so 10 waits,
    3100 s to 4000 s, and p90 is the 9th: 3900 s)."""
    with Store(tmp_path / "store.db") as store:
        store.add_tasks([("t", "p", 0)] * 11, now=2900.0)
        plan = [("w-1", "failed")] * 3 + [("w-2", "succeeded")] * 6 + \
            [("w-2", "rate_limited")] * 2
        for i, (worker, outcome) in enumerate(plan):
            claim = store.claim_task(worker, 3600, now=6000.0 + i * 100)
            assert claim is not None
            store.finish_attempt(claim, outcome, policy=RetryPolicy(max_attempts=1),
                                 now=6050.0 + i * 100, resume_at=6000.0)
        attempts, tasks, restarts = store.report_rows(SINCE)
    doc = analyse(pool="p", since=SINCE, now=NOW, replicas=2, attempts=attempts,
                  tasks=tasks, restarts=restarts, queued=0, running=0, target_wait=300.0)
    # 11 tasks added at once: λ = 5.5/h at S = 50 s is a load of 0.08, which one worker
    # carries; the wait is the burst's, and the advice (fewer workers) agrees
    assert doc["scaling"]["needed"] == 1
    assert doc["bottlenecks"] == [
        "queue wait p90 1h05m vs run time p90 50s: tasks came in bursts (1 worker(s) keep "
        "the average wait under the target): a burst waits for the pool",
        "w-1 fails 100% vs pool 33%: look at its log",
        "40% of failures are rate limits"]
    fewer = analyse(pool="p", since=SINCE, now=NOW, replicas=0, attempts=attempts,
                    tasks=tasks, restarts=restarts, queued=0, running=0, target_wait=300.0)
    assert fewer["bottlenecks"][0] == \
        "queue wait p90 1h05m vs run time p90 50s: too few workers"


def test_the_command_prints_text_markdown_and_json(tmp_path: Path) -> None:
    with Store(pool_paths(tmp_path / "state", "p").create().store) as store:
        fill(store, shift=time.time() - NOW)  # the same store, ending now
    state = str(tmp_path / "state")
    text = reconcile("--state-dir", state, "report", "--pool", "p", "--since", "2h",
                     check=True).stdout
    assert re.search(r"success rate +67%", text), text
    assert re.search(r"run time +4 +3m20s +10m00s +10m00s +5m00s", text), text
    assert re.search(r"w-1 +1 +1 +12%", text), text
    assert "tasks completed per hour: 2 0 (falling)" in text, text
    week = reconcile("--state-dir", state, "report", "--pool", "p", "--since", "168h",
                     check=True).stdout  # 168 hours on one line were noise: 7 days
    assert "tasks completed per day: 0 0 0 0 0 0 2 (falling) (-o json has each hour)" \
        in week, week
    markdown = reconcile("--state-dir", state, "report", "--pool", "p", "--since", "2h",
                         "-o", "markdown", check=True).stdout
    assert markdown.startswith("# pool p: the last 2h") and "| success rate | 67% |" in markdown
    document = json.loads(reconcile("--state-dir", state, "report", "--pool", "p",
                                    "--since", "2h", "-o", "json", check=True).stdout)
    assert document["tasks"]["completed"] == 2 and document["cost"]["total_usd"] == 1.5
    bad = reconcile("--state-dir", state, "report", "--pool", "p", "--since", "soon")
    assert bad.returncode == 1 and "--since" in bad.stderr


def test_export_writes_csv_and_json_lines_safe_for_spreadsheets(tmp_path: Path) -> None:
    with Store(pool_paths(tmp_path / "state", "p").create().store) as store:
        fill(store, shift=time.time() - NOW)
        store.add_tasks([("=HYPERLINK(\"http://x\")", "secret prompt", 0)])
    state = str(tmp_path / "state")

    def export(*args: str) -> str:
        return reconcile("--state-dir", state, "export", "--pool", "p", *args,
                         check=True).stdout

    tasks = list(csv.DictReader(io.StringIO(export("--what", "tasks"))))
    assert [t["status"] for t in tasks] == ["succeeded", "succeeded", "failed", "queued",
                                            "queued"]
    assert tasks[-1]["title"] == "'=HYPERLINK(\"http://x\")"  # text, not a formula
    assert "secret prompt" not in export("--what", "tasks")  # prompts are never exported
    attempts = [json.loads(line) for line in
                export("--what", "attempts", "--format", "jsonl").splitlines()]
    assert [(a["worker_id"], a["status"], a["run_seconds"], a["cost_usd"]) for a in attempts] \
        == [("w-1", "succeeded", 300.0, 1.0), ("w-2", "failed", 100.0, None),
            ("w-2", "succeeded", 200.0, 0.5), ("w-1", "timeout", 600.0, None)]
    recent = export("--what", "attempts", "--since", "1h")  # started in the last hour
    assert len(list(csv.DictReader(io.StringIO(recent)))) == 1
    events = export("--what", "events", "--since", "1s")
    assert events.splitlines()[0] == "id,at,kind,severity,worker_id,task_id,message"
    # CSV times are ISO 8601 with the local offset (JSON lines keep Unix seconds)
    from datetime import datetime

    first = tasks[0]
    created = datetime.fromisoformat(first["created_at"])
    assert created.utcoffset() is not None and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", first["created_at"])
    raw = json.loads(export("--what", "tasks", "--format", "jsonl").splitlines()[0])
    assert abs(created.timestamp() - raw["created_at"]) < 0.001
    assert attempts[0]["ended_at"] - attempts[0]["started_at"] == 300.0


def test_each_export_names_the_columns_its_query_gives(tmp_path: Path) -> None:
    with Store(tmp_path / "store.db") as store:
        for what, sql in EXPORTS.items():
            cursor = store._db.execute(sql, (0.0,))
            assert tuple(d[0] for d in cursor.description) == EXPORT_COLUMNS[what]
