"""Pure policies that more than one part of the pool applies, each written once.

``keeps_worktree`` is the ``worktrees.cleanup`` rule: the worker applies it to
the attempt it just finished, the planner to worktrees left behind by attempts
that ended without their worker (so the two can never disagree).
``rate_limited_until`` recognises an agent's usage limit in an attempt's result.
"""

from __future__ import annotations

import re

from reconciler.specmodel import RateLimit

CLEANUP_POLICIES = ("always", "onSuccess", "never")


def keeps_worktree(cleanup: str, attempt_status: str | None) -> bool:
    """Whether a task worktree stays on disk, given the status of the attempt that owns it.

    A running attempt's worktree always stays.  One that no attempt owns was
    made by something that died mid-way, and a ``lost`` attempt's belonged to a
    worker that died: both go, whatever the policy (their uncommitted work is
    committed to the branch first), since the task is retried elsewhere.
    Otherwise ``always`` removes, ``never`` keeps, and ``onSuccess`` removes
    only a succeeded attempt's worktree (a failed, timed-out, cancelled or
    rate-limited one is kept for a look).
    """
    if attempt_status in ("running", "kept"):  # kept: uncommitted work, worktrees.onDirty
        return True
    if attempt_status is None or attempt_status == "lost":
        return False
    if cleanup == "never":
        return True
    if cleanup == "onSuccess":
        return attempt_status != "succeeded"
    return False


def rate_limited_until(limit: RateLimit | None, status: str, exit_code: int | None,
                       output_tail: str, now: float) -> float | None:
    """When a failed attempt hit the agent's usage limit, the time claiming may resume.

    ``worker.rateLimit`` recognises it by exit code or by a pattern in the
    output; ``resetPattern``'s first group gives the reset as Unix seconds (or
    seconds from now), else ``backoff`` applies.
    """
    if limit is None or status != "failed":
        return None
    hit = (exit_code is not None and exit_code in limit.exit_codes) or \
        (limit.pattern is not None and re.search(limit.pattern, output_tail) is not None)
    if not hit:
        return None
    if limit.reset_pattern:
        match = re.search(limit.reset_pattern, output_tail)
        if match and match.groups():
            try:
                value = float(match.group(1))
            except ValueError:
                value = -1.0
            if value > 1e9:  # Unix time
                return value
            if value >= 0:
                return now + value
    return now + limit.backoff
