"""Read a task list for ``reconcile task import``.

Accepted: a YAML (or JSON) list of tasks, or a mapping with a ``tasks`` list.
Each task has ``title`` (required), ``prompt`` or ``promptFile`` (relative to
the file), and ``priority``.  Errors name file, line and column; nothing is
enqueued unless every task is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import TaskError
from reconciler.yamlsafe import LoadedYaml, YamlLoadError, load_yaml

MAX_TITLE = 200
KNOWN_KEYS = {"title", "prompt", "promptFile", "priority"}


@dataclass(frozen=True)
class NewTask:
    title: str
    prompt: str
    priority: int = 0


def check_title(title: str) -> str:
    title = title.strip()
    if not title:
        raise TaskError("a task title must not be empty")
    if len(title) > MAX_TITLE or "\n" in title:
        raise TaskError(f"a task title must be one line of at most {MAX_TITLE} characters")
    return title


def read_task_file(path: Path) -> list[NewTask]:
    label = str(path)
    try:
        loaded = load_yaml(path.read_bytes())
    except FileNotFoundError as exc:
        raise TaskError(f"{label}: no such file") from exc
    except YamlLoadError as exc:
        where = f"{label}:{exc.position.line}:{exc.position.column}" if exc.position else label
        raise TaskError(f"{where}: {exc.message}") from exc
    data = loaded.data
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, dict) and "tasks" in data:
        data, prefix = data["tasks"], ("tasks",)
    if not isinstance(data, list) or not data:
        raise TaskError(f"{label}: expected a non-empty list of tasks (each with a title)")
    return [_one(loaded, label, (*prefix, i), item, path.parent) for i, item in enumerate(data)]


def _one(loaded: LoadedYaml, label: str, at: tuple[str | int, ...], item: Any,
         base: Path) -> NewTask:
    def fail(what: str, sub: tuple[str | int, ...] = (), *, key: bool = False) -> TaskError:
        pos = loaded.position_of((*at, *sub), key=key)
        where = f"{label}:{pos.line}:{pos.column}" if pos else label
        return TaskError(f"{where}: task {at[-1]}: {what}")

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
        raise fail(exc.message, ("title",)) from exc
    priority = item.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise fail("`priority` must be a whole number", ("priority",))
    if "prompt" in item and "promptFile" in item:
        raise fail("give either `prompt` or `promptFile`, not both")
    prompt = item.get("prompt", title)
    if "promptFile" in item:
        try:
            prompt = (base / str(item["promptFile"])).read_text(encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot read promptFile: {exc.strerror}", ("promptFile",)) from exc
    if not isinstance(prompt, str):
        raise fail("`prompt` must be a string", ("prompt",))
    return NewTask(title, prompt, priority)
