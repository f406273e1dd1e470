"""``reconcile report --html``: the page, its charts, its size bound and its errors, through
the real CLI on real stores."""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.paths import pool_paths
from reconciler.store.sqlite import Store
from tests.helpers import ROOT, one_error_line, reconcile
from tests.test_report import NOW, fill

MB = 1_000_000
CHARTS = ("timeline", "throughput", "run_times", "cost")
HOSTILE = "<script>alert(1)</script>"
# outcomes of a made-up day, in proportion
OUTCOMES = ("succeeded",) * 85 + ("failed",) * 6 + ("timeout",) * 3 + \
    ("rate_limited",) * 4 + ("lost",) * 2


def fill_history(store_path: Path, *, workers: int, attempts: int, hours: float, now: float,
                 costs: bool = True, queued: int = 0, seed: int = 1) -> int:
    """A pool's day: each worker runs attempts back to back (log-normal run times, short
    idle gaps, longer ones from 01:00 to 06:00 local time), about ``attempts`` in all
    over the last ``hours``; each attempt its task's only one; ``queued`` tasks waiting
    at the end.  Written with plain SQL in one transaction (the store's own calls take
    a transaction each: minutes for 20,000).  Returns the number of attempts."""
    rng = random.Random(seed)
    cycle = workers * hours * 3600 / attempts  # one attempt and its gap, on average
    since = now - hours * 3600
    tasks: list[tuple[object, ...]] = []
    rows: list[tuple[object, ...]] = []
    for w in range(1, workers + 1):
        t = since + rng.uniform(0, cycle)
        while True:
            run = rng.lognormvariate(math.log(0.65 * cycle) - 0.18, 0.6)  # mean 0.65
            if t + run > now:
                break
            outcome = rng.choice(OUTCOMES)
            task_id = len(tasks) + 1
            status = {"succeeded": "succeeded"}.get(outcome, "failed")
            tasks.append((task_id, f"task {task_id}", status, t - rng.expovariate(1 / 90), t + run))
            cost = round(rng.uniform(0.02, 0.9) * run / cycle, 4) if costs else None
            rows.append((task_id, f"w-{w}", outcome, t, t + run, cost,
                         rng.randint(20_000, 90_000), rng.randint(500, 4000)))
            night = time.localtime(t + run).tm_hour in range(1, 6)
            t += run + rng.expovariate(1 / (0.2 * cycle)) * (3 if night else 1)
    for i in range(queued):
        tasks.append((len(tasks) + 1, f"waiting {i}", "queued", now - 600 + i, now - 600 + i))
    db = sqlite3.connect(store_path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany("INSERT INTO tasks (id, title, prompt, status, created_at, updated_at,"
                   " attempts) VALUES (?, ?, 'p', ?, ?, ?, 1)", tasks)
    db.executemany(
        "INSERT INTO attempts (task_id, number, worker_id, lease_token, lease_expires_at,"
        " status, started_at, ended_at, report_is_error, cost_usd, input_tokens,"
        " output_tokens) VALUES (?, 1, ?, 'x', 0, ?, ?, ?, 0, ?, ?, ?)", rows)
    db.executemany("INSERT INTO restarts (worker_id, at, reason) VALUES (?, ?, 'crashed')",
                   [("w-2", now - 5000.0), ("w-2", now - 4000.0)])
    db.execute("COMMIT")
    db.close()
    return len(rows)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def new_store(state: Path) -> Store:
    return Store(pool_paths(state, "p").create().store)


def report_html(state: Path, target: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``reconcile report --html target`` on pool p, checked to have succeeded."""
    command = [sys.executable, "-m", "reconciler", "--state-dir", str(state), "report",
               "--pool", "p", "--html", str(target), *args]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def sections(page: str) -> dict[str, str]:
    """Each chart's section of the page, by its key: all four, in order."""
    found = {m[1]: m[0] for m in re.finditer(r'<section id="chart-(\w+)".*?</section>',
                                             page, re.S)}
    assert tuple(found) == CHARTS, list(found)
    return found


def external_references(page: str) -> list[str]:
    """What a browser would fetch: src or href to anything but the page itself or inline
    data, CSS url()s and @imports, and stylesheet or script elements."""
    return (re.findall(r"""(?:src|href)\s*=\s*["']?(?!#|data:)[^"'\s>]+""", page)
            + re.findall(r"url\((?!\s*['\"]?#)[^)]*\)", page)
            + re.findall(r"@import|<link\b|<script\b|<iframe\b|<object\b|<embed\b", page, re.I))


def test_the_page_has_the_figures_and_the_four_charts(state: Path, tmp_path: Path) -> None:
    with new_store(state) as store:
        fill(store, shift=time.time() - NOW)  # test_report's hand-worked store, ending now
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    proc = report_html(state, target, "--since", "2h")
    size = target.stat().st_size
    assert proc.stderr == f"wrote {target} ({round(size / 1024)} KB)\n"
    assert re.search(r"success rate +67%", proc.stdout), proc.stdout  # -o text as before
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and size < MB
    for key, section in sections(page).items():
        assert section.count("<svg") == 1, key
    # the text report's figures: rates, the run time row, cost, a worker, the arithmetic
    assert "<td>success rate</td><td class=\"n\">67%</td>" in page
    assert re.search(r"<td>run time</td><td class=\"n\">4</td><td class=\"n\">3m20s</td>"
                     r"<td class=\"n\">10m00s</td><td class=\"n\">10m00s</td>"
                     r"<td class=\"n\">5m00s</td>", page)
    assert "<td>total</td><td class=\"n\">$1.5000</td>" in page
    assert re.search(r"<td>w-1</td><td class=\"n\">1</td><td class=\"n\">1</td>", page)
    assert "λ = 2.00 tasks/h, S = 6m40s, a = λ·S = 0.22; M/M/1: expected wait 1m54s" in page
    assert external_references(page) == []
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temporary left


def test_a_pool_younger_than_the_window_is_charted_from_its_first_attempt(
        state: Path, tmp_path: Path) -> None:
    """fill()'s first attempt starts 1h56m before now: in a 24-hour window the time charts
    begin just before it (a young pool was a sliver at the right), and say so; over 2 h
    they show the whole window."""
    with new_store(state) as store:
        fill(store, shift=time.time() - NOW)
    young, whole = tmp_path / "young.html", tmp_path / "whole.html"
    report_html(state, young, "--since", "24h")
    report_html(state, whole, "--since", "2h")
    said = "just before the first attempt of the window (nothing ran before it)"
    charts = sections(young.read_text(encoding="utf-8"))
    for key in ("timeline", "throughput", "cost"):
        assert said in charts[key], key
    assert said not in charts["run_times"]
    assert said not in whole.read_text(encoding="utf-8")


def test_without_costs_the_page_says_so_instead_of_a_chart(state: Path, tmp_path: Path) -> None:
    with new_store(state) as store:
        fill_history(store.path, workers=3, attempts=60, hours=6, now=time.time(),
                     costs=False)
    target = tmp_path / "report.html"
    report_html(state, target, "--since", "6h")
    cost = sections(target.read_text(encoding="utf-8"))["cost"]
    assert "<svg" not in cost and "No agent reported a cost" in cost


def test_outside_text_is_escaped_everywhere(state: Path, tmp_path: Path) -> None:
    """A worker id and a task title that are markup: the id shows in the worker table,
    the timeline and a bottleneck (it fails every attempt); neither runs.  A worker named
    like TeX is drawn as it is (matplotlib would parse ``$...$`` as mathtext, and fail)."""
    now = time.time()
    with new_store(state) as store:
        store.add_tasks([(HOSTILE, "p", 0)] * 10, now=now - 3000)
        for worker, outcome in [(HOSTILE, "failed")] * 3 + [("$\\frac{$", "succeeded")] + \
                [("w-1", "succeeded")] * 6:
            claim = store.claim_task(worker, 3600, now=now - 2000)
            assert claim is not None
            store.finish_attempt(claim, outcome, now=now - 1000)
    target = tmp_path / "report.html"
    proc = report_html(state, target, "--since", "1h", "-o", "json")
    page = target.read_text(encoding="utf-8")
    assert HOSTILE in proc.stdout  # the JSON has it raw, as before
    assert "<script" not in page.lower() and external_references(page) == []
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert f"<td>{escaped}</td>" in page  # the worker table
    assert f"{escaped} fails 100% vs pool 30%" in page  # the bottleneck
    assert "<svg" in sections(page)["timeline"]


def test_a_busy_day_stays_well_under_a_megabyte(state: Path, tmp_path: Path) -> None:
    """20,000 attempts by 32 workers in 24 hours: the timeline's bars are one embedded
    image, not 20,000 SVG rectangles (3.8 MB for the timeline alone, measured)."""
    with new_store(state) as store:
        count = fill_history(store.path, workers=32, attempts=20_000, hours=24,
                             now=time.time(), queued=40)
    assert count > 19_000
    target = tmp_path / "report.html"
    started = time.monotonic()
    report_html(state, target)
    took = time.monotonic() - started
    page = target.read_text(encoding="utf-8")
    assert target.stat().st_size < 0.6 * MB, target.stat().st_size
    assert sections(page)["timeline"].count("<image") == 1  # the bars, rasterized
    assert took < 20, took


def test_many_long_worker_ids_stay_under_a_megabyte(state: Path, tmp_path: Path) -> None:
    """What grows with the workers, at its worst: 600 workers whose 400-character ids
    escape to 6 bytes a character, and 64 whose ids are 18 letters never drawn before
    (each a new glyph outline in the timeline), every one a bottleneck.  The tables and
    lists are cut, and say so."""
    rng = random.Random(2)
    letters = [chr(c) for c in [*range(0x391, 0x3A2), *range(0x410, 0x44F),
                                *range(0x100, 0x17F)]]
    workers = ["".join(rng.sample(letters, 18)) for _ in range(64)] + \
        ['"' * 400 + str(i) for i in range(600)]
    now = time.time()
    with new_store(state) as store:
        path = store.path
    runs = [(w, "failed" if k else "succeeded") for w in workers for k in range(3)] + \
        [("w-1", "succeeded")] * 2200  # the pool fails 30%: each of those fails 67%
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany("INSERT INTO tasks (id, title, prompt, status, created_at, updated_at,"
                   " attempts) VALUES (?, 't', 'p', 'succeeded', ?, ?, 1)",
                   [(i, now - 3000, now) for i in range(1, len(runs) + 1)])
    db.executemany("INSERT INTO attempts (task_id, number, worker_id, lease_token,"
                   " lease_expires_at, status, started_at, ended_at) VALUES"
                   " (?, 1, ?, 'x', 0, ?, ?, ?)",
                   [(i, w, outcome, now - 2000 + i % 1000, now - 900 + i % 800)
                    for i, (w, outcome) in enumerate(runs, 1)])
    db.execute("COMMIT")
    db.close()
    target = tmp_path / "report.html"
    report_html(state, target, "--since", "1h")
    page = target.read_text(encoding="utf-8")
    assert target.stat().st_size < 0.6 * MB, target.stat().st_size
    assert "… and 614 more" in page and "The first 256 of 665 workers" in page
    assert "The first 64 of 665 workers are shown" in sections(page)["timeline"]


@pytest.mark.parametrize(("where", "expected"), [
    ("directory", "is a directory"), ("missing directory", "does not exist"),
    ("fifo", "is a FIFO, not a regular file"), ("symlink", "is a symbolic link"),
    ("empty", "--html needs a file name")])
def test_a_target_that_cannot_be_a_file_is_one_error_line(state: Path, tmp_path: Path,
                                                           where: str, expected: str) -> None:
    """A rename over a device (``--html /dev/null`` once replaced it by a plain file),
    a FIFO or a link would replace it: refused, and it stays what it was."""
    import os
    import stat

    with new_store(state) as store:
        fill(store, shift=time.time() - NOW)
    target = {"directory": tmp_path, "missing directory": tmp_path / "nowhere" / "r.html",
              "fifo": tmp_path / "fifo", "symlink": tmp_path / "link",
              "empty": Path()}[where]
    if where == "fifo":
        os.mkfifo(target)
    if where == "symlink":
        target.symlink_to(tmp_path / "real.html")
    proc = reconcile("--state-dir", str(state), "report", "--pool", "p", "--html",
                     "" if where == "empty" else str(target))
    line = one_error_line(proc)
    assert expected in line, line
    assert proc.stdout == "" and not (tmp_path / "nowhere").exists()
    if where == "fifo":
        assert stat.S_ISFIFO(target.lstat().st_mode)
    if where == "symlink":
        assert target.is_symlink() and not (tmp_path / "real.html").exists()


BLOCK_MATPLOTLIB = ("import sys\n"
                    "sys.modules['matplotlib'] = None  # as if not installed\n"
                    "from reconciler.cli import main\n"
                    "sys.exit(main(sys.argv[1:]))\n")


def test_without_matplotlib_html_says_what_to_install(state: Path, tmp_path: Path) -> None:
    """And the report without --html still works: it never imports matplotlib."""
    with new_store(state) as store:
        fill(store, shift=time.time() - NOW)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", BLOCK_MATPLOTLIB, "--state-dir",
                               str(state), "report", "--pool", "p", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)

    line = one_error_line(run("--html", str(tmp_path / "report.html")))
    assert "install the html extra: pip install -e '.[html]'" in line, line
    assert not (tmp_path / "report.html").exists()
    plain = run()
    assert plain.returncode == 0 and "success rate" in plain.stdout, plain.stderr


def test_a_second_report_replaces_the_first(state: Path, tmp_path: Path) -> None:
    """In place, whole, keeping the file's mode."""
    with new_store(state) as store:
        fill(store, shift=time.time() - NOW)
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o640)
    report_html(state, target, "--since", "2h")
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]


