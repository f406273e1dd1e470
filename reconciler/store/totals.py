"""Totals over the pool's whole history, for its Prometheus metrics.

Prometheus wants counters that only grow and histograms of everything observed, so
these read every ended attempt, not a window: one aggregate pass over the attempts
table's covering index ``attempts_ended`` per figure (no wide row is read, a few
rows come back to Python).  A scrape every 15 seconds pays that; nothing else does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.store.base import Database

ATTEMPTS_BY_OUTCOME_SQL = ("SELECT status, COUNT(*) AS n FROM attempts"
                           " WHERE status != 'running' GROUP BY status")
USAGE_SQL = ("SELECT TOTAL(cost_usd) AS cost, TOTAL(input_tokens) AS input,"
             " TOTAL(output_tokens) AS output FROM attempts WHERE ended_at IS NOT NULL")
RESTARTS_SQL = "SELECT worker_id, COUNT(*) AS n FROM restarts GROUP BY worker_id"
RUN_TIME = "MAX(0, ended_at - started_at)"
RUN_TIME_FROM = "attempts WHERE ended_at IS NOT NULL"
# a task's first attempt: the queue wait of a retry is its backoff, not the queue's
QUEUE_WAIT = "MAX(0, a.started_at - t.created_at)"
QUEUE_WAIT_FROM = "attempts a JOIN tasks t ON t.id = a.task_id WHERE a.number = 1"


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts per upper bound (Prometheus's ``le``), the count and the sum."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    total: float


@dataclass(frozen=True)
class Totals:
    attempts_by_outcome: Mapping[str, int] = field(default_factory=dict)
    restarts_by_worker: Mapping[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0


class TotalReads(Database):
    """The store's side of the metrics: aggregates only."""

    def totals(self) -> Totals:
        outcomes = {str(r["status"]): int(r["n"]) for r in self._query(ATTEMPTS_BY_OUTCOME_SQL)}
        restarts = {str(r["worker_id"]): int(r["n"]) for r in self._query(RESTARTS_SQL)}
        usage = self._query(USAGE_SQL)[0]
        return Totals(outcomes, restarts, float(usage["cost"]), int(usage["input"]),
                      int(usage["output"]))

    def run_time_histogram(self, bounds: Sequence[float]) -> Histogram:
        """The run time of every ended attempt."""
        return self._histogram(RUN_TIME, RUN_TIME_FROM, bounds)

    def queue_wait_histogram(self, bounds: Sequence[float]) -> Histogram:
        """How long each task waited for its first attempt."""
        return self._histogram(QUEUE_WAIT, QUEUE_WAIT_FROM, bounds)

    def _histogram(self, value: str, source: str, bounds: Sequence[float]) -> Histogram:
        # each row falls in one bucket (one CASE per row, not one sum per bucket); the
        # bounds are the caller's numbers, formatted here: no outside text in the SQL
        cases = " ".join(f"WHEN v <= {float(b)!r} THEN {i}" for i, b in enumerate(bounds))
        bucket = f"CASE {cases} ELSE {len(bounds)} END" if cases else "0"
        rows = self._query(f"SELECT {bucket} AS b, COUNT(*) AS n, TOTAL(v) AS total"  # noqa: S608
                           f" FROM (SELECT {value} AS v FROM {source}) GROUP BY b")
        per_bucket = [0] * (len(bounds) + 1)
        for row in rows:
            per_bucket[int(row["b"])] = int(row["n"])
        cumulative, running = [], 0
        for n in per_bucket[:len(bounds)]:
            running += n
            cumulative.append(running)
        return Histogram(tuple(bounds), tuple(cumulative), sum(per_bucket),
                         float(sum(float(r["total"]) for r in rows)))
