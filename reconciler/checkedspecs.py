"""Spec texts already validated by ``apply``, so ``diff`` and the commands given
``-f`` need not load PyYAML and jsonschema for a file that has not changed.

Validating a spec means parsing YAML and checking it against the JSON Schema:
about 150 ms of imports on the 2-core machine, for the file that was applied
minutes ago (issue 9: ``diff`` ≤ 100 ms).  What validation yields for a text
depends on that text and on the code that checks it, nothing else; so ``apply``
keeps, per text, the checked document with its defaults filled in (before any
path is resolved: paths are resolved again on every load, against the file's
directory now).  The key is the SHA-256 of the text together with a fingerprint
of the checker (the schema and the modules that parse and check), so an edited
file, or an upgraded reconciler, is validated in full again.

Only an ``apply`` that went through writes here (``diff`` and ``validate`` change
nothing on the host, and a refused apply leaves nothing behind).  The folder lives
in the state directory (0700, as the store); a file that cannot be read as
expected is ignored, and only the newest few are kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from reconciler.errors import ReconcilerError
from reconciler.paths import ensure_private_dir

FOLDER = "checked-specs"
KEEP = 8  # texts remembered per state directory: the spec files of a few pools, each edited

# Every module the checks run, with the schema (tests/test_checked_specs.py proves the
# list holds every package module spec.py imports, directly or not).
CHECKER_SOURCES = ("spec.py", "specmodel.py", "yamlsafe.py", "templates.py", "naming.py",
                   "durations.py", "limits.py", "errors.py", "model.py", "agentresult.py",
                   "severity.py", "sync.py", "pueueview.py", "pueuestatus.py", "paths.py",
                   "exitstatus.py", "schema/workers.schema.json")
_LIBRARIES = ("yaml", "jsonschema")  # their code checks too: an upgrade checks again


@functools.cache
def checker_fingerprint() -> str:
    """What the checking code is: a hash of its sources, the schema, Python's version and
    the installed PyYAML and jsonschema (found, not imported: their file and its time),
    so no cached result outlives a change to any of them.  Under a millisecond."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(sys.version.encode())
    for name in CHECKER_SOURCES:
        digest.update(b"\0" + name.encode() + b"\0" + (package / name).read_bytes())
    for library in _LIBRARIES:
        spec = importlib.util.find_spec(library)
        origin = spec.origin if spec is not None and spec.origin else ""
        with contextlib.suppress(OSError):
            origin += f":{Path(origin).stat().st_mtime_ns}"
        digest.update(b"\0" + library.encode() + b"\0" + origin.encode())
    return digest.hexdigest()


class CheckedSpecs:
    """Validated spec documents by text, in ``state_dir``: looked up by every load, and
    kept (``save``) only by an apply that went through."""

    def __init__(self, state_dir: Path) -> None:
        self.folder = state_dir / FOLDER
        self.checked: dict[str, dict[str, Any]] = {}  # validated by this process, not saved

    def _path(self, text_sha256: str) -> Path:
        key = hashlib.sha256(f"{text_sha256}:{checker_fingerprint()}".encode()).hexdigest()
        return self.folder / f"{key[:32]}.json"

    def lookup(self, text_sha256: str) -> dict[str, Any] | None:
        """The checked document of the text with this hash, or None."""
        try:
            with self._path(text_sha256).open(encoding="utf-8") as file:
                entry = json.load(file)
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("text_sha256") != text_sha256 \
                or entry.get("checker") != checker_fingerprint() \
                or not isinstance(entry.get("document"), dict):
            return None
        document: dict[str, Any] = entry["document"]
        return document

    def remember(self, text_sha256: str, document: dict[str, Any]) -> None:
        """Note that this text checked out as ``document`` (in memory until ``save``);
        only a document that JSON keeps as it is (a key written ``1:`` would come back
        as ``"1"``, and load differently from a fresh check)."""
        try:
            kept = json.loads(json.dumps(document))
        except (TypeError, ValueError):
            return
        if kept == document:
            self.checked[text_sha256] = kept

    def save(self) -> None:
        """Keep what this process validated (an apply that went through); never fails the
        caller: a cache that cannot be written only costs the next load its checks."""
        if not self.checked or not self.folder.parent.is_dir():
            return
        with contextlib.suppress(OSError, ReconcilerError):
            ensure_private_dir(self.folder)
            for text_sha256, document in self.checked.items():
                self._write(self._path(text_sha256), {
                    "text_sha256": text_sha256, "checker": checker_fingerprint(),
                    "document": document})
            self.checked.clear()
            self._forget_old()

    def _write(self, path: Path, entry: dict[str, Any]) -> None:
        """``entry`` to ``path`` atomically (0600); a partial file never stays behind."""
        import tempfile  # only an apply writes: the loads need not pay for it

        fd, name = tempfile.mkstemp(dir=self.folder, prefix=".partial-")
        partial = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(entry, file)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)

    def _forget_old(self) -> None:
        entries = sorted(self.folder.glob("*.json"), key=_mtime, reverse=True)
        for old in entries[KEEP:]:
            with contextlib.suppress(OSError):
                old.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
