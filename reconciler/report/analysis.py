"""``reconcile report``: how productive the pool was over a window, and what would help.

Pure: the store's rows in, a plain document out (``-o json`` prints it; the text and
markdown forms are drawn from it).  Definitions, so the figures can be checked:

- an attempt belongs to the window when it *ended* in it; a task is *completed* by a
  succeeded attempt, *failed* when its status is failed and its last attempt ended in
  the window; success rate = completed / (completed + failed);
- *run time* is an ended attempt's ``ended_at - started_at``; *queue wait* is a
  task's first attempt's start minus the task's creation (the two are never mixed);
- percentiles are nearest-rank (p50 of 1, 2, 3, 4 is 2);
- a worker's *efficiency* is its busy time (its attempts' run time in the window)
  over its up time in the window: from each start or restart to the next exit,
  stop or death the event log shows, so one added half-way or dead for hours is not
  called idle.  Before its first event in the window a worker was up unless that
  event is a (first) start; one with no event in the window was up all of it if it
  is up now; one the log knows nothing of counts the whole window;
- the scaling advice is an M/M/c queue: arrivals λ = tasks created per hour, service
  time S = the run time of a finished task's attempts (retries included), load
  a = λ·S; the expected queue wait with c workers is
  Erlang C's P(wait)·S/(c − a); the advice is the least c that keeps it under the
  target, no more than the host's memory holds, and no more than now when rate limits
  were hit (more workers would hit them sooner).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler.model import EventRow, ReportAttempt, ReportTask
from reconciler.pueueview import PueueView

FAILED_OUTCOMES = ("failed", "timeout")


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (``share`` 0.5 for p50); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> dict[str, float | None]:
    return {"count": len(values), "p50": percentile(values, 0.5),
            "p90": percentile(values, 0.9), "p99": percentile(values, 0.99),
            "mean": sum(values) / len(values) if values else None}


def erlang_c_wait(arrivals: float, service: float, workers: int) -> float | None:
    """Expected queue wait (in ``service``'s unit) of an M/M/c queue; None when the
    queue grows without bound (load at or over the workers).  Erlang B by its stable
    recurrence, then C from B: no factorials, so any number of workers works."""
    load = arrivals * service
    if workers < 1 or load >= workers:
        return None
    if load == 0:
        return 0.0
    blocking = 1.0
    for k in range(1, workers + 1):
        blocking = load * blocking / (k + load * blocking)
    waiting = workers * blocking / (workers - load * (1 - blocking))
    return waiting * service / (workers - load)


def ended_in_window(attempts: Iterable[ReportAttempt], since: float, now: float,
                    ) -> list[ReportAttempt]:
    """The attempts the report counts: those that ended from ``since`` to ``now``."""
    return [a for a in attempts if a.ended_at is not None and since <= a.ended_at <= now]


MAX_ADVICE = 1000  # workers beyond the load the advice searches before it gives up


def analyse(*, pool: str, since: float, now: float, replicas: int,
            attempts: Iterable[ReportAttempt], tasks: Mapping[int, ReportTask],
            restarts: Iterable[tuple[str, float]], queued: int, running: int,
            target_wait: float, memory_per_worker: float | None = None,
            memory_available: float | None = None,
            oldest_queued_at: float | None = None,
            lives: Sequence[tuple[str, float, str]] = (),
            up_now: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """The report's document.  ``tasks``: every task an attempt names, and every task
    created in the window; ``restarts``: (worker, when) in the window; ``lives``:
    (worker, when, what) for each start and end of a worker in the window, in order
    (``worker_lives``); ``up_now``: whether each worker runs now;
    ``oldest_queued_at``: when the longest-waiting queued task was created (a starved
    queue shows there, not in the waits of tasks that started)."""
    window = max(now - since, 1e-9)
    hours = window / 3600
    ended = ended_in_window(attempts, since, now)
    outcomes = Counter(a.status for a in ended)
    completed = {a.task_id for a in ended if a.status == "succeeded"}
    last_end: dict[int, float] = {}
    for a in ended:
        last_end[a.task_id] = max(last_end.get(a.task_id, 0.0), a.ended_at or 0.0)
    failed = {t for t in last_end if tasks.get(t) and tasks[t].status == "failed"}
    finished = completed | failed
    run = [(a.ended_at or 0.0) - a.started_at for a in ended
           if a.status in ("succeeded", *FAILED_OUTCOMES)]
    waits = [a.started_at - tasks[a.task_id].created_at for a in ended
             if a.number == 1 and a.task_id in tasks]
    per_task_attempts = [tasks[t].attempts for t in finished if t in tasks]
    cost = [a.report.cost_usd for a in ended if a.report and a.report.cost_usd is not None]
    tokens_in = sum(a.report.input_tokens or 0 for a in ended if a.report)
    tokens_out = sum(a.report.output_tokens or 0 for a in ended if a.report)
    total_cost = sum(cost)
    workers = _per_worker(ended, restarts, since, window,
                          up_time(lives, since, now, up_now or {}))
    arrivals = sum(1 for t in tasks.values() if since <= t.created_at <= now) / hours
    # the work a task brings: all its attempts (retries included), not one attempt's
    service_hours = (sum(run) / len(finished) / 3600 if finished else
                     sum(run) / len(run) / 3600) if run else None
    hourly = _hourly(ended, since, now)
    document: dict[str, Any] = {
        "pool": pool, "since": since, "until": now, "hours": round(hours, 4),
        "tasks": {
            "completed": len(completed), "failed": len(failed),
            "success_rate": len(completed) / len(finished) if finished else None,
            "attempts_per_task": (sum(per_task_attempts) / len(per_task_attempts)
                                  if per_task_attempts else None),
            "retry_rate": (sum(n > 1 for n in per_task_attempts) / len(per_task_attempts)
                           if per_task_attempts else None),
            "queued_now": queued, "running_now": running,
            "oldest_queued_seconds": (now - oldest_queued_at if oldest_queued_at is not None
                                      else None)},
        "attempts": {"ended": len(ended), "by_outcome": dict(sorted(outcomes.items())),
                     "timeout_rate": outcomes["timeout"] / len(ended) if ended else None,
                     "rate_limit_rate": (outcomes["rate_limited"] / len(ended)
                                         if ended else None)},
        "run_time_seconds": spread(run),
        "queue_wait_seconds": spread(waits),
        "cost": {"reported_attempts": len(cost), "total_usd": round(total_cost, 6),
                 "per_task_usd": total_cost / len(finished) if cost and finished else None,
                 "per_completed_task_usd": (total_cost / len(completed)
                                            if cost and completed else None),
                 "per_hour_usd": total_cost / hours if cost else None,
                 "input_tokens": tokens_in, "output_tokens": tokens_out},
        "workers": workers,
        "throughput_per_hour": hourly,
        "trend": _trend(hourly),
    }
    document["scaling"] = _scaling(arrivals, service_hours, replicas, target_wait,
                                   outcomes["rate_limited"] > 0, memory_per_worker,
                                   memory_available)
    document["bottlenecks"] = _bottlenecks(document, ended, replicas)
    document["eta_seconds"] = ((queued + running) * (sum(run) / len(run)) / max(replicas, 1)
                               if run and replicas and queued + running else None)
    return document


def pueue_summary(events: Iterable[EventRow], since: float, now: float,
                  view: PueueView | None) -> dict[str, Any]:
    """runtime: pueue -- what the controller did in pueue in the window (from the event
    log: daemon restarts, tasks killed past their timeout, ours and those added by hand,
    and hand-added tasks restarted), and the hand-added tasks pueue holds now."""
    counts: Counter[str] = Counter()
    for event in events:
        if not since <= event.at <= now:
            continue
        if event.kind == "pueue.killed":
            if event.fields.get("cause", "timeout") != "timeout":
                continue  # a silent wrapper's or a deleted pool's: not a timeout
            counts["killed_by_hand_added" if event.task_id is None else "killed_ours"] += 1
        elif event.kind in ("pueue.restarted", "pueue.down"):
            counts[event.kind.removeprefix("pueue.")] += 1
    hand_added = Counter(
        task.result if task.state == "done" and task.result else task.state
        for task in (view.foreign if view is not None else ()))
    return {"daemon_down": counts["down"], "ours_killed_past_timeout": counts["killed_ours"],
            "hand_added_killed_past_timeout": counts["killed_by_hand_added"],
            "hand_added_restarted": counts["restarted"],
            "hand_added_now": dict(sorted(hand_added.items())),
            "daemon_up_now": view.daemon_up if view is not None else None}


def up_time(lives: Sequence[tuple[str, float, str]], since: float, now: float,
            up_now: Mapping[str, bool]) -> dict[str, float]:
    """Each worker's up time within ``since``..``now`` from its starts (``started``,
    ``restarted``) and ends (``exited``, ``stopped``, ``died``) in the window: a start
    while up (a replacement) continues it, an end while down is nothing."""
    up_since: dict[str, float | None] = {}
    total: dict[str, float] = defaultdict(float)
    for worker, at, what in lives:
        up = what in ("started", "restarted")
        if worker not in up_since:  # its state when the window began
            up_since[worker] = None if what == "started" else since
        began = up_since[worker]
        if up and began is None:
            up_since[worker] = at
        elif not up and began is not None:
            total[worker] += max(0.0, min(at, now) - max(began, since))
            up_since[worker] = None
    for worker, running in up_now.items():
        if worker not in up_since and running:  # no event in the window: up all of it
            up_since[worker] = since
    for worker, began in up_since.items():
        if began is not None:
            total[worker] += max(0.0, now - max(began, since))
    return {worker: seconds for worker, seconds in total.items() if seconds > 0}


def _per_worker(ended: Sequence[ReportAttempt], restarts: Iterable[tuple[str, float]],
                since: float, window: float,
                up: Mapping[str, float]) -> list[dict[str, Any]]:
    busy: dict[str, float] = defaultdict(float)
    done: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    for a in ended:  # the part of each run inside the window
        busy[a.worker_id] += (a.ended_at or 0.0) - max(a.started_at, since)
        done[a.worker_id] += a.status == "succeeded"
        failures[a.worker_id] += a.status in FAILED_OUTCOMES
    restarted = Counter(worker for worker, _ in restarts)
    ids = sorted(set(busy) | set(restarted) | {w for w, t in up.items() if t > 0},
                 key=_worker_order)
    return [{"worker": w, "completed": done[w], "failed": failures[w],
             "attempts": done[w] + failures[w], "busy_seconds": round(busy[w], 3),
             "up_seconds": round(up.get(w, window), 3),
             "efficiency": min(busy[w] / up[w], 1.0) if up.get(w) else
             min(busy[w] / window, 1.0), "restarts": restarted[w]}
            for w in ids]


def _worker_order(worker: str) -> tuple[int, str]:
    number = worker.removeprefix("w-")
    return (int(number), "") if number.isdigit() else (1 << 30, worker)


def _hourly(ended: Sequence[ReportAttempt], since: float, now: float) -> list[int]:
    """Tasks completed in each hour of the window, oldest first (the last may be short)."""
    buckets = [0] * max(1, math.ceil((now - since) / 3600))
    for a in ended:
        if a.status == "succeeded" and a.ended_at is not None:
            buckets[min(int((a.ended_at - since) // 3600), len(buckets) - 1)] += 1
    return buckets


def _trend(hourly: Sequence[int]) -> str | None:
    """The second half against the first of the hours since the first completion in the
    window: rising, falling or flat (±10 %); None before two such hours (a pool minutes
    old in a 24-hour window is not "rising" from the empty hours before it)."""
    first_busy = next((i for i, n in enumerate(hourly) if n), len(hourly))
    hourly = hourly[first_busy:]
    if len(hourly) < 2:
        return None
    half = len(hourly) // 2
    first, second = sum(hourly[:half]) / half, sum(hourly[-half:]) / half
    if first == second == 0:
        return "flat"
    change = (second - first) / first if first else 1.0
    return "rising" if change > 0.1 else "falling" if change < -0.1 else "flat"


def _bottlenecks(document: Mapping[str, Any], ended: Sequence[ReportAttempt],
                 replicas: int) -> list[str]:
    """Each bottleneck named with the figures that show it; a long queue wait is "too few
    workers" only where the scaling advice agrees (tasks added in a burst wait too, on a
    pool the average load does not outgrow)."""
    found = []
    wait, run = document["queue_wait_seconds"], document["run_time_seconds"]
    oldest = document["tasks"]["oldest_queued_seconds"]
    needed = document["scaling"].get("needed")  # before any cap: what the load asks
    if wait["p90"] is not None and run["p90"] and wait["p90"] > 2 * run["p90"]:
        why = "too few workers" if needed is None or needed > replicas else (
            f"tasks came in bursts ({needed} worker(s) keep the average wait under the "
            "target): a burst waits for the pool")
        found.append(f"queue wait p90 {_human(wait['p90'])} vs run time p90 "
                     f"{_human(run['p90'])}: {why}")
    elif oldest is not None and run["p90"] and oldest > 2 * run["p90"]:
        found.append(f"a queued task has waited {_human(oldest)} vs run time p90 "
                     f"{_human(run['p90'])}: too few workers, or claiming is paused")
    pool_attempts = sum(w["attempts"] for w in document["workers"])
    pool_failed = sum(w["failed"] for w in document["workers"])
    pool_rate = pool_failed / pool_attempts if pool_attempts else 0.0
    for w in document["workers"]:
        rate = w["failed"] / w["attempts"] if w["attempts"] else 0.0
        if w["attempts"] >= 3 and rate >= 0.2 and rate > 2 * pool_rate:
            found.append(f"{w['worker']} fails {rate:.0%} vs pool {pool_rate:.0%}: "
                         "look at its log")
    outcomes = document["attempts"]["by_outcome"]
    bad = sum(outcomes.get(k, 0) for k in ("failed", "timeout", "rate_limited"))
    if bad and outcomes.get("rate_limited", 0) / bad >= 0.3:
        found.append(f"{outcomes['rate_limited'] / bad:.0%} of failures are rate limits")
    phases = [a.phases for a in ended if a.phases]
    total = sum(sum(p.values()) for p in phases)
    if total and sum(p.get("worktree", 0.0) for p in phases) / total >= 0.2:
        share = sum(p.get("worktree", 0.0) for p in phases) / total
        found.append(f"git worktree creation is {share:.0%} of run time: try "
                     "worktrees.reuse: perWorker")
    return found


def _scaling(arrivals: float, service_hours: float | None, replicas: int,
             target_wait: float, rate_limited: bool, memory_per_worker: float | None,
             memory_available: float | None) -> dict[str, Any]:
    """The least workers that keep the expected queue wait under ``target_wait``."""
    if service_hours is None or arrivals == 0:
        return {"recommended": None, "why": "not enough finished work in the window"}
    load = arrivals * service_hours
    needed = max(1, math.floor(load) + 1)
    while needed < load + MAX_ADVICE:
        wait = erlang_c_wait(arrivals, service_hours, needed)
        if wait is not None and wait * 3600 <= target_wait:
            break
        needed += 1
    caps = []
    if memory_per_worker and memory_available is not None:
        caps.append((replicas + int(memory_available // memory_per_worker), "memory"))
    if rate_limited:
        caps.append((replicas, "rate limits"))
    cap, capped_by = min(caps) if caps else (None, None)
    recommended = min(needed, cap) if cap is not None else needed
    now_wait = erlang_c_wait(arrivals, service_hours, replicas)
    return {
        "arrivals_per_hour": arrivals, "service_time_seconds": service_hours * 3600,
        "load": load, "workers_now": replicas,
        "expected_wait_now_seconds": None if now_wait is None else now_wait * 3600,
        "target_wait_seconds": target_wait, "needed": needed,
        "cap": cap, "capped_by": capped_by if cap is not None and cap < needed else None,
        "recommended": recommended,
        "arithmetic": f"λ = {arrivals:.2f} tasks/h, S = {_human(service_hours * 3600)}, "
                      f"a = λ·S = {load:.2f}; M/M/{needed}: expected wait "
                      f"{_human((erlang_c_wait(arrivals, service_hours, needed) or 0) * 3600)}"
                      f" ≤ {_human(target_wait)}",
    }


def _human(seconds: float) -> str:
    from reconciler.durations import format_duration

    return format_duration(seconds)
