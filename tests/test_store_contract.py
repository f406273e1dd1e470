"""The store contract (``reconciler.store.port``), checked against every implementation.

Tests here use only ``StorePort`` methods, through ``store_factory``: a second
implementation (a shared PostgreSQL queue, say) adds one ``pytest.param`` and
must pass all of them.  The pure retry decision is unit-tested at the end.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.errors import TaskError
from reconciler.model import FINAL_TASK_STATUSES, Claim, RetryPolicy
from reconciler.retry import Outcome, decide_outcome, requeue_policy
from reconciler.store.port import StorePort
from reconciler.store.sqlite import Store

LEASE = 60.0

OpenStore = Callable[[], StorePort]


def sqlite_factory(tmp_path: Path) -> OpenStore:
    """Each call opens a new connection to one SQLite store file."""
    path = tmp_path / "store.db"

    def open_store() -> StorePort:
        store: StorePort = Store(path)  # mypy: Store satisfies the port
        return store

    return open_store


@pytest.fixture(params=[pytest.param(sqlite_factory, id="sqlite")])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens connections to one fresh store; closes them all after the test."""
    make: Callable[[Path], OpenStore] = request.param
    opened: list[StorePort] = []
    lock = threading.Lock()
    open_store = make(tmp_path)

    def tracked() -> StorePort:
        store = open_store()
        with lock:
            opened.append(store)
        return store

    yield tracked
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: OpenStore) -> StorePort:
    return store_factory()


def claim(store: StorePort, worker: str = "w-1", now: float | None = None) -> Claim:
    c = store.claim_task(worker, LEASE, now=now)
    assert c is not None, "expected a runnable task"
    return c


def register(store: StorePort, worker: str) -> None:
    spec_id = store.record_applied_spec(source_path=None, source_sha256="s", git_commit=None,
                                        document_hash="h", document="{}", summary="spec")
    store.register_worker(worker, runtime="process", pid=None, pid_create_time=None,
                          spec_id=spec_id, template_hash="t", template_digests={},
                          restarted=False)


# --------------------------------------------------------------------------- claim order


def test_claim_order_is_priority_then_oldest(store: StorePort) -> None:
    store.add_tasks([("low", "p", 0)], now=1.0)
    store.add_tasks([("high-old", "p", 5)], now=2.0)
    store.add_tasks([("mid", "p", 1)], now=3.0)
    store.add_tasks([("high-new", "p", 5)], now=4.0)

    order = [claim(store, now=10.0).task.title for _ in range(4)]

    assert order == ["high-old", "high-new", "mid", "low"]
    assert store.claim_task("w-1", LEASE, now=10.0) is None  # running tasks are not claimable
    assert store.queue_counts().running == 4
    assert len(store.running_attempts()) == 4


def test_claim_respects_not_before(store: StorePort) -> None:
    urgent, other = store.add_tasks([("urgent", "p", 9), ("other", "p", 0)], now=1.0)
    first = claim(store, now=10.0)
    assert first.task.id == urgent
    assert store.finish_attempt(first, "failed", error="flaky", policy=RetryPolicy(max_attempts=2,
                                backoff=100.0), now=10.0) == "queued"
    not_before = store.task(urgent).not_before
    assert not_before > 10.0

    # the retry waits: the lower-priority task goes first, then nothing is runnable
    assert claim(store, now=11.0).task.id == other
    assert store.claim_task("w-1", LEASE, now=not_before - 0.01) is None
    retry = claim(store, now=not_before)
    assert (retry.task.id, retry.attempt_number) == (urgent, 2)


def test_rate_limited_attempt_is_free_and_pauses_claiming(store: StorePort) -> None:
    store.add_tasks([("a", "p", 5), ("b", "p", 0)], now=0.0)
    first = claim(store, "w-1", now=1.0)
    assert store.finish_attempt(first, "rate_limited", exit_code=75, error="limit",
                                policy=RetryPolicy(1), resume_at=100.0, now=2.0) == "queued"
    task = store.task(first.task.id)
    assert (task.status, task.attempts, task.not_before) == ("queued", 0, 100.0)
    assert store.paused_until() == 100.0
    assert store.claim_task("w-2", 30, now=50.0) is None  # even task b waits
    resumed = store.claim_task("w-2", 30, now=100.5)
    assert resumed is not None and resumed.task.id == first.task.id
    assert resumed.attempt_number == 2


