"""The controller's HTTP endpoint (``spec.metrics.listen``): metrics, health, status.

- ``/metrics``: the Prometheus exposition (OpenMetrics when the scraper asks for it);
- ``/healthz``: 200 while the controller's passes succeed, 503 otherwise (no token
  needed: it says only that);
- ``/api/status``: what the dashboard shows, as JSON;
- ``/``: a read-only status page that polls ``/api/status`` every second.

Read-only: the endpoint changes nothing (every method but GET and HEAD is refused),
and each request reads the store through a read-only connection of its own thread.
Off loopback, every request but ``/healthz`` needs ``Authorization: Bearer`` with
the token of ``bearerTokenFile`` (the spec's check makes sure one is set); on
loopback, a ``Host`` that is not a loopback name is refused, so a web page the
operator visits cannot read the endpoint through DNS rebinding.  The page's script
writes text only (never HTML), and a Content-Security-Policy allows nothing but the
endpoint's own files.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar

from reconciler.log import logger
from reconciler.specmodel import is_loopback

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

REQUEST_TIMEOUT = 10.0  # a client that sends nothing for this long is dropped
MAX_CONNECTIONS = 16  # at once; more get 503 (the threads are the controller's own)
STATUS_FRESH_FOR = 0.5  # one status read serves every page polling within this
METRICS_FRESH_FOR = 1.0  # one scrape's reads serve every scraper within this
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/status.js": ("status.js", "text/javascript; charset=utf-8"),
          "/status.css": ("status.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Endpoints:
    """What the server answers with; each callable runs on a request's thread."""

    metrics: CollectorRegistry
    status: Callable[[], Mapping[str, Any]]
    health: Callable[[], tuple[bool, Mapping[str, Any]]]


class StatusServer:
    """A threaded HTTP server on ``host:port`` (port 0: any free one), in a daemon
    thread; ``address`` is where it listens once started."""

    def __init__(self, host: str, port: int, endpoints: Endpoints,
                 token: Callable[[], str] | None = None) -> None:
        self.endpoints = endpoints
        self.token = token  # read for each request: a rotated token counts at once
        self.loopback = is_loopback(host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (_Server,), {"address_family": family})
        self._server = server_class(("127.0.0.1" if host == "localhost" else host, port),
                                    _Handler)
        self._server.owner = self
        self._server.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="http-endpoint", daemon=True)
        self._status = _Fresh()
        self._metrics = _Fresh()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    def start(self) -> str:
        self._thread.start()
        return self.address

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def status_body(self) -> bytes:
        """The status as JSON, read at most once per ``STATUS_FRESH_FOR`` for every page
        polling at once (a read observes the workers: tens of milliseconds)."""
        return self._status.get("json", STATUS_FRESH_FOR, lambda: json.dumps(
            self.endpoints.status(), default=str).encode())

    def metrics_body(self, accept: str) -> tuple[bytes, str]:
        """The exposition in the format ``accept`` asks for, read at most once per
        ``METRICS_FRESH_FOR`` (each read aggregates the whole attempts table)."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        body = self._metrics.get(content_type, METRICS_FRESH_FOR,
                                 lambda: encoder(self.endpoints.metrics))
        return body, content_type


class _Fresh:
    """One body, made again once it is older than asked (or asked for another ``key``),
    whatever the number of clients asking at once: they wait for one read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: tuple[float, str, bytes] | None = None

    def get(self, key: str, fresh_for: float, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            now = time.monotonic()
            made = self._made
            if made is None or made[1] != key or now - made[0] > fresh_for:
                made = self._made = (now, key, make())
            return made[2]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: StatusServer
    slots: threading.BoundedSemaphore  # connections being answered

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # full: answer at once, hold nothing
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-answer is one debug line, not a traceback in the log."""
        import sys

        logger.debug("http {}: {}", client_address, sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "reconciler"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    ALLOWED: ClassVar[str] = "GET, HEAD"

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse_method(self) -> None:
        self._send(405, b"only GET and HEAD\n", "text/plain; charset=utf-8",
                   {"Allow": self.ALLOWED})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _answer(self, head: bool) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        if owner.loopback and not _loopback_host(self.headers.get("Host")):
            self._send(421, b"this endpoint answers only to a loopback Host\n",
                       "text/plain; charset=utf-8", head=head)
            return
        if self.headers.get("Sec-Fetch-Site") == "cross-site":  # another site's page
            self._send(403, b"not for other sites' pages\n", "text/plain; charset=utf-8",
                       head=head)
            return
        try:
            authorised = owner.token is None or self._authorised(owner.token())
            if path == "/healthz":  # open, but only the verdict for strangers
                ok, document = owner.endpoints.health()
                if not authorised:
                    document = {"status": document.get("status")}
                self._send(200 if ok else 503, _json(document), "application/json", head=head)
                return
            if not authorised:
                self._send(401, b"send Authorization: Bearer <token>\n",
                           "text/plain; charset=utf-8",
                           {"WWW-Authenticate": 'Bearer realm="reconciler"'}, head=head)
                return
            if path == "/metrics":
                body, content_type = owner.metrics_body(self.headers.get("Accept", ""))
                self._send(200, body, content_type, head=head)
            elif path == "/api/status":
                self._send(200, owner.status_body(), "application/json", head=head)
            elif path in STATIC:
                name, content_type = STATIC[path]
                body = resources.files("reconciler.web").joinpath(name).read_bytes()
                self._send(200, body, content_type, head=head)
            else:
                self._send(404, b"not found: try /, /api/status, /metrics or /healthz\n",
                           "text/plain; charset=utf-8", head=head)
        except ConnectionError:  # the client left: nobody to answer
            return
        except Exception as exc:  # a failing read is an answer, never a dead thread
            logger.warning("{} {} failed: {}: {}", self.command, path, type(exc).__name__,
                           exc)
            self._send(503, _json({"error": type(exc).__name__}), "application/json",
                       head=head)

    def _authorised(self, token: str) -> bool:
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                                  token.encode())

    def _send(self, code: int, body: bytes, content_type: str,
              extra: Mapping[str, str] | None = None, *, head: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http {} {}", self.address_string(), format % args)


def _loopback_host(header: str | None) -> bool:
    """Whether a ``Host`` header names this machine's loopback (any port)."""
    if not header:
        return False
    host = header.strip()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    else:
        host = host.rpartition(":")[0] if host.count(":") == 1 else host
    return host.lower() in LOOPBACK_NAMES or is_loopback(host)


def _json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, default=str).encode()
