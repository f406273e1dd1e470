"""The charts of ``reconcile report --html``, drawn by matplotlib as inline SVG.

Imported only for ``--html``: matplotlib costs about a second to import, which no other
command should pay.  Figures are ``matplotlib.figure.Figure`` objects saved through the
SVG canvas, never pyplot: pyplot keeps every figure in a global registry and picks a GUI
backend, and a command line tool wants neither.

Each chart is bounded in size whatever the store holds, so the page stays under 1 MB:
the timeline's bars (one per attempt: 20,000 in a busy day) are rasterized into one
embedded PNG once there are many of them, and the time charts add attempts up into at
most ``MAX_BINS`` bins.  Text is drawn as glyph outlines, so a chart looks the same in
any browser, and nothing in it (a worker's name, say) is ever parsed as markup.
"""

from __future__ import annotations

import datetime as dt
import io
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from reconciler.durations import format_duration
from reconciler.model import ReportAttempt
from reconciler.report.analysis import FAILED_OUTCOMES, ended_in_window
from reconciler.report.documents import printable

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

# One colour per outcome on every chart (Okabe-Ito: told apart with colour blindness too);
# drawn in this order, so the rare and important (failures) land on top of successes.
OUTCOME_COLOURS = {"succeeded": "#009E73", "cancelled": "#BBBBBB", "lost": "#7F7F7F",
                   "rate_limited": "#CC79A7", "timeout": "#E69F00", "failed": "#D55E00"}
OTHER_COLOUR = "#56B4E9"  # an outcome this version does not know
COST_COLOUR = "#0072B2"

WIDTH = 11.0  # inches; the page scales the SVG to its column
MAX_BINS = 96  # bars on a time chart, whatever the window
MAX_ROWS = 64  # workers on the timeline; the table below it lists them all
RASTER_ABOVE = 500  # attempts beyond which the timeline's bars are one embedded PNG
RASTER_DPI = 110
MIN_BAR_PIXELS = 1.0  # a 20 s attempt in a 24 h window is 0.3 px: drawn 1 px wide
LABEL_CHARS = 18

STYLE: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans", "font.size": 10, "axes.titlesize": 11,
    "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#888888",
    "axes.linewidth": 0.8, "axes.grid": True, "axes.axisbelow": True,
    "grid.color": "#E6E6E6", "grid.linewidth": 0.8, "axes.labelcolor": "#333333",
    "xtick.color": "#555555", "ytick.color": "#555555", "legend.frameon": False,
    "figure.facecolor": "white", "axes.facecolor": "white",
    # a worker named "$x$" stays text: no mathtext, no TeX
    "text.parse_math": False, "text.usetex": False,
    "svg.fonttype": "path", "svg.image_inline": True,
}

# bin widths a time chart may use, in seconds: whole clock units
BIN_CHOICES = (60, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
               7 * 86400)
# durations a run-time axis may mark, in seconds
NICE_DURATIONS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200,
                  3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400)


@dataclass(frozen=True)
class Chart:
    """One chart of the page: its SVG, or None and ``note`` saying why there is none."""

    key: str
    title: str
    note: str
    svg: str | None


class LocalClock(dt.tzinfo):
    """The host's time zone as the C library knows it (``TZ``, /etc/localtime), summer
    time included: what ``date`` prints.  A fixed offset taken now would put the hours
    before a change of summer time an hour off; dateutil's ``tzlocal`` does this too but
    brings no type hints."""

    def fromutc(self, moment: dt.datetime) -> dt.datetime:
        stamp = (moment.replace(tzinfo=dt.UTC) - EPOCH).total_seconds()
        return dt.datetime.fromtimestamp(stamp).replace(tzinfo=self)

    def utcoffset(self, moment: dt.datetime | None) -> dt.timedelta:
        stamp = self._stamp(moment)
        local = dt.datetime.fromtimestamp(stamp)
        return local - dt.datetime.fromtimestamp(stamp, dt.UTC).replace(tzinfo=None)

    def dst(self, moment: dt.datetime | None) -> dt.timedelta | None:
        return None

    def tzname(self, moment: dt.datetime | None) -> str:
        return time.strftime("%Z", time.localtime(self._stamp(moment)))

    @staticmethod
    def _stamp(moment: dt.datetime | None) -> float:
        """The instant of a local wall-clock ``moment`` (now for None)."""
        if moment is None:
            return time.time()
        return time.mktime((*moment.timetuple()[:8], -1))


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LOCAL = LocalClock()
_EPOCH_DAYS = float(date2num(EPOCH))  # matplotlib's date unit is days since its epoch


