"""How much an event needs an operator: its severity (pure; the store records it).

An event of severity ``warning`` or ``critical`` is an *alert*: the controller appends
it to the pool's alerts file and sends it to the webhooks of ``alerts.webhooks``, and
``reconcile events --severity warning`` lists it.  Everything else is ``info`` (None
in the store, so the index of alerts holds only them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SEVERITIES = ("info", "warning", "critical")


def severity_of(kind: str, fields: Mapping[str, Any] | None) -> str | None:
    """``critical``, ``warning``, or None (info) for an event of ``kind`` with ``fields``."""
    facts = fields or {}
    if kind == "worker.health":
        return {"failed": "critical", "dead": "warning"}.get(str(facts.get("to")))
    if kind.startswith("attempt.") and facts.get("task_status") == "failed":
        return "warning"  # the task failed for good: no attempt is left
    if kind in ("controller.down", "pueue.down"):
        return "critical"  # nothing heals the pool until it runs again
    if kind in ("pool.paused", "pool.over_budget", "alert.delivery_failed", "disk.low",
                "metrics.unavailable", "sync.invalid", "sync.failed"):
        return "warning"
    return None


# every kind that can be an alert sent to a webhook (``alert.delivery_failed`` never is):
# what ``alerts.webhooks[].events`` may name, whole or as a prefix
ALERT_KINDS = ("worker.health", "attempt.failed", "attempt.timeout", "attempt.lost",
               "attempt.rate_limited", "pool.paused", "pool.over_budget", "controller.down",
               "disk.low", "metrics.unavailable", "pueue.down", "sync.invalid", "sync.failed")


def names_an_alert(prefix: str) -> bool:
    """Whether an ``events`` entry of a webhook can ever match an alert."""
    return any(kind.startswith(prefix) for kind in ALERT_KINDS)


def at_least(severity: str) -> tuple[str, ...]:
    """The recorded severities at or above ``severity`` (``warning``: both kinds)."""
    return tuple(s for s in SEVERITIES[SEVERITIES.index(severity):] if s != "info")
