"""A real headless Chromium, driven over the DevTools protocol on a pipe (no websocket
library, no port): open a page, then read what it shows as often as a test needs.

Chromium reads protocol messages from its fd 3 and writes them to its fd 4, each a
JSON object ended by a NUL byte (``--remote-debugging-pipe``).  A tiny Python
launcher puts our two pipe ends there and ``exec``s Chromium, so no shell is used.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

LAUNCH_ON_FDS = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4);"
                 " os.execv(sys.argv[3], sys.argv[3:])")


def chromium() -> str:
    """Chromium's path; skipped where it is missing, but a failure in CI, which installs
    it (``.ci/run``): there a missing browser must not pass as a skipped test."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


class Browser:
    """One headless Chromium with one page; ``text()`` is what the page shows."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        binary = chromium()
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH_ON_FDS, str(to_browser_r), str(from_browser_w),
             binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking",
             "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "about:blank"],
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        try:
            target = self.call("Target.createTarget", {"url": url})["targetId"]
            self._session = self.call("Target.attachToTarget",
                                      {"targetId": target, "flatten": True})["sessionId"]
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, self._session)
        return result["result"].get("value")

    def text(self) -> str:
        """The page's visible text now."""
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise AssertionError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 65536)
            if not chunk:
                raise AssertionError("chromium exited")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def close(self) -> None:
        if self.process.poll() is None:
            try:  # its own way out: the renderer and helper processes end with it
                os.write(self._to_browser, json.dumps(
                    {"id": 0, "method": "Browser.close", "params": {}}).encode() + b"\0")
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def screenshot(browser: Browser, path: Path) -> None:
    """The page as a PNG (for a person to look at while developing)."""
    import base64

    shot = browser.call("Page.captureScreenshot", {"format": "png"}, browser._session)
    path.write_bytes(base64.b64decode(shot["data"]))