def draw_charts(document: Mapping[str, Any], attempts: Iterable[ReportAttempt]) -> list[Chart]:
    """The four charts of the report's window: the timeline, throughput, run times, cost.

    ``document`` is ``analyse``'s (for the window, the workers and the percentiles);
    ``attempts`` what it was given: the same rows, so the charts and the figures agree."""
    since, now = float(document["since"]), float(document["until"])
    ended = ended_in_window(attempts, since, now)
    shown = _active_since(ended, since, now)
    with mpl.rc_context(STYLE):
        charts = [_timeline(ended, document, shown, now), _throughput(ended, shown, now),
                  _run_times(ended, document), _cost(ended, shown, now)]
    if shown > since:  # a pool younger than the window: its part, not a sliver of it
        clock = time.strftime("%H:%M", time.localtime(shown))
        charts = [replace(c, note=f"{c.note} From {clock}, just before the first attempt "
                          "of the window (nothing ran before it).")
                  if c.key != "run_times" and c.svg is not None else c for c in charts]
    return charts


def _active_since(ended: Sequence[ReportAttempt], since: float, now: float) -> float:
    """Where the time charts begin: the window's start, or a little before its first
    attempt when that began after the first tenth of the window."""
    if not ended:
        return since
    first = max(since, min(a.started_at for a in ended))
    if first - since < (now - since) / 10:
        return since
    return max(since, first - max(60.0, (now - first) / 20))


def _timeline(ended: Sequence[ReportAttempt], document: Mapping[str, Any], since: float,
              now: float) -> Chart:
    title = "Worker timeline"
    workers = [w["worker"] for w in document["workers"]]
    if not ended:
        return Chart("timeline", title, "No attempt ended in this window.", None)
    shown = workers[:MAX_ROWS]
    note = "Each bar is one attempt, from its start to its end, coloured by its outcome."
    if len(workers) > len(shown):
        note += f" The first {len(shown)} of {len(workers)} workers are shown."
    row = {worker: i for i, worker in enumerate(shown)}
    fig = Figure(figsize=(WIDTH, 1.3 + 0.28 * len(shown)))
    ax = fig.add_subplot()
    plot_pixels = WIDTH * 0.8 * RASTER_DPI
    min_width = (now - since) / plot_pixels * MIN_BAR_PIXELS
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for a in ended:
        if a.worker_id in row and a.ended_at is not None:
            start = max(a.started_at, since)
            spans[a.status].append((start, max(a.ended_at, start + min_width), row[a.worker_id]))
    for outcome in _ordered(spans):
        ax.add_collection(_bars(spans[outcome], _colour(outcome),
                                rasterized=len(ended) > RASTER_ABOVE))
    ax.set_ylim(len(shown) - 0.5, -0.5)  # the first worker on top
    ax.set_yticks(range(len(shown)), [_label(w) for w in shown])
    ax.grid(axis="y", visible=False)
    _time_axis(ax, since, now)
    _outcome_legend(ax, _ordered(spans))
    return Chart("timeline", title, note, _svg(fig))


def _bars(spans: Sequence[tuple[float, float, int]], colour: str, *,
          rasterized: bool) -> PolyCollection:
    """One collection for many bars: 20,000 separate patches take seconds to draw."""
    data = np.asarray(spans, dtype=float)
    x0, x1, y = _days(data[:, 0]), _days(data[:, 1]), data[:, 2]
    top, bottom = y - 0.36, y + 0.36
    verts = np.stack([np.column_stack(pair) for pair in
                      ((x0, top), (x1, top), (x1, bottom), (x0, bottom))], axis=1)
    bars = PolyCollection(list(verts), facecolors=colour, edgecolors="none", linewidths=0)
    bars.set_rasterized(rasterized)
    return bars