# --------------------------------------------------------------------------- concurrency


def test_concurrent_claimers_never_share_a_task(store: StorePort,
                                                store_factory: OpenStore) -> None:
    ids = store.add_tasks([(f"task {i}", "p", i % 3) for i in range(120)])
    start = threading.Barrier(4)
    claimed: dict[str, list[int]] = {}
    errors: list[BaseException] = []

    def drain(worker: str) -> None:
        own = store_factory()  # a connection of its own, as each worker has
        mine: list[int] = []
        try:
            start.wait(timeout=30)
            while (c := own.claim_task(worker, LEASE)) is not None:
                mine.append(c.task.id)
                assert own.finish_attempt(c, "succeeded", exit_code=0) == "succeeded"
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        claimed[worker] = mine

    threads = [threading.Thread(target=drain, args=(f"w-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    everything = [task_id for mine in claimed.values() for task_id in mine]
    assert sorted(everything) == sorted(ids), "a task was claimed twice or never"
    assert Counter(a.task_id for a in store.attempts()) == Counter(ids)
    assert store.queue_counts().succeeded == len(ids)


# --------------------------------------------------------------------------- fencing


def _stale_and_live(store: StorePort) -> tuple[Claim, Claim]:
    """A claim whose attempt was requeued, and the claim that replaced it."""
    store.add_tasks([("t", "p", 0)], now=0.0)
    stale = claim(store, "w-1", now=1.0)
    assert store.requeue_attempts_of("w-1", "worker w-1 died", consume=False,
                                     now=2.0) == [stale.task.id]
    live = claim(store, "w-2", now=3.0)
    assert live.task.id == stale.task.id and live.attempt_number == 2
    return stale, live


def test_requeue_ends_only_the_attempts_it_names(store: StorePort) -> None:
    """An attempt claimed after the pass looked (not among those seen gone) stays."""
    store.add_tasks([("t", "p", 0)], now=0.0)
    held = claim(store, "w-1", now=1.0)
    assert store.requeue_attempts_of("w-1", "gone", consume=False, now=2.0,
                                     only=[held.attempt_id + 1]) == []
    assert [a.status for a in store.attempts(held.task.id)] == ["running"]


def test_a_signalled_attempt_no_longer_takes_its_workers_result(store: StorePort) -> None:
    """From the first SIGTERM to its processes on, an attempt is being taken away."""
    store.add_tasks([("t", "p", 0)], now=0.0)
    held = claim(store, "w-1", now=1.0)
    store.mark_attempts_signalled([held.attempt_id], now=2.0)
    (running,) = store.running_attempts()
    assert running.stop_signalled_at == 2.0
    assert store.finish_attempt(held, "succeeded", exit_code=0, now=3.0) is None


STALE_WRITES: dict[str, Callable[[StorePort, Claim], object]] = {
    "finish": lambda s, c: s.finish_attempt(c, "succeeded", exit_code=0, now=4.0),
    "update": lambda s, c: s.update_attempt(c, branch="late", worktree="/w", log_path="/l"),
    "set-pid": lambda s, c: s.set_attempt_pid(c, 4242, 1.5),
    "heartbeat": lambda s, c: s.heartbeat("w-1", c, LEASE, now=4.0, last_output_at=4.0)[1],
}
REJECTED: dict[str, object] = {"finish": None, "update": False, "set-pid": False,
                               "heartbeat": True}  # heartbeat: "abandon it"


@pytest.mark.parametrize("write", sorted(STALE_WRITES), ids=sorted(STALE_WRITES))
def test_a_stale_lease_token_changes_nothing(store: StorePort, write: str) -> None:
    stale, live = _stale_and_live(store)
    before = (store.task(live.task.id), store.attempts(live.task.id))

    assert STALE_WRITES[write](store, stale) == REJECTED[write]

    assert (store.task(live.task.id), store.attempts(live.task.id)) == before


def test_a_forged_token_is_rejected_and_the_holder_still_writes(store: StorePort) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    real = claim(store)
    forged = dataclasses.replace(real, lease_token="0" * 32)

    assert store.finish_attempt(forged, "succeeded", exit_code=0) is None
    assert store.update_attempt(forged, branch="b", worktree="/w", log_path="/l") is False
    (attempt,) = store.attempts(task_id)
    assert (attempt.status, attempt.exit_code, attempt.branch) == ("running", None, None)

    assert store.update_attempt(real, branch="b", worktree="/w", log_path="/l") is True
    assert store.set_attempt_pid(real, 4242, 1.5) is True
    assert store.finish_attempt(real, "succeeded", exit_code=0) == "succeeded"
    assert store.task(task_id).branch == "b"
    assert store.attempts(task_id)[0].pid == 4242


def test_a_lost_lease_result_is_rejected(store: StorePort) -> None:
    stale, live = _stale_and_live(store)

    assert store.finish_attempt(stale, "failed", error="late", now=4.0) is None
    assert store.task(live.task.id).status == "running"
    assert store.finish_attempt(live, "succeeded", exit_code=0, now=5.0) == "succeeded"
    assert store.finish_attempt(stale, "succeeded", exit_code=0, now=6.0) is None
    assert [a.status for a in store.attempts(live.task.id)] == ["lost", "succeeded"]
    task = store.task(live.task.id)
    assert (task.status, task.last_error) == ("succeeded", None)


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_reports_drain_and_extends_lease(store: StorePort) -> None:
    register(store, "w-1")
    (task_id,) = store.add_tasks([("t", "p", 0)])
    c = claim(store, "w-1", now=100.0)
    assert store.attempts(task_id)[0].lease_expires_at == 100.0 + LEASE

    assert store.heartbeat("w-1", c, 30.0, now=150.0) == (False, False)
    assert store.attempts(task_id)[0].lease_expires_at == 180.0
    assert store.workers()[0].heartbeat_at == 150.0

    store.request_drain("w-1", "spec changed")
    assert store.heartbeat("w-1", c, 30.0, now=160.0) == (True, False)
    assert store.heartbeat("w-1", None, 30.0, now=170.0) == (True, False)
    assert store.attempts(task_id)[0].lease_expires_at == 190.0


def test_a_heartbeat_racing_its_own_finish_asks_for_nothing(store: StorePort) -> None:
    """The holder's heartbeat thread may beat once more with the claim it just finished;
    that must not cancel the next task the worker claims."""
    store.add_tasks([("t", "p", 0)])
    c = claim(store, now=1.0)
    assert store.finish_attempt(c, "succeeded", exit_code=0, now=2.0) == "succeeded"
    assert store.heartbeat("w-1", c, LEASE, now=3.0) == (False, False)
    assert store.attempts(c.task.id)[0].lease_expires_at == 1.0 + LEASE


# --------------------------------------------------------------------------- requeue


@pytest.mark.parametrize(("consume", "max_attempts", "expected", "budget_used"), [
    pytest.param(True, 1, "failed", 1, id="crash-uses-the-last-attempt"),
    pytest.param(True, 2, "queued", 1, id="crash-with-attempts-left"),
    pytest.param(False, 1, "queued", 0, id="operator-stop-is-free"),
])
def test_lost_attempts_and_the_attempt_budget(store: StorePort, consume: bool,
                                              max_attempts: int, expected: str,
                                              budget_used: int) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    claim(store, "w-1")
    assert store.requeue_attempts_of("w-1", "worker w-1 died", consume=consume,
                                     policy=RetryPolicy(max_attempts=max_attempts)) == [task_id]
    task = store.task(task_id)
    assert (task.status, task.attempts, task.last_error) == (expected, budget_used,
                                                             "worker w-1 died")
    assert [a.status for a in store.attempts(task_id)] == ["lost"]
    assert store.running_attempts("w-1") == []
    if expected == "queued":  # the next attempt still gets a number of its own
        assert claim(store, "w-2").attempt_number == 2


def test_operator_stop_requeues_whatever_retry_on_says(store: StorePort) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    claim(store, "w-1")
    store.requeue_attempts_of("w-1", "rolled", consume=False,
                              policy=RetryPolicy(max_attempts=1, retry_on=frozenset()))
    assert store.task(task_id).status == "queued"


# --------------------------------------------------------------------------- retries


def test_retries_back_off_then_fail_with_last_error(store: StorePort) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)], now=0.0)
    backoff = 10.0
    now = 1000.0
    for number in (1, 2):
        c = claim(store, now=now)
        assert c.attempt_number == number
        status = store.finish_attempt(c, "failed", exit_code=1, error=f"boom {number}",
                                      policy=RetryPolicy(max_attempts=3, backoff=backoff), now=now)
        assert status == "queued"
        task = store.task(task_id)
        delay = backoff * 2 ** (number - 1)
        assert now + 0.8 * delay <= task.not_before <= now + 1.2 * delay
        assert task.last_error == f"boom {number}"
        now = task.not_before

    last = claim(store, now=now)
    policy = RetryPolicy(max_attempts=3, backoff=backoff)
    assert store.finish_attempt(last, "timeout", error="timed out after 5s", policy=policy,
                                now=now) == "failed"
    task = store.task(task_id)
    assert (task.status, task.attempts, task.last_error) == ("failed", 3, "timed out after 5s")
    assert [a.status for a in store.attempts(task_id)] == ["failed", "failed", "timeout"]
    assert store.claim_task("w-1", LEASE, now=now + 10_000) is None


