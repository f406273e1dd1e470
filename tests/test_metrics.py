"""Prometheus metrics (``reconcile metrics`` and the controller's ``/metrics``), the
health check, the JSON status and the page's files, over real HTTP from a running
controller; every figure is checked against the store it was read from."""

from __future__ import annotations

import http.client
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families

from reconciler.paths import pool_paths
from reconciler.store.sqlite import Store
from tests.e2e import add_task, apply, delete, status, wait_tasks
from tests.helpers import one_error_line, reconcile, wait_for, write_spec
from tests.test_report import fill

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def filled_state(tmp_path: Path) -> Path:
    """A state directory with pool ``p`` holding the report's hand-made history."""
    state = tmp_path / "state"
    with Store(pool_paths(state, "p").create().store) as store:
        fill(store)
    return state


def test_reconcile_metrics_reports_the_store(filled_state: Path) -> None:
    proc = reconcile("--state-dir", str(filled_state), "metrics", "--pool", "p", check=True)
    found = samples(proc.stdout)
    # tests/test_report.py's fill(): task 1 succeeded (w-1, 300 s, $1), task 2 failed
    # once (w-2, 100 s) then succeeded (200 s, $0.50), task 3 timed out (600 s) and
    # failed, task 4 queued; first attempts began 60, 300 and 600 s after creation
    assert value(found, "reconciler_tasks", status="queued") == 1
    assert value(found, "reconciler_tasks", status="succeeded") == 2
    assert value(found, "reconciler_tasks", status="failed") == 1
    assert value(found, "reconciler_attempts_total", outcome="succeeded") == 2
    assert value(found, "reconciler_attempts_total", outcome="failed") == 1
    assert value(found, "reconciler_attempts_total", outcome="timeout") == 1
    assert value(found, "reconciler_attempts_total", outcome="lost") == 0
    run = "reconciler_attempt_run_time_seconds"
    assert value(found, f"{run}_bucket", le="60.0") == 0
    assert value(found, f"{run}_bucket", le="120.0") == 1  # 100
    assert value(found, f"{run}_bucket", le="300.0") == 3  # 100, 200, 300
    assert value(found, f"{run}_bucket", le="600.0") == 4
    assert value(found, f"{run}_bucket", le="+Inf") == 4
    assert value(found, f"{run}_count") == 4 and value(found, f"{run}_sum") == 1200
    wait = "reconciler_task_queue_wait_seconds"
    assert value(found, f"{wait}_bucket", le="30.0") == 0
    assert value(found, f"{wait}_bucket", le="60.0") == 1
    assert value(found, f"{wait}_bucket", le="300.0") == 2
    assert value(found, f"{wait}_count") == 3 and value(found, f"{wait}_sum") == 960
    assert value(found, "reconciler_cost_usd_total") == pytest.approx(1.5)
    assert value(found, "reconciler_controller_up") == 0
    assert value(found, "reconciler_claiming_paused") == 0
    assert ("reconciler_pool_info", (("generation", "0"), ("pool", "p"))) in found
    assert 0 < value(found, "reconciler_disk_free_ratio", place="state") <= 1
    assert "reconciler_controller_pass_duration_seconds" not in proc.stdout  # served only


def test_reconcile_metrics_speaks_openmetrics_too(filled_state: Path) -> None:
    proc = reconcile("--state-dir", str(filled_state), "metrics", "--pool", "p",
                     "--openmetrics", check=True)
    assert proc.stdout.endswith("# EOF\n")
    names = {f.name for f in openmetrics(proc.stdout)}  # type: ignore[no-untyped-call]
    assert {"reconciler_attempts", "reconciler_attempt_run_time_seconds",
            "reconciler_tasks"} <= names


def test_reconcile_metrics_as_json(filled_state: Path) -> None:
    found = json.loads(reconcile("--state-dir", str(filled_state), "metrics", "--pool", "p",
                                 "-o", "json", check=True).stdout)
    by_name = {f["name"]: f for f in found}
    assert by_name["reconciler_attempts"]["type"] == "counter"
    assert {"name": "reconciler_attempts_total", "labels": {"outcome": "timeout"},
            "value": 1.0} in by_name["reconciler_attempts"]["samples"]
    assert by_name["reconciler_attempt_run_time_seconds"]["type"] == "histogram"


def test_reconcile_metrics_of_no_pool_is_one_line(tmp_path: Path) -> None:
    line = one_error_line(reconcile("--state-dir", str(tmp_path), "metrics", "--pool", "nope"))
    assert "nope" in line


