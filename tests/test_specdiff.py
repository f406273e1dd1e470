"""``diff`` names every setting a spec changes, secrets hidden, even when no worker has
to start, restart or stop for it (the controller takes up metrics, alerts, budget)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from reconciler.actions import SpecChange
from reconciler.specdiff import HIDDEN, spec_changes
from tests.e2e import apply, delete, diff, set_spec
from tests.helpers import reconcile, write_spec

OLD: dict[str, Any] = {"spec": {
    "replicas": 2, "metrics": {"listen": "127.0.0.1:0"},
    "worker": {"command": ["agent"], "env": {"TOKEN": "old-secret"}},
    "alerts": {"webhooks": [{"url": "https://h/one-secret", "secret": "s1", "events": []}]}}}


def test_each_changed_setting_is_named_and_secrets_are_hidden() -> None:
    new = json.loads(json.dumps(OLD))
    new["spec"]["metrics"]["listen"] = "127.0.0.1:9464"
    new["spec"]["worker"]["env"]["TOKEN"] = "new-secret"
    new["spec"]["alerts"]["webhooks"][0]["url"] = "https://h/two-secret"
    new["spec"]["alerts"]["webhooks"].append({"url": "https://h/three", "secret": "s3"})
    new["spec"]["budget"] = {"perDayUsd": 50}
    changes = spec_changes(OLD, new)
    assert changes == (
        SpecChange("spec.alerts.webhooks[0].url", HIDDEN, HIDDEN),
        SpecChange("spec.alerts.webhooks[1]", None,
                   f'{{"secret": "{HIDDEN}", "url": "{HIDDEN}"}}'),
        SpecChange("spec.budget", None, '{"perDayUsd": 50}'),
        SpecChange("spec.metrics.listen", '"127.0.0.1:0"', '"127.0.0.1:9464"'),
        SpecChange("spec.worker.env.TOKEN", HIDDEN, HIDDEN))
    shown = repr(changes)
    assert not any(word in shown for word in ("old-secret", "new-secret", "one-secret",
                                              "two-secret", "s1", "s3"))
    assert changes[3].describe() == '~ spec.metrics.listen: "127.0.0.1:0" -> "127.0.0.1:9464"'
    assert changes[2].describe() == '+ spec.budget = {"perDayUsd": 50}'
    assert spec_changes(None, new) == () and spec_changes(new, new) == ()


def test_diff_shows_a_setting_only_the_controller_uses(host: Path, git_repo: Path) -> None:
    """Changing metrics.listen restarts no worker: diff still shows it and exits 2, apply
    applies it, and history records what changed (it said "No changes")."""
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    spec = write_spec(host, replicas=1, runtime="process", command=command,
                      extra={"metrics": {"listen": "127.0.0.1:0"}})
    try:
        apply(spec)
        assert diff(spec).returncode == 0
        set_spec(spec, metrics={"listen": "127.0.0.1:0", "bearerTokenFile": "token"})
        (host / "token").write_text("t0ken\n")
        shown = diff(spec)
        assert shown.returncode == 2, shown.stdout
        assert f'+ spec.metrics.bearerTokenFile = "{host / "token"}"' in shown.stdout
        assert "Plan: 1 setting(s) to change; no worker to start, restart or stop." \
            in shown.stdout
        document = json.loads(reconcile("diff", "-f", str(spec), "-o", "json").stdout)
        assert document["in_sync"] is False and document["actions"] == []
        assert [c["path"] for c in document["spec_changes"]] == \
            ["spec.metrics.bearerTokenFile"]
        applied = apply(spec)
        assert "Apply complete!" in applied.stdout
        assert diff(spec).returncode == 0
        history = reconcile("history", "-f", str(spec), check=True).stdout
        assert "1 setting(s) to change" in history
    finally:
        delete(spec, "--force")
