"""Placeholder substitution into argv elements and branch names.

Task text is user data: it is substituted into single argv elements with a
regular expression, never through ``str.format`` (which would evaluate
attribute and index lookups) and never into a shell string.  ``{{`` and ``}}``
stand for literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

COMMAND_PLACEHOLDERS = frozenset({
    "task.id", "task.title", "task.prompt", "task.prompt_file", "task.branch",
    "worktree", "attempt", "pool",
})
BRANCH_PLACEHOLDERS = frozenset({"pool", "task.id", "task.slug", "attempt"})

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.]*)\}|[{}]")


class TemplateError(ValueError):
    """A template uses an unknown placeholder or an unbalanced brace."""


def check_template(template: str, allowed: frozenset[str]) -> None:
    """Raise ``TemplateError`` unless every placeholder in ``template`` is allowed."""
    for match in _TOKEN.finditer(template):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        name = match.group(1)
        if name is None:
            raise TemplateError(
                f"unbalanced {token!r} in {template!r}; write {token * 2} for a literal brace")
        if name not in allowed:
            known = ", ".join("{" + n + "}" for n in sorted(allowed))
            raise TemplateError(f"unknown placeholder {{{name}}} in {template!r}; known: {known}")


def render(template: str, values: Mapping[str, str]) -> str:
    """Substitute ``values`` into ``template`` (already checked by ``check_template``)."""

    def replace(match: re.Match[str]) -> str:
        literal = {"{{": "{", "}}": "}"}.get(match.group(0))
        if literal is not None:
            return literal
        token, name = match.group(0), match.group(1)
        if name is None or name not in values:
            raise TemplateError(f"cannot fill {token!r} in {template!r}")
        return values[name]

    return _TOKEN.sub(replace, template)


def prefill(template: str, values: Mapping[str, str]) -> str:
    """Substitute only the placeholders named in ``values``, keeping the template a template.

    Other placeholders and ``{{``/``}}`` escapes stay as written, and braces in the
    values are doubled so that a later ``render`` yields them literally.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is not None and name in values:
            return values[name].replace("{", "{{").replace("}", "}}")
        return match.group(0)

    return _TOKEN.sub(replace, template)


def render_argv(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Render each argv element separately: a value never splits or joins elements."""
    return [render(element, values) for element in argv]
