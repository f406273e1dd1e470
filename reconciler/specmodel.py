"""The pool spec as frozen values: what a validated ``workers.yaml`` says, typed.

Pure: no file, schema or process access, so the planner, the health machines
and the worker can all depend on it.  Loading and validation live in
``reconciler.spec``; ``spec_from_document`` types a document that was already
validated (the normalised JSON the store records for every applied spec).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from reconciler.durations import parse_duration
from reconciler.model import RetryPolicy
from reconciler.sync import SyncConfig, config_of


@dataclass(frozen=True)
class ResultSpec:
    """How to read the agent's own report of its run (``worker.result``): the figures'
    dotted paths in the last JSON object it prints."""

    format: str
    paths: tuple[tuple[str, tuple[str, ...]], ...]  # (figure, paths), e.g. costUsd

    def path_map(self) -> dict[str, tuple[str, ...]]:
        return dict(self.paths)


@dataclass(frozen=True)
class WorkerSpec:
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    stop_grace: float
    rate_limit: RateLimit | None = None
    result: ResultSpec | None = None


@dataclass(frozen=True)
class WorktreeSpec:
    dir: Path | None
    branch: str
    cleanup: str
    setup: tuple[tuple[str, ...], ...]
    on_dirty: str = "commit"  # uncommitted work an attempt leaves: commit | keep | fail
    reuse: str = "fresh"  # fresh | perWorker (one worktree per worker, reset between tasks)
    setup_when: tuple[str, ...] = ()  # files whose content decides when setup runs again


@dataclass(frozen=True)
class TaskPolicy:
    timeout: float
    max_attempts: int
    retry_backoff: float
    retry_on: frozenset[str] = frozenset({"failed", "timeout", "lost"})
    no_retry_exit_codes: frozenset[int] = frozenset()
    max_cost_usd: float | None = None  # an attempt whose agent reports more fails


@dataclass(frozen=True)
class RateLimit:
    """How an attempt that hit the agent's usage limit is recognised."""

    exit_codes: frozenset[int]
    pattern: str | None
    reset_pattern: str | None
    backoff: float


@dataclass(frozen=True)
class HealthSpec:
    heartbeat_interval: float
    unresponsive_after: float
    dead_after: float
    slow_after: float
    stall_after: float


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int
    window: float
    backoff: float
    reset_after: float


@dataclass(frozen=True)
class HooksSpec:
    on_success: tuple[tuple[str, ...], ...]
    on_failure: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class PueueSpec:
    """``spec.pueue`` (runtime: pueue): the group that is the pool, the ``--config`` that
    chooses the daemon, and whose tasks the policies cover (``ours`` or ``all``)."""

    group: str
    config: Path | None = None
    supervise: str = "ours"


@dataclass(frozen=True)
class MetricsSpec:
    """``spec.metrics``: where the controller serves metrics, health and its status page."""

    host: str  # as written; an IPv6 address without its brackets
    port: int  # 0: any free port (the one taken is kept in the store)
    token_file: Path | None = None  # Authorization: Bearer <its first line>

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port); ValueError when it is neither."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{listen!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether only this machine reaches ``host`` (a name other than localhost could
    resolve anywhere, so it is not)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class PoolSpec:
    """A validated pool spec; ``document`` is its normalised JSON form (defaults
    filled in, paths absolute), which is what the store records and workers load."""

    name: str
    replicas: int
    repo: Path
    base_ref: str
    runtime: str
    tmux_socket: str
    worker: WorkerSpec
    worktrees: WorktreeSpec
    tasks: TaskPolicy
    health: HealthSpec
    restart: RestartPolicy
    hooks: HooksSpec
    controller_enabled: bool
    controller_interval: float
    document: Mapping[str, Any]
    source_path: Path | None
    source_sha256: str
    budget_per_day_usd: float | None = None  # claiming pauses once the day spent this
    metrics: MetricsSpec | None = None  # None: the controller serves no HTTP
    min_free_disk_percent: float = 5.0  # an alert below this much free disk; 0: never
    pueue: PueueSpec | None = None  # set exactly when runtime is pueue
    sync: SyncConfig | None = None  # spec.sync: the controller follows a git ref

    @property
    def document_json(self) -> str:
        return canonical_json(self.document)

    @property
    def document_hash(self) -> str:
        return document_hash(self.document)

    def template_digests(self) -> dict[str, str]:
        """One digest per spec field that shapes a running worker.

        A worker started from one spec keeps running it; when any of these
        digests differ from the desired spec's, the planner rolls the worker and
        names the fields that changed (never their values: env holds secrets).
        """
        return dict(self._template_digests)

    @cached_property
    def _template_digests(self) -> dict[str, str]:
        # computed once per spec: the planner asks for every worker on every pass
        spec = self.document["spec"]
        fields: dict[str, Any] = {
            "worker.command": spec["worker"]["command"],
            "worker.env": spec["worker"]["env"],
            "worker.stopGrace": spec["worker"]["stopGrace"],
            "worker.rateLimit": spec["worker"].get("rateLimit"),
            "repo": spec["repo"],
            "baseRef": spec["baseRef"],
            "worktrees": spec["worktrees"],
            "tasks": spec["tasks"],
            "health": spec["health"],
            "hooks": spec["hooks"],
        }
        if "result" in spec["worker"]:  # only when set: a pool without it keeps its hash
            fields["worker.result"] = spec["worker"]["result"]
        return {k: digest(v) for k, v in fields.items()}

    @property
    def retry_policy(self) -> RetryPolicy:
        t = self.tasks
        return RetryPolicy(t.max_attempts, t.retry_backoff, t.retry_on, t.no_retry_exit_codes)

    def template_hash(self) -> str:
        return self._template_hash

    @cached_property
    def _template_hash(self) -> str:
        return digest(self._template_digests)


