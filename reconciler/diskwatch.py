"""The controller's eye on the disks the pool fills: the worktrees' filesystem and the
state directory's (the store, logs).  A full disk fails every task at once, in ways
that read as the agent's fault, so it is said before: a ``disk.low`` warning (an
alert) when the free share falls under ``alerts.minFreeDiskPercent``, once, and a
``disk.ok`` when it is back above it by ``RECOVERY_MARGIN`` points (no alert storm
from a share hovering at the line).  Which places are low is kept in the store, so
a restarted controller does not say it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reconciler.pool import Pool
from reconciler.store.port import StorePort

LOW_KEY = "disk_low"  # in meta: the places said to be low, as a JSON list
RECOVERY_MARGIN = 1.0  # percentage points above the threshold before it is ok again
NAMES = {"worktrees": "the worktrees' filesystem", "state": "the pool state's filesystem"}


def check_disks(pool: Pool, store: StorePort) -> list[str]:
    """Compare each place's free share with the spec's threshold; log what changed.
    Returns the places low now."""
    threshold = pool.spec.min_free_disk_percent if pool.spec else 0.0
    said = set(json.loads(store.meta_value(LOW_KEY) or "[]"))
    low = set()
    for place, share in disk_free(pool).items():
        percent = share * 100
        path = _path_of(pool, place)
        if place in said and percent < threshold + RECOVERY_MARGIN and threshold > 0:
            low.add(place)
        elif place not in said and percent < threshold:
            low.add(place)
            store.add_event("disk.low", f"{NAMES[place]} ({path}) has {percent:.1f}% free "
                            f"({_free_bytes(path)}), under alerts.minFreeDiskPercent "
                            f"({threshold:g}%): tasks will fail once it is full",
                            fields={"place": place, "path": str(path),
                                    "free_percent": round(percent, 2)})
        elif place in said:
            store.add_event("disk.ok", f"{NAMES[place]} ({path}) has {percent:.1f}% free "
                            "again", fields={"place": place, "path": str(path),
                                             "free_percent": round(percent, 2)})
    if low != said:
        store.set_meta_value(LOW_KEY, json.dumps(sorted(low)))
    return sorted(low)


def disk_free(pool: Pool) -> dict[str, float]:
    """The free share (0-1) of the filesystems holding the worktrees and the state."""
    shares = {}
    for place in ("state", "worktrees") if pool.spec is not None else ("state",):
        stats = _statvfs(_path_of(pool, place))
        if stats is not None and stats.f_blocks:
            shares[place] = stats.f_bavail / stats.f_blocks  # what we may still fill
    return shares


def _path_of(pool: Pool, place: str) -> Path:
    if place == "worktrees" and pool.spec is not None:
        return pool.spec.worktrees.dir or pool.paths.default_worktrees
    return pool.paths.root


def _statvfs(path: Path) -> os.statvfs_result | None:
    """``path``'s filesystem, or its nearest existing parent's (worktrees not made yet)."""
    for place in (path, *path.parents):
        try:
            return os.statvfs(place)
        except OSError:
            continue
    return None


def _free_bytes(path: Path) -> str:
    stats = _statvfs(path)
    return "unknown" if stats is None else f"{stats.f_bavail * stats.f_frsize / 2**30:.1f} GiB"
