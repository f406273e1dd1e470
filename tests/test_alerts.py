"""Alerts: which events are, and how they reach the alerts file and webhooks.

Deliveries go to a real HTTP server on loopback, which fails the first ones; the
pool test runs a real controller that sends the alert of a task failed for good.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.alerts import (
    CURSOR,
    FILE,
    SIGNATURE_HEADER,
    Alerts,
    Deliverer,
    Webhook,
    alert_document,
    body_of,
    post,
    webhooks_of,
)
from reconciler.model import EventRow
from reconciler.severity import severity_of
from reconciler.store.sqlite import Store
from tests.e2e import add_task, apply, delete, events, pool_dir, set_spec, status, wait_tasks
from tests.helpers import reconcile, wait_for, write_spec


class Receiver:
    """A webhook receiver on loopback: answers ``fail_first`` POSTs with 500, then 200,
    and keeps every request's headers and body."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers), body))
                    failing = len(receiver.requests) <= receiver.fail_first
                    receiver.arrived.notify_all()
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait(self, count: int, timeout: float = 30) -> list[tuple[dict[str, str], bytes]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), \
                f"{len(self.requests)} of {count} requests arrived"
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(fail_first=2)
    yield made
    made.close()


EVENT = EventRow(7, 100.0, "worker.health", "w-3", None, "healthy → dead: process gone",
                 {"from": "healthy", "to": "dead"}, "warning")


@pytest.mark.parametrize(("kind", "fields", "severity"), [
    ("worker.health", {"to": "failed"}, "critical"),
    ("worker.health", {"to": "dead"}, "warning"),
    ("worker.health", {"to": "healthy"}, None),
    ("attempt.failed", {"task_status": "failed"}, "warning"),
    ("attempt.timeout", {"task_status": "failed"}, "warning"),
    ("attempt.failed", {"task_status": "queued"}, None),  # retried: not for good
    ("pool.paused", None, "warning"),
    ("pool.over_budget", None, "warning"),
    ("alert.delivery_failed", {}, "warning"),
    ("controller.down", {}, "critical"),
    ("controller.back", {}, None),
    ("disk.low", {}, "warning"),
    ("disk.ok", {}, None),
    ("metrics.unavailable", {}, "warning"),
    ("task.queued", None, None),
])
def test_which_events_are_alerts(kind: str, fields: dict[str, Any] | None,
                                 severity: str | None) -> None:
    assert severity_of(kind, fields) == severity


def test_a_delivery_is_retried_with_backoff_and_signed(receiver: Receiver) -> None:
    failures: list[str] = []
    deliverer = Deliverer(lambda hook, event, problem: failures.append(problem),
                          delays=(0.05, 0.05, 0.05))
    hook = Webhook(receiver.url, secret="s3cret")
    body = body_of(hook, alert_document("p", EVENT))
    try:
        deliverer.send(hook, EVENT, body)
        requests = receiver.wait(3)  # two refused, the third taken
    finally:
        deliverer.close()
    assert failures == [] and len(requests) == 3
    headers, received = requests[-1]
    assert received == body
    assert headers[SIGNATURE_HEADER] == \
        "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert json.loads(received) == {
        "pool": "p", "id": 7, "at": 100.0, "kind": "worker.health", "severity": "warning",
        "worker": "w-3", "task": None, "message": "healthy → dead: process gone",
        "fields": {"from": "healthy", "to": "dead"}}


def test_a_delivery_that_keeps_failing_is_reported_once(receiver: Receiver) -> None:
    receiver.fail_first = 100
    reported = threading.Event()
    failures: list[str] = []

    def failed(hook: Webhook, event: EventRow, problem: str) -> None:
        failures.append(problem)
        reported.set()

    deliverer = Deliverer(failed, delays=(0.01, 0.01))
    try:
        deliverer.send(Webhook(receiver.url), EVENT, b"{}")
        assert reported.wait(30)
    finally:
        deliverer.close()
    assert failures == ["HTTP 500"] and len(receiver.requests) == 3


def test_a_redirect_is_not_a_delivery() -> None:
    """urllib would follow a POST's 302 as a GET without the body: never followed."""
    class Redirecting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = Webhook(f"http://127.0.0.1:{server.server_address[1]}/hook")
        assert post(hook, b"{}") == "HTTP 302 (redirects are not followed)"
    finally:
        server.shutdown()
        server.server_close()


