"""Plain terminal text: aligned columns, a few colours, and nothing unsafe.

The read commands' text output is drawn here rather than with rich, for two reasons:
- speed: importing rich and drawing a first table cost ``status`` about 150 ms on
  the 2-core machine, more than everything else it does (issue 9);
- what operators expect: columns as ``kubectl get`` and ``pm2 ls`` print them,
  never wrapped, and never cut when piped or redirected (``fit``), so ``grep``,
  ``awk`` or a file gets whole lines.

rich remains for what it is good at: progress bars and the live demo view.

Every line goes out through ``say``, which makes control characters visible first
(outside text, such as titles, errors and output, could otherwise drive the
terminal); colours are added after that, only on a terminal, and never under
``NO_COLOR``.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Sequence
from typing import TextIO

from reconciler.report.documents import printable

# SGR parameters of the styles the renderings use
_SGR = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34",
        "cyan": "36", "bold red": "1;31", "bold green": "1;32"}

Cell = str | tuple[str, str]  # text, or (text, style)

# each worker health's colour, in status and the dashboard alike
HEALTH_STYLE = {"working": "cyan", "healthy": "green", "dead": "red", "failed": "bold red",
                "unresponsive": "yellow", "slow": "yellow", "stopping": "yellow",
                "stopped": "dim", "recovering": "blue"}


def colour_wanted(stream: TextIO) -> bool:
    """Colour on a terminal, as most tools decide: ``NO_COLOR`` (any value) turns it off,
    ``FORCE_COLOR`` on, ``TERM=dumb`` off."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False
    return tty and os.environ.get("TERM") != "dumb"


def paint(text: str, style: str | None, *, stream: TextIO | None = None) -> str:
    """``text`` in ``style`` where the output is a terminal that wants colour."""
    code = _SGR.get(style or "")
    if not code or not colour_wanted(stream or sys.stdout):
        return text
    return f"\x1b[{code}m{text}\x1b[0m"


def say(text: str = "", style: str | None = None, *, stream: TextIO | None = None) -> None:
    """Print ``text`` (made safe: control characters visible, newlines kept) as a line."""
    out = stream or sys.stdout
    out.write(paint(printable(text, multiline=True), style, stream=out) + "\n")


def cell_text(text: str) -> str:
    """Outside text as one table cell: controls visible, a tab as a space."""
    return printable(text).replace("\t", " ")


_ZERO_WIDTH = ("Mn", "Me", "Cf")  # combining and enclosing marks, format characters


def width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide (CJK) characters two, marks and format
    characters none, so titles in any script line up."""
    if text.isascii():
        return len(text)
    return sum(_char_width(char) for char in text)


def _char_width(char: str) -> int:
    if unicodedata.category(char) in _ZERO_WIDTH:
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def clip(text: str, columns: int) -> str:
    """``text`` cut to at most ``columns`` terminal columns, ending in "…" when cut."""
    if width(text) <= columns:
        return text
    out, used = [], 0
    for char in text:
        used += _char_width(char)
        if used > columns - 1:
            break
        out.append(char)
    return "".join(out) + "…"


def fit(text: str, columns: int, *, stream: TextIO | None = None) -> str:
    """``text`` clipped to ``columns`` on a terminal, where one long cell would push the
    row's other columns off the screen; whole when piped or redirected, so ``grep``,
    ``awk`` and a saved file get every word (``-o json`` has it all, always)."""
    try:
        tty = (stream or sys.stdout).isatty()
    except (AttributeError, ValueError):
        tty = False
    return clip(text, columns) if tty else text


def columns(headers: Sequence[str], rows: Sequence[Sequence[Cell]], *,
            right: Sequence[str] = (), stream: TextIO | None = None) -> list[str]:
    """``rows`` under ``headers`` as aligned lines, two spaces apart.  Cells are taken as
    given (make outside text safe with ``cell_text`` first); the last column is never
    padded, so no line ends in spaces.  Columns named in ``right`` align right."""
    out = stream or sys.stdout
    table = [[(c, None) if isinstance(c, str) else c for c in row] for row in rows]
    widths = [width(h) for h in headers]
    for row in table:
        for i, (text, _style) in enumerate(row):
            widths[i] = max(widths[i], width(text))
    last = len(headers) - 1

    def line(cells: Sequence[tuple[str, str | None]]) -> str:
        parts = []
        for i, (text, style) in enumerate(cells):
            gap = " " * (widths[i] - width(text))
            if headers[i] in right:
                padded = gap + paint(text, style, stream=out)
            else:
                padded = paint(text, style, stream=out) + ("" if i == last else gap)
            parts.append(padded)
        return "  ".join(parts)

    return [line([(h.upper(), "bold") for h in headers]), *(line(row) for row in table)]
