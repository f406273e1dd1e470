"""``reconcile scale N``: rewrite ``spec.replicas`` in the file, keeping everything else.

The file stays the source of truth: only the characters of the replicas value
change (comments, order and layout stay), the result is validated before it
replaces the file, and the replacement is atomic (write, fsync, rename).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from reconciler.errors import SpecError
from reconciler.spec import load_spec, parse_spec

_INTEGER = re.compile(r"[0-9]+")


def rewrite_replicas(path: Path, replicas: int) -> int:
    """Set ``spec.replicas`` to ``replicas`` in ``path``; return the previous value."""
    from reconciler.yamlsafe import load_yaml  # PyYAML: only for the commands that edit

    current = load_spec(path)  # the file must be valid before we touch it
    text = path.read_text(encoding="utf-8")
    position = load_yaml(text).positions.get(("spec", "replicas"))
    lines = text.splitlines(keepends=True)
    if position is None:
        raise SpecError(f"{path}: spec.replicas not found")
    line = lines[position.line - 1]
    start = position.column - 1
    token = _INTEGER.match(line, start)
    if token is None:
        raise SpecError(f"{path}:{position.line}:{position.column}: spec.replicas is not a "
                        "plain number here", hint="edit the file by hand")
    lines[position.line - 1] = line[:start] + str(replicas) + line[token.end():]
    new_text = "".join(lines)
    parse_spec(new_text, label=str(path), base_dir=path.resolve().parent)  # still valid?
    _replace_atomically(path, new_text)
    return current.replicas


def _replace_atomically(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
