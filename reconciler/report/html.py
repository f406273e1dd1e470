"""``reconcile report --html``: the report as one self-contained HTML page.

The figures are the text report's (``analyse``'s document), as tables; the charts are
``reconciler.report.charts``'s inline SVG.  Nothing is fetched from anywhere: no script,
no stylesheet, no font, no image by URL, so the page opens the same offline, attached to
a mail or from a CI artefact.

Every piece of outside text (a worker's id, a pool's name, a bottleneck that quotes
them) goes through ``_text``: control characters made visible, then ``html.escape``.
Lists that grow with the store (workers, bottlenecks, hours) are cut at a bound, so
the page stays under 1 MB whatever the store holds; ``-o json`` has everything.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.durations import format_duration
from reconciler.report.charts import OTHER_COLOUR, OUTCOME_COLOURS, Chart
from reconciler.report.documents import printable

MAX_WORKER_ROWS = 256  # as many as a pool may have (MAX_REPLICAS)
MAX_BOTTLENECKS = 50
MAX_HOURS = 24 * 14  # hourly counts listed as numbers; the chart shows any window
MAX_TEXT = 300  # characters of one piece of outside text (escaped: up to 6 bytes each)
WORKER_CHARS = 40  # of a worker's id in the table

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d8dee4; --soft: #f6f8fa;
  --good: #009E73; --bad: #D55E00; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto,
  "Helvetica Neue", Arial, sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 56px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 6px; }
.sub, .note { color: var(--muted); }
.note { margin: 4px 0 0; font-size: 14px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr));
  gap: 12px; margin: 22px 0 8px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
  background: var(--soft); }
.card .label { color: var(--muted); font-size: 13px; }
.card .value { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .detail { color: var(--muted); font-size: 13px; }
figure { margin: 6px 0 0; }
figure svg { display: block; width: 100%; height: auto; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr));
  gap: 0 32px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 4px 0; }
th, td { padding: 4px 14px 4px 0; text-align: left; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { color: var(--muted); font-weight: 600; font-size: 13px; }
td.n, th.n { text-align: right; }
.meter { display: inline-block; width: 90px; height: 8px; border-radius: 4px;
  background: var(--line); vertical-align: middle; margin-right: 8px; overflow: hidden; }
.meter span { display: block; height: 100%; background: var(--good); }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px;
  margin-right: 8px; }
ul.findings { padding-left: 20px; margin: 6px 0; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: var(--soft); padding: 2px 6px; border-radius: 4px; }
.bad { color: var(--bad); }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
"""


