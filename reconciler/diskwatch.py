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
NAMES = {"state": "the pool state's", "worktrees": "the worktrees'"}


def check_disks(pool: Pool, store: StorePort) -> list[str]:
    """Compare each filesystem's free share with the spec's threshold; log what changed
    (one event per filesystem, naming every place on it).  Returns the ones low now."""
    threshold = pool.spec.min_free_disk_percent if pool.spec else 0.0
    try:
        said = {str(x) for x in json.loads(store.meta_value(LOW_KEY) or "[]")}
    except (ValueError, TypeError):  # not ours to trust: start afresh
        said = set()
    low = set()
    for places, path, share in filesystems(pool):
        key, percent = "+".join(places), share * 100
        what = " and ".join(NAMES[p] for p in places) + " filesystem"
        facts = {"place": key, "path": str(path), "free_percent": round(percent, 2)}
        if key in said and percent < threshold + RECOVERY_MARGIN and threshold > 0:
            low.add(key)
        elif key not in said and percent < threshold:
            low.add(key)
            store.add_event("disk.low", f"{what} ({path}) has {percent:.1f}% free "
                            f"({_free_bytes(path)}), under alerts.minFreeDiskPercent "
                            f"({threshold:g}%): tasks will fail once it is full",
                            fields=facts)
        elif key in said:
            store.add_event("disk.ok", f"{what} ({path}) has {percent:.1f}% free again",
                            fields=facts)
    if low != said:
        store.set_meta_value(LOW_KEY, json.dumps(sorted(low)))
    return sorted(low)


def filesystems(pool: Pool) -> list[tuple[tuple[str, ...], Path, float]]:
    """Each filesystem the pool fills: the places on it, the first one's path, and the
    free share (0-1) an unprivileged user may still fill."""
    found: dict[int, tuple[list[str], Path, float]] = {}
    for place in ("state", "worktrees") if pool.spec is not None else ("state",):
        path = _path_of(pool, place)
        existing = _existing(path)
        try:
            stats, device = os.statvfs(existing), existing.stat().st_dev
        except OSError:
            continue
        if not stats.f_blocks:
            continue
        if device in found:
            found[device][0].append(place)
        else:
            found[device] = ([place], path, stats.f_bavail / stats.f_blocks)
    return [(tuple(places), path, share) for places, path, share in found.values()]


def disk_free(pool: Pool) -> dict[str, float]:
    """The free share (0-1) of the filesystem of each place (for the metrics)."""
    return {place: share for places, _, share in filesystems(pool) for place in places}


def _path_of(pool: Pool, place: str) -> Path:
    if place == "worktrees" and pool.spec is not None:
        return pool.paths.worktree_root(pool.spec.worktrees.dir)
    return pool.paths.root


def _existing(path: Path) -> Path:
    """``path``, or its nearest existing parent (worktrees not made yet)."""
    for place in (path, *path.parents):
        if place.exists():
            return place
    return Path("/")


def _free_bytes(path: Path) -> str:
    try:
        stats = os.statvfs(_existing(path))
    except OSError:
        return "unknown"
    return f"{stats.f_bavail * stats.f_frsize / 2**30:.1f} GiB"
