"""Safe YAML loading with a size cap, an alias cap and source positions.

``yaml.safe_load`` already refuses arbitrary tags (``!!python/object``), but it
happily expands a "billion laughs" alias bomb and forgets where each value came
from.  This loader composes the node graph first, counts aliases while doing
so, bounds the size of the expanded document, and keeps a map from JSON paths
to ``line:column`` so every validation error can name its place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.limits import MAX_YAML_BYTES

MAX_BYTES = MAX_YAML_BYTES
MAX_ALIASES = 64
MAX_EXPANDED_NODES = 20_000

PathKey = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in the source file."""

    line: int
    column: int


class YamlLoadError(Exception):
    """The text is not acceptable YAML; ``position`` says where, when known."""

    def __init__(self, message: str, position: Position | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


class _CountingLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents with too many aliases.

    It also reads timestamps as plain strings: nothing in a spec or a task
    file is a date, and ``datetime`` values are not JSON.
    """

    yaml_implicit_resolvers = {  # noqa: RUF012 - PyYAML's own class-level table
        first: [(tag, regexp) for tag, regexp in resolvers
                if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    aliases_seen = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                event: Any = self.peek_event()  # type: ignore[no-untyped-call]
                raise YamlLoadError(
                    f"more than {MAX_ALIASES} YAML aliases (possible alias bomb)",
                    _position(event.start_mark),
                )
        node: Node | None = super().compose_node(parent, index)
        return node


def _position(mark: Any) -> Position | None:
    if mark is None:
        return None
    return Position(mark.line + 1, mark.column + 1)


def _expanded_size(node: Node, memo: dict[int, int], cap: int) -> int:
    """Count the nodes the document would have once aliases are expanded, up to
    ``cap + 1``.

    Memoised on node identity, so it runs in time linear in the composed graph
    even when the expansion itself would be astronomically large.
    """
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = cap + 1  # a cycle counts as too large
    size = 1
    if isinstance(node, SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo, cap)
    elif isinstance(node, MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, cap) + _expanded_size(v, memo, cap)
    memo[key] = min(size, cap + 1)
    return memo[key]


def _distinct_nodes(node: Node) -> int:
    """How many nodes the composed graph holds (what the file itself wrote)."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SequenceNode):
            stack.extend(current.value)
        elif isinstance(current, MappingNode):
            for k, v in current.value:
                stack += (k, v)
    return len(seen)


def _index_positions(node: Node, path: PathKey, out: dict[PathKey, Position]) -> None:
    """Record where each value (and, under ``path + ('<key>',)``, each key) starts."""
    pos = _position(node.start_mark)
    if pos is not None:
        out.setdefault(path, pos)
    if isinstance(node, SequenceNode):
        for i, child in enumerate(node.value):
            _index_positions(child, (*path, i), out)
    elif isinstance(node, MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode):
                key = str(key_node.value)
                key_pos = _position(key_node.start_mark)
                if key in seen:  # YAML forbids it; PyYAML would silently keep the last one
                    raise YamlLoadError(f"duplicate key `{key}`", key_pos)
                seen.add(key)
                if key_pos is not None:
                    out.setdefault((*path, key, "<key>"), key_pos)
                _index_positions(value_node, (*path, key), out)


@dataclass(frozen=True)
class LoadedYaml:
    """A parsed document and where each of its parts was written."""

    data: Any
    positions: dict[PathKey, Position]

    def position_of(self, path: PathKey, *, key: bool = False) -> Position | None:
        """The position of ``path`` (its key if ``key``), or of its nearest ancestor."""
        if key and (*path, "<key>") in self.positions:
            return self.positions[(*path, "<key>")]
        probe = path
        while True:
            if probe in self.positions:
                return self.positions[probe]
            if not probe:
                return None
            probe = probe[:-1]


def load_yaml(text: str | bytes) -> LoadedYaml:
    """Parse one YAML document safely; raise ``YamlLoadError`` on anything unsafe."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise YamlLoadError(f"file is larger than the {MAX_BYTES} byte limit")
    try:
        loader = _CountingLoader(text)
    except yaml.reader.ReaderError as exc:  # a control character, checked up front
        raise _reader_error(text, exc) from exc
    try:
        node = loader.get_single_node()
        if node is None:
            return LoadedYaml(None, {})
        # what aliases add is capped, not what the file writes out: a long plain list of
        # tasks is fine, a few aliases that multiply into millions of values are not
        written = _distinct_nodes(node)
        if _expanded_size(node, {}, written + MAX_EXPANDED_NODES) > \
                written + MAX_EXPANDED_NODES:
            raise YamlLoadError(
                f"aliases expand the document by more than {MAX_EXPANDED_NODES} values "
                "(alias bomb?)", _position(node.start_mark),
            )
        data = loader.construct_document(node)
        positions: dict[PathKey, Position] = {}
        _index_positions(node, (), positions)
        return LoadedYaml(data, positions)
    except yaml.reader.ReaderError as exc:
        raise _reader_error(text, exc) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        tag = re.search(r"constructor for the tag (\S+)", problem)
        if tag:
            shown = tag.group(1).strip("'").replace("tag:yaml.org,2002:", "!!")
            message = f"YAML tag {shown} is not allowed; only plain YAML data is accepted"
        else:
            message = f"malformed YAML: {problem}"
            context = _position(exc.context_mark)
            if exc.context and context is not None and context != _position(mark):
                message += f" ({exc.context} at line {context.line}, column {context.column})"
        raise YamlLoadError(message, _position(mark)) from exc
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise YamlLoadError(f"malformed YAML: {first}") from exc
    finally:
        loader.dispose()


def _reader_error(text: str | bytes, exc: yaml.reader.ReaderError) -> YamlLoadError:
    """A located error for a character the YAML reader refuses (or bytes it cannot decode)."""
    if exc.encoding != "unicode" and isinstance(text, bytes):  # a decoding error: byte offset
        raw = text[:exc.position]
        line_start = raw.rfind(b"\n") + 1
        column = len(raw[line_start:].decode("utf-8", errors="replace")) + 1
        return YamlLoadError(f"not {exc.encoding} text (byte {exc.position}): {exc.reason}",
                             Position(raw.count(b"\n") + 1, column))
    chars = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    before = chars[:exc.position]
    column = exc.position - (before.rfind("\n") + 1) + 1
    return YamlLoadError(f"unacceptable character #x{exc.character:04x} in YAML: {exc.reason}",
                         Position(before.count("\n") + 1, column))