def _throughput(ended: Sequence[ReportAttempt], since: float, now: float) -> Chart:
    title = "Throughput"
    if not ended:
        return Chart("throughput", title, "No attempt ended in this window.", None)
    edges = _bin_edges(since, now)
    counts: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
    for a in ended:
        if a.ended_at is not None:
            column = counts.setdefault(a.status, np.zeros(len(edges) - 1))
            column[_bin_of(edges, a.ended_at)] += 1
    fig = Figure(figsize=(WIDTH, 3.4))
    ax = fig.add_subplot()
    left, width = _days(edges[:-1]), np.diff(_days(edges))
    base = np.zeros(len(edges) - 1)
    for outcome in _ordered(counts):
        ax.bar(left, counts[outcome], width=width * 0.9, bottom=base, align="edge",
               color=_colour(outcome), linewidth=0)
        base += counts[outcome]
    unit = _bin_name(edges[1] - edges[0])
    ax.set_ylabel(f"attempts ended per {unit}")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _time_axis(ax, since, now)
    _outcome_legend(ax, _ordered(counts))
    note = (f"Attempts that ended in each {unit}, by outcome: the green part is the tasks "
            "completed. The first and last bars may cover part of their "
            f"{unit} only.")
    return Chart("throughput", title, note, _svg(fig))


def _run_times(ended: Sequence[ReportAttempt], document: Mapping[str, Any]) -> Chart:
    title = "Run times"
    runs: dict[str, list[float]] = defaultdict(list)
    for a in ended:
        if a.status in ("succeeded", *FAILED_OUTCOMES) and a.ended_at is not None:
            runs[a.status].append(max(a.ended_at - a.started_at, 0.001))
    if not runs:
        return Chart("run_times", title, "No attempt ran to an end in this window.", None)
    values = [v for column in runs.values() for v in column]
    low, high = min(values), max(values)
    logarithmic = high / low > 30
    bins = (np.geomspace(low, high * 1.0001, 41) if logarithmic
            else np.linspace(0, high * 1.0001, 41))
    fig = Figure(figsize=(WIDTH, 3.4))
    ax = fig.add_subplot()
    outcomes = _ordered(runs)
    ax.hist([runs[o] for o in outcomes], bins=bins.tolist(), stacked=True, linewidth=0,
            color=[_colour(o) for o in outcomes], rwidth=0.9)
    if logarithmic:
        ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(_duration_ticks(bins[0], bins[-1], logarithmic)))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format_duration(v) if v else "0"))
    ax.set_xlim(bins[0], bins[-1] * (1.04 if logarithmic else 1.02))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("run time" + (" (logarithmic)" if logarithmic else ""))
    ax.set_ylabel("attempts")
    ax.grid(axis="x", visible=False)
    _mark_percentiles(ax, document["run_time_seconds"])
    _outcome_legend(ax, outcomes)
    note = ("How long attempts that succeeded, failed or timed out ran, start to end; "
            "the dashed lines are the p50, p90 and p99.")
    return Chart("run_times", title, note, _svg(fig))


def _mark_percentiles(ax: Axes, spread: Mapping[str, float | None]) -> None:
    """A dashed line at each of p50, p90 and p99, labelled once per place (p90 and p99
    are often the same run), the labels stepped down so that none covers another."""
    places: dict[float, list[str]] = defaultdict(list)
    for key in ("p50", "p90", "p99"):
        value = spread.get(key)
        if value:
            places[value].append(key)
    to_axes = ax.transAxes.inverted()
    for step, (value, keys) in enumerate(sorted(places.items())):
        ax.axvline(value, color="#444444", linestyle="--", linewidth=1)
        right = to_axes.transform(ax.transData.transform((value, 0)))[0] > 0.85
        ax.annotate(f"{', '.join(keys)} {format_duration(value)}", (value, 1),
                    xytext=(-4 if right else 4, -3 - 14 * step), textcoords="offset points",
                    xycoords=("data", "axes fraction"), va="top",
                    ha="right" if right else "left", fontsize=9, color="#333333",
                    bbox={"boxstyle": "square,pad=0.15", "facecolor": "white",
                          "edgecolor": "none", "alpha": 0.85})


def _cost(ended: Sequence[ReportAttempt], since: float, now: float) -> Chart:
    title = "Cost"
    costed = [(a.ended_at, a.report.cost_usd) for a in ended
              if a.report and a.report.cost_usd is not None and a.ended_at is not None]
    if not costed:
        return Chart("cost", title, "No agent reported a cost in this window (an agent "
                     "reports one through worker.result), so there is no cost chart.", None)
    edges = _bin_edges(since, now)
    spent = np.zeros(len(edges) - 1)
    for ended_at, usd in costed:
        spent[_bin_of(edges, ended_at)] += usd
    fig = Figure(figsize=(WIDTH, 3.0))
    ax = fig.add_subplot()
    left, width = _days(edges[:-1]), np.diff(_days(edges))
    ax.bar(left, spent, width=width * 0.9, align="edge", color=COST_COLOUR, linewidth=0)
    unit = _bin_name(edges[1] - edges[0])
    ax.set_ylabel(f"USD per {unit}")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"${v:,.2f}"))
    _time_axis(ax, since, now)
    note = (f"What the agents reported spending, per {unit}, counted when each attempt "
            f"ended ({len(costed)} attempt(s) reported a cost).")
    return Chart("cost", title, note, _svg(fig))


