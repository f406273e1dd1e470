"""Plain-data renderings for ``-o json`` and safe text, without rich.

``-o json`` paths import only this module, so a script asking for JSON does not
pay for rich (the text renderings are ``reconciler.report.render``, which
re-exports these).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from reconciler.model import AttemptRow, TaskRow

# C0 controls, DEL and the C1 range: ESC starts terminal sequences (retitle the window,
# clear the screen, rewrite the clipboard...), BEL ends some, C1 CSI/OSC do both at once;
# and the invisible characters that change how a line reads: bidirectional overrides,
# embeddings, isolates and marks (a title could show its end reversed, "Trojan Source"),
# and the line and paragraph separators (a new line to some terminals and editors)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                      "\u2028\u2029]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str, *, multiline: bool = False) -> str:
    """``text`` with every control character written out visibly (ESC as ``\\x1b``).

    Task titles, errors, agent output and event messages come from outside: shown raw
    they could drive the operator's terminal. Nothing is dropped, so nothing is hidden.
    A tab stays, and so does a newline where ``multiline`` (an output tail, an error).
    """
    keep = "\t\n" if multiline else "\t"
    return _CONTROL.sub(lambda m: m[0] if m[0] in keep else _visible(m[0]), text)


def _visible(char: str) -> str:
    code = ord(char)
    return _NAMED.get(char, f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=False, default=str))


_COMPACT = json.JSONEncoder(default=str)  # made once: json.dumps(default=) makes one a call


def print_json_array(items: Iterable[Any]) -> None:
    """A JSON array written as ``items`` come, one compact object per line, so a listing of
    any length needs the memory of one element (``print_json`` builds the whole text)."""
    out = sys.stdout
    separator = "[\n"
    for item in items:
        out.write(separator + _COMPACT.encode(item))
        separator = ",\n"
    out.write("[]\n" if separator == "[\n" else "\n]\n")


def task_document(task: TaskRow, attempts: Iterable[AttemptRow] | None = None,
                  ) -> dict[str, Any]:
    """``asdict(task)``, made shallow: a task's fields are plain values, and ``asdict``'s
    deep copy was 70 % of ``task list -o json``'s time over 100,000 tasks."""
    doc = dict(vars(task))  # TaskRow has no __slots__: its __dict__ holds the fields in order
    if attempts is not None:
        doc["attempt_details"] = [asdict(a) for a in attempts]
    return doc