def test_backoff_jitter_stays_within_bounds(store: StorePort) -> None:
    ids = store.add_tasks([(f"t{i}", "p", 0) for i in range(40)], now=0.0)
    for _ in ids:
        store.finish_attempt(claim(store, now=1.0), "failed", error="x",
                             policy=RetryPolicy(max_attempts=5, backoff=4.0), now=1.0)
    delays = [store.task(i).not_before - 1.0 for i in ids]
    assert all(3.2 <= d <= 4.8 for d in delays), delays
    assert len(set(delays)) > 1, "no jitter"


@pytest.mark.parametrize(("status", "exit_code", "policy", "expected"), [
    pytest.param("timeout", None, RetryPolicy(3, 0.0, frozenset({"failed"})), "failed",
                 id="timeout-not-in-retryOn"),
    pytest.param("failed", 2, RetryPolicy(3, 0.0, no_retry_exit_codes=frozenset({2})),
                 "failed", id="non-retryable-exit-code"),
    pytest.param("failed", 1, RetryPolicy(3, 0.0, no_retry_exit_codes=frozenset({2})),
                 "queued", id="retryable-exit-code"),
    pytest.param("failed", 1, RetryPolicy(1, 0.0), "failed", id="max-attempts-used"),
])
def test_retry_policy_decides_what_is_retried(store: StorePort, status: str,
                                              exit_code: int | None, policy: RetryPolicy,
                                              expected: str) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    assert store.finish_attempt(claim(store, "w-1"), status, exit_code=exit_code,
                                error="boom", policy=policy) == expected
    assert store.task(task_id).last_error == "boom"


