"""Spec texts validated by ``apply`` are not validated again (``reconciler.checkedspecs``).

``diff -f`` on the file just applied paid ~150 ms for PyYAML and jsonschema (issue 9:
``diff`` ≤ 100 ms).  These tests pin what makes skipping that safe: the same text
and the same checker give the same document, anything else is checked in full, and
only an apply that went through writes.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reconciler import checkedspecs
from reconciler import spec as spec_module
from reconciler.checkedspecs import CHECKER_SOURCES, FOLDER, KEEP, CheckedSpecs
from reconciler.errors import SpecError
from reconciler.spec import load_spec
from reconciler.specmodel import PoolSpec
from tests.helpers import reconcile, write_spec


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def saved(path: Path, state: Path) -> PoolSpec:
    """Load ``path`` as an apply that went through does."""
    spec = load_spec(path, checked := CheckedSpecs(state))
    checked.save()
    return spec


def entries(state: Path) -> list[Path]:
    return sorted((state / FOLDER).glob("*.json")) if (state / FOLDER).exists() else []


def test_a_text_checked_by_apply_loads_to_the_same_spec_without_being_checked(
        tmp_path: Path, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_spec(tmp_path, extra={"worktrees": {"dir": "wt"}})
    fresh = load_spec(path)
    applied = load_spec(path, checked := CheckedSpecs(state))
    assert entries(state) == []  # nothing is kept before the apply went through
    checked.save()
    [entry] = entries(state)
    assert entry.stat().st_mode & 0o777 == 0o600
    assert (state / FOLDER).stat().st_mode & 0o777 == 0o700

    def no_check(text: str, label: str) -> None:
        raise AssertionError("checked again")

    monkeypatch.setattr(spec_module, "_checked_document", no_check)
    again = load_spec(path, CheckedSpecs(state))
    assert again == applied == fresh
    assert again.repo == (tmp_path / "repo").resolve()  # paths resolved on every load


def test_an_edited_text_is_checked_in_full_and_its_errors_reported(
        tmp_path: Path, state: Path) -> None:
    path = write_spec(tmp_path)
    saved(path, state)
    path.write_text(path.read_text().replace("replicas: 2", "replicas: -1"))
    with pytest.raises(SpecError, match="replicas"):
        load_spec(path, checked := CheckedSpecs(state))
    checked.save()
    assert len(entries(state)) == 1  # an invalid text is never remembered


def test_a_changed_checker_checks_every_text_again(tmp_path: Path, state: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_spec(tmp_path)
    saved(path, state)
    checks: list[str] = []
    real = spec_module._checked_document

    def counted(text: str, label: str) -> dict[str, Any]:
        checks.append(label)
        return real(text, label)

    original = checkedspecs.checker_fingerprint()
    monkeypatch.setattr(checkedspecs, "checker_fingerprint", lambda: original + "-upgraded")
    monkeypatch.setattr(spec_module, "_checked_document", counted)
    load_spec(path, CheckedSpecs(state))
    assert checks == [str(path)]


def test_a_damaged_or_foreign_entry_is_ignored(tmp_path: Path, state: Path) -> None:
    path = write_spec(tmp_path)
    expected = saved(path, state)
    [entry] = entries(state)
    good = json.loads(entry.read_text())
    for damage in ("{not json", json.dumps({"text_sha256": "0" * 64, "document": {}}),
                   json.dumps([1, 2]),
                   # the right key, but a document that does not type
                   json.dumps({**good, "document": {}}),
                   json.dumps({**good, "document": {"spec": {"repo": 7}}})):
        entry.write_text(damage)
        assert load_spec(path, CheckedSpecs(state)) == expected


def test_a_document_json_would_change_is_not_kept(tmp_path: Path, state: Path) -> None:
    """A key written ``1:`` is an int to YAML and a string once through JSON: kept, the
    next load would differ from a fresh check."""
    path = write_spec(tmp_path, extra={"worker": {"command": ["true"], "env": {1: "x"}}})
    try:
        fresh = load_spec(path)
    except SpecError:
        pytest.skip("the schema refuses the key: nothing to keep")
    assert saved(path, state) == fresh
    assert entries(state) == []
    assert not list((state / FOLDER).glob(".partial-*"))


def test_the_fingerprint_covers_every_module_the_checks_run() -> None:
    """Every package module spec.py imports, directly or through another, is hashed: an
    upgrade that changes any of them checks every text again."""
    package = Path(checkedspecs.__file__).parent
    seen: set[str] = set()
    todo = ["spec"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((package / f"{name.replace('.', '/')}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("reconciler.") and \
                    node.module != "reconciler.checkedspecs":  # only looks the result up
                todo.append(node.module.removeprefix("reconciler."))
    assert {f"{name.replace('.', '/')}.py" for name in seen} <= set(CHECKER_SOURCES)


def test_only_the_newest_few_are_kept(tmp_path: Path, state: Path) -> None:
    for replicas in range(1, KEEP + 3):
        saved(write_spec(tmp_path, replicas=replicas), state)
    assert len(entries(state)) == KEEP


def test_nothing_is_kept_without_a_state_directory(tmp_path: Path) -> None:
    """Only an apply that went through saves, and it made the state directory (0700);
    the cache never makes one itself."""
    saved(write_spec(tmp_path), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_diff_after_apply_loads_neither_yaml_nor_jsonschema_and_diff_writes_nothing(
        host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=0)
    state = Path(os.environ["RECONCILER_STATE_DIR"])
    other = write_spec(host, replicas=0, filename="other.yaml")
    assert reconcile("diff", "-f", str(other)).returncode == 0
    assert entries(state) == []  # diff changes nothing on the host
    assert reconcile("apply", "-f", str(spec)).returncode == 0
    assert len(entries(state)) == 1
    probe = ("import json, sys\n"
             "from reconciler import cli\n"
             f"code = cli.main(['diff', '-f', {str(spec)!r}, '-o', 'json'])\n"
             "print(json.dumps([code, [m for m in ('yaml', 'jsonschema') if m in sys.modules]]),"
             " file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-P", "-c", probe], cwd=host,
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [0, []], proc.stderr
    assert json.loads(proc.stdout)["actions"] == []