def test_a_receiver_that_is_not_http_never_stops_the_deliveries(receiver: Receiver) -> None:
    """A webhook pointed at the wrong port (it answers ``SSH-2.0``): the delivery fails,
    is reported, and the next alert is still delivered."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)  # the request, then an answer that is not HTTP
            connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=answer, daemon=True).start()
    failures: list[str] = []
    reported = threading.Event()

    def failed(hook: Webhook, event: EventRow, problem: str) -> None:
        failures.append(problem)
        reported.set()

    deliverer = Deliverer(failed, delays=())
    try:
        deliverer.send(Webhook(f"http://127.0.0.1:{port}/hook"), EVENT, b"{}")
        assert reported.wait(30)
        receiver.fail_first = 0
        deliverer.send(Webhook(receiver.url), EVENT, b"{}")
        receiver.wait(1)
    finally:
        deliverer.close()
        listener.close()
    # what the client saw depends on timing: a bad status line, or the socket closing
    assert len(failures) == 1 and failures[0] in (
        "failed: BadStatusLine", "failed: RemoteDisconnected",
        "cannot connect: BrokenPipeError", "cannot connect: ConnectionResetError"), failures


def test_a_slack_body_is_one_line_of_text() -> None:
    body = body_of(Webhook("http://x", format="slack"), alert_document("agents", EVENT))
    assert json.loads(body) == {
        "text": "[agents] WARNING worker.health w-3: healthy → dead: process gone"}
    loud = EventRow(8, 0.0, "attempt.failed", None, 3, "<!channel> & <https://x|y>", {},
                    "warning")
    text = json.loads(body_of(Webhook("http://x", format="slack"),
                              alert_document("a", loud)))["text"]
    assert text == "[a] WARNING attempt.failed task 3: &lt;!channel&gt; &amp; " \
        "&lt;https://x|y&gt;"  # shown as written: no mention, no link


def test_a_webhook_takes_the_kinds_it_names_and_never_its_own_failures() -> None:
    hook = Webhook("http://x", events=("attempt", "worker.health"))
    assert hook.wants(EVENT)
    assert not hook.wants(EventRow(1, 0.0, "pool.paused", None, None, "m", {}, "warning"))
    assert not Webhook("http://x").wants(
        EventRow(1, 0.0, "alert.delivery_failed", None, None, "m", {}, "warning"))
    assert webhooks_of({"spec": {"alerts": {"webhooks": [
        {"url": "https://h/x", "secret": "k", "format": "slack"}]}}}) == (
        Webhook("https://h/x", (), "k", "slack", 0),)


def test_dispatch_writes_each_alert_once_from_where_the_last_controller_stopped(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.fail_first = 0
    with Store(tmp_path / "store.db") as store:
        store.add_event("worker.health", "before any controller", worker_id="w-1",
                        fields={"to": "dead"})
        first = Alerts("p", tmp_path, wake=lambda: None)
        assert first.dispatch(store, ()) == 0  # history is not sent
        store.add_event("worker.health", "w-2 died", worker_id="w-2", fields={"to": "dead"})
        store.add_event("task.queued", "not an alert")
        assert first.dispatch(store, (Webhook(receiver.url),)) == 1
        first.close()
        second = Alerts("p", tmp_path, wake=lambda: None)  # a restarted controller
        assert second.dispatch(store, ()) == 0
        lines = (tmp_path / FILE).read_text().splitlines()
        assert [json.loads(line)["message"] for line in lines] == ["w-2 died"]
        assert (tmp_path / FILE).stat().st_mode & 0o777 == 0o600
        assert int(store.meta_value(CURSOR) or 0) == store.last_event_id() - 1
        assert json.loads(receiver.wait(1)[0][1])["message"] == "w-2 died"


def test_events_severity_lists_alerts_only(tmp_path: Path) -> None:
    with Store(tmp_path / "store.db") as store:
        store.add_event("worker.health", "dead", worker_id="w-1", fields={"to": "dead"})
        store.add_event("worker.health", "failed", worker_id="w-2", fields={"to": "failed"})
        store.add_event("task.queued", "info")
        warning = store.find_events(severity="warning")
        assert [(e.message, e.severity) for e in warning] == [("dead", "warning"),
                                                              ("failed", "critical")]
        assert [e.message for e in store.find_events(severity="critical")] == ["failed"]
        assert [e.message for e in store.find_events(severity="warning", worker_id="w-1")] \
            == ["dead"]
        assert [e.message for e in store.find_events(severity="warning", last=1)] == ["failed"]


FAILING_AGENT = "import sys; print('it broke'); sys.exit(1)"


def test_a_task_failed_for_good_is_sent_to_the_webhook_by_the_controller(
        host: Path, git_repo: Path, receiver: Receiver) -> None:
    receiver.fail_first = 1
    command = [sys.executable, "-c", FAILING_AGENT]
    spec = write_spec(host, replicas=1, runtime="process", command=command, extra={
        "worker": {"command": command},
        "tasks": {"maxAttempts": 1},
        "controller": {"enabled": True},
        "alerts": {"webhooks": [{"url": receiver.url, "secret": "k", "events": ["attempt"]}]}})
    try:
        assert apply(spec, "--wait").returncode == 0
        task = add_task(spec, title="doomed")
        wait_tasks(spec, task)
        (headers, body), *_ = receiver.wait(2)[1:]  # the first try was refused
        alert = json.loads(body)
        assert (alert["kind"], alert["severity"], alert["task"]) == \
            ("attempt.failed", "warning", int(task))
        assert headers[SIGNATURE_HEADER] == \
            "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
        written = wait_for(lambda: (pool_dir(host) / FILE).exists() and
                           (pool_dir(host) / FILE).read_text().splitlines(),
                           message="the alerts file")
        assert json.loads(written[-1])["kind"] == "attempt.failed"
        listed = json.loads(reconcile("events", "--severity", "warning", "-f", str(spec),
                                      "-o", "json", check=True).stdout)
        assert [e["kind"] for e in listed] == ["attempt.failed"]
        assert receiver.url not in reconcile("events", "-f", str(spec)).stdout
    finally:
        delete(spec, "--force")



SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_controller_that_stays_down_is_reported_by_one_worker(
        host: Path, git_repo: Path, receiver: Receiver) -> None:
    receiver.fail_first = 0
    spec = write_spec(host, replicas=2, runtime="process", command=SLEEPER, extra={
        "controller": {"enabled": True, "interval": "300ms"},
        "alerts": {"webhooks": [{"url": receiver.url, "events": ["controller"]}]}})
    try:
        assert apply(spec, "--wait").returncode == 0
        controller = wait_for(lambda: status(spec)["controller"]["pid"],
                              message="the controller to run")
        os.kill(controller, signal.SIGKILL)
        (_, body), = receiver.wait(1)  # sent by the worker that noticed first
        alert = json.loads(body)
        assert (alert["kind"], alert["severity"]) == ("controller.down", "critical")
        assert f"pid {controller}" in alert["message"]
        assert "controller.down" in (pool_dir(host) / FILE).read_text()
        time.sleep(2)  # both workers keep looking: still one event, one delivery
        downs = [e for e in events(spec) if e["kind"] == "controller.down"]
        assert len(downs) == 1 and len(receiver.requests) == 1
        assert apply(spec, "--wait").returncode == 0  # starts a controller again
        back = wait_for(lambda: [e for e in events(spec) if e["kind"] == "controller.back"],
                        message="the new controller to say it is back")
        assert len(back) == 1
    finally:
        delete(spec, "--force")


def test_a_disk_running_low_is_said_once_and_its_recovery_too(host: Path,
                                                              git_repo: Path) -> None:
    # every filesystem has less than 100 % free: "low" at once, on a real statvfs
    spec = write_spec(host, replicas=0, extra={
        "controller": {"enabled": True, "interval": "300ms"},
        "alerts": {"minFreeDiskPercent": 100}})
    try:
        assert apply(spec).returncode == 0
        # the worktrees and the state share the test's filesystem: one alert names both
        low = wait_for(lambda: [e for e in events(spec) if e["kind"] == "disk.low"],
                       message="disk.low for the worktrees' and the state's filesystem")
        assert [e["fields"]["place"] for e in low] == ["state+worktrees"]
        assert "the pool state's and the worktrees' filesystem" in low[0]["message"]
        assert "under alerts.minFreeDiskPercent (100%)" in low[0]["message"]
        listed = json.loads(reconcile("events", "--severity", "warning", "-f", str(spec),
                                      "-o", "json", check=True).stdout)
        assert [e["kind"] for e in listed] == ["disk.low"]
        time.sleep(1)  # three more passes (every 300ms): nothing said again
        assert len([e for e in events(spec) if e["kind"] == "disk.low"]) == 1
        set_spec(spec, alerts={"minFreeDiskPercent": 0.001})
        assert apply(spec).returncode == 0
        wait_for(lambda: [e for e in events(spec) if e["kind"] == "disk.ok"],
                 message="disk.ok for the filesystem")
    finally:
        delete(spec, "--force")


def test_controller_down_is_said_once_per_controller_and_again_after_it_answered(
        tmp_path: Path) -> None:
    from reconciler.store.workers import controller_identity

    store = Store(tmp_path / "store.db")
    store.register_controller(4242, None, now=100.0)
    info = store.controller()
    assert info is not None
    which = controller_identity(info.pid, info.started_at)
    # a worker that looked before a new controller registered: not the one recorded
    assert store.report_controller_down("4241@50.0", "stale", now=200.0) is False
    assert store.report_controller_down(which, "down", now=200.0) is True
    assert store.report_controller_down(which, "down", now=201.0) is False  # once
    store.controller_heartbeat(now=300.0)  # it was hung, and answers again
    assert [e.kind for e in store.find_events(kind="controller.")] == \
        ["controller.started", "controller.down", "controller.back"]
    assert store.report_controller_down(which, "down again", now=400.0) is True
    store.controller_heartbeat(now=401.0)
    store.controller_heartbeat(now=402.0)  # nothing to clear: no second controller.back
    assert [e.kind for e in store.find_events(kind="controller.")][-2:] == \
        ["controller.down", "controller.back"]


@pytest.mark.parametrize("why", ["wanted", "disabled in the newest spec",
                                 "delete asked it to stop"])
def test_controller_down_only_when_one_is_wanted(tmp_path: Path, why: str) -> None:
    from reconciler.controllerwatch import ControllerWatch
    from reconciler.paths import pool_paths
    from reconciler.spec import load_spec

    spec = load_spec(str(write_spec(tmp_path, extra={
        "controller": {"enabled": True, "interval": "100ms"}})))
    paths = pool_paths(tmp_path / "state", spec.name).create()
    store = Store(paths.store)
    document = json.loads(spec.document_json)
    if why.startswith("disabled"):
        document["spec"]["controller"]["enabled"] = False
    store.record_applied_spec(source_path=None, source_sha256="s", git_commit=None,
                              document_hash="h", document=json.dumps(document),
                              summary="spec")
    store.register_controller(2**22 + 7, None, now=time.time() - 100)  # no such process
    if why.startswith("delete"):
        store.request_controller_stop()
    watch = ControllerWatch(paths, spec)
    said = [watch.check(store, now=time.time() + t) for t in (0, 10, 20, 30)]
    assert said == ([False, True, False, False] if why == "wanted" else [False] * 4)
    assert len(store.find_events(kind="controller.down")) == (why == "wanted")


def test_a_failed_delivery_names_which_webhook_never_its_url(tmp_path: Path) -> None:
    """Two Slack webhooks share a host: the message tells them apart by their place."""
    hooks = webhooks_of({"spec": {"alerts": {"webhooks": [
        {"url": "https://hooks.example.com/services/T0/B0/secret-one"},
        {"url": "https://hooks.example.com/services/T0/B1/secret-two"}]}}})
    assert [h.name for h in hooks] == [
        "alerts.webhooks[0] (the webhook at hooks.example.com)",
        "alerts.webhooks[1] (the webhook at hooks.example.com)"]
    alerts = Alerts("p", tmp_path, wake=lambda: None)
    alerts._failed(hooks[1], EVENT, "HTTP 500")
    with Store(tmp_path / "store.db") as store:
        alerts.close(store)
        failed, = store.find_events(kind="alert.delivery_failed")
    assert failed.message == ("alert 7 (worker.health) not delivered to alerts.webhooks[1] "
                              "(the webhook at hooks.example.com): HTTP 500")
    assert "secret" not in failed.message and failed.fields["webhook"] == 1
