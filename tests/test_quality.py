"""Project hygiene that CI must enforce: lint, types, layering, README and CI agreement."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "reconciler"
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    proc = subprocess.run([str(BIN / "ruff"), "check", "reconciler", "tests", "benchmarks",
                           "examples/agents/fake-agent"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    proc = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _imports(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("reconciler")}


# a lower layer never imports a higher one (DESIGN: cli -> controller -> executor -> planner)
FORBIDDEN = {
    "planner.py": ("reconciler.executor", "reconciler.controller", "reconciler.cli",
                   "reconciler.commands", "reconciler.observe", "reconciler.runtimes",
                   "reconciler.store", "reconciler.worker"),
    "model.py": ("reconciler.",),
    "observe": ("reconciler.executor", "reconciler.controller", "reconciler.planner",
                "reconciler.cli", "reconciler.commands", "reconciler.runtimes"),
    "runtimes": ("reconciler.executor", "reconciler.controller", "reconciler.planner",
                 "reconciler.cli", "reconciler.commands", "reconciler.observe",
                 "reconciler.store"),
    "executor.py": ("reconciler.controller", "reconciler.cli", "reconciler.commands"),
    "controller.py": ("reconciler.cli", "reconciler.commands"),
}


@pytest.mark.parametrize("target", sorted(FORBIDDEN), ids=sorted(FORBIDDEN))
def test_layering(target: str) -> None:
    path = PACKAGE / target
    modules = sorted(path.glob("*.py")) if path.is_dir() else [path]
    for module in modules:
        bad = [name for name in _imports(module)
               if any(name == f or name.startswith(f) for f in FORBIDDEN[target])]
        assert not bad, f"{module.relative_to(ROOT)} imports {bad}"


def test_no_shell_and_no_unsafe_yaml() -> None:
    pattern = re.compile(r"shell\s*=\s*True|os\.system\(|yaml\.load\(|unsafe_load|send-keys")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in PACKAGE.rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def _quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    assert "reconcile demo" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()
