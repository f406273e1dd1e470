"""Whether the pool's controller runs: read by ``status`` (through the observers), the
metrics, and every worker, which reports a controller that stays down."""

from __future__ import annotations

from pathlib import Path

from reconciler.lock import is_locked
from reconciler.model import ControllerRow
from reconciler.proctree import process_matches

CONTROLLER_STALE_AFTER = 60.0
CONTROLLER_BUSY_LIMIT = 600.0  # no pass waits out grace periods: ten minutes is a hang


def controller_alive(lock: Path, info: ControllerRow | None, now: float) -> bool:
    """Its lock is held and it heartbeats (a hung controller is down), or the controller
    just started has not taken its lock yet.  A lock held while the recorded controller
    process is gone is someone else's: ``delete`` holds it once the controller stopped."""
    if is_locked(lock):
        if info is not None and info.pid and not process_matches(info.pid,
                                                                 info.pid_create_time):
            return False
        # a controller in a long pass has not heartbeat since it began: busy, not down
        # (but a pass stuck for CONTROLLER_BUSY_LIMIT is a hung controller)
        busy = info is not None and info.busy_since is not None \
            and now - info.busy_since < CONTROLLER_BUSY_LIMIT
        return info is None or info.heartbeat_at is None or busy \
            or now - info.heartbeat_at < CONTROLLER_STALE_AFTER
    return bool(info and not info.stop_requested
                and process_matches(info.pid, info.pid_create_time))