def render_html(document: Mapping[str, Any], charts: Sequence[Chart]) -> str:
    """The page: a heading, key figures, what to do, the charts, then every table."""
    window = _age(document["until"] - document["since"])
    title = f"pool {_clip(document['pool'])}: the last {window}"
    body = "\n".join([
        f"<h1>{_text(title)}</h1>",
        f'<p class="sub">{_text(_when(document["since"]))} to '
        f'{_text(_when(document["until"]))} local time ({_text(_zone(document["until"]))})</p>',
        _cards(document), _findings(document),
        "<h2>Charts</h2>", *(_chart(c) for c in charts),
        "<h2>Figures</h2>", _tables(document),
        '<footer>Made by <code>reconcile report --html</code>. Definitions: nearest-rank '
        "percentiles; run time is an attempt's start to end; queue wait a task's creation "
        "to its first attempt's start; efficiency a worker's busy time over its up time "
        "in the window. "
        "<code>reconcile report -o json</code> has every figure.</footer>"])
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_text(title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def _cards(document: Mapping[str, Any]) -> str:
    """The figures a reader looks for first, each with one line of context."""
    t, run = document["tasks"], document["run_time_seconds"]
    wait, cost = document["queue_wait_seconds"], document["cost"]
    per_hour = t["completed"] / document["hours"] if document["hours"] else 0.0
    eta = document["eta_seconds"]
    cards = [
        ("tasks completed", f"{t['completed']:,}", f"{per_hour:,.1f} per hour"),
        ("success rate", _pct(t["success_rate"]), f"{t['failed']:,} task(s) failed"),
        ("run time p50", _age(run["p50"]), f"p90 {_age(run['p90'])}"),
        ("queue wait p90", _age(wait["p90"]), f"p50 {_age(wait['p50'])}"),
        ("cost", _usd(cost["total_usd"], 2) if cost["reported_attempts"] else "-",
         f"{_usd(cost['per_completed_task_usd'], 2)} per completed task"
         if cost["reported_attempts"] else "no agent reported a cost"),
        ("queue now", f"{t['queued_now']} + {t['running_now']}",
         "queued + running" + (f", drains in ~{_age(eta)}" if eta is not None else "")),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{_text(label)}</div>'
        f'<div class="value">{_text(value)}</div><div class="detail">{_text(detail)}</div>'
        "</div>" for label, value, detail in cards) + "</div>"


def _findings(document: Mapping[str, Any]) -> str:
    """Bottlenecks with their evidence, and the scaling advice with its arithmetic."""
    found = list(document["bottlenecks"])
    items = "".join(f'<li class="bad">{_text(line)}</li>' for line in found[:MAX_BOTTLENECKS])
    if len(found) > MAX_BOTTLENECKS:
        items += f"<li>… and {len(found) - MAX_BOTTLENECKS} more</li>"
    parts = ["<h2>Bottlenecks</h2>",
             f'<ul class="findings">{items}</ul>' if found else "<p>None found.</p>",
             "<h2>Scaling</h2>", _scaling(document["scaling"])]
    if document["eta_seconds"] is not None:
        parts.append(f"<p>The current queue drains in about {_age(document['eta_seconds'])}, "
                     "at the measured mean run time.</p>")
    return "\n".join(parts)


def _scaling(scaling: Mapping[str, Any]) -> str:
    if scaling["recommended"] is None:
        return f"<p>{_text(scaling['why'])}.</p>"
    capped = (f" (capped by {_text(scaling['capped_by'])}: {scaling['needed']} would be "
              "needed)" if scaling["capped_by"] else "")
    return (f"<p>Workers: <strong>{scaling['workers_now']}</strong> now; "
            f"<strong>{scaling['recommended']}</strong> recommended to keep the queue wait "
            f"under {_age(scaling['target_wait_seconds'])}{capped}.</p>\n"
            f"<p>An M/M/c queue: <code>{_text(scaling['arithmetic'])}</code></p>")


def _chart(chart: Chart) -> str:
    """A chart as a figure with its caption; without a chart, the note says why."""
    if chart.svg is None:
        return (f'<section id="chart-{chart.key}" class="chart no-chart"><h3>{_text(chart.title)}'
                f'</h3><p class="note">{_text(chart.note)}</p></section>')
    return (f'<section id="chart-{chart.key}" class="chart"><h3>{_text(chart.title)}</h3>'
            f'<figure role="img" aria-label="{_text(chart.title)}">{chart.svg}'
            f'<figcaption class="note">{_text(chart.note)}</figcaption></figure></section>')


def _tables(document: Mapping[str, Any]) -> str:
    t, a, c = document["tasks"], document["attempts"], document["cost"]
    tasks = _table(("what", "value"), [
        ["completed", t["completed"]], ["failed", t["failed"]],
        ["success rate", _pct(t["success_rate"])],
        ["attempts per task", "-" if t["attempts_per_task"] is None
         else f"{t['attempts_per_task']:.2f}"],
        ["retried", _pct(t["retry_rate"])], ["timeouts", _pct(a["timeout_rate"])],
        ["rate limited", _pct(a["rate_limit_rate"])],
        ["queued now", t["queued_now"]], ["running now", t["running_now"]],
        ["oldest queued", _age(t.get("oldest_queued_seconds"))]], numeric=(1,))
    outcomes = _table(("outcome", "attempts"), [[_swatch(k), v] for k, v in
                                                a["by_outcome"].items()] or [["-", 0]],
                      numeric=(1,))
    cost = _table(("what", "value"), [
        ["total", _usd(c["total_usd"]) if c["reported_attempts"] else "- (no agent reported)"],
        ["per task", _usd(c["per_task_usd"])],
        ["per completed task", _usd(c["per_completed_task_usd"])],
        ["per hour", _usd(c["per_hour_usd"])],
        ["tokens in", f"{c['input_tokens']:,}"], ["tokens out", f"{c['output_tokens']:,}"]],
        numeric=(1,))
    times = _table(("what", "n", "p50", "p90", "p99", "mean"), [
        [name, s["count"], *(_age(s[k]) for k in ("p50", "p90", "p99", "mean"))]
        for name, s in (("run time", document["run_time_seconds"]),
                        ("queue wait", document["queue_wait_seconds"]))],
        numeric=(1, 2, 3, 4, 5))
    return "\n".join([
        '<div class="grid">',
        f"<section><h3>Tasks</h3>{tasks}</section>",
        f"<section><h3>Attempts by outcome</h3>{outcomes}<h3>Cost and tokens</h3>{cost}"
        "</section></div>",
        f"<h3>Run time and queue wait</h3>{times}",
        _workers(document["workers"]), _hourly(document)])


def _workers(workers: Sequence[Mapping[str, Any]]) -> str:
    rows = [[_clip(w["worker"], WORKER_CHARS), w["completed"], w["failed"], w["attempts"],
             _meter(w["efficiency"]), _age(w["busy_seconds"]), _age(w["up_seconds"]),
             w["restarts"]]
            for w in workers[:MAX_WORKER_ROWS]]
    more = (f'<p class="note">The first {MAX_WORKER_ROWS} of {len(workers)} workers; '
            "<code>-o json</code> lists all.</p>" if len(workers) > MAX_WORKER_ROWS else "")
    return ("<h3>Workers</h3>" + _table(
        ("worker", "completed", "failed attempts", "attempts", "efficiency", "busy", "up",
         "restarts"),
        rows or [["-", 0, 0, 0, "-", "-", "-", 0]], numeric=(1, 2, 3, 5, 6, 7)) + more)


def _hourly(document: Mapping[str, Any]) -> str:
    hourly = document["throughput_per_hour"]
    trend = f" The trend: {_text(document['trend'])}." if document["trend"] else ""
    if len(hourly) > MAX_HOURS:
        return (f"<h3>Tasks completed per hour</h3><p>{len(hourly)} hours: see the "
                f"throughput chart, or <code>-o json</code>.{trend}</p>")
    return (f"<h3>Tasks completed per hour</h3><p>Oldest first, from the start of the "
            f"window: <code>{' '.join(str(n) for n in hourly)}</code>.{trend}</p>")


class _Markup(str):
    """Markup this module made: a table puts it in as it is."""


def _meter(share: float) -> _Markup:
    """A share drawn as a small bar beside its percentage."""
    width = max(0.0, min(share, 1.0)) * 100
    return _Markup(f'<span class="meter"><span style="width:{width:.0f}%"></span></span>'
                   f"{_pct(share)}")


def _swatch(outcome: str) -> _Markup:
    """An outcome with the colour the charts give it."""
    colour = OUTCOME_COLOURS.get(outcome, OTHER_COLOUR)
    return _Markup(f'<span class="swatch" style="background:{colour}"></span>'
                   f"{_text(outcome.replace('_', ' '))}")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]],
           numeric: Sequence[int] = ()) -> str:
    """Cells are escaped as text, except ``_Markup``."""
    def cell(tag: str, i: int, value: object) -> str:
        kind = ' class="n"' if i in numeric else ""
        shown = value if isinstance(value, _Markup) else _text(str(value))
        return f"<{tag}{kind}>{shown}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _text(value: str) -> str:
    """Outside text made safe for HTML: controls visible, markup escaped, length bound."""
    return html.escape(printable(_clip(value)), quote=True)


def _clip(value: str, limit: int = MAX_TEXT) -> str:
    return value if len(value) <= limit else value[:limit - 1] + "…"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _usd(value: float | None, places: int = 4) -> str:
    return "-" if value is None else f"${value:,.{places}f}"


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def _when(stamp: float) -> str:
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def _zone(stamp: float) -> str:
    """``CEST, UTC+02:00``: the zone the page's times are in."""
    moment = dt.datetime.fromtimestamp(stamp).astimezone()
    return f"{moment.tzname()}, UTC{moment.strftime('%z')[:3]}:{moment.strftime('%z')[3:]}"
