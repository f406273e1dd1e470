"""The pueue runtime's read of ``pueue status --json`` per controller pass, in-process.

Every pass of a ``runtime: pueue`` pool parses pueue's whole state and takes the
pool's view of it (``parse_status`` then ``view_of``); the controller looks every
2 s while pueue holds the pool's work.  This measures that read for states of N
tasks (each with an environment of 40 variables, as pueue records the
submitter's), against the baseline of ``json.loads`` of the same document measured
in the same run: the ratio (of a next pass, whose tasks' timestamps were worked out
before, as in the controller's steady state) is what our parsing adds over reading
the JSON at all.
The finished tasks of ended tasks are removed from pueue (``stale``), so N is the
pool's open work plus what people keep there, not its whole history.

Run: ``python benchmarks/bench_pueue.py [--tasks 100 1000 10000] [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

from reconciler import pueuestatus
from reconciler.pueuestatus import label_for, parse_status
from reconciler.pueueview import view_of

ENV = {f"VARIABLE_{i}": "x" * 40 for i in range(40)}


def state_document(tasks: int) -> str:
    """A 4.0.x ``status --json`` of ``tasks`` tasks in group ``agents``: half ours (a
    quarter running, the rest done), a tenth added by hand, the rest another group's."""
    entries = {}
    for i in range(tasks):  # each task its own times, as pueue's are
        stamp = f"2026-11-30T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:09d}+00:00"
        if i % 10 == 0:
            label, group = None, "agents"
        elif i % 2:
            label, group = label_for("bench", i, 1), "agents"
        else:
            label, group = f"other-{i}", "default"
        status = ({"Running": {"enqueued_at": stamp, "start": stamp}} if i % 4 == 1 else
                  {"Done": {"enqueued_at": stamp, "start": stamp, "end": stamp,
                            "result": "Success"}})
        entries[str(i)] = {"id": i, "created_at": stamp, "original_command": "run-task",
                           "command": "run-task", "path": "/srv/pool", "envs": ENV,
                           "group": group, "dependencies": [], "priority": 0,
                           "label": label, "status": status}
    return json.dumps({"tasks": entries,
                       "groups": {"agents": {"status": "Running", "parallel_tasks": 8},
                                  "default": {"status": "Running", "parallel_tasks": 1}}})


def median_ms(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'tasks':>7} {'size':>9} {'first pass':>11} {'next pass':>11} {'json.loads':>11} "
          f"{'ratio':>7}")
    for tasks in args.tasks:
        text = state_document(tasks)

        def read(text: str = text) -> object:
            return view_of(parse_status(text), "bench", "agents")

        def first(text: str = text) -> object:  # timestamps not seen before
            pueuestatus._timestamp.cache_clear()
            return read(text)

        view = view_of(parse_status(text), "bench", "agents")
        assert len(view.ours) == sum(1 for i in range(tasks) if i % 10 and i % 2)
        cold = median_ms(first, args.repeat)
        read()
        warm = median_ms(read, args.repeat)  # the same tasks again: the steady state
        baseline = median_ms(partial(json.loads, text), args.repeat)
        print(f"{tasks:>7} {len(text) / 2**20:>7.1f}MB {cold:>9.1f}ms {warm:>9.1f}ms "
              f"{baseline:>9.1f}ms {warm / baseline:>6.2f}x")


if __name__ == "__main__":
    main()
