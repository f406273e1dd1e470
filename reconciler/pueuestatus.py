"""Read ``pueue status --json`` (pueue 4.0.x and 3.4.x) into plain, frozen values.

The pueue runtime runs each attempt as a pueue task; the observer and the stand-in
tests learn what pueue is doing from this one document.  Pure: no subprocess, no
files, no clock -- the caller runs ``pueue status --json`` and hands us its output.

What pueue guarantees.  ``pueue status --json`` prints ``serde_json::to_string(&state)``
of pueue_lib's ``State`` (``pueue/src/client/commands/state/mod.rs`` in 4.0.x,
``pueue/src/client/display/state.rs`` in 3.4.x): one object
``{"tasks": {"<id>": Task, ...}, "groups": {"<name>": Group, ...}}`` (two ``BTreeMap``\\ s,
so task ids are decimal string keys).  ``Group`` is ``{"status": "Running" | "Paused" |
"Reset", "parallel_tasks": N}`` (``Reset`` is 4.x only; ``pueue_lib/src/state.rs``).
Enums are serde's default, externally tagged: a unit variant is a bare string
(``"Success"``), any other a one-key object (``{"Failed": 1}``).  The two shapes of a
task (``pueue_lib/src/task.rs``):

- 4.0.0-4.0.4: the timestamps live inside the status, one variant per stage:
  ``{"Queued": {"enqueued_at"}}``, ``{"Stashed": {"enqueue_at"}}``,
  ``{"Running" | "Paused": {"enqueued_at", "start"}}``,
  ``{"Done": {"enqueued_at", "start", "end", "result"}}`` and
  ``{"Locked": {"previous_status": <status>}}`` (while ``pueue edit`` runs).
- 3.4.x: ``"Queued"``, ``"Running"``, ``"Paused"`` and ``"Locked"`` are bare strings,
  ``{"Stashed": {"enqueue_at"}}`` an object, and a finished task is ``{"Done": <result>}``;
  ``enqueued_at``, ``start``, ``end`` (and ``prev_status``) sit at the task's top level.

In both, ``<result>`` (``TaskResult``) is ``"Success"``, ``{"Failed": <exit code>}``,
``{"FailedToSpawn": "<error>"}``, ``"Killed"``, ``"Errored"`` or ``"DependencyFailed"``,
and timestamps are chrono's RFC 3339 with nanoseconds and the daemon's local offset
(``2025-06-07T10:00:01.118290514+02:00``).

The shape is decided once per document, from statuses only one version can print
(see ``parse_status``); anything else pueue might add later -- a new variant, a new
field -- reads as ``unknown`` or is ignored, so a newer pueue degrades instead of
breaking the observer.

Secrets.  A task carries ``envs`` (the submitter's whole environment), ``command``,
``original_command`` and ``path``.  None of them is ever read: the values below have
no such fields, and error messages name positions and task ids, never document text.
Our tasks are recognised by their label (``label_for``/``parse_label``), not by id:
pueue hands ids out again after ``pueue clean``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Literal

from reconciler.errors import PueueStatusError
from reconciler.paths import POOL_NAME

__all__ = [
    "PueueGroup",
    "PueueState",
    "PueueStatusError",
    "PueueTask",
    "label_for",
    "parse_label",
    "parse_status",
    "parse_timestamp",
]

TaskState = Literal["queued", "stashed", "running", "paused", "locked", "done", "unknown"]
TaskResult = Literal["success", "failed", "failed_to_spawn", "killed", "errored",
                     "dependency_failed", "unknown"]
GroupStatus = Literal["running", "paused", "reset", "unknown"]
Version = Literal["3", "4"]

_WHAT = "pueue status --json"
DEFAULT_GROUP = "default"  # pueue_lib's PUEUE_DEFAULT_GROUP
DEFAULT_PARALLEL_TASKS = 1  # what `pueue group add` gives a group without --parallel


@dataclass(frozen=True)
class PueueTask:
    """One pueue task, without its command, path or environment."""

    id: int
    group: str
    label: str | None
    priority: int
    state: TaskState
    result: TaskResult | None  # set exactly when ``state == "done"``
    exit_code: int | None  # the N of ``Failed(N)``
    enqueued_at: float | None  # Unix seconds
    started_at: float | None
    ended_at: float | None
    # when it was first added (a task's top-level ``created_at`` in both versions): unlike
    # ``enqueued_at`` it stays the same through ``restart --in-place``, so with the id it
    # tells one task from a later one that was given the same id after ``clean``
    created_at: float | None = None


@dataclass(frozen=True)
class PueueGroup:
    name: str
    status: GroupStatus
    parallel_tasks: int  # 0 means no limit


@dataclass(frozen=True)
class PueueState:
    version: Version  # the shape the document was read in: "4" (4.0.x) or "3" (3.4.x)
    tasks: Mapping[int, PueueTask]  # by id, ascending
    groups: Mapping[str, PueueGroup]  # by name, sorted


_TASK_STATES: dict[str, TaskState] = {
    "Queued": "queued", "Stashed": "stashed", "Running": "running", "Paused": "paused",
    "Locked": "locked", "Done": "done"}
_RESULTS: dict[str, TaskResult] = {
    "Success": "success", "Failed": "failed", "FailedToSpawn": "failed_to_spawn",
    "Killed": "killed", "Errored": "errored", "DependencyFailed": "dependency_failed"}
_GROUP_STATUSES: dict[str, GroupStatus] = {
    "Running": "running", "Paused": "paused", "Reset": "reset"}

# What only one version prints (see the module docstring).
_V3_BARE_STATUSES = frozenset({"Queued", "Running", "Paused", "Locked"})
_UNIT_RESULTS = frozenset({"Success", "Killed", "Errored", "DependencyFailed"})
_DATA_RESULTS = frozenset({"Failed", "FailedToSpawn"})
_V4_TIMED_STATUSES = frozenset({"Queued", "Running", "Paused", "Done"})
_V3_TOP_LEVEL_FIELDS = ("prev_status", "enqueued_at", "start", "end")

# A usize in decimal, as serde_json writes a BTreeMap<usize, _> key.
_TASK_KEY = re.compile(r"0|[1-9][0-9]{0,19}", re.ASCII)
# Locked wraps the status it interrupted; pueue only locks queued or stashed tasks,
# so one level is the real depth.  The cap only bounds a hostile document.
_MAX_LOCKED_DEPTH = 8


def parse_status(text: str | bytes, *, version_hint: Version = "4") -> PueueState:
    """Read the output of ``pueue status --json`` (pueue 4.0.x or 3.4.x).

    The shape is detected once for the whole document: a bare-string status
    (``"Running"``) or a ``Done`` holding a bare result (``{"Done": "Success"}``,
    ``{"Done": {"Failed": 1}}``) means 3.4.x; a status object holding ``enqueued_at``
    or ``result`` (or ``Locked``'s ``previous_status``) means 4.0.x.  Only if no status
    tells (no tasks, or only stashed ones) do the 3.4.x top-level fields (``start``,
    ``end``, ``enqueued_at``, ``prev_status``) decide, and failing those ``version_hint``.

    Tolerated, because a newer or older pueue may print them: unknown status, result
    or group-status variants (read as ``unknown``); a status of the other shape that
    proves nothing (read by its variant name, its timestamps looked for where the
    document's version keeps them); missing or mistyped optional fields (label None,
    priority 0, group ``default``, parallel_tasks 1, timestamps None); extra fields
    (ignored).  The task's id is its key in ``tasks``.

    Refused with a one-line ``PueueStatusError``: input that is not UTF-8 JSON; a top
    level that is not ``{"tasks": {...}, "groups": {...}}``; a task key that is not a
    non-negative integer; a task or group that is not an object; statuses of both
    shapes in one document.  Pueue's typed output can print none of these, so such a
    document is not pueue's state and nothing in it is trusted: one bad task is not
    skipped, because reading the others as the whole truth would let the observer
    take a live worker's task for gone and start it a second time.
    """
    document, problem = _load(text)
    if problem is not None:
        raise PueueStatusError(f"{_WHAT}: {problem}")
    raw_tasks, raw_groups = _top_level(document)
    tasks = _task_objects(raw_tasks)
    version = _detect_version(tasks, version_hint)
    parsed_tasks = {task_id: _task(task_id, raw, version) for task_id, raw in tasks}
    parsed_groups = {name: _group(index, name, raw)
                     for index, (name, raw) in enumerate(raw_groups.items())}
    return PueueState(
        version=version,
        tasks=MappingProxyType(dict(sorted(parsed_tasks.items()))),
        groups=MappingProxyType(dict(sorted(parsed_groups.items()))))


def _load(text: str | bytes) -> tuple[object, str | None]:
    """The decoded document, or why there is none.  Errors are built outside the
    ``except`` so the raised error holds no reference to the document
    (``JSONDecodeError.doc`` is the whole text)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            return None, f"not UTF-8 (byte {error.start + 1})"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as error:
        return None, f"not JSON ({error.msg}, line {error.lineno} column {error.colno})"
    except (ValueError, RecursionError):  # a number of over 4300 digits; deep nesting
        return None, "not JSON Python can read (a number too long or nesting too deep)"


def _top_level(document: object) -> tuple[dict[str, object], dict[str, object]]:
    if not isinstance(document, dict):
        raise PueueStatusError(
            f'{_WHAT}: expected an object with "tasks" and "groups", got {_kind(document)}')
    found: list[dict[str, object]] = []
    for name in ("tasks", "groups"):
        if name not in document:
            raise PueueStatusError(f'{_WHAT}: no "{name}" in the document')
        value = document[name]
        if not isinstance(value, dict):
            raise PueueStatusError(f'{_WHAT}: "{name}" is {_kind(value)}, not an object')
        found.append(value)
    return found[0], found[1]


def _task_objects(tasks: dict[str, object]) -> list[tuple[int, dict[str, object]]]:
    """Each task's id and object, in document order; refuses what pueue cannot print."""
    found = []
    for index, (key, raw) in enumerate(tasks.items()):
        if not _TASK_KEY.fullmatch(key):
            raise PueueStatusError(f'{_WHAT}: task #{index + 1} in "tasks" has a key that is'
                                   " not a task id (a non-negative integer)")
        if not isinstance(raw, dict):
            raise PueueStatusError(f"{_WHAT}: task {int(key)} is {_kind(raw)}, not an object")
        found.append((int(key), raw))
    return found


def _detect_version(tasks: list[tuple[int, dict[str, object]]], hint: Version) -> Version:
    if hint not in ("3", "4"):
        raise ValueError(f"version_hint must be '3' or '4', not {hint!r}")
    seen: dict[Version, int] = {}  # version -> the first task showing it
    top_level_v3 = False
    for task_id, task in tasks:
        shape = _status_shape(task.get("status"))
        if shape is not None:
            seen.setdefault(shape, task_id)
        top_level_v3 = top_level_v3 or any(field in task for field in _V3_TOP_LEVEL_FIELDS)
    if len(seen) == 2:
        raise PueueStatusError(f"{_WHAT}: statuses in both the pueue 3.x and 4.x shapes"
                               f" (task {seen['3']} is 3.x, task {seen['4']} is 4.x)")
    if seen:
        return next(iter(seen))
    return "3" if top_level_v3 else hint


def _status_shape(status: object) -> Version | None:
    """The version a task's status proves, if any."""
    if isinstance(status, str):
        return "3" if status in _V3_BARE_STATUSES else None
    variant = _single_key(status)
    if variant is None:
        return None
    name, inner = variant
    if name == "Done":
        if isinstance(inner, str):
            return "3" if inner in _UNIT_RESULTS else None
        if isinstance(inner, dict):
            if "result" in inner or "enqueued_at" in inner:
                return "4"
            result = _single_key(inner)
            if result is not None and result[0] in _DATA_RESULTS:
                return "3"
        return None
    if name in _V4_TIMED_STATUSES and isinstance(inner, dict) and "enqueued_at" in inner:
        return "4"
    if name == "Locked" and isinstance(inner, dict) and "previous_status" in inner:
        return "4"
    return None


def _task(task_id: int, raw: dict[str, object], version: Version) -> PueueTask:
    # Only these fields are read: never envs, command, original_command or path.
    status = raw.get("status")
    if version == "4":
        state, result, exit_code, times = _status_v4(status)
    else:
        state, result, exit_code = _status_v3(status)
        times = raw
    group = raw.get("group")
    label = raw.get("label")
    priority = _int(raw.get("priority"))
    return PueueTask(
        id=task_id,
        group=group if isinstance(group, str) else DEFAULT_GROUP,
        label=label if isinstance(label, str) else None,
        priority=0 if priority is None else priority,
        state=state, result=result, exit_code=exit_code,
        enqueued_at=parse_timestamp(times.get("enqueued_at")),
        started_at=parse_timestamp(times.get("start")),
        ended_at=parse_timestamp(times.get("end")),
        created_at=parse_timestamp(raw.get("created_at")))


_Outcome = tuple[TaskState, TaskResult | None, int | None]


def _status_v4(status: object) -> tuple[TaskState, TaskResult | None, int | None,
                                         Mapping[str, object]]:
    """State, result, exit code and the object holding the timestamps."""
    if isinstance(status, str):  # no 4.x variant is bare: read by name, like 3.x does
        status = {status: None}
    variant = _single_key(status)
    if variant is None:
        return "unknown", None, None, {}
    name, inner = variant
    state = _TASK_STATES.get(name, "unknown")
    fields = inner if isinstance(inner, dict) else {}
    if state == "done":
        result, exit_code = _result(fields.get("result"))
        return state, result, exit_code, fields
    if state == "locked":  # the timestamps are those of the status it interrupted
        for _ in range(_MAX_LOCKED_DEPTH):
            previous = _single_key(fields.get("previous_status"))
            if previous is None or not isinstance(previous[1], dict):
                return state, None, None, {}
            fields = previous[1]
            if previous[0] != "Locked":
                break
    return state, None, None, fields


def _status_v3(status: object) -> _Outcome:
    if isinstance(status, str):
        name, inner = status, None
    else:
        variant = _single_key(status)
        if variant is None:
            return "unknown", None, None
        name, inner = variant
    state = _TASK_STATES.get(name, "unknown")
    if state == "done":
        result, exit_code = _result(inner)
        return state, result, exit_code
    return state, None, None


def _result(raw: object) -> tuple[TaskResult, int | None]:
    """A ``TaskResult``: its kind and, for ``Failed(N)``, N.  FailedToSpawn's message is
    dropped (it can quote the command)."""
    if isinstance(raw, str):
        return _RESULTS.get(raw, "unknown"), None
    variant = _single_key(raw)
    if variant is None:
        return "unknown", None
    name, inner = variant
    kind = _RESULTS.get(name, "unknown")
    return kind, _int(inner) if kind == "failed" else None


def _group(index: int, name: str, raw: object) -> PueueGroup:
    if not isinstance(raw, dict):
        raise PueueStatusError(
            f'{_WHAT}: group #{index + 1} in "groups" is {_kind(raw)}, not an object')
    status = raw.get("status")
    parallel = _int(raw.get("parallel_tasks"))
    return PueueGroup(
        name=name,
        status=_GROUP_STATUSES.get(status, "unknown") if isinstance(status, str) else "unknown",
        parallel_tasks=DEFAULT_PARALLEL_TASKS if parallel is None or parallel < 0 else parallel)


def _single_key(value: object) -> tuple[str, object] | None:
    """A serde enum's ``{"Variant": data}``, or None if ``value`` is not one."""
    if isinstance(value, dict) and len(value) == 1:
        ((name, inner),) = value.items()
        return name, inner
    return None


def _int(value: object) -> int | None:
    """``value`` if it is a JSON integer (not a boolean, not 1.0), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _kind(value: object) -> str:
    """A JSON value's type, for messages that must not quote the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# RFC 3339 as chrono writes it, tolerating what the RFC allows besides: any number of
# fraction digits, 't'/' ' for 'T', 'z' for 'Z'; and an offset with seconds (chrono's
# Local can have one for historical zones).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,64}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?)", re.ASCII)


def parse_timestamp(value: object) -> float | None:
    """Unix seconds of an RFC 3339 timestamp (``2025-06-07T10:00:01.118290514+02:00``),
    or None if ``value`` is not one.  A leap second (``:60``) counts as the next second."""
    if not isinstance(value, str):
        return None
    return _timestamp(value)


# The controller reads the same tasks' timestamps on every pass (every 2 s while pueue
# holds work): each is worked out once.  Four per task, so this holds ~16k tasks' worth.
@functools.lru_cache(maxsize=1 << 16)
def _timestamp(value: str) -> float | None:
    match = _RFC3339.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    fraction, sign, offset_h, offset_m, offset_s = match.group(7, 8, 9, 10, 11)
    offset = timedelta()
    if sign is not None:
        offset = timedelta(hours=int(offset_h), minutes=int(offset_m),
                           seconds=int(offset_s or 0))
        if int(offset_m) > 59 or int(offset_s or 0) > 59 or offset >= timedelta(hours=24):
            return None
        offset = -offset if sign == "-" else offset
    leap = second == 60
    try:
        seconds = datetime(year, month, day, hour, minute, 59 if leap else second,
                           tzinfo=timezone(offset)).timestamp()
    except (ValueError, OverflowError):  # February 30th and the like; a 25th hour
        return None
    return seconds + (1 if leap else 0) + (float("0." + fraction) if fraction else 0.0)


LABEL_PREFIX = "reconciler"
_POSITIVE = re.compile(r"[1-9][0-9]{0,17}", re.ASCII)  # below 10**18: int() never balks


def label_for(pool: str, task_id: int, attempt: int) -> str:
    """The pueue label of ``attempt`` of ``task_id`` in ``pool``:
    ``reconciler:<pool>:<task_id>:<attempt>``.  ``parse_label`` reads it back."""
    if not POOL_NAME.fullmatch(pool):
        raise ValueError(f"invalid pool name {pool!r}")
    for name, number in (("task_id", task_id), ("attempt", attempt)):
        if _int(number) is None or not _POSITIVE.fullmatch(str(number)):
            raise ValueError(f"{name} must be a positive integer below 10**18, not {number!r}")
    return f"{LABEL_PREFIX}:{pool}:{task_id}:{attempt}"


def parse_label(label: str | None) -> tuple[str, int, int] | None:
    """``(pool, task_id, attempt)`` of a label ``label_for`` made, else None.

    Strict, so a task someone else queued is never taken for one of ours: exactly four
    ``:``-separated parts, a pool name as ``workers.yaml`` allows (``metadata.name``),
    and positive decimal ids without sign, spaces or leading zeros.
    """
    if not isinstance(label, str):
        return None
    parts = label.split(":")
    if len(parts) != 4 or parts[0] != LABEL_PREFIX:
        return None
    _, pool, task_id, attempt = parts
    if not (POOL_NAME.fullmatch(pool) and _POSITIVE.fullmatch(task_id)
            and _POSITIVE.fullmatch(attempt)):
        return None
    return pool, int(task_id), int(attempt)