def document_hash(document: Any) -> str:
    """The identity of a normalised spec document (what ``history`` shows as its hash)."""
    return hashlib.sha256(canonical_json(document).encode()).hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:16]


def spec_from_document(document: Mapping[str, Any], *, source_path: Path | None = None,
                       source_sha256: str = "") -> PoolSpec:
    """Type a normalised document (as stored by ``apply``) without re-validating it."""
    spec = document["spec"]
    w, wt, t, h, r, hk = (spec[k] for k in
                          ("worker", "worktrees", "tasks", "health", "restartPolicy", "hooks"))
    return PoolSpec(
        name=document["metadata"]["name"],
        replicas=spec["replicas"],
        repo=Path(spec["repo"]),
        base_ref=spec["baseRef"],
        runtime=spec["runtime"],
        tmux_socket=spec["tmux"]["socket"],
        worker=WorkerSpec(tuple(w["command"]), tuple(sorted(w["env"].items())),
                          parse_duration(w["stopGrace"]), _rate_limit(w.get("rateLimit")),
                          _result(w.get("result"))),
        worktrees=WorktreeSpec(Path(wt["dir"]) if "dir" in wt else None, wt["branch"],
                               wt["cleanup"], tuple(tuple(a) for a in wt["setup"]),
                               wt.get("onDirty", "commit"), wt.get("reuse", "fresh"),
                               tuple(wt.get("setupWhen", ()))),
        tasks=TaskPolicy(parse_duration(t["timeout"]), t["maxAttempts"],
                         parse_duration(t["retryBackoff"]), frozenset(t["retryOn"]),
                         frozenset(t["noRetryExitCodes"]), t.get("maxCostUsd")),
        health=HealthSpec(*(parse_duration(h[k]) for k in (
            "heartbeatInterval", "unresponsiveAfter", "deadAfter", "slowAfter", "stallAfter"))),
        restart=RestartPolicy(r["maxRestarts"], parse_duration(r["window"]),
                              parse_duration(r["backoff"]), parse_duration(r["resetAfter"])),
        hooks=HooksSpec(tuple(tuple(a) for a in hk["onSuccess"]),
                        tuple(tuple(a) for a in hk["onFailure"])),
        controller_enabled=spec["controller"]["enabled"],
        controller_interval=parse_duration(spec["controller"]["interval"]),
        document=copy.deepcopy(dict(document)),
        source_path=source_path,
        source_sha256=source_sha256,
        budget_per_day_usd=spec.get("budget", {}).get("perDayUsd"),
        metrics=_metrics(spec.get("metrics")),
        min_free_disk_percent=spec.get("alerts", {}).get("minFreeDiskPercent", 5.0),
        pueue=_pueue(spec.get("pueue"), document["metadata"]["name"])
        if spec["runtime"] == "pueue" else None,
        sync=config_of(document),
    )


def _pueue(section: Mapping[str, Any] | None, pool: str) -> PueueSpec:
    section = section or {}
    config = section.get("config")
    return PueueSpec(section.get("group", pool), Path(config) if config else None,
                     section.get("supervise", "ours"))


def _metrics(section: Mapping[str, Any] | None) -> MetricsSpec | None:
    if not section or "listen" not in section:
        return None
    host, port = parse_listen(section["listen"])
    token = section.get("bearerTokenFile")
    return MetricsSpec(host, port, Path(token) if token else None)


def _result(section: Mapping[str, Any] | None) -> ResultSpec | None:
    if not section:
        return None
    from reconciler.agentresult import field_paths

    fields = {name: [p] if isinstance(p, str) else p
              for name, p in section.get("fields", {}).items()}
    paths = field_paths(section.get("preset"), fields)
    return ResultSpec(section.get("format", "json"), tuple(sorted(paths.items())))


def _rate_limit(section: Mapping[str, Any] | None) -> RateLimit | None:
    if not section:
        return None
    return RateLimit(frozenset(section.get("exitCodes", [])), section.get("pattern"),
                     section.get("resetPattern"), parse_duration(section.get("backoff", "5m")))
