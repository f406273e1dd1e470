"""Names derived from task data: branch names (checked against git's ref rules) and slugs.

Pure: the worker uses these to name a task's branch, and spec validation uses
them to try the branch template on a sample task, so one rule serves both.
"""

from __future__ import annotations

import re

from reconciler.errors import GitError
from reconciler.templates import render

MAX_BRANCH_BYTES = 200
_FORBIDDEN_IN_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def check_branch_name(name: str) -> str:
    """Return ``name`` if git accepts it as a branch name, else raise ``GitError``.

    Mirrors ``git check-ref-format --branch``: no control characters, spaces,
    ``~^:?*[\\``; no ``..``, ``@{``, ``//``; no component starting with ``.``
    or ending with ``.lock``; not starting with ``-`` or ending with ``/`` or ``.``;
    not ``HEAD``.  Stricter than git only for a lone ``@`` (git's shorthand for HEAD)
    and for names over ``MAX_BRANCH_BYTES``.
    """
    problem = None
    if not name or name in ("@", "HEAD"):
        problem = "is empty" if not name else f"is {name!r}"
    elif len(name.encode()) > MAX_BRANCH_BYTES:
        problem = f"is longer than {MAX_BRANCH_BYTES} bytes"
    elif _FORBIDDEN_IN_REF.search(name):
        problem = "contains a space, control character or one of ~ ^ : ? * [ \\"
    elif ".." in name or "@{" in name or "//" in name:
        problem = "contains '..', '@{' or '//'"
    elif name.startswith(("-", "/")) or name.endswith(("/", ".")):
        problem = "starts with '-' or '/', or ends with '/' or '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        problem = "has a part starting with '.' or ending with '.lock'"
    if problem:
        raise GitError(f"invalid branch name {name!r}: it {problem}",
                       hint="change worktrees.branch in the spec")
    return name


# letters that do not decompose into a base letter and marks
_LETTERS = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe",
                          "Œ": "OE", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "þ": "th",
                          "Þ": "Th", "ð": "d", "Ð": "D", "ı": "i"})


def ascii_letters(text: str) -> str:
    """``Ünïcödé`` -> ``Unicode``: accents dropped (NFKD leaves the base letter and its
    marks apart), a few letters spelled out; what has no Latin form stays as it is."""
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", text.translate(_LETTERS))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def slugify(title: str, limit: int = 40) -> str:
    """A branch-safe slug of a task title: ``Fix the login bug!`` -> ``fix-the-login-bug``.

    At most ``limit`` characters, cut at a word boundary (``refactor-the-auth`` never
    becomes ``refactor-the-au``); only a first word longer than ``limit`` is cut inside.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_letters(title).lower()).strip("-")
    if len(slug) > limit:
        boundary = slug.rfind("-", 0, limit + 1)  # a dash right after the limit counts
        slug = slug[:boundary] if boundary > 0 else slug[:limit]
    return slug or "task"


def branch_for(template: str, *, pool: str, task_id: int, title: str, attempt: int) -> str:
    values = {"pool": pool, "task.id": str(task_id), "task.slug": slugify(title),
              "attempt": str(attempt)}
    return check_branch_name(render(template, values))


# What each placeholder of a branch template can have become, for recognising the
# branches a pool's template made; -a<attempt>[-n] is what ``unique_branch`` appends.
_PLACEHOLDER_PATTERNS = {"task.id": "[0-9]+", "task.slug": "[a-z0-9-]+", "attempt": "[0-9]+"}
_UNIQUE_SUFFIX = "(?:-a[0-9]+(?:-[0-9]+)?)?"


def branch_pattern(template: str, *, pool: str) -> re.Pattern[str]:
    """A pattern that matches exactly the branch names ``template`` gives for ``pool``
    (any task, slug and attempt), including ``unique_branch``'s ``-a<attempt>`` suffix."""
    marks = {name: f"\x00{name}\x00" for name in _PLACEHOLDER_PATTERNS}
    filled = render(template, {"pool": pool, **marks})
    parts = re.split("\x00([a-z.]+)\x00", filled)  # literal, placeholder, literal, ...
    regex = "".join(_PLACEHOLDER_PATTERNS[part] if i % 2 else re.escape(part)
                    for i, part in enumerate(parts))
    return re.compile(regex + _UNIQUE_SUFFIX)


def branch_directory(template: str, *, pool: str) -> str:
    """The directory part every branch of ``template`` shares (``reconciler/p/`` for
    ``reconciler/{pool}/{task.id}-{task.slug}``), so git can list just those; may be ''."""
    marks = {name: "\x00" for name in _PLACEHOLDER_PATTERNS}
    literal = render(template, {"pool": pool, **marks}).split("\x00", 1)[0]
    return literal[:literal.rfind("/") + 1]
