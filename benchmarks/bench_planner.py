"""Planner cost per pass against the worker count, in-process (issue 9: ≤ 10 ms at 256).

Each pass is one ``plan(spec, observation, now)`` call on a synthetic
observation: every worker alive and heartbeating, a quarter of them busy with
a task (one of those past ``slowAfter``), one silent past
``unresponsiveAfter`` and one whose process is gone, so the health table
takes every kind of step.  The baseline, measured in the same run on the same
observation, is the old way of assessing health: a new ``transitions.Machine``
per worker per pass (``machine_per_worker_assess`` below, kept here only to
be measured).  Both must return the same plan.

Run: ``python benchmarks/bench_planner.py [--workers 8 32 128 256] [--passes 200]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from unittest import mock

from transitions import Machine

from reconciler import health, planner
from reconciler.actions import Plan
from reconciler.model import AttemptRow, Observation, RuntimeInstance, Step, WorkerRow
from reconciler.spec import parse_spec
from reconciler.specmodel import PoolSpec

NOW = 1_800_000_000.0


def pool_spec(replicas: int) -> PoolSpec:
    text = f"""
apiVersion: reconciler/v1
kind: WorkerPool
metadata: {{name: bench}}
spec:
  replicas: {replicas}
  repo: /srv/repo
  runtime: process
  worker:
    command: [agent, "{{task.prompt}}"]
"""
    return parse_spec(text, label="bench.yaml", base_dir=Path("/srv"))


def synthetic_observation(spec: PoolSpec, workers: int) -> Observation:
    """``workers`` registered workers in every health situation the table knows."""
    template = WorkerRow(id="w-0", runtime=spec.runtime, tmux_socket=None, pid=100,
                         pid_create_time=None, spec_id=1, template_hash=spec.template_hash(),
                         template_digests=spec.template_digests(), state="idle",
                         current_task=None, started_at=NOW - 600, heartbeat_at=NOW - 1,
                         restarts=0, drain_requested=False, exited_at=None, exit_code=None,
                         removed=False, health="healthy")
    rows, instances, running = [], [], []
    for n in range(1, workers + 1):
        worker_id = f"w-{n}"
        row = replace(template, id=worker_id, pid=1000 + n)
        alive = True
        if n % 4 == 0:  # busy; every eighth one for longer than slowAfter
            started = NOW - (spec.health.slow_after + 5 if n % 8 == 0 else 5)
            running.append(AttemptRow(
                id=n, task_id=n, number=1, worker_id=worker_id, status="running",
                started_at=started, ended_at=None, exit_code=None, branch=f"task-{n}",
                worktree=f"/srv/wt/task-{n}-a1", log_path=None, error=None, output_tail=None,
                lease_expires_at=NOW + 30, pid=50_000 + n, pid_create_time=started))
            row = replace(row, state="busy", current_task=n, health="working")
        elif n == 3:  # silent past unresponsiveAfter
            row = replace(row, heartbeat_at=NOW - spec.health.unresponsive_after - 1)
        elif n == 5:  # its process is gone
            alive = False
        rows.append(row)
        instances.append(RuntimeInstance(worker_id, spec.runtime, pid=1000 + n, alive=alive,
                                         exit_status=None if alive else 1))
    return Observation(pool=spec.name, observed_at=NOW, instances=tuple(instances),
                       workers=tuple(rows), running=tuple(running))


# --------------------------------------------------------------------------- baseline
# The old way, kept only to be measured against: a fresh Machine per worker per pass.


def machine_per_worker_assess(worker: str, state: str, facts: health.WorkerFacts,
                              spec: PoolSpec) -> list[Step]:
    """REFERENCE ONLY (the baseline): ``health.assess`` as it was before issue 9."""
    if state not in health.STATES:
        state = "recovering"
    model = health._Conditions(facts, spec)
    machine = Machine(model=model, states=list(health.STATES), initial=state,
                      auto_transitions=False)
    for rule in health.TRANSITIONS:
        machine.add_transition(rule.trigger, list(rule.sources), rule.dest,
                               conditions=[rule.condition])
    steps: list[Step] = []
    for _ in range(len(health.STATES)):
        for rule in health.TRANSITIONS:
            if getattr(model, f"may_{rule.trigger}")():
                source = model.state
                getattr(model, rule.trigger)()
                steps.append(Step(worker, source, model.state, rule.trigger,
                                  health._reason(rule, facts, spec)))
                break
        else:
            break
    return steps


# --------------------------------------------------------------------------- measuring


def pass_times(fn: Callable[[], Plan], passes: int) -> list[float]:
    fn()  # warm up (first-call caches, lazy imports)
    samples = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else samples[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 128, 256],
                        metavar="N", help="pool sizes to measure (default: 8 32 128 256)")
    parser.add_argument("--passes", type=int, default=200, metavar="N",
                        help="timed passes per pool size and variant (default: 200)")
    args = parser.parse_args(argv)
    if args.passes < 1 or min(args.workers) < 1:
        parser.error("--workers and --passes must be at least 1")
    print(f"plan() per pass, {args.passes} passes; baseline: a transitions.Machine per worker")
    print(f"{'workers':>8} {'median':>9} {'p90':>9} {'baseline':>9} {'p90':>9} {'speedup':>8}")
    for workers in args.workers:
        spec = pool_spec(workers)
        observation = synthetic_observation(spec, workers)
        ours_plan = planner.plan(spec, observation, NOW)
        one_pass = partial(planner.plan, spec, observation, NOW)
        ours = pass_times(one_pass, args.passes)
        with mock.patch.object(planner, "assess", machine_per_worker_assess):
            if one_pass() != ours_plan:
                print(f"error: the baseline planned differently at {workers} workers")
                return 1
            baseline = pass_times(one_pass, args.passes)
        ms = 1e3
        print(f"{workers:>8} {statistics.median(ours) * ms:>7.2f}ms {p90(ours) * ms:>7.2f}ms "
              f"{statistics.median(baseline) * ms:>7.2f}ms {p90(baseline) * ms:>7.2f}ms "
              f"{statistics.median(baseline) / statistics.median(ours):>7.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