def _bin_edges(since: float, now: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Edges on the local clock (whole hours, say) covering ``since`` to ``now``, at most
    ``MAX_BINS`` bins, and an hour wide when that allows at least a dozen."""
    window = max(now - since, 1.0)
    fitting = [w for w in BIN_CHOICES if window / w <= MAX_BINS]
    width = fitting[0] if fitting else math.ceil(window / MAX_BINS)
    if width < 3600 <= window / 12:
        width = 3600
    offset = _utc_offset(since)
    first = math.floor((since + offset) / width) * width - offset
    count = max(1, math.ceil((now - first) / width))
    return first + width * np.arange(count + 1, dtype=float)


def _bin_of(edges: np.ndarray[Any, np.dtype[np.float64]], stamp: float) -> int:
    return min(max(int(np.searchsorted(edges, stamp, side="right")) - 1, 0), len(edges) - 2)


def _bin_name(width: float) -> str:
    """``hour``, ``10 min``, ``6 h``, ``day``: what one bin of a time chart covers."""
    names = {3600: "hour", 86400: "day", 7 * 86400: "week"}
    if round(width) in names:
        return names[round(width)]
    return f"{width / 60:.0f} min" if width < 3600 else f"{width / 3600:.0f} h"


def _utc_offset(stamp: float) -> float:
    moment = dt.datetime.fromtimestamp(stamp)
    return (moment - dt.datetime.fromtimestamp(stamp, dt.UTC).replace(tzinfo=None)
            ).total_seconds()


def _duration_ticks(low: float, high: float, logarithmic: bool) -> list[float]:
    """Round durations (30s, 5m, 1h) for a run-time axis, at most about eight."""
    if logarithmic:
        inside = [float(d) for d in NICE_DURATIONS if low <= d <= high]
        step = max(1, math.ceil(len(inside) / 8))
        return inside[::step]
    step = next((d for d in NICE_DURATIONS if high / d <= 8), NICE_DURATIONS[-1])
    return [float(step * i) for i in range(int(high // step) + 1)]


def _time_axis(ax: Axes, since: float, now: float) -> None:
    """x from ``since`` to ``now``, marked in local clock time."""
    locator = AutoDateLocator(tz=LOCAL, minticks=5, maxticks=12)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=LOCAL, show_offset=False))
    ax.set_xlim(_days(np.asarray([since]))[0], _days(np.asarray([now]))[0])
    ax.set_xlabel(f"local time ({LOCAL.tzname(None)})")


def _outcome_legend(ax: Axes, outcomes: Sequence[str]) -> None:
    handles = [Patch(color=_colour(o), label=o.replace("_", " ")) for o in outcomes]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=len(handles),
              borderaxespad=0.3, handlelength=1.2, columnspacing=1.4)


def _ordered(outcomes: Iterable[str]) -> list[str]:
    """Outcomes in the drawing order of ``OUTCOME_COLOURS``; unknown ones after."""
    present = set(outcomes)
    return [o for o in OUTCOME_COLOURS if o in present] + sorted(present - set(OUTCOME_COLOURS))


def _colour(outcome: str) -> str:
    return OUTCOME_COLOURS.get(outcome, OTHER_COLOUR)


def _label(worker: str) -> str:
    """A worker's id as a tick label: control characters shown, a long one shortened."""
    text = printable(worker)
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _days(stamps: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Unix times as matplotlib's dates (days since its epoch), all at once."""
    return _EPOCH_DAYS + stamps / 86400.0


def _svg(fig: Figure) -> str:
    """The figure as an ``<svg>`` element to put inline in HTML: no XML prologue, no
    DOCTYPE (it names a URL), no metadata (it names several)."""
    fig.set_layout_engine("constrained")
    out = io.StringIO()
    fig.savefig(out, format="svg", dpi=RASTER_DPI,
                metadata={"Date": None, "Creator": None, "Format": None,
                          "Type": None})
    text = out.getvalue()
    return text[text.index("<svg"):]
