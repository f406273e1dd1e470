"""Every worker's eye on its controller: who says the controller is down, when the
controller cannot say it itself (killed, out of memory, its host's supervisor gone).

A worker heartbeats anyway; with each beat it also looks at the controller's record.
A controller that stays down (its process gone, or no heartbeat for a minute) for
``grace`` seconds, while the spec wants one and no ``delete`` stopped it, is logged
once as a critical ``controller.down`` event, however many workers notice: the
store arbitrates.  The worker that logged it also sends it on as an alert (the
alerts file and the webhooks), as the controller would have; so does whatever else
was waiting to be sent.  The controller that starts next logs ``controller.back``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from reconciler.liveness import controller_alive
from reconciler.log import logger
from reconciler.paths import PoolPaths
from reconciler.specmodel import PoolSpec
from reconciler.store.sqlite import Store
from reconciler.store.workers import controller_identity
from reconciler.wakeup import ring_controller

if TYPE_CHECKING:
    from reconciler.alerts import Alerts


class ControllerWatch:
    """Called by a worker's heartbeat thread, with that thread's store connection."""

    def __init__(self, paths: PoolPaths, spec: PoolSpec) -> None:
        self.paths = paths
        self.spec = spec
        # long enough for apply to replace a controller, short enough to matter
        self.grace = max(3 * spec.controller_interval, 3 * spec.health.heartbeat_interval)
        self._down_since: float | None = None
        self._alerts: Alerts | None = None

    def check(self, store: Store, now: float | None = None) -> bool:
        """Look once; True when this call logged the controller down."""
        now = time.time() if now is None else now
        info = store.controller()
        if info is None or info.stop_requested or store.deleting() is not None \
                or controller_alive(self.paths.controller_lock, info, now):
            self._down_since = None
            return False
        latest = store.latest_spec()  # the newest generation says whether one is wanted
        document = latest[1] if latest else self.spec.document
        if not document["spec"]["controller"]["enabled"]:
            self._down_since = None
            return False
        if self._down_since is None:
            self._down_since = now
        if now - self._down_since < self.grace:
            return False
        since = time.strftime("%H:%M:%S", time.localtime(info.heartbeat_at or
                                                          self._down_since))
        before = store.last_event_id()
        reported = store.report_controller_down(
            controller_identity(info.pid, info.started_at),
            f"the controller (pid {info.pid}) is down, last seen at {since}: workers go "
            "on, but none is restarted or judged until it runs again "
            "(reconcile apply -f workers.yaml starts it)", now)
        if reported:
            logger.error("the controller of pool {} is down", self.paths.name)
            self._send(store, document, before)
        return reported

    def _send(self, store: Store, document: Mapping[str, Any], before: int) -> None:
        """Send what waits to be sent, as the controller would have, to the webhooks of
        the newest spec (a worker's own may name one removed since)."""
        from reconciler.alerts import CURSOR, Alerts, webhooks_of  # urllib: only now

        if store.meta_value(CURSOR) is None:  # no controller ever sent: from this one on
            store.set_meta_value(CURSOR, str(before))
        if self._alerts is None:
            root = self.paths.root
            self._alerts = Alerts(self.paths.name, root, wake=lambda: ring_controller(root))
        self._alerts.dispatch(store, webhooks_of(document))

    def close(self, store: Store) -> None:
        """Wait a little for deliveries under way; failures are recorded as events."""
        if self._alerts is not None:
            self._alerts.close(store)
