"""Alerts: warning and critical events, written to the pool's alerts file and POSTed to
the webhooks of ``alerts.webhooks``, by the controller, without ever slowing a pass.

After each pass the controller hands the alerts logged since the last one it sent
(a cursor kept in the store, so a restarted controller neither repeats nor skips)
to ``Alerts.dispatch``: each is appended as a JSON line to ``alerts.jsonl`` in the
pool's directory (0600) and queued for every webhook whose ``events`` it matches.
A background thread delivers them: a JSON body (or Slack's ``{"text": …}``), an
``X-Reconciler-Signature: sha256=<HMAC of the body>`` header when the webhook has a
secret, a timeout, and retries with backoff.  A delivery that fails for good
becomes an event itself (``alert.delivery_failed``), which goes to the file but
never to a webhook, so a dead receiver cannot make a loop.  A webhook's URL is never
printed or logged (Slack's hold their token): only its host.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import queue
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from reconciler.log import logger
from reconciler.model import EventRow
from reconciler.paths import open_private_append
from reconciler.store.port import StorePort

FILE = "alerts.jsonl"
CURSOR = "alerts_cursor"
TIMEOUT_SECONDS = 5.0
RETRY_DELAYS = (1.0, 2.0, 4.0)  # after the first try: four tries in all
QUEUE_LIMIT = 1000  # alerts waiting for one webhook; more are dropped, and said so
SIGNATURE_HEADER = "X-Reconciler-Signature"


@dataclass(frozen=True)
class Webhook:
    url: str
    events: tuple[str, ...] = ()  # kind prefixes; empty: every alert
    secret: str | None = None
    format: str = "json"  # json | slack
    index: int | None = None  # its place in spec.alerts.webhooks: which one, never its URL

    def wants(self, event: EventRow) -> bool:
        return not event.kind.startswith("alert.") and (
            not self.events or any(event.kind.startswith(p) for p in self.events))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "?"

    @property
    def name(self) -> str:
        """How messages name it: two webhooks on one host (Slack's) are told apart."""
        where = f"the webhook at {self.host}"
        return where if self.index is None else f"alerts.webhooks[{self.index}] ({where})"


def webhooks_of(document: Mapping[str, Any]) -> tuple[Webhook, ...]:
    """The webhooks of an applied spec's document (``spec.alerts.webhooks``)."""
    hooks = document.get("spec", {}).get("alerts", {}).get("webhooks", [])
    return tuple(Webhook(h["url"], tuple(h.get("events", ())), h.get("secret"),
                         h.get("format", "json"), i) for i, h in enumerate(hooks))


def alert_document(pool: str, event: EventRow) -> dict[str, Any]:
    return {"pool": pool, "id": event.id, "at": event.at, "kind": event.kind,
            "severity": event.severity, "worker": event.worker_id, "task": event.task_id,
            "message": event.message, "fields": dict(event.fields)}


def body_of(hook: Webhook, document: Mapping[str, Any]) -> bytes:
    """What is POSTed: the alert as JSON, or a Slack-compatible ``{"text": …}``."""
    if hook.format == "slack":
        who = " ".join(str(x) for x in (document["worker"], document["task"] and
                                        f"task {document['task']}") if x)
        text = (f"[{document['pool']}] {str(document['severity']).upper()} "
                f"{document['kind']}{' ' + who if who else ''}: {document['message']}")
        # Slack reads <...> as links and mentions (<!channel>): only its escapes are text
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return json.dumps({"text": text}).encode()
    return json.dumps(document, sort_keys=True).encode()


def signature(secret: str, body: bytes) -> str:
    """The value of the signature header: ``sha256=`` and the HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is not a delivery: urllib would follow a POST's 302 as a GET with no
    body (and the signature header), to wherever the receiver points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(hook: Webhook, body: bytes, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """One delivery; None when the receiver took it (2xx), else what went wrong (never
    the URL: it may hold a token)."""
    if urlsplit(hook.url).scheme not in ("http", "https"):  # the schema says so too
        return "not an http or https URL"
    headers = {"Content-Type": "application/json", "User-Agent": "reconciler-alerts"}
    if hook.secret:
        headers[SIGNATURE_HEADER] = signature(hook.secret, body)
    try:
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            hook.url, data=body, headers=headers, method="POST")
        with _OPENER.open(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}" + (" (redirects are not followed)"
                                     if 300 <= exc.code < 400 else "")
    except urllib.error.URLError as exc:
        return f"cannot connect: {type(exc.reason).__name__}"
    except Exception as exc:  # bad status lines, bad URLs: a result, never a dead thread
        return f"failed: {type(exc).__name__}"
    return None if 200 <= status < 300 else f"HTTP {status}"


class Deliverer:
    """The background thread that delivers to one webhook, with retries and backoff, so
    a slow or dead receiver never delays a pass, nor the other webhooks.  ``failed`` is
    told of each delivery that failed for good, and of alerts dropped because the
    queue was full (``QUEUE_LIMIT``: a receiver down for long)."""

    def __init__(self, failed: Callable[[Webhook, EventRow, str], None], *,
                 delays: Sequence[float] = RETRY_DELAYS,
                 timeout: float = TIMEOUT_SECONDS) -> None:
        self.failed = failed
        self.delays = tuple(delays)
        self.timeout = timeout
        self._queue: queue.Queue[tuple[Webhook, EventRow, bytes] | None] = \
            queue.Queue(QUEUE_LIMIT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-deliveries",
                                        daemon=True)
        self._thread.start()

    def send(self, hook: Webhook, event: EventRow, body: bytes) -> None:
        try:
            self._queue.put_nowait((hook, event, body))
        except queue.Full:
            self.failed(hook, event, f"dropped: {QUEUE_LIMIT} alerts already wait for "
                        "this webhook")

    def close(self, wait: float = 2.0) -> None:
        """Stop: deliveries still queued after ``wait`` seconds are dropped (the alerts
        file has them)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(wait)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                self._deliver(*item)
            except Exception:  # the thread must outlive anything one delivery does
                logger.exception("alert delivery failed unexpectedly")

    def _deliver(self, hook: Webhook, event: EventRow, body: bytes) -> None:
        problem = post(hook, body, self.timeout)
        for delay in self.delays:
            if problem is None or self._stop.wait(delay):
                break
            problem = post(hook, body, self.timeout)
        if problem is not None:
            self.failed(hook, event, problem)


class Alerts:
    """The controller's side: write and send what was logged since the last dispatch.
    ``wake`` is called from a delivery thread when a delivery failed for good, so the
    controller records it soon (its store connection is not the thread's to use)."""

    def __init__(self, pool: str, root: Path, wake: Callable[[], object]) -> None:
        self.pool = pool
        self.file = root / FILE
        self._wake = wake
        self._deliverers: dict[str, Deliverer] = {}  # one per webhook URL
        self._failures: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def dispatch(self, store: StorePort, hooks: Sequence[Webhook]) -> int:
        """Record failed deliveries as events, then write, mark as sent and queue each
        alert after the cursor; return how many alerts.  The cursor moves alert by alert
        after its line is written: a controller that dies mid-way writes at most one
        line again; webhooks get each alert at least once, best effort (a receiver
        can tell a repeat by its ``id``)."""
        self._record_failures(store)
        cursor = store.meta_value(CURSOR)
        if cursor is None:  # a first controller: what happened before is history
            store.set_meta_value(CURSOR, str(store.last_event_id()))
            return 0
        sent = 0
        after = int(cursor)
        while batch := store.alerts_after(after):
            for event in batch:
                self._send(store, event, hooks)
                after = event.id
                sent += 1
        self._forget_removed(hooks)
        return sent

    def _record_failures(self, store: StorePort) -> None:
        with self._lock:
            failures, self._failures = self._failures, []
        for i, (message, fields) in enumerate(failures):
            try:
                store.add_event("alert.delivery_failed", message, fields=fields)
            except Exception:  # not recorded now: next time
                with self._lock:
                    self._failures[:0] = failures[i:]
                raise

    def _send(self, store: StorePort, event: EventRow, hooks: Sequence[Webhook]) -> None:
        document = alert_document(self.pool, event)
        fd = open_private_append(self.file)
        try:
            os.write(fd, (json.dumps(document, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)
        store.set_meta_value(CURSOR, str(event.id))
        for hook in hooks:
            if hook.wants(event):
                deliverer = self._deliverers.get(hook.url)
                if deliverer is None:
                    deliverer = self._deliverers[hook.url] = Deliverer(self._failed)
                deliverer.send(hook, event, body_of(hook, document))

    def _forget_removed(self, hooks: Sequence[Webhook]) -> None:
        """A webhook the spec no longer names gets nothing more, queued or not."""
        wanted = {hook.url for hook in hooks}
        for url in [u for u in self._deliverers if u not in wanted]:
            self._deliverers.pop(url).close(wait=0.0)

    def _failed(self, hook: Webhook, event: EventRow, problem: str) -> None:
        """(Delivery thread.) Remember the failure for the next dispatch, and wake it."""
        logger.warning("alert {} ({}) not delivered to {}: {}", event.id, event.kind,
                       hook.name, problem)
        with self._lock:
            self._failures.append((
                f"alert {event.id} ({event.kind}) not delivered to {hook.name}: {problem}",
                {"alert": event.id, "host": hook.host, "webhook": hook.index,
                 "problem": problem}))
        self._wake()

    def close(self, store: StorePort | None = None) -> None:
        """Stop the deliveries (each waits a little for the one under way); with
        ``store``, the failures they met are recorded as events."""
        for deliverer in self._deliverers.values():
            deliverer.close()
        if store is not None:
            try:
                self._record_failures(store)
            except Exception as exc:  # stopping: the log has each failure
                logger.warning("delivery failures not recorded: {}", exc)
