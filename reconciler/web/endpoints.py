"""What the controller's endpoint reads: the pool's metrics and its status, each from
a read-only store connection of the request's own thread."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from reconciler.metrics import registry_for
from reconciler.store.sqlite import Store
from reconciler.web.server import Endpoints

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from reconciler.pool import Pool


def pool_endpoints(current: Callable[[], Pool],
                   health: Callable[[], tuple[bool, Mapping[str, Any]]],
                   registry: CollectorRegistry | None = None) -> Endpoints:
    """The endpoints of the pool ``current()`` returns (the newest generation's spec);
    ``registry``: one with the controller's own metrics, to which the pool's are added."""
    from reconciler.report.dashboard import TreeMeter, snapshot, snapshot_document

    def open_store() -> Store:
        return Store(current().paths.store, readonly=True)

    meter = TreeMeter()  # the status is read under the server's lock: one at a time

    def status() -> Mapping[str, Any]:
        with open_store() as store:
            return snapshot_document(snapshot(current(), store, meter, time.time()))

    return Endpoints(registry_for(current, open_store, registry), status, health)
