"""What changed between two applied spec documents, setting by setting (pure).

``diff`` shows it beside the plan, as ``terraform plan`` shows changed attributes:
a change the controller alone takes up (``metrics.listen``, ``alerts``,
``budget``, ``controller.interval``) restarts no worker, so without it ``diff``
would say "No changes" for a spec that changes something.  Values that may hold
secrets (``worker.env`` values, a webhook's ``url`` and ``secret``) are never
shown, only that they changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from reconciler.actions import SpecChange

HIDDEN = "(hidden)"


def spec_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> tuple[SpecChange, ...]:
    """Each setting under ``spec`` (and the pool's name) that differs from ``old`` to
    ``new`` (``old`` None: nothing applied yet, so nothing to compare)."""
    if old is None:
        return ()
    return tuple(_walk("spec", old.get("spec", {}), new.get("spec", {})))


def _walk(path: str, old: Any, new: Any) -> Iterator[SpecChange]:
    if old == new:
        return
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            yield from _walk(f"{path}.{key}", old.get(key, _MISSING), new.get(key, _MISSING))
        return
    if _is_list_of_mappings(old) and _is_list_of_mappings(new):
        for i in range(max(len(old), len(new))):
            yield from _walk(f"{path}[{i}]", old[i] if i < len(old) else _MISSING,
                             new[i] if i < len(new) else _MISSING)
        return
    yield SpecChange(path, _shown(path, old), _shown(path, new))


class _Missing:
    pass


_MISSING = _Missing()


def _is_list_of_mappings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, Mapping) for v in value)


def _shown(path: str, value: Any) -> str | None:
    if isinstance(value, _Missing):
        return None
    if _secret(path):
        return HIDDEN
    if isinstance(value, Mapping) or _is_list_of_mappings(value):  # added or removed whole
        return json.dumps(_masked(path, value), sort_keys=True, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False)


def _masked(path: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: HIDDEN if _secret(f"{path}.{k}") else _masked(f"{path}.{k}", v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(f"{path}[{i}]", v) for i, v in enumerate(value)]
    return value


def _secret(path: str) -> bool:
    """A value that may hold a secret: an env value, a webhook's URL or secret."""
    if path.startswith("spec.worker.env.") or path == "spec.worker.env":
        return path != "spec.worker.env"
    return path.startswith("spec.alerts.webhooks[") and path.endswith((".url", ".secret"))
