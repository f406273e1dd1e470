"""Read a task list for ``reconcile task import``, and the limits every task must meet.

Accepted: a YAML (or JSON) list of tasks, or a mapping with a ``tasks`` list.
Each task has ``title`` (required), ``prompt`` or ``promptFile`` (relative to
the file, and under its directory unless ``allow_outside``), and ``priority``.
Errors name file, line and column; nothing is enqueued unless every task is valid.

Input is bounded: a task file is at most ``MAX_TASK_FILE`` bytes, a prompt at most
``MAX_PROMPT`` bytes, and only regular files are read (``/dev/zero`` or a FIFO
would never end).  Text must be encodable as UTF-8: a lone surrogate, from
a JSON ``\\ud800`` escape or an undecodable byte in argv, is refused.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.errors import TaskError
from reconciler.yamlsafe import MAX_BYTES as MAX_YAML_BYTES
from reconciler.yamlsafe import LoadedYaml, YamlLoadError, load_yaml

MAX_TITLE = 200
MAX_PROMPT = 1024 * 1024  # bytes of UTF-8
MAX_TASK_FILE = MAX_YAML_BYTES  # a YAML task file: what the safe YAML loader accepts
MAX_JSON_TASK_FILE = 256 * 1024 * 1024  # JSON and JSON Lines: no aliases to expand
MAX_PRIORITY = 2**63 - 1  # SQLite INTEGER
KNOWN_KEYS = {"title", "prompt", "promptFile", "priority"}


@dataclass(frozen=True)
class NewTask:
    title: str
    prompt: str
    priority: int = 0


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def check_utf8(text: str, what: str) -> str:
    """Refuse text that cannot be stored as UTF-8 (lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TaskError(
            f"{what} is not valid UTF-8 text (character {exc.start + 1} is "
            f"{text[exc.start]!a}, a lone surrogate)",
            hint="use UTF-8 text; in JSON, write the character itself or a valid "
                 "surrogate pair") from exc
    return text


def check_title(title: str) -> str:
    title = check_utf8(title, "the task title").strip()
    if not title:
        raise TaskError("a task title must not be empty")
    if len(title) > MAX_TITLE or "\n" in title:
        raise TaskError(f"a task title must be one line of at most {MAX_TITLE} characters")
    return title


def check_prompt(prompt: str) -> str:
    check_utf8(prompt, "the prompt")
    size = len(prompt.encode("utf-8"))
    if size > MAX_PROMPT:
        raise TaskError(f"the prompt is {size} bytes, over the limit of {_size(MAX_PROMPT)}",
                        hint="shorten it, or have the agent read the rest from the worktree")
    return prompt


def check_priority(priority: int) -> int:
    if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        raise TaskError(f"priority {priority} is out of range",
                        hint=f"use a whole number from {-MAX_PRIORITY} to {MAX_PRIORITY}")
    return priority


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises ``TaskError`` (without naming the file: callers add where) for a missing
    file, a directory, a device or FIFO (refused before it is opened for reading),
    or a file over ``limit``.
    """
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise TaskError("no such file") from exc
    except OSError as exc:
        raise TaskError(exc.strerror or str(exc)) from exc
    if not stat.S_ISREG(info.st_mode):
        kind = ("is a directory" if stat.S_ISDIR(info.st_mode)
                else "is not a regular file (a device, FIFO or socket)")
        raise TaskError(kind, hint="give a regular file")
    too_big = TaskError(f"is larger than the limit of {_size(limit)}",
                        hint="use a smaller file")
    if info.st_size > limit:
        raise too_big
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the check, do not hang
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise TaskError(exc.strerror or str(exc)) from exc
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TaskError("is not a regular file", hint="give a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise too_big
    return data


def read_prompt_file(path: Path, stdin: BinaryIO | None = None) -> str:
    """A prompt from a file: a regular UTF-8 file of at most ``MAX_PROMPT`` bytes, or
    ``-``: ``stdin`` to its end.  Its bytes exactly: CR and CRLF stay as they are."""
    if str(path) == "-":
        source = stdin if stdin is not None else sys.stdin.buffer
        data = source.read(MAX_PROMPT + 1)
        if len(data) > MAX_PROMPT:
            raise TaskError(f"is larger than the limit of {_size(MAX_PROMPT)}",
                            hint="use a smaller prompt")
    else:
        data = read_bounded(path, MAX_PROMPT)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"not UTF-8 text (byte {exc.start})",
                        hint="save the prompt as UTF-8") from exc


JSON_SUFFIXES = (".json",)
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


def read_task_file(path: Path, *, allow_outside: bool = False) -> list[NewTask]:
    """The tasks of a YAML, JSON (``.json``) or JSON Lines (``.jsonl``, ``.ndjson``) file.

    JSON has no aliases, so a JSON file is read as JSON, however many tasks it holds
    (up to ``MAX_JSON_TASK_FILE`` bytes); JSON Lines is read a line at a time.  YAML
    keeps the safe loader's caps (``MAX_TASK_FILE`` bytes, and what aliases may add).
    """
    label = str(path)
    suffix = path.suffix.lower()
    limit = MAX_JSON_TASK_FILE if suffix in (*JSON_SUFFIXES, *JSON_LINES_SUFFIXES) \
        else MAX_TASK_FILE
    try:
        raw = read_bounded(path, limit)
    except TaskError as exc:
        raise TaskError(f"{label}: {exc.message}", hint=exc.hint) from exc
    base = path.parent.resolve()
    if suffix in JSON_LINES_SUFFIXES:
        return _json_lines(raw, label, base, allow_outside)
    if suffix in JSON_SUFFIXES:
        loaded = LoadedYaml(_json(raw, label), {})
    else:
        try:
            loaded = load_yaml(raw)
        except YamlLoadError as exc:
            where = f"{label}:{exc.position.line}:{exc.position.column}" \
                if exc.position else label
            raise TaskError(f"{where}: {exc.message}") from exc
    data = loaded.data
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, dict) and "tasks" in data:
        data, prefix = data["tasks"], ("tasks",)
    if not isinstance(data, list) or not data:
        raise TaskError(f"{label}: expected a non-empty list of tasks (each with a title)")
    try:
        return [_one(loaded, label, (*prefix, i), item, base, allow_outside)
                for i, item in enumerate(data)]
    except TaskError as unplaced:
        if suffix not in JSON_SUFFIXES or len(raw) > MAX_TASK_FILE:
            raise
        # a JSON file keeps no positions (reading it fast is the point): for the error,
        # read it again as YAML (JSON's superset) to say where the task is written
        try:
            positioned = load_yaml(raw)
        except YamlLoadError:
            raise unplaced from None
        for i, item in enumerate(data):
            _one(positioned, label, (*prefix, i), item, base, allow_outside)
        raise


def _json(raw: bytes, label: str, line: int | None = None) -> Any:
    """``raw`` as JSON; errors name ``label`` and the position (``line``: the line of a
    JSON Lines file that ``raw`` is)."""
    where = label if line is None else f"{label}:{line}"
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TaskError(f"{where}: not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        at = f"{exc.lineno}:{exc.colno}" if line is None else f"{line}:{exc.colno}"
        raise TaskError(f"{label}:{at}: malformed JSON: {exc.msg}") from exc
    except RecursionError as exc:
        raise TaskError(f"{where}: JSON nested too deeply") from exc


def _json_lines(raw: bytes, label: str, base: Path, allow_outside: bool) -> list[NewTask]:
    """One task per line (blank lines skipped), each error naming its line."""
    tasks: list[NewTask] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        item = _json(line, label, number)
        tasks.append(_one(LoadedYaml(None, {}), f"{label}:{number}", (len(tasks),), item,
                          base, allow_outside))
    if not tasks:
        raise TaskError(f"{label}: no tasks (one JSON object per line, each with a title)")
    return tasks


def _one(loaded: LoadedYaml, label: str, at: tuple[str | int, ...], item: Any,
         base: Path, allow_outside: bool) -> NewTask:
    def fail(what: str, sub: tuple[str | int, ...] = (), *, key: bool = False,
             hint: str | None = None) -> TaskError:
        pos = loaded.position_of((*at, *sub), key=key)
        where = f"{label}:{pos.line}:{pos.column}" if pos else label
        return TaskError(f"{where}: task {at[-1]}: {what}", hint=hint)

    if not isinstance(item, dict):
        raise fail("expected a mapping with at least `title`")
    unknown = sorted(set(item) - KNOWN_KEYS)
    if unknown:
        raise fail(f"unknown key `{unknown[0]}` (known: {', '.join(sorted(KNOWN_KEYS))})",
                   (str(unknown[0]),), key=True)
    title = item.get("title")
    if not isinstance(title, str):
        raise fail("`title` must be a string", ("title",))
    try:
        title = check_title(title)
    except TaskError as exc:
        raise fail(exc.message, ("title",), hint=exc.hint) from exc
    priority = item.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise fail("`priority` must be a whole number", ("priority",))
    try:
        check_priority(priority)
    except TaskError as exc:
        raise fail(exc.message, ("priority",), hint=exc.hint) from exc
    if "prompt" in item and "promptFile" in item:
        raise fail("give either `prompt` or `promptFile`, not both")
    prompt = item.get("prompt", title)
    if "promptFile" in item:
        prompt = _prompt_file(item["promptFile"], base, allow_outside, fail)
    if not isinstance(prompt, str):
        raise fail("`prompt` must be a string", ("prompt",))
    try:
        check_prompt(prompt)
    except TaskError as exc:
        raise fail(exc.message, ("promptFile" if "promptFile" in item else "prompt",),
                   hint=exc.hint) from exc
    return NewTask(title, prompt, priority)


def _prompt_file(name: Any, base: Path, allow_outside: bool,
                 fail: Callable[..., TaskError]) -> str:
    at = ("promptFile",)
    if not isinstance(name, str) or not name:
        raise fail("`promptFile` must be a path (a string)", at)
    try:
        check_utf8(name, "`promptFile`")
        target = (base / name).resolve()
    except (TaskError, OSError, ValueError) as exc:
        raise fail(f"cannot read promptFile {name!a}: not a usable path", at) from exc
    if not allow_outside and not target.is_relative_to(base):
        raise fail(f"promptFile {name} is outside {base}, the task file's directory "
                   "(symlinks resolved)", at,
                   hint="move the prompt next to the task file, or pass --allow-outside "
                        "to `task import`")
    try:
        return read_prompt_file(target)
    except TaskError as exc:
        raise fail(f"cannot read promptFile {name}: {exc.message}", at, hint=exc.hint) from exc