def test_the_grafana_dashboard_and_alert_rules_use_metrics_that_exist(
        filled_state: Path) -> None:
    import re

    import yaml

    printed = reconcile("--state-dir", str(filled_state), "metrics", "--pool", "p",
                        check=True).stdout
    served = {f"reconciler_controller_pass_duration_seconds{end}" for end in
              ("_bucket", "_count", "_sum")}  # the controller's own, served by it alone
    for family in text_string_to_metric_families(printed):  # with no sample yet too
        served |= {family.name + end for end in {
            "counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(
                family.type, ("",))}
    examples = Path(__file__).parent.parent / "examples" / "grafana"
    dashboard = json.loads((examples / "reconciler-dashboard.json").read_text())
    rules = yaml.safe_load((examples / "reconciler-alerts.yml").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + \
        [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = set(re.findall(r"\breconciler_[a-z_]+", " ".join(expressions)))
    assert len(used) >= 12 and used <= served, used - served
    assert len(dashboard["panels"]) >= 12


@pytest.mark.parametrize(("metrics", "expected"), [
    ({"listen": "0.0.0.0:9464"}, "0.0.0.0 is reachable from other machines: set "
                                 "metrics.bearerTokenFile, or listen on 127.0.0.1"),
    ({"listen": "127.0.0.1:70000"}, "port 70000 does not exist"),
    ({"listen": "localhost"}, "host:port"),
    ({"bearerTokenFile": "token"}, "has no effect without metrics.listen"),
])
def test_a_metrics_endpoint_that_cannot_be_is_refused(tmp_path: Path, metrics: dict[str, str],
                                                      expected: str) -> None:
    spec = write_spec(tmp_path, extra={"metrics": metrics})
    line = one_error_line(reconcile("validate", "-f", str(spec)))
    assert expected in line and "spec.metrics" in line, line


def test_beyond_loopback_with_a_token_is_accepted(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, extra={"metrics": {"listen": "[::]:9464",
                                                   "bearerTokenFile": "token"}})
    assert reconcile("validate", "-f", str(spec)).returncode == 0


# --------------------------------------------------------------------------- the endpoint


def get(address: str, path: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


def endpoint_of(spec: Path) -> str:
    """host:port the controller serves, once ``status`` shows it."""
    url: str = wait_for(lambda: status(spec)["controller"].get("endpoint"),
                        message="the controller to serve its endpoint")
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    return url.removeprefix("http://").rstrip("/")


def controlled_spec(host: Path, **metrics: Any) -> Path:
    return write_spec(host, replicas=2, runtime="process", command=SLEEPER,
                      extra={"controller": {"enabled": True, "interval": "1s"},
                             "metrics": {"listen": "127.0.0.1:0", **metrics}})


def test_the_controller_serves_metrics_health_status_and_page(host: Path,
                                                              git_repo: Path) -> None:
    spec = controlled_spec(host)
    try:
        apply(spec)
        address = endpoint_of(spec)
        task = add_task(spec, title="measured <b>task</b>")
        wait_for(lambda: any(w["current_task"] for w in status(spec)["workers"]),
                 message="a worker to take the task")
        code, headers, body = get(address, "/metrics")
        assert code == 200 and headers["Content-Type"].startswith("text/plain")
        found = samples(body.decode())
        assert value(found, "reconciler_tasks", status="running") == 1
        assert value(found, "reconciler_workers_wanted") == 2
        assert value(found, "reconciler_controller_up") == 1
        assert value(found, "reconciler_workers", health="working") \
            + value(found, "reconciler_workers", health="healthy") == 2
        assert value(found, "reconciler_controller_pass_duration_seconds_count") >= 1
        # the same store-derived figures as `reconcile metrics` (no pass durations there)
        printed = samples(reconcile("metrics", "-f", str(spec), check=True).stdout)
        assert value(printed, "reconciler_tasks", status="running") == 1

        code, _, body = get(address, "/healthz")
        health = json.loads(body)
        assert code == 200 and health["status"] == "ok" and health["pool"] == "testpool"

        code, headers, body = get(address, "/api/status")
        document = json.loads(body)
        assert code == 200 and headers["Content-Type"] == "application/json"
        assert [w["id"] for w in document["workers"]] == ["w-1", "w-2"]
        assert document["queue"]["running"] == 1
        assert {"completed_last_hour", "eta_seconds", "events", "spend_today_usd"} \
            <= set(document)
        assert any(w["task_title"] == "measured <b>task</b>" for w in document["workers"])

        code, headers, body = get(address, "/")
        assert code == 200 and b'<script src="status.js"' in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert get(address, "/status.js")[0] == 200 and get(address, "/status.css")[0] == 200
        assert get(address, "/nope")[0] == 404
        code, headers, _ = get(address, "/metrics", method="POST")
        assert code == 405 and headers["Allow"] == "GET, HEAD"
        # DNS rebinding: a page elsewhere that resolves its own name to 127.0.0.1
        assert get(address, "/api/status", {"Host": "evil.example:80"})[0] == 421
        assert get(address, "/api/status", {"Host": f"localhost:{address.split(':')[1]}"}
                   )[0] == 200
        # another site's page in the operator's browser: refused before any read
        assert get(address, "/metrics", {"Sec-Fetch-Site": "cross-site"})[0] == 403
        assert get(address, "/", {"Sec-Fetch-Site": "same-origin"})[0] == 200
        # clients that connect and say nothing hold at most MAX_CONNECTIONS threads
        import socket

        from reconciler.web.server import MAX_CONNECTIONS

        host_name, port = address.split(":")
        idle = [socket.create_connection((host_name, int(port))) for _ in
                range(MAX_CONNECTIONS)]
        try:
            wait_for(lambda: get(address, "/healthz")[0] == 503, timeout=10,
                     message="the connection beyond the cap to be refused")
        finally:
            for connection in idle:
                connection.close()
        wait_for(lambda: get(address, "/healthz")[0] == 200, timeout=10,
                 message="the endpoint to answer again")
        reconcile("task", "cancel", task, "-f", str(spec), check=True)
        wait_tasks(spec, task)
    finally:
        delete(spec, "--force")


def test_a_token_guards_everything_but_healthz(host: Path, git_repo: Path) -> None:
    (host / "token").write_text("s3cret-token\n")
    spec = controlled_spec(host, bearerTokenFile="token")
    try:
        apply(spec)
        address = endpoint_of(spec)
        for path in ("/metrics", "/api/status", "/"):
            code, headers, _ = get(address, path)
            assert code == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
            assert get(address, path, {"Authorization": "Bearer wrong"})[0] == 401
            assert get(address, path, {"Authorization": "Bearer s3cret-token"})[0] == 200
        code, _, body = get(address, "/healthz")  # open, but only the verdict
        assert code == 200 and json.loads(body) == {"status": "ok"}
        assert "pool" in json.loads(get(address, "/healthz", {
            "Authorization": "Bearer s3cret-token"})[2])
        assert "s3cret" not in reconcile("status", "-f", str(spec)).stdout
        (host / "token").write_text("rotated-token\n")  # counts at once, no restart
        wait_for(lambda: get(address, "/metrics", {"Authorization": "Bearer rotated-token"}
                             )[0] == 200, timeout=10, message="the rotated token")
        assert get(address, "/metrics", {"Authorization": "Bearer s3cret-token"})[0] == 401
    finally:
        delete(spec, "--force")


def test_a_token_file_that_cannot_be_read_stops_diff_and_apply(host: Path,
                                                                git_repo: Path) -> None:
    spec = controlled_spec(host, bearerTokenFile="missing-token")
    for command in ("diff", "apply"):
        line = one_error_line(reconcile(command, "-f", str(spec)))
        assert f"metrics.bearerTokenFile {host / 'missing-token'}: cannot read it" in line
    (host / "missing-token").write_text("\n")
    assert "is empty" in one_error_line(reconcile("apply", "-f", str(spec)))
    assert not (host / "state" / "pools" / "testpool").exists()  # nothing applied


def test_a_port_in_use_is_said_once_and_the_pool_still_runs(host: Path,
                                                            git_repo: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = controlled_spec(host)
        spec.write_text(spec.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        try:
            apply(spec)
            event = wait_for(lambda: [e for e in reconcile_events(spec)
                                      if e["kind"] == "metrics.unavailable"],
                             message="the endpoint's failure to be recorded")
            assert f"cannot listen on 127.0.0.1:{port}" in event[0]["message"]
            document = status(spec)
            assert document["controller"]["running"]
            assert document["controller"]["endpoint"] is None
            assert any(f"cannot listen on 127.0.0.1:{port}" in p and "retrying every 30s" in p
                       for p in document["problems"]), document["problems"]
        finally:
            delete(spec, "--force")


def reconcile_events(spec: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(
        reconcile("events", "-f", str(spec), "-o", "json", check=True).stdout)
    return found
