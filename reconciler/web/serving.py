"""The controller's side of its HTTP endpoint: started, moved and stopped as the
newest applied spec's ``metrics`` says, with what ``/healthz`` and the pass-duration
histogram need from the loop.

A port that cannot be bound (taken, or not ours to take) or a token file that cannot
be read never stops the controller: it says so once (a log line and a
``metrics.unavailable`` warning event) and tries again every ``RETRY_SECONDS``.
The URL being served is kept in the store's meta, so ``status`` shows it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import ReconcilerError
from reconciler.log import logger
from reconciler.pool import ENDPOINT_KEY, ENDPOINT_PROBLEM_KEY, Pool, read_token
from reconciler.specmodel import MetricsSpec
from reconciler.store.port import StorePort

if TYPE_CHECKING:
    from prometheus_client import Histogram

    from reconciler.web.server import StatusServer

RETRY_SECONDS = 30.0
HEALTHY_PASS_AGE = 30.0  # /healthz fails once no pass succeeded for 3 intervals or this


class TokenFile:
    """The bearer token, read again whenever its file changes: a rotated token counts at
    the next request, with no restart.  A file that cannot be read keeps the last good
    token (and says so); one that others may read is warned about once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._token = read_token(path)
        self._stamp = self._stamp_now()
        if self._stamp is not None and self._stamp[3] & 0o077:
            logger.warning("metrics.bearerTokenFile {} can be read by other users "
                           "(chmod 600 it)", path)

    def _stamp_now(self) -> tuple[int, int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode

    def __call__(self) -> str:
        stamp = self._stamp_now()
        if stamp is not None and stamp != self._stamp:
            try:
                self._token = read_token(self.path)
                self._stamp = stamp
            except ReconcilerError as exc:
                logger.warning("{}; the previous token stays", exc.one_line())
        return self._token


class ServedEndpoint:
    """The HTTP endpoint of one controller, and the facts of its loop it reports."""

    def __init__(self, pool: Pool) -> None:
        self.current = pool  # the newest generation's pool: the endpoint reports on it
        self.interval = 10.0
        self.last_pass_ok: float | None = None
        self.last_error: str | None = None
        self._server: StatusServer | None = None
        self._serving: MetricsSpec | None = None
        self._retry_at = 0.0
        self._reported: MetricsSpec | None = None  # the failure already said for this spec
        self._pass_seconds: Histogram | None = None

    def passed(self, pool: Pool, seconds: float) -> None:
        """A pass went through, taking ``seconds``."""
        self.current = pool
        if pool.spec is not None:
            self.interval = pool.spec.controller_interval
        self.last_pass_ok, self.last_error = time.time(), None
        if self._pass_seconds is not None:
            self._pass_seconds.observe(seconds)

    def waited(self) -> None:
        """A pass waited for the pool lock (an apply or delete holds it): the loop is
        alive, and ``/healthz`` must not call it failing."""
        self.last_pass_ok = time.time()

    def failed(self, problem: str) -> None:
        self.last_error = problem

    def health(self) -> tuple[bool, Mapping[str, Any]]:
        """``/healthz``: passes go through, and recently."""
        age = None if self.last_pass_ok is None else time.time() - self.last_pass_ok
        ok = self.last_error is None and age is not None \
            and age < max(3 * self.interval, HEALTHY_PASS_AGE)
        return ok, {"status": "ok" if ok else "failing", "pool": self.current.name,
                    "last_pass_seconds_ago": None if age is None else round(age, 3),
                    "problem": self.last_error}

    def follow(self, store: StorePort) -> None:
        """Serve as the current spec says: start, move to a new address, or stop."""
        wanted = self.current.spec.metrics if self.current.spec else None
        if wanted is None and self._reported is not None:  # no longer wanted: no problem
            self._reported = None
            store.set_meta_value(ENDPOINT_PROBLEM_KEY, "")
        if wanted == self._serving and (self._server is not None or wanted is None):
            return
        if self._server is not None:
            self._stop(store)
        if wanted != self._reported:  # a new address is tried at once, not after a wait
            self._retry_at = 0.0
        if wanted is None or time.monotonic() < self._retry_at:
            return
        self._serving = wanted
        try:
            self._start(store, wanted)
        except (OSError, ReconcilerError) as exc:
            self._retry_at = time.monotonic() + RETRY_SECONDS
            problem = exc.one_line() if isinstance(exc, ReconcilerError) else \
                f"cannot listen on {wanted.address}: {exc.strerror or exc}"
            logger.error("metrics endpoint not served: {}; retrying in {:.0f}s", problem,
                         RETRY_SECONDS)
            if self._reported != wanted:  # an event once, not every retry
                self._reported = wanted
                store.add_event("metrics.unavailable",
                                f"metrics endpoint not served: {problem}",
                                fields={"address": wanted.address})
                store.set_meta_value(ENDPOINT_PROBLEM_KEY, f"metrics endpoint not served: "
                                     f"{problem}; retrying every {RETRY_SECONDS:.0f}s")
            return
        if self._reported is not None:
            store.set_meta_value(ENDPOINT_PROBLEM_KEY, "")
        self._reported = None

    def _start(self, store: StorePort, wanted: MetricsSpec) -> None:
        from prometheus_client.registry import CollectorRegistry

        from reconciler.metrics import pass_histogram
        from reconciler.web.endpoints import pool_endpoints
        from reconciler.web.server import StatusServer

        token = TokenFile(wanted.token_file) if wanted.token_file else None
        registry = CollectorRegistry(auto_describe=False)
        if self._pass_seconds is None:
            self._pass_seconds = pass_histogram(registry)
        else:  # the same histogram, served at the new address
            registry.register(self._pass_seconds)
        endpoints = pool_endpoints(lambda: self.current, self.health, registry)
        server = StatusServer(wanted.host, wanted.port, endpoints, token)
        url = f"http://{server.start()}/"
        self._server = server
        store.set_meta_value(ENDPOINT_KEY, url)
        logger.info("serving metrics and the status page at {}", url)

    def _stop(self, store: StorePort | None) -> None:
        server, self._server, self._serving = self._server, None, None
        if server is not None:
            server.close()
        if store is not None:
            store.set_meta_value(ENDPOINT_KEY, "")
            store.set_meta_value(ENDPOINT_PROBLEM_KEY, "")

    def close(self, store: StorePort | None) -> None:
        """Stop serving (the controller is stopping)."""
        if self._server is not None:
            self._stop(store)
