"""Load, validate and type a ``workers.yaml`` pool spec.

The file is parsed with ``yamlsafe`` (size and alias caps, positions kept),
checked against ``schemas/workers.schema.json`` (JSON Schema 2020-12, the
single source of field names and defaults), then checked for what a schema
cannot say (placeholders, threshold order) and typed as the frozen values of
``reconciler.specmodel`` (re-exported here for callers that load specs).
Every problem becomes one line: ``file:line:col: json.path: what (how to fix)``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.durations import parse_duration
from reconciler.errors import GitError, SpecError
from reconciler.limits import MAX_YAML_BYTES
from reconciler.naming import branch_for
from reconciler.specmodel import (
    HealthSpec,
    HooksSpec,
    PoolSpec,
    RateLimit,
    RestartPolicy,
    TaskPolicy,
    WorkerSpec,
    WorktreeSpec,
    canonical_json,
    is_loopback,
    parse_listen,
    spec_from_document,
)
from reconciler.templates import (
    BRANCH_PLACEHOLDERS,
    COMMAND_PLACEHOLDERS,
    TemplateError,
    check_template,
    prefill,
)

# jsonschema and PyYAML cost a process tens of milliseconds and megabytes to import:
# they are loaded when a file is read, not by every command that handles a spec
# (``status``, ``diff --pool``, the controller's passes, every worker; issue 9).
if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

    from reconciler.checkedspecs import CheckedSpecs
    from reconciler.yamlsafe import LoadedYaml, PathKey, Position

__all__ = ["HealthSpec", "HooksSpec", "PoolSpec", "RateLimit", "RestartPolicy", "TaskPolicy",
           "WorkerSpec", "WorktreeSpec", "canonical_json", "load_spec", "parse_spec",
           "spec_from_document", "with_repo"]

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "workers.schema.json"

# What the shipped examples say for ``repo``: a path that cannot be anyone's repository,
# so an example run as is stops at ``validate`` with how to fix it (issue 12), instead
# of quietly making some other checkout (the tool's own clone, say) the target.
REPO_PLACEHOLDER = "/path/to/your/repo"


@cache
def load_schema() -> dict[str, Any]:
    """The pool JSON Schema shipped with the package."""
    with SCHEMA_PATH.open(encoding="utf-8") as fh:
        schema: dict[str, Any] = json.load(fh)
    return schema


# --------------------------------------------------------------------------- loading


def load_spec(path: str | Path, checked: CheckedSpecs | None = None) -> PoolSpec:
    """Read, validate and type the spec at ``path``; raise ``SpecError`` if invalid.
    ``checked``: texts validated before (by ``apply``), whose checks are not repeated."""
    file = Path(path)
    label = str(path)
    try:
        if file.exists() and not file.is_file():
            raise SpecError(f"{label}: not a regular file", hint="pass the pool spec with -f")
        with file.open("rb") as fh:  # never read more than the cap: /dev/zero must not hang
            raw = fh.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError as exc:
        raise SpecError(f"{label}: no such file", hint="pass the pool spec with -f") from exc
    except OSError as exc:
        raise SpecError(f"{label}: cannot read: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line_start = before.rfind(b"\n") + 1
        line, column = before.count(b"\n") + 1, len(before[line_start:].decode("utf-8")) + 1
        raise SpecError(f"{label}:{line}:{column}: not UTF-8 text (byte {exc.start}; "
                        "save the file as UTF-8)") from exc
    return parse_spec(text, label=label, base_dir=file.resolve().parent,
                      source_path=file.resolve(), checked=checked)


def parse_spec(text: str, *, label: str, base_dir: Path, source_path: Path | None = None,
               checked: CheckedSpecs | None = None) -> PoolSpec:
    """Validate spec ``text``; relative paths are taken from ``base_dir``."""
    sha = hashlib.sha256(text.encode()).hexdigest()
    cached = checked.lookup(sha) if checked is not None else None
    if cached is not None:
        try:
            return _typed(cached, base_dir, source_path, sha)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # an entry that does not type (damaged, or foreign): check the text in full
    document = _checked_document(text, label)
    if checked is not None:
        checked.remember(sha, document)
    return _typed(document, base_dir, source_path, sha)


def _typed(document: dict[str, Any], base_dir: Path, source_path: Path | None,
           sha: str) -> PoolSpec:
    """A checked document with its paths resolved against ``base_dir``, as a ``PoolSpec``
    (the document is changed in place)."""
    spec = document["spec"]
    spec["repo"] = _path(base_dir, spec["repo"])
    if "dir" in spec["worktrees"]:
        spec["worktrees"]["dir"] = _path(base_dir, spec["worktrees"]["dir"])
    if "config" in spec.get("pueue", {}):
        spec["pueue"]["config"] = _path(base_dir, spec["pueue"]["config"])
    if "bearerTokenFile" in spec.get("metrics", {}):
        spec["metrics"]["bearerTokenFile"] = str(
            (base_dir / spec["metrics"]["bearerTokenFile"]).resolve())
    _resolve_spec_dir(spec, base_dir)
    return spec_from_document(document, source_path=source_path, source_sha256=sha)


def _path(base_dir: Path, written: str) -> str:
    """A path of the spec, absolute: ``~`` and ``~user`` as a shell reads them
    (``repo: ~/src/app`` is the operator's checkout, not a directory named ``~``), the
    rest relative to the spec file.  ``os.path.expanduser`` leaves a ``~nobody`` it
    cannot expand as written (``Path.expanduser`` would raise)."""
    return str((base_dir / os.path.expanduser(written)).resolve())  # noqa: PTH111


def _checked_document(text: str, label: str) -> dict[str, Any]:
    """``text`` parsed, validated and with its defaults filled in (paths as written);
    ``SpecError`` with every problem found."""
    from reconciler.yamlsafe import YamlLoadError, load_yaml

    try:
        loaded = load_yaml(text)
    except YamlLoadError as exc:
        raise SpecError(_locate(label, exc.position, None, exc.message)) from exc
    if loaded.data is None:
        raise SpecError(f"{label}: the file is empty (write a WorkerPool spec: apiVersion, "
                        "kind, metadata and spec)")
    problems = list(_schema_problems(loaded, label))
    if not problems:
        problems = list(_semantic_problems(loaded, label))
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise SpecError(problems[0] + more, problems=tuple(problems))
    document: dict[str, Any] = _with_defaults(loaded.data, load_schema())
    return document


def _resolve_spec_dir(spec: dict[str, Any], base_dir: Path) -> None:
    """Replace ``{spec_dir}`` in argv templates by the spec file's directory.

    It is resolved once, at load, so the stored document is self-contained; the
    path's own braces are doubled so they stay literal when rendered later.
    """
    values = {"spec_dir": str(base_dir.resolve())}

    def fix(argv: list[str]) -> list[str]:
        return [prefill(element, values) for element in argv]

    spec["worker"]["command"] = fix(spec["worker"]["command"])
    spec["worktrees"]["setup"] = [fix(a) for a in spec["worktrees"]["setup"]]
    for hook in ("onSuccess", "onFailure"):
        spec["hooks"][hook] = [fix(a) for a in spec["hooks"][hook]]


def with_repo(spec: PoolSpec, repo: Path, *, tmux_socket: str | None = None) -> PoolSpec:
    """The same spec aimed at another repository (and tmux socket): used by the demo."""
    document = copy.deepcopy(dict(spec.document))
    document["spec"]["repo"] = str(repo.resolve())
    if tmux_socket is not None:
        document["spec"]["tmux"]["socket"] = tmux_socket
    return spec_from_document(document, source_path=spec.source_path,
                              source_sha256=spec.source_sha256)


# --------------------------------------------------------------------------- defaults


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = root["$defs"][ref.removeprefix("#/$defs/")]
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _with_defaults(data: Any, root: Mapping[str, Any]) -> Any:
    """Copy ``data`` filling in every ``default`` the schema declares."""

    def fill(value: Any, schema: Mapping[str, Any]) -> Any:
        schema = _resolve(schema, root)
        if isinstance(value, dict) and "properties" in schema:
            out = dict(value)
            for key, sub in schema["properties"].items():
                sub = _resolve(sub, root)
                if key not in out and "default" in sub:
                    out[key] = copy.deepcopy(sub["default"])
                if key in out:
                    out[key] = fill(out[key], sub)
            return out
        return copy.deepcopy(value)

    return fill(data, root)


# --------------------------------------------------------------------------- problems


def _locate(label: str, position: Position | None, path: PathKey | None, what: str) -> str:
    where = f"{label}:{position.line}:{position.column}" if position else label
    if path:
        return f"{where}: {format_path(path)}: {what}"
    return f"{where}: {what}"


def format_path(path: Iterable[str | int]) -> str:
    """Render a JSON path as ``spec.worker.command[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(document)"


_JSON_TYPES = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}


_ENV = ("spec", "worker", "env")


def _kind(value: Any) -> str:
    """What ``value`` is, without showing it: ``an integer``, ``an empty list``."""
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list | str) and not value:
        return f"an empty {kind.removeprefix('a ')}"
    return kind


