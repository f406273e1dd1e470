"""``reconcile dashboard``: a full-screen live view of a pool, refreshed every second.

One row per worker (health in colour, current task and its title, how long it has
run, time since its last output, heartbeat age, restarts, CPU and memory of its
process tree), the queue, tasks completed over the last hour as a sparkline, the
time to drain the queue, today's spend, the controller and the latest events.
``q`` quits (or Ctrl-C).  It works over ssh and inside tmux: it only needs a
terminal.  A refresh reads the store through indexes (no table scan at 100,000
tasks) and observes the pool as ``status`` does; the CPU of each process tree is
measured between two refreshes.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from reconciler.durations import format_duration
from reconciler.report.documents import printable
from reconciler.report.render import pueue_line
from reconciler.report.term import HEALTH_STYLE

if TYPE_CHECKING:
    import psutil

    from reconciler.pool import Pool
    from reconciler.store.sqlite import Store

SPARK = "▁▂▃▄▅▆▇█"
BUCKETS = 12  # the last hour in 5-minute buckets
EVENTS_SHOWN = 8



def sparkline(counts: list[int]) -> str:
    """``counts`` as block characters, the highest a full block (all zero: the lowest)."""
    top = max(counts, default=0)
    if top == 0:
        return SPARK[0] * len(counts)
    return "".join(SPARK[min(len(SPARK) - 1, round(c / top * (len(SPARK) - 1)))]
                   for c in counts)


class TreeMeter:
    """CPU % and memory of each worker's process tree, CPU measured since the last call
    (psutil keeps each process's last sample; a process seen first reads 0 %)."""

    def __init__(self) -> None:
        self._seen: dict[int, psutil.Process] = {}

    def measure(self, pid: int | None) -> tuple[float | None, int | None]:
        import psutil

        if not pid:
            return None, None
        try:
            root = self._process(pid)
            tree = [root, *(self._process(c.pid) for c in root.children(recursive=True))]
        except psutil.Error:
            return None, None
        cpu = memory = 0.0
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                cpu += proc.cpu_percent(None)
                memory += proc.memory_info().rss
        return cpu, int(memory)

    def _process(self, pid: int) -> psutil.Process:
        import psutil

        proc = self._seen.get(pid)
        if proc is None or not proc.is_running():
            proc = self._seen[pid] = psutil.Process(pid)
        return proc


def snapshot(pool: Pool, store: Store, meter: TreeMeter, now: float) -> dict[str, Any]:
    """Everything one refresh shows, as plain data."""
    from reconciler.pool import status_of

    observation, document = status_of(pool, store, now)
    rows = []
    for worker in document["workers"]:
        attempt = observation.attempt_of(worker["id"]) if worker["current_task"] else None
        cpu, memory = meter.measure(worker["pid"])
        rows.append({**worker,
                     "task_for": now - attempt.started_at if attempt else None,
                     "output_age": (now - (attempt.last_output_at or attempt.started_at)
                                    if attempt else None),
                     "cpu_percent": cpu, "memory_bytes": memory})
    ended = store.completed_since(now - 3600)
    counts = [0] * BUCKETS
    for at in ended:
        counts[min(BUCKETS - 1, int((at - (now - 3600)) // (3600 / BUCKETS)))] += 1
    mean_run = store.mean_run_time_since(now - 3600)
    replicas = pool.spec.replicas if pool.spec else 0
    queue = document["queue"]
    left = queue["queued"] + queue["running"]
    eta = left * mean_run / replicas if mean_run and replicas and left else None
    return {**document, "workers": rows, "completed_last_hour": counts, "eta_seconds": eta,
            "events": store.find_events(last=EVENTS_SHOWN)}


def snapshot_document(snap: Mapping[str, Any]) -> dict[str, Any]:
    """A snapshot as plain JSON values: what the status page's ``/api/status`` serves."""
    from dataclasses import asdict

    return {**snap, "events": [asdict(e) for e in snap["events"]]}


def render(snap: Mapping[str, Any]) -> Any:
    """The screen for one snapshot (rich renderables; outside text made visible)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def age(seconds: float | None) -> str:
        return "-" if seconds is None else format_duration(seconds)

    table = Table(expand=True, title=f"pool {snap['pool']}", title_justify="left")
    for column in ("worker", "health", "task", "for", "output", "heartbeat", "restarts",
                   "cpu", "memory"):  # one line per worker: the task's title gives way
        table.add_column(column, no_wrap=True, overflow="ellipsis",
                         min_width=16 if column == "task" else None,
                         ratio=1 if column == "task" else None,
                         justify="right" if column in ("restarts", "cpu", "memory") else "left")
    for w in snap["workers"]:
        task = "-" if w["current_task"] is None else \
            f"{w['current_task']} {printable(w.get('task_title') or '')}".strip()
        table.add_row(
            w["id"], Text(w["health"], style=HEALTH_STYLE.get(w["health"], "")),
            Text(task, overflow="ellipsis"), age(w["task_for"]), age(w["output_age"]),
            age(w["heartbeat_age"]), str(w["restarts"]),
            "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.0f}%",
            "-" if w["memory_bytes"] is None else f"{w['memory_bytes'] / 2**20:.0f} MB")
    q = snap["queue"]
    controller = snap["controller"]
    state = "running" if controller["running"] else (
        "down" if controller["enabled"] else "disabled")
    lines = [
        f"queue: {q['queued']} queued, {q['running']} running, {q['succeeded']} succeeded, "
        f"{q['failed']} failed, {q['cancelled']} cancelled",
        f"completed, last hour: {sparkline(snap['completed_last_hour'])} "
        f"{sum(snap['completed_last_hour'])}   drains in: "
        + ("queue empty" if q["queued"] + q["running"] == 0 else age(snap["eta_seconds"])),
        f"spent today: ${snap['spend_today_usd']:.2f}"
        + (f" of ${snap['budget_per_day_usd']:.2f}" if snap["budget_per_day_usd"] else "")
        + f"   controller: {state}",
    ]
    if snap.get("pueue"):
        lines.append(printable(pueue_line(snap["pueue"])))
    if snap["claiming_paused_until"]:
        lines.append(f"claiming paused: {printable(snap['claiming_paused_reason'] or '')}")
    lines += [f"problem: {printable(p)}" for p in snap["problems"]]
    events = [time.strftime("%H:%M:%S", time.localtime(e.at)) + f"  {printable(e.kind)}  "
              f"{printable(e.worker_id or '')}  {printable(e.message)}" for e in snap["events"]]
    return Group(table, Text("\n".join(lines)), Text("latest events", style="bold"),
                 Text("\n".join(events) or "none", overflow="ellipsis", no_wrap=True),
                 Text("q quits", style="dim"))


@contextlib.contextmanager
def keys() -> Iterator[int]:
    """The terminal's input in cbreak mode (keys arrive one at a time, unechoed); put
    back as it was on the way out."""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(pool: Pool, store: Store, interval: float = 1.0) -> int:
    """Show the dashboard until ``q`` (or Ctrl-C)."""
    from rich.console import Console
    from rich.live import Live

    meter = TreeMeter()
    for stale in ("COLUMNS", "LINES"):  # a size inherited from elsewhere: ask the terminal
        os.environ.pop(stale, None)
    console = Console()
    with keys() as fd, Live(render(snapshot(pool, store, meter, time.time())),
                            console=console, screen=True, auto_refresh=False) as live:
        while True:
            ready, _, _ = select.select([fd], [], [], interval)
            if ready and os.read(fd, 1) in (b"q", b"Q", b""):  # b"": the terminal is gone
                return 0
            live.update(render(snapshot(pool, store, meter, time.time())), refresh=True)