# --------------------------------------------------------------------------- cancel


def test_cancel_queued_task_at_once(store: StorePort) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    assert store.cancel_task(task_id) == "cancelled"
    assert store.task(task_id).status == "cancelled"
    assert store.claim_task("w-1", LEASE) is None


def test_cancel_running_task_is_requested_through_heartbeat(store: StorePort) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    c = claim(store)
    assert store.heartbeat("w-1", c, LEASE) == (False, False)

    assert store.cancel_task(task_id) == "running"
    task = store.task(task_id)
    assert (task.status, task.cancel_requested) == ("running", True)
    assert store.heartbeat("w-1", c, LEASE) == (False, True)

    assert store.finish_attempt(c, "cancelled", error="cancelled by operator") == "cancelled"
    assert store.task(task_id).status == "cancelled"


def test_cancel_wins_over_a_retry(store: StorePort) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    c = claim(store)
    store.cancel_task(task_id)
    assert store.finish_attempt(c, "failed", exit_code=1, error="killed",
                                policy=RetryPolicy(max_attempts=5)) == "cancelled"


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_cancel_finished_task_is_an_error(store: StorePort, final: str) -> None:
    (task_id,) = store.add_tasks([("t", "p", 0)])
    store.finish_attempt(claim(store), final, error=None if final == "succeeded" else "x")
    assert store.task(task_id).status == final
    with pytest.raises(TaskError, match=f"already {final}"):
        store.cancel_task(task_id)
    assert store.task(task_id).status == final


def test_cancel_unknown_task_is_an_error(store: StorePort) -> None:
    with pytest.raises(TaskError, match="no task with id 42"):
        store.cancel_task(42)