def _describe(value: Any) -> str:
    if isinstance(value, dict | list) or value is None:
        return _kind(value)
    kind = _JSON_TYPES.get(type(value), type(value).__name__)
    shown = json.dumps(value, ensure_ascii=False, default=str)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{kind} {shown}"


def _expected(error: ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if "x-expected" in schema:
        return str(schema["x-expected"])
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [
            error.validator_value]
        names = {"object": "a mapping", "array": "a list", "string": "a string",
                 "integer": "a whole number", "number": "a number", "boolean": "true or false"}
        return " or ".join(names.get(str(t), str(t)) for t in types)
    if error.validator == "minItems":
        return f"at least {error.validator_value} item(s)"
    if error.validator == "minLength":
        return "a non-empty string"
    return error.message


def _pattern(_validator: Any, pattern: str, instance: Any,
             _schema: Any) -> Iterable[ValidationError]:
    """``pattern`` as JSON Schema (ECMA-262) means it: a final ``$`` is the end of the string.

    Python's ``$`` also matches before a trailing newline, so ``"rt\\n"`` would pass
    ``^[a-z]+$`` and reach tmux as a socket name (or the environment as a variable name).
    """
    if not isinstance(instance, str):
        return
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + "\\Z"
    if not re.search(pattern, instance):
        from jsonschema.exceptions import ValidationError

        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _validator_class() -> Any:
    """Draft 2020-12 with our ``pattern``, an integer that is not a float (JSON Schema
    counts 1.0 as an integer, but a replica count of 1.0 is a typo, not a number), and
    a number that is finite (YAML's ``.nan`` passes every minimum and maximum)."""
    import math

    import jsonschema

    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many({
        "integer": lambda _c, value: isinstance(value, int) and not isinstance(value, bool),
        "number": lambda _c, value: isinstance(value, int | float)
        and not isinstance(value, bool) and math.isfinite(value)})
    return jsonschema.validators.extend(  # type: ignore[no-untyped-call]
        jsonschema.Draft202012Validator, validators={"pattern": _pattern},
        type_checker=checker)


def _schema_problems(loaded: LoadedYaml, label: str) -> Iterable[str]:
    validator = _validator_class()(load_schema())
    # unknown keys first: a misspelt required key is also reported missing, and the
    # typo ("did you mean") is the line that says how to fix both
    found: list[tuple[tuple[int, int, int], str]] = []
    for error in validator.iter_errors(loaded.data):
        path: PathKey = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = sorted(error.schema.get("properties", {}))
            for key in error.instance:
                if key in known:
                    continue
                pos = loaded.position_of((*path, str(key)), key=True)
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                fix = f"did you mean `{close[0]}`?" if close else "known keys: " + ", ".join(known)
                where = _locate(label, pos, (*path, str(key)), f"unknown key `{key}` ({fix})")
                found.append(((0, *_sort_key(pos)), where))
            continue
        pos = loaded.position_of(path)
        if error.validator == "required":
            what = f"missing required key: {error.message.split(' ')[0]}"
        elif "propertyNames" in error.absolute_schema_path:
            what = (f"{json.dumps(error.instance)} is not a valid environment variable name "
                    "(letters, digits and _, not starting with a digit)")
            pos = loaded.position_of((*path, str(error.instance)), key=True)
        elif path[:3] == _ENV or _is_webhook_secret(path):  # say what kind, never what
            quote = " (quote the value)" if len(path) > 3 and error.validator == "type" else ""
            what = f"expected {_expected(error)}{quote}, got {_kind(error.instance)}"
        else:
            what = f"expected {_expected(error)}, got {_describe(error.instance)}"
        found.append(((1, *_sort_key(pos)), _locate(label, pos, path, what)))
    found.sort(key=lambda item: item[0])
    return [message for _, message in found]


def _is_webhook_secret(path: PathKey) -> bool:
    """A webhook's URL (it may hold a token, as Slack's do) or secret: never printed."""
    return path[:3] == ("spec", "alerts", "webhooks") and len(path) > 4 \
        and path[4] in ("url", "secret")


def _sort_key(pos: Position | None) -> tuple[int, int]:
    return (pos.line, pos.column) if pos else (0, 0)


def _semantic_problems(loaded: LoadedYaml, label: str) -> Iterable[str]:
    """What the schema cannot express: placeholders and threshold order."""
    spec = loaded.data["spec"]
    if spec["repo"].rstrip("/") == REPO_PLACEHOLDER:
        repo: PathKey = ("spec", "repo")
        yield _locate(label, loaded.position_of(repo), repo,
                      f"{REPO_PLACEHOLDER} is the example's placeholder (copy this file "
                      "into your repository and set `repo: .`, or set repo to your "
                      "repository's path: absolute, ~/..., or relative to this file)")
    checks: list[tuple[PathKey, str, frozenset[str]]] = []
    for i, element in enumerate(spec["worker"]["command"]):
        checks.append((("spec", "worker", "command", i), element, COMMAND_PLACEHOLDERS))
    for hook in ("onSuccess", "onFailure"):
        for i, argv in enumerate(spec.get("hooks", {}).get(hook, [])):
            for j, element in enumerate(argv):
                checks.append((("spec", "hooks", hook, i, j), element, COMMAND_PLACEHOLDERS))
    for i, argv in enumerate(spec.get("worktrees", {}).get("setup", [])):
        for j, element in enumerate(argv):
            checks.append((("spec", "worktrees", "setup", i, j), element, COMMAND_PLACEHOLDERS))
    if "branch" in spec.get("worktrees", {}):
        checks.append((("spec", "worktrees", "branch"), spec["worktrees"]["branch"],
                       BRANCH_PLACEHOLDERS))
    for path, template, allowed in checks:
        if path[1] != "worktrees" or path[2] != "branch":
            allowed = allowed | {"spec_dir"}
        try:
            check_template(template, allowed)
        except TemplateError as exc:
            yield _locate(label, loaded.position_of(path), path, str(exc))
    full = _with_defaults(loaded.data, load_schema())["spec"]
    yield from _branch_template_problems(loaded, label, full)
    for key in ("pattern", "resetPattern"):
        regex = full["worker"].get("rateLimit", {}).get(key)
        if regex is None:
            continue
        try:
            re.compile(regex)
        except re.error as exc:
            path = ("spec", "worker", "rateLimit", key)
            yield _locate(label, loaded.position_of(path), path,
                          f"not a valid regular expression: {exc}")
    result = full["worker"].get("result")
    if result is not None and "preset" not in result and not result.get("fields"):
        path = ("spec", "worker", "result")
        yield _locate(label, loaded.position_of(path), path,
                      "says nothing to read: set preset: claude-code, or fields such as "
                      "costUsd: total_cost_usd")
    for path in (("spec", "tasks", "maxCostUsd"), ("spec", "budget", "perDayUsd")):
        if path[2] in full.get(path[1], {}) and result is None:
            yield _locate(label, loaded.position_of(path), path,
                          "needs the agent's cost: set worker.result (e.g. preset: "
                          "claude-code)")
    yield from _metrics_problems(loaded, label, full.get("metrics", {}))
    if "pueue" in spec and full["runtime"] != "pueue":
        path = ("spec", "pueue")
        yield _locate(label, loaded.position_of(path), path,
                      f"is read only with runtime: pueue (runtime is {full['runtime']}); set "
                      "runtime: pueue, or remove this section")
    yield from _webhook_event_problems(loaded, label, full.get("alerts", {}))
    yield from _sync_problems(loaded, label, full.get("sync"))
    for section, key in (("health", "heartbeatInterval"), ("tasks", "timeout"),
                         ("worker", "stopGrace")):
        if parse_duration(full[section][key]) <= 0 and key != "stopGrace":
            path = ("spec", section, key)
            yield _locate(label, loaded.position_of(path), path,
                          f"must be longer than 0, got {full[section][key]}")
    health = full["health"]
    order = ["heartbeatInterval", "unresponsiveAfter", "deadAfter"]
    for earlier, later in itertools.pairwise(order):
        if parse_duration(health[earlier]) >= parse_duration(health[later]):
            path = ("spec", "health", later)
            yield _locate(label, loaded.position_of(path), path,
                          f"must be longer than health.{earlier} ({health[earlier]}), "
                          f"got {health[later]}")


def _webhook_event_problems(loaded: LoadedYaml, label: str,
                            alerts: Mapping[str, Any]) -> Iterable[str]:
    """An ``events`` entry that no alert kind starts with would leave its webhook silent."""
    from reconciler.severity import ALERT_KINDS, names_an_alert

    words = sorted({*ALERT_KINDS, *(kind.split(".")[0] for kind in ALERT_KINDS)})
    for i, hook in enumerate(alerts.get("webhooks", [])):
        for j, prefix in enumerate(hook.get("events", [])):
            if names_an_alert(prefix):
                continue
            path = ("spec", "alerts", "webhooks", i, "events", j)
            close = difflib.get_close_matches(prefix, words, n=1, cutoff=0.6)
            fix = f"did you mean `{close[0]}`?" if close else \
                "alerts are " + ", ".join(ALERT_KINDS) + " (or a prefix such as attempt)"
            yield _locate(label, loaded.position_of(path), path,
                          f"{prefix!r} matches no alert ({fix})")


def _sync_problems(loaded: LoadedYaml, label: str,
                   sync: Mapping[str, Any] | None) -> Iterable[str]:
    """A ref git can fetch (REMOTE/BRANCH), a path inside the repository, an interval."""
    from reconciler.sync import check_path, split_ref

    if sync is None:
        return
    checks: list[tuple[str, Any]] = [("ref", lambda: split_ref(sync["ref"]))]
    if "path" in sync:
        checks.append(("path", lambda: check_path(sync["path"])))
    for key, check in checks:
        try:
            check()
        except (GitError, SpecError) as exc:
            path = ("spec", "sync", key)
            yield _locate(label, loaded.position_of(path), path, exc.one_line())
    if parse_duration(sync["interval"]) <= 0:
        path = ("spec", "sync", "interval")
        yield _locate(label, loaded.position_of(path), path,
                      f"must be longer than 0, got {sync['interval']}")


def _metrics_problems(loaded: LoadedYaml, label: str,
                      metrics: Mapping[str, Any]) -> Iterable[str]:
    """A port that exists, and no endpoint beyond this machine without a token."""
    if "listen" not in metrics:
        if "bearerTokenFile" in metrics:
            path = ("spec", "metrics", "bearerTokenFile")
            yield _locate(label, loaded.position_of(path), path,
                          "has no effect without metrics.listen (e.g. 127.0.0.1:9464)")
        return
    path = ("spec", "metrics", "listen")
    host, port = parse_listen(metrics["listen"])  # the schema's pattern holds
    if port > 65535:
        yield _locate(label, loaded.position_of(path), path,
                      f"port {port} does not exist: use 1-65535, or 0 for any free port")
    elif not is_loopback(host) and "bearerTokenFile" not in metrics:
        yield _locate(label, loaded.position_of(path), path,
                      f"{host} is reachable from other machines: set "
                      "metrics.bearerTokenFile, or listen on 127.0.0.1")


def _branch_template_problems(loaded: LoadedYaml, label: str,
                              spec: Mapping[str, Any]) -> Iterable[str]:
    """Render the branch template with sample task data: a template that cannot
    give a valid branch name fails here, not on every task at run time."""
    template = spec["worktrees"]["branch"]
    try:
        check_template(template, BRANCH_PLACEHOLDERS)
        branch_for(template, pool=loaded.data["metadata"]["name"], task_id=1,
                   title="sample task", attempt=1)
    except TemplateError:
        return  # reported with the other placeholder problems
    except GitError as exc:
        path = ("spec", "worktrees", "branch")
        yield _locate(label, loaded.position_of(path), path,
                      f"gives {exc.message.removeprefix('invalid ')} for a sample task")
