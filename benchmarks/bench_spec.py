"""Spec loading cost, and how fast an alias bomb is rejected.

Prints figures and ratios against a baseline measured in the same run:
``yaml.safe_load`` of the same text (what a naive loader would do, without
validation or positions).  Run: ``python benchmarks/bench_spec.py [--repeat 5] [--number 20]``
(each figure is the best of ``--repeat`` runs of ``--number`` calls).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from reconciler.demo import DEMO_SPEC
from reconciler.errors import SpecError
from reconciler.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]


def alias_bomb(levels: int, width: int) -> str:
    """A "billion laughs" document: ``width ** levels`` values once expanded."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def best_of(fn: Callable[[], object], repeat: int = 5, number: int = 20) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, metavar="N",
                        help="timed runs; the best is shown (default: 5)")
    parser.add_argument("--number", type=int, default=20, metavar="N",
                        help="calls per timed run (default: 20)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.number < 1:
        parser.error("--repeat and --number must be at least 1")
    repeat, number = args.repeat, args.number
    text = DEMO_SPEC.read_text()
    ours = best_of(lambda: parse_spec(text, label="workers.yaml", base_dir=DEMO_SPEC.parent),
                   repeat, number)
    baseline = best_of(lambda: yaml.safe_load(text), repeat, number)
    print(f"load+validate demo spec: {ours * 1e3:.2f} ms "
          f"(yaml.safe_load alone: {baseline * 1e3:.2f} ms, ratio {ours / baseline:.1f}x)")

    for levels, width, caught_by in ((9, 9, "alias cap"), (6, 10, "expansion cap")):
        bomb = alias_bomb(levels, width)

        def reject(bomb: str = bomb) -> None:
            try:
                parse_spec(bomb, label="bomb.yaml", base_dir=ROOT)
            except SpecError:
                return
            raise AssertionError("alias bomb accepted")

        took = best_of(reject, repeat=(repeat + 1) // 2, number=max(1, number // 4))
        print(f"alias bomb {levels} levels x {width} aliases ({width}^{levels} values) rejected "
              f"by the {caught_by} in {took * 1e3:.2f} ms ({took / baseline:.1f}x the demo "
              "spec's safe_load)")


if __name__ == "__main__":
    main()