# --------------------------------------------------------------------------- no task is lost


def test_every_task_ends_in_a_final_status_with_a_reason(store: StorePort) -> None:
    policy = RetryPolicy(max_attempts=2, retry_on=frozenset({"failed", "timeout", "lost"}),
                         no_retry_exit_codes=frozenset({3}))
    store.add_tasks([(name, "p", 10 - n) for n, name in enumerate(
        ["ok", "flaky", "poison", "crash", "queued-cancel", "running-cancel"])], now=0.0)
    outcomes = {"ok": ("succeeded", 0), "flaky": ("failed", 1), "poison": ("failed", 3),
                "running-cancel": ("cancelled", None)}
    store.cancel_task(store.tasks()[4].id)
    for _ in range(20):  # the worker loop, until nothing is runnable
        c = store.claim_task("w-1", LEASE, now=1e9)
        if c is None:
            break
        if c.task.title == "crash":
            store.requeue_attempts_of("w-1", "worker w-1 died", consume=True, policy=policy,
                                      now=1e9)
            continue
        if c.task.title == "running-cancel":
            store.cancel_task(c.task.id)
        status, code = outcomes[c.task.title]
        store.finish_attempt(c, status, exit_code=code, error=f"{c.task.title} ended",
                             policy=policy, now=1e9)

    final = {t.title: t for t in store.tasks()}
    assert {title: t.status for title, t in final.items()} == {
        "ok": "succeeded", "flaky": "failed", "poison": "failed", "crash": "failed",
        "queued-cancel": "cancelled", "running-cancel": "cancelled"}
    assert all(t.status in FINAL_TASK_STATUSES for t in final.values())
    assert all(t.last_error for t in final.values() if t.status != "succeeded")
    assert final["ok"].last_error is None
    assert (final["flaky"].attempts, final["poison"].attempts) == (2, 1)
    assert store.running_attempts() == []


# --------------------------------------------------------------------------- retry (pure)

POLICY = RetryPolicy(max_attempts=3, backoff=10.0, retry_on=frozenset({"failed", "lost"}),
                     no_retry_exit_codes=frozenset({2}))


@pytest.mark.parametrize(("status", "exit_code", "used", "cancel", "expected"), [
    pytest.param("succeeded", 0, 1, False, Outcome("succeeded"), id="success"),
    pytest.param("succeeded", 0, 1, True, Outcome("succeeded"), id="success-beats-cancel"),
    pytest.param("cancelled", None, 1, False, Outcome("cancelled"), id="cancelled"),
    pytest.param("failed", 1, 1, True, Outcome("cancelled"), id="cancel-beats-retry"),
    pytest.param("failed", 1, 1, False, Outcome("queued", 1010.0), id="first-retry"),
    pytest.param("failed", 1, 2, False, Outcome("queued", 1020.0), id="backoff-doubles"),
    pytest.param("failed", 1, 3, False, Outcome("failed"), id="attempts-exhausted"),
    pytest.param("failed", 2, 1, False, Outcome("failed"), id="no-retry-exit-code"),
    pytest.param("timeout", None, 1, False, Outcome("failed"), id="not-in-retry-on"),
    pytest.param("lost", None, 1, False, Outcome("queued", 1010.0), id="lost-retried"),
])
def test_decide_outcome(status: str, exit_code: int | None, used: int, cancel: bool,
                        expected: Outcome) -> None:
    assert decide_outcome(POLICY, status, exit_code, used, cancel, 1000.0, 1.0) == expected


def test_decide_outcome_scales_the_backoff_by_the_given_jitter() -> None:
    low = decide_outcome(POLICY, "failed", 1, 2, False, 0.0, 0.8)
    high = decide_outcome(POLICY, "failed", 1, 2, False, 0.0, 1.2)
    assert (low.not_before, high.not_before) == pytest.approx((16.0, 24.0))


@pytest.mark.parametrize(("consume", "expected"), [
    pytest.param(True, POLICY, id="crash-keeps-the-policy"),
    pytest.param(False, RetryPolicy(max_attempts=3), id="stop-retries-any-loss-at-once"),
])
def test_requeue_policy(consume: bool, expected: RetryPolicy) -> None:
    assert requeue_policy(POLICY, consume) == expected