@contextmanager
def zone(name: str) -> Iterator[None]:
    """This process's local time zone is ``name`` for a while."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_the_local_clock_follows_summer_time() -> None:
    """Berlin went from UTC+1 to UTC+2 at 01:00 UTC on 2024-03-31: the charts' clock
    reads 01:30 half an hour before and 03:30 half an hour after, where a fixed offset
    would be an hour off on one side."""
    from reconciler.report.charts import LOCAL

    change = dt.datetime(2024, 3, 31, 1, tzinfo=dt.UTC).timestamp()
    with zone("Europe/Berlin"):
        before = dt.datetime.fromtimestamp(change - 1800, LOCAL)
        after = dt.datetime.fromtimestamp(change + 1800, LOCAL)
        assert (before.hour, before.minute, after.hour, after.minute) == (1, 30, 3, 30)
        assert before.timestamp() == change - 1800 and after.timestamp() == change + 1800
        assert (before.tzname(), after.tzname()) == ("CET", "CEST")


def test_the_time_axis_and_its_bins_are_on_the_local_clock() -> None:
    """In India (UTC+05:30) the ticks and the hourly bins fall on whole local hours, not
    on whole UTC hours (which read hh:30 there)."""
    from matplotlib.figure import Figure

    from reconciler.report.charts import _bin_edges, _time_axis

    with zone("Asia/Kolkata"):
        since = dt.datetime(2024, 3, 1, 0, 10, tzinfo=dt.UTC).timestamp()
        fig = Figure()
        ax = fig.add_subplot()
        _time_axis(ax, since, since + 12 * 3600)
        fig.draw_without_rendering()  # places the ticks and writes their labels
        ticks = [time.localtime(float(v) * 86400) for v in ax.get_xticks()]  # days since 1970
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert len(ticks) >= 5 and {t.tm_min for t in ticks} == {0}, ticks
        # each label is its tick's local hour (the day's date at midnight)
        assert labels == [time.strftime("%b-%d" if t.tm_hour == 0 else "%H:%M", t)
                          for t in ticks], labels
        edges = _bin_edges(since, since + 12 * 3600)
        assert [time.localtime(e).tm_min for e in edges] == [0] * len(edges)
        assert time.localtime(edges[0]).tm_hour == 5  # 00:10 UTC is 05:40 there
