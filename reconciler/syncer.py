"""GitOps sync, the acting part: a thread of the controller that follows a git ref.

Why a thread: a fetch talks to a remote that may be slow or gone (up to
``gitsync.FETCH_TIMEOUT``), and the controller's loop must keep replacing dead
workers meanwhile.  The thread only fetches, reads, validates and, when the spec
at the ref differs from what runs, calls ``operations.apply`` (the one way a
generation is recorded, under the pool lock the controller's passes take too),
exactly as an operator's ``reconcile apply`` would from another process.

Every outcome is kept in the store's meta (``sync.SYNC_KEY``) for ``status`` and
``diff``, and each new problem is an event: ``sync.invalid`` (the spec at a
commit does not validate: said once per commit, with its ``file:line:col``),
``sync.failed`` (fetch, read or apply failed: said when the problem changes, not
every interval); ``sync.applied`` records each generation it applied.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from reconciler.errors import LockHeldError, ReconcilerError, SpecError
from reconciler.gitsync import fetch, load_at, locate
from reconciler.log import logger
from reconciler.operations import apply
from reconciler.paths import PoolPaths
from reconciler.pool import Pool
from reconciler.spec import PoolSpec
from reconciler.specmodel import document_hash
from reconciler.store.port import StorePort
from reconciler.store.sqlite import Store
from reconciler.sync import (
    SYNC_KEY,
    Checked,
    SyncConfig,
    SyncFlags,
    SyncState,
    decide,
    effective_config,
    state_from_json,
)

APPLY_LOCK_TIMEOUT = 5.0  # a sync apply waits this long for another command's lock
LOCK_RETRY = 2.0  # then tries again this soon, not a whole interval later
JOIN_TIMEOUT = 3.0  # the controller waits this long for the thread when it stops


class Syncer:
    """The sync thread of one controller: started by the first ``retarget`` that turns
    sync on, ended by ``close``."""

    def __init__(self, paths: PoolPaths, flags: SyncFlags) -> None:
        self.paths = paths
        self.flags = flags
        self._config: SyncConfig | None = None
        self._checked: Checked | None = None  # the last commit read, and what it held
        self._spec: PoolSpec | None = None  # its spec, when valid
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None
        self._applying = threading.Lock()  # held while an apply of the ref's spec runs

    def retarget(self, spec: PoolSpec | None) -> None:
        """Follow what the newest generation (and the controller's flags) say now."""
        config = effective_config(spec.sync if spec else None, self.flags.forced,
                                  self.flags.ref, self.flags.path, self.flags.interval)
        if config == self._config:
            return
        self._config = config
        if config is not None and self._thread is None:
            logger.info("sync on: following {} every {:.0f}s", config.ref, config.interval)
            self._thread = threading.Thread(target=self._run, name="sync", daemon=True)
            self._thread.start()
        self._poke.set()  # a new ref or interval: look now

    def close(self) -> None:
        """Stop the thread.  A fetch under way is left to its timeout (daemon thread), but
        an apply under way is waited for: cut off mid-pass, it could leave a worker
        started and not recorded, or signalled with its task not requeued.  No new apply
        starts once stopping (``_stopping``, checked under the same lock)."""
        self._stop.set()
        self._poke.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
            with self._applying:
                pass

    def _run(self) -> None:
        store: StorePort | None = None
        try:
            while not self._stop.is_set():
                wait = self._config.interval if self._config else 60.0
                try:
                    if store is None:
                        store = Store(self.paths.store)
                    if self._config is not None:
                        wait = self.sync_once(store, self._config, time.time())
                    elif store.meta_value(SYNC_KEY):  # sync turned off: status says so
                        store.set_meta_value(SYNC_KEY, "")
                except (ReconcilerError, sqlite3.Error, OSError) as exc:
                    logger.error("sync failed: {}", exc)
                except Exception as exc:  # a bug must not end sync silently
                    logger.error("sync failed unexpectedly: {}: {}", type(exc).__name__, exc)
                self._poke.wait(wait)
                self._poke.clear()
        finally:
            if store is not None:
                store.close()

    def sync_once(self, store: StorePort, config: SyncConfig, now: float) -> float:
        """One look at the ref: fetch, check a new commit, apply what differs from what
        runs; records the outcome; returns how long until the next look."""
        before = state_from_json(store.meta_value(SYNC_KEY))
        state = SyncState(config.ref, config.path or "", "", config.interval)
        if before is not None and before.ref == config.ref:
            state = replace(before, interval=config.interval, checked_at=now)
        state = replace(state, checked_at=now)
        wait = config.interval
        try:
            spec_file = _spec_file(store)
            source = locate(spec_file, config)
            state = replace(state, path=source.path, repo=str(source.root))
            commit = fetch(source, config, self.paths.name)
            state = replace(state, fetched_commit=commit, fetched_at=now)
            latest = store.latest_spec()
            running = document_hash(latest[1]) if latest else None
            if self._checked is None and state.invalid_commit == commit:  # said before
                self._checked = Checked(commit, None, state.error)
            decision = decide(commit, self._checked, running)
            if decision.kind == "check":
                self._check(store, config, source.path, commit, latest[0] if latest else None,
                            lambda: load_at(source, commit))
                decision = decide(commit, self._checked, running)
            if decision.kind == "invalid":
                error = self._checked.error if self._checked else decision.reason
                state = replace(state, error=error, invalid_commit=commit,
                                error_at=state.error_at if state.error == error else now)
            elif decision.kind == "apply" and self._spec is not None:
                with self._applying:  # close() waits for this, not for a fetch
                    if self._stopping(store):
                        return wait
                    result = apply(Pool(self.paths, self._spec),
                                   lock_timeout=APPLY_LOCK_TIMEOUT, git_commit=commit)
                store.add_event("sync.applied", f"{config.ref} at {commit[:12]}: generation "
                                f"{result.generation} applied ({result.plan.summary()})",
                                fields={"ref": config.ref, "commit": commit,
                                        "generation": result.generation})
                logger.info("sync: applied {} at {} as generation {}", config.ref,
                            commit[:12], result.generation)
                state = replace(state, synced_commit=commit, synced_generation=result.generation,
                                synced_at=now, error=None, error_at=None, invalid_commit=None)
            elif decision.kind == "in_sync":
                state = replace(state, synced_commit=commit,
                                synced_generation=latest[0] if latest else None,
                                synced_at=now if state.synced_commit != commit
                                else state.synced_at, error=None, error_at=None,
                                invalid_commit=None)
        except LockHeldError as exc:  # another command is applying: soon again, no event
            logger.info("sync: {}; trying again in {:.0f}s", exc.one_line(), LOCK_RETRY)
            wait = min(wait, LOCK_RETRY)
        except ReconcilerError as exc:
            error = exc.one_line()
            if error != state.error:  # said once, not every interval while it lasts
                store.add_event("sync.failed", f"{config.ref}: {error} (the running "
                                "generation stays)", fields={"ref": config.ref, "error": error})
                logger.warning("sync: {}", error)
                state = replace(state, error=error, error_at=now)
        store.set_meta_value(SYNC_KEY, state.to_json())
        return wait

    def _check(self, store: StorePort, config: SyncConfig, path: str, commit: str,
               generation: int | None, load: Callable[[], PoolSpec]) -> None:
        """Read and validate the spec at a new commit, once; an invalid one is an event."""
        try:
            spec: PoolSpec = load()
            if spec.name != self.paths.name:
                raise SpecError(f"{path}: metadata.name is {spec.name!r}, not this pool's "
                                f"name {self.paths.name!r}",
                                hint="a pool follows only its own spec")
        except SpecError as exc:
            error = exc.one_line()
            self._checked, self._spec = Checked(commit, None, error), None
            keeps = f"generation {generation} keeps running" if generation else \
                "nothing was applied"
            store.add_event("sync.invalid", f"{config.ref} at {commit[:12]}: {error}; {keeps}",
                            fields={"ref": config.ref, "commit": commit, "path": path,
                                    "error": error, "generation": generation})
            logger.warning("sync: the spec at {} ({}) is invalid: {}", config.ref,
                           commit[:12], error)
            return
        self._checked, self._spec = Checked(commit, spec.document_hash), spec

    def _stopping(self, store: StorePort) -> bool:
        """The controller is stopping, or ``delete`` asked it to: apply nothing now."""
        info = store.controller()
        return self._stop.is_set() or (info is not None and info.stop_requested)


def _spec_file(store: StorePort) -> Path:
    """The spec file of the newest generation (``apply -f`` records it): its repository
    is the one whose remote is followed."""
    history = store.history()
    source = history[-1].source_path if history else None
    if not source:
        raise ReconcilerError("the applied spec came from no file: there is nothing to sync",
                              hint="apply it with `reconcile apply -f workers.yaml` from "
                                   "a clone of the repository to follow")
    return Path(source)
