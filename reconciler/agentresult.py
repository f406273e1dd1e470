"""What an agent says about its own run: outcome, cost, tokens (``worker.result``).

An agent run in print mode ends with a report.  Claude Code under
``claude -p --output-format json`` prints one JSON object, for example::

    {"type": "result", "subtype": "success", "is_error": false, "result": "Done.",
     "num_turns": 4, "session_id": "5f0c…", "total_cost_usd": 0.0734,
     "usage": {"input_tokens": 9, "cache_creation_input_tokens": 6120,
               "cache_read_input_tokens": 41873, "output_tokens": 1230}}

``worker.result: {format: json, preset: claude-code}`` reads that object from the
end of the agent's output; ``fields`` maps each figure to a dotted path in it
(a list of paths is summed: Claude Code counts tokens read from its cache apart
from new ones, and all of them are input).  Pure: text in, ``AgentReport`` out;
output that holds no such object yields None and the attempt keeps its exit code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.model import AgentReport

PRESETS: Mapping[str, Mapping[str, Sequence[str]]] = {
    "claude-code": {
        "isError": ("is_error",),
        "costUsd": ("total_cost_usd",),
        "inputTokens": ("usage.input_tokens", "usage.cache_creation_input_tokens",
                        "usage.cache_read_input_tokens"),
        "outputTokens": ("usage.output_tokens",),
        "turns": ("num_turns",),
        "sessionId": ("session_id",),
        # what went wrong, when is_error: the result text, else the subtype
        # (error_max_turns, error_during_execution)
        "message": ("result", "subtype"),
    },
}

MESSAGE_LIMIT = 300  # characters of the agent's own words kept as the attempt's error
_SCAN_LINES = 2000  # a report is the last thing printed: look no further back than this


def field_paths(preset: str | None,
                fields: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """The dotted paths of each figure: the preset's, overridden field by field."""
    paths = {name: tuple(p) for name, p in PRESETS.get(preset or "", {}).items()}
    paths.update({name: tuple(p) for name, p in fields.items()})
    return paths


def last_json_object(output: str) -> dict[str, Any] | None:
    """The last JSON object in ``output``: on one line, or spread over the last lines (a
    pretty-printed report).  Lines after it, or broken JSON, make it not a report."""
    lines = output.splitlines()[-_SCAN_LINES:]
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    if not end or not lines[end - 1].rstrip().endswith("}"):
        return None
    for start in range(end - 1, -1, -1):
        if not lines[start].lstrip().startswith("{"):
            continue
        try:
            value = json.loads("\n".join(lines[start:end]))
        except (ValueError, RecursionError):  # deep nesting is not a report either
            continue
        return value if isinstance(value, dict) else None
    return None


def read_report(output: str, paths: Mapping[str, Sequence[str]]) -> AgentReport | None:
    """The agent's report in ``output``, its figures taken by ``paths``; None when the
    output ends in no JSON object.  A figure that is missing or of the wrong kind is
    None (never a guess): a report without ``total_cost_usd`` records no cost."""
    found = last_json_object(output)
    if found is None:
        return None
    is_error = _first(found, paths.get("isError", ())) is True
    message = _first_text(found, paths.get("message", ())) if is_error else None
    return AgentReport(
        is_error=is_error,
        cost_usd=_sum(found, paths.get("costUsd", ()), float),
        input_tokens=_int(_sum(found, paths.get("inputTokens", ()), int)),
        output_tokens=_int(_sum(found, paths.get("outputTokens", ()), int)),
        turns=_int(_sum(found, paths.get("turns", ()), int)),
        session_id=_first_text(found, paths.get("sessionId", ())),
        message=message[:MESSAGE_LIMIT] if message else None)


def _get(document: Mapping[str, Any], path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _first(document: Mapping[str, Any], paths: Sequence[str]) -> Any:
    return next((v for v in (_get(document, p) for p in paths) if v is not None), None)


def _first_text(document: Mapping[str, Any], paths: Sequence[str]) -> str | None:
    return next((v for v in (_get(document, p) for p in paths) if isinstance(v, str) and v),
                None)


def _sum(document: Mapping[str, Any], paths: Sequence[str], kind: type) -> float | None:
    """The sum of the numbers at ``paths`` (missing ones skipped); None if there are none.
    ``kind`` int refuses fractions; booleans are never numbers here."""
    numbers = []
    for path in paths:
        value = _get(document, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value) or value < 0 or (kind is int and value != int(value)):
            continue
        numbers.append(value)
    return float(sum(numbers)) if numbers else None


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
