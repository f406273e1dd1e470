"""The pool's Prometheus metrics, read from its store at each scrape.

The store already counts everything that matters, and keeps it across restarts of
the controller, so the metrics are a custom ``prometheus_client`` collector over it
(as an exporter is) rather than counters kept in memory: a restarted controller's
counters do not fall to zero, and ``reconcile metrics`` prints the same figures
without a server.  Only the controller's own pass duration lives in its memory: it
is served by the controller and absent from ``reconcile metrics``.

Names and types follow Prometheus's conventions: a ``reconciler_`` prefix, base
units in the name (``_seconds``, ``_usd``), ``_total`` on counters, histograms for
durations.  Worker health is the state the controller's state machine recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Histogram as LiveHistogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from reconciler.health import STATES
from reconciler.model import QueueCounts
from reconciler.store.totals import Histogram, Totals

if TYPE_CHECKING:
    from reconciler.pool import Pool
    from reconciler.store.sqlite import Store

# agents run for minutes: buckets from a second to two hours
RUN_TIME_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
                    7200.0)
QUEUE_WAIT_BUCKETS = RUN_TIME_BUCKETS
OUTCOMES = ("succeeded", "failed", "timeout", "lost", "rate_limited", "cancelled")
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class PoolFacts:
    """Everything one scrape reports, read at one moment."""

    pool: str
    generation: int | None
    replicas: int
    queue: QueueCounts
    oldest_queued_age: float | None
    totals: Totals
    run_time: Histogram
    queue_wait: Histogram
    health: Mapping[str, int]  # workers per recorded health state
    spend_today: float
    budget_per_day: float | None
    claiming_paused: bool
    controller_up: bool
    disk_free: Mapping[str, float]  # "worktrees"/"state": the free share of its filesystem
    pueue_up: bool | None = None  # runtime: pueue -- whether the daemon answered last pass


def gather(pool: Pool, store: Store, now: float | None = None) -> PoolFacts:
    """Read the facts of ``pool`` (read-only: a scrape never writes)."""
    from reconciler.diskwatch import disk_free
    from reconciler.durations import day_start
    from reconciler.liveness import controller_alive

    now = time.time() if now is None else now
    spec = pool.spec
    health = dict.fromkeys(STATES, 0)
    for worker in store.workers():
        health[worker.health] = health.get(worker.health, 0) + 1
    oldest = store.oldest_queued_at()
    latest = store.latest_spec()
    return PoolFacts(
        pool=pool.name, generation=latest[0] if latest else None,
        replicas=spec.replicas if spec else 0, queue=store.queue_counts(),
        oldest_queued_age=None if oldest is None else max(0.0, now - oldest),
        totals=store.totals(), run_time=store.run_time_histogram(RUN_TIME_BUCKETS),
        queue_wait=store.queue_wait_histogram(QUEUE_WAIT_BUCKETS), health=health,
        spend_today=store.spend_since(day_start(now)),
        budget_per_day=spec.budget_per_day_usd if spec else None,
        claiming_paused=store.paused_until() > now,
        controller_up=controller_alive(pool.paths.controller_lock, store.controller(), now),
        disk_free=disk_free(pool), pueue_up=_pueue_up(pool, store))


def _pueue_up(pool: Pool, store: Store) -> bool | None:
    """What the controller last saw of the pueue daemon (None: not a pueue pool, or
    never seen): a scrape runs no pueue command."""
    from reconciler.pool import PUEUE_DOWN_KEY

    if pool.spec is None or pool.spec.runtime != "pueue":
        return None
    down_since = store.meta_value(PUEUE_DOWN_KEY)
    return None if down_since is None else down_since == ""


class PoolCollector(Collector):
    """A collector that reads ``facts()`` at each scrape."""

    def __init__(self, facts: Callable[[], PoolFacts]) -> None:
        self._facts = facts

    def collect(self) -> Iterable[Metric]:
        return families(self._facts())


def families(f: PoolFacts) -> list[Metric]:
    """The metric families of one scrape."""
    info = InfoMetricFamily("reconciler_pool", "The pool this endpoint reports on.")
    info.add_metric([], {"pool": f.pool, "generation": str(f.generation or 0)})
    tasks = GaugeMetricFamily("reconciler_tasks", "Tasks by status; queued and running "
                              "are the queue's depth.", labels=["status"])
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        tasks.add_metric([status], getattr(f.queue, status))
    attempts = CounterMetricFamily("reconciler_attempts", "Attempts ended, by outcome.",
                                   labels=["outcome"])
    for outcome in (*OUTCOMES, *sorted(set(f.totals.attempts_by_outcome) - set(OUTCOMES))):
        attempts.add_metric([outcome], f.totals.attempts_by_outcome.get(outcome, 0))
    workers = GaugeMetricFamily("reconciler_workers", "Workers by the health state the "
                                "controller recorded.", labels=["health"])
    for state, n in f.health.items():
        workers.add_metric([state], n)
    restarts = CounterMetricFamily("reconciler_worker_restarts",
                                   "Restarts of each worker by the controller.",
                                   labels=["worker"])
    for worker, n in sorted(f.totals.restarts_by_worker.items()):
        restarts.add_metric([worker], n)
    tokens = CounterMetricFamily("reconciler_tokens", "Tokens the agents reported using.",
                                 labels=["direction"])
    tokens.add_metric(["input"], f.totals.input_tokens)
    tokens.add_metric(["output"], f.totals.output_tokens)
    found: list[Metric] = [
        info, tasks, attempts,
        _histogram("reconciler_attempt_run_time_seconds",
                   "How long each ended attempt ran.", f.run_time),
        _histogram("reconciler_task_queue_wait_seconds",
                   "How long each task waited for its first attempt.", f.queue_wait),
        workers,
        GaugeMetricFamily("reconciler_workers_wanted", "Workers the spec asks for.",
                          value=f.replicas),
        restarts,
        CounterMetricFamily("reconciler_cost_usd", "What the agents reported their "
                            "attempts cost, in US dollars.", value=f.totals.cost_usd),
        tokens,
        GaugeMetricFamily("reconciler_spend_today_usd", "What the attempts that ended "
                          "today (local time) reported they cost.", value=f.spend_today),
        GaugeMetricFamily("reconciler_claiming_paused", "1 while no task is claimed (rate "
                          "limited, over budget).", value=int(f.claiming_paused)),
        GaugeMetricFamily("reconciler_controller_up", "1 while the pool's controller runs "
                          "and heartbeats.", value=int(f.controller_up)),
    ]
    if f.oldest_queued_age is not None:
        found.append(GaugeMetricFamily("reconciler_oldest_queued_task_age_seconds",
                                       "How long the oldest queued task has waited.",
                                       value=f.oldest_queued_age))
    if f.budget_per_day is not None:
        found.append(GaugeMetricFamily("reconciler_budget_per_day_usd",
                                       "budget.perDayUsd of the spec.", value=f.budget_per_day))
    if f.pueue_up is not None:
        found.append(GaugeMetricFamily("reconciler_pueue_up", "runtime: pueue -- 1 while "
                                       "the pueue daemon answered the controller's last "
                                       "look, 0 while it is down.", value=int(f.pueue_up)))
    if f.disk_free:
        disk = GaugeMetricFamily("reconciler_disk_free_ratio", "The free share of the "
                                 "filesystem holding the worktrees or the state.",
                                 labels=["place"])
        for place, share in sorted(f.disk_free.items()):
            disk.add_metric([place], share)
        found.append(disk)
    return found


def _histogram(name: str, documentation: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [(_bound(b), float(n)) for b, n in zip(h.bounds, h.cumulative, strict=True)]
    buckets.append(("+Inf", float(h.count)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=h.total)


def _bound(value: float) -> str:
    return repr(float(value))


def pass_histogram(registry: CollectorRegistry) -> LiveHistogram:
    """The controller's pass duration, kept in its memory (``observe(seconds)``)."""
    return LiveHistogram("reconciler_controller_pass_duration_seconds",
                         "How long each of the controller's passes took.",
                         buckets=PASS_BUCKETS, registry=registry)


def registry_for(current: Callable[[], Pool], open_store: Callable[[], Store],
                 registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """``registry`` (else a new one) with a collector of ``current()``'s facts that opens
    the store for each scrape (a scrape runs on a server thread: SQLite connections
    stay on the thread that made them)."""
    registry = registry if registry is not None else CollectorRegistry(auto_describe=False)

    def facts() -> PoolFacts:
        with open_store() as store:
            return gather(current(), store)

    registry.register(PoolCollector(facts))
    return registry


def write_exposition(facts: PoolFacts, *, openmetrics: bool = False) -> bytes:
    """The text exposition of ``facts`` (``reconcile metrics``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(lambda: facts))
    if openmetrics:
        from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_text

        text: bytes = openmetrics_text(registry)  # type: ignore[no-untyped-call]
        return text
    from prometheus_client import generate_latest

    return generate_latest(registry)
