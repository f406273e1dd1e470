"""The controller's status page in a real headless Chromium: it loads, shows the
workers and the queue of a running pool, and updates itself when a task finishes."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.browser import Browser, chromium
from tests.e2e import add_task, apply, delete, status
from tests.helpers import wait_for, write_spec


def test_the_status_page_shows_the_pool_and_follows_it(host: Path, git_repo: Path) -> None:
    chromium()  # skipped (or, in CI, failed) before anything starts
    go = host / "go"
    waits_for_go = [sys.executable, "-c", "import pathlib, time\n"
                    f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)"]
    spec = write_spec(host, replicas=2, runtime="process", command=waits_for_go,
                      extra={"controller": {"enabled": True, "interval": "1s"},
                             "metrics": {"listen": "127.0.0.1:0"}})
    try:
        apply(spec)
        url = wait_for(lambda: status(spec)["controller"].get("endpoint"),
                       message="the controller to serve its page")
        add_task(spec, title="paint the <i>fence</i>")
        wait_for(lambda: status(spec)["queue"]["running"] == 1, message="the task to start")
        with Browser(url) as page:
            shown = wait_for(lambda: "paint the <i>fence</i>" in (t := page.text()) and t,
                             timeout=20, message="the page to show the running task")
            assert "pool testpool" in shown and "w-1" in shown and "w-2" in shown
            assert "working" in shown and "running" in shown
            assert page.evaluate(
                "document.querySelector('[data-status=running] .n').textContent") == "1"
            assert page.evaluate("document.querySelectorAll('#workers i').length") == 0
            go.write_text("")  # the agent finishes: the page follows without a reload
            wait_for(lambda: page.evaluate(
                "document.querySelector('[data-status=succeeded] .n').textContent") == "1",
                timeout=20, message="the page to count the task succeeded")
            assert page.evaluate(
                "document.querySelector('[data-status=running] .n').textContent") == "0"
            assert "attempt.succeeded" in page.text()
    finally:
        delete(spec, "--force")
