"""Project hygiene that CI must enforce: lint, types, layering, README and CI agreement."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.paths import pool_paths
from reconciler.store.sqlite import Store
from tests.helpers import ROOT

PACKAGE = ROOT / "reconciler"
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    proc = subprocess.run([str(BIN / "ruff"), "check", "reconciler", "tests", "benchmarks",
                           "specs/fake-agent", "tests/bin/claude"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_is_clean() -> None:
    proc = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


PURE_MODULES = ("reconciler.model", "reconciler.actions", "reconciler.specmodel",
                "reconciler.naming", "reconciler.policies", "reconciler.retry",
                "reconciler.health", "reconciler.planner", "reconciler.report.plan",
                "reconciler.sync", "reconciler.pruneplan")
IO_MODULES = ("subprocess", "sqlite3", "psutil", "fcntl", "socket", "reconciler.store",
              "reconciler.observe", "reconciler.runtimes", "reconciler.worktrees",
              "reconciler.proctree", "reconciler.lock", "reconciler.spec")


def test_the_pure_core_loads_no_io_module_even_transitively() -> None:
    """Import the pure modules in a fresh interpreter: nothing that does I/O may come
    along, however many imports away (a direct-imports check misses the second hop)."""
    probe = ("import json, sys\n"
             f"import {', '.join(PURE_MODULES)}\n"
             f"print(json.dumps([m for m in {list(IO_MODULES)!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "[]", f"the pure core loads {proc.stdout.strip()}"


def test_layers_hold_transitively() -> None:
    """The import-linter contracts in pyproject.toml (layers; a pure core; observers,
    runtimes and the store below the deciders)."""
    proc = subprocess.run([str(BIN / "lint-imports")], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


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


HEAVY_MODULES = ("rich", "jsonschema", "loguru", "yaml", "asyncio", "transitions",
                 "reconciler.planner", "reconciler.commands")


def test_a_worker_process_loads_no_heavy_module(tmp_path: Path) -> None:
    """What ``python -m reconciler worker`` loads, in a fresh interpreter: the CLI's
    entry, the worker module and the path a worker's start takes (here to the check
    that its pool exists).  Every worker paid for rich, jsonschema and loguru (with
    asyncio) without using them: ~25 MB and ~200 ms each (issue 9)."""
    probe = ("import json, sys\n"
             "from reconciler import cli, worker\n"
             f"code = cli.main(['--state-dir', {str(tmp_path)!r}, 'worker', '--pool', 'p',"
             " '--id', 'w-1', '--spec-id', '1'])\n"
             f"print(json.dumps([code, [m for m in {list(HEAVY_MODULES)!r} "
             "if m in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-P", "-c", probe], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[1, []]", proc.stdout + proc.stderr
    assert "has no store" in proc.stderr


def test_read_commands_load_no_spec_validator_and_no_executor(tmp_path: Path) -> None:
    """``reconcile status`` in a fresh interpreter (here on an empty state directory, so
    it stops at "no pool"): the CLI and every handler's module load, yet neither the
    spec validator and YAML (a file is read only by commands given one) nor what
    ``apply`` drives.  Every call paid for them (issue 9: status and diff ≤ 100 ms)."""
    heavy = ["jsonschema", "yaml", "loguru", "asyncio", "rich", "psutil", "logging",
             "reconciler.operations", "reconciler.executor", "reconciler.controller",
             "reconciler.planner", "reconciler.actions", "reconciler.demo"]
    probe = ("import json, sys\n"
             "from reconciler import cli\n"
             f"code = cli.main(['--state-dir', {str(tmp_path)!r}, 'status'])\n"
             f"print(json.dumps([code, 'reconciler.commands' in sys.modules, "
             f"[m for m in {heavy!r} if m in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-P", "-c", probe], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[1, true, []]", proc.stdout + proc.stderr


# what no read command needs: rich's import and first table alone cost status ~150 ms
READ_HEAVY = ("rich", "yaml", "jsonschema", "psutil", "logging", "transitions",
              "reconciler.planner", "reconciler.actions", "reconciler.operations")


@pytest.mark.parametrize("output", ["json", "text"])
@pytest.mark.parametrize("command", [["status"], ["task", "list"], ["task", "show", "1"],
                                     ["events"], ["history"]])
def test_read_commands_load_nothing_heavy(tmp_path: Path, command: list[str],
                                         output: str) -> None:
    """Read commands print plain data or plain columns: no rich (it draws only progress
    bars and the demo), no spec validator, no planner (issue 9: read commands as whole
    processes)."""
    state = str(tmp_path / "state")
    with Store(pool_paths(tmp_path / "state", "p").create().store) as store:
        store.add_tasks([("a task", "its prompt", 0)])
    probe = ("import json, sys\n"
             "from reconciler import cli\n"
             f"code = cli.main(['--state-dir', {state!r}, *{command!r}, '--pool', 'p',"
             f" '-o', {output!r}])\n"
             f"print(json.dumps([code, [m for m in {READ_HEAVY!r} if m in sys.modules]]),"
             " file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-P", "-c", probe], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    code, loaded = json.loads(proc.stderr.strip().splitlines()[-1])
    assert code in (0, 3) and proc.stdout, proc.stdout + proc.stderr
    if output == "json":
        assert json.loads(proc.stdout) is not None
    assert loaded == [], loaded


def test_health_loads_transitions_only_when_a_worker_changes_state() -> None:
    """``status`` assesses every worker; on a steady pool nothing fires, so the state
    machine library is not even imported (it is, once, for the first change)."""
    probe = ("import json, sys\n"
             "from pathlib import Path\n"
             "from reconciler.health import WorkerFacts, assess\n"
             "from reconciler.spec import parse_spec\n"
             "from tests.test_health import SPEC_TEXT\n"
             "spec = parse_spec(SPEC_TEXT, label='t.yaml', base_dir=Path('/srv'))\n"
             "steady = WorkerFacts(process_alive=True, exit_description='',"
             " heartbeat_age=1.0, since_start=60.0, busy=False)\n"
             "seen = [len(assess('w-1', 'healthy', steady, spec)),"
             " 'transitions' in sys.modules]\n"
             "gone = WorkerFacts(process_alive=False, exit_description='exit 1',"
             " heartbeat_age=1.0, since_start=60.0, busy=False)\n"
             "seen += [[s.dest for s in assess('w-1', 'healthy', gone, spec)],"
             " 'transitions' in sys.modules]\n"
             "print(json.dumps(seen))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == '[0, false, ["dead"], true]', proc.stdout + proc.stderr
