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
SIGNATURE_HEADER = "X-Reconciler-Signature"


@dataclass(frozen=True)
class Webhook:
    url: str
    events: tuple[str, ...] = ()  # kind prefixes; empty: every alert
    secret: str | None = None
    format: str = "json"  # json | slack

    def wants(self, event: EventRow) -> bool:
        return not event.kind.startswith("alert.") and (
            not self.events or any(event.kind.startswith(p) for p in self.events))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "?"


def webhooks_of(document: Mapping[str, Any]) -> tuple[Webhook, ...]:
    """The webhooks of an applied spec's document (``spec.alerts.webhooks``)."""
    hooks = document.get("spec", {}).get("alerts", {}).get("webhooks", [])
    return tuple(Webhook(h["url"], tuple(h.get("events", ())), h.get("secret"),
                         h.get("format", "json")) for h in hooks)


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
        return json.dumps({"text": text}).encode()
    return json.dumps(document, sort_keys=True).encode()


def signature(secret: str, body: bytes) -> str:
    """The value of the signature header: ``sha256=`` and the HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(hook: Webhook, body: bytes, timeout: float = TIMEOUT_SECONDS) -> str | None:
    """One delivery; None when the receiver took it (2xx), else what went wrong."""
    if urlsplit(hook.url).scheme not in ("http", "https"):  # the schema says so too
        return "not an http or https URL"
    headers = {"Content-Type": "application/json", "User-Agent": "reconciler-alerts"}
    if hook.secret:
        headers[SIGNATURE_HEADER] = signature(hook.secret, body)
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        hook.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{type(reason).__name__}: {reason}"
    return None if 200 <= status < 300 else f"HTTP {status}"


class Deliverer:
    """The background thread that delivers to webhooks, with retries and backoff, so a
    slow or dead receiver never delays a pass.  ``failed`` is told of each delivery
    that failed for good (the controller turns it into an event)."""

    def __init__(self, failed: Callable[[Webhook, EventRow, str], None], *,
                 delays: Sequence[float] = RETRY_DELAYS,
                 timeout: float = TIMEOUT_SECONDS) -> None:
        self.failed = failed
        self.delays = tuple(delays)
        self.timeout = timeout
        self._queue: queue.Queue[tuple[Webhook, EventRow, bytes] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-deliveries",
                                        daemon=True)
        self._thread.start()

    def send(self, hook: Webhook, event: EventRow, body: bytes) -> None:
        self._queue.put((hook, event, body))

    def close(self, wait: float = 2.0) -> None:
        """Stop: deliveries still queued after ``wait`` seconds are dropped (the alerts
        file has them)."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(wait)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            hook, event, body = item
            problem = post(hook, body, self.timeout)
            for delay in self.delays:
                if problem is None or self._stop.wait(delay):
                    break
                problem = post(hook, body, self.timeout)
            if problem is not None:
                try:
                    self.failed(hook, event, problem)
                except Exception:  # the thread must outlive any report
                    logger.exception("could not report a failed alert delivery")


class Alerts:
    """The controller's side: write and send what was logged since the last dispatch.
    ``wake`` is called from the delivery thread when a delivery failed for good, so the
    controller records it soon (its store connection is not the thread's to use)."""

    def __init__(self, pool: str, root: Path, wake: Callable[[], object]) -> None:
        self.pool = pool
        self.file = root / FILE
        self._wake = wake
        self._deliverer: Deliverer | None = None
        self._failures: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def dispatch(self, store: StorePort, hooks: Sequence[Webhook]) -> int:
        """Record failed deliveries as events, then write and queue every alert after the
        cursor (the failures among them); return how many alerts."""
        with self._lock:
            failures, self._failures = self._failures, []
        for message, fields in failures:
            store.add_event("alert.delivery_failed", message, fields=fields)
        cursor = store.meta_value(CURSOR)
        if cursor is None:  # a first controller: what happened before is history
            store.set_meta_value(CURSOR, str(store.last_event_id()))
            return 0
        sent = 0
        after = int(cursor)
        while batch := store.alerts_after(after):
            for event in batch:
                self._send(event, hooks)
            after = batch[-1].id
            store.set_meta_value(CURSOR, str(after))
            sent += len(batch)
        return sent

    def _send(self, event: EventRow, hooks: Sequence[Webhook]) -> None:
        document = alert_document(self.pool, event)
        fd = open_private_append(self.file)
        try:
            os.write(fd, (json.dumps(document, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)
        for hook in hooks:
            if hook.wants(event):
                if self._deliverer is None:
                    self._deliverer = Deliverer(self._failed)
                self._deliverer.send(hook, event, body_of(hook, document))

    def _failed(self, hook: Webhook, event: EventRow, problem: str) -> None:
        """(Delivery thread.) Remember the failure for the next dispatch, and wake it."""
        logger.warning("alert {} ({}) not delivered to the webhook at {}: {}", event.id,
                       event.kind, hook.host, problem)
        with self._lock:
            self._failures.append((
                f"alert {event.id} ({event.kind}) not delivered to the webhook at "
                f"{hook.host}: {problem}",
                {"alert": event.id, "host": hook.host, "problem": problem}))
        self._wake()

    def close(self) -> None:
        if self._deliverer is not None:
            self._deliverer.close()
