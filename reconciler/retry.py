"""What an ended attempt means for its task: a pure decision, applied by the store.

Kept apart from the store so every store implementation settles tasks the same
way, and so the policy can be tested without a database.  Nothing here reads
the clock or draws randomness: ``now`` and the jitter factor are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.model import RetryPolicy


@dataclass(frozen=True)
class Outcome:
    """The task's new ``status`` and, when it is queued again, the earliest
    time (``not_before``) a worker may claim it; 0 means at once or never."""

    status: str
    not_before: float = 0.0


def backoff_delay(policy: RetryPolicy, attempts_used: int, jitter_factor: float) -> float:
    """Exponential backoff: ``backoff`` after the first attempt, doubled after each
    later one, scaled by ``jitter_factor`` so retries do not fall into lockstep."""
    return policy.backoff * (2.0 ** max(attempts_used - 1, 0)) * jitter_factor


def is_retryable(policy: RetryPolicy, status: str, exit_code: int | None) -> bool:
    """An outcome the spec asks to retry, unless its exit code says retrying is futile."""
    return status in policy.retry_on and exit_code not in policy.no_retry_exit_codes


def decide_outcome(policy: RetryPolicy, status: str, exit_code: int | None,
                   attempts_used: int, cancel_requested: bool, now: float,
                   jitter_factor: float) -> Outcome:
    """Settle a task whose attempt ended with ``status`` (an attempt status).

    Success wins over a late cancel request (the work is done); a cancel wins
    over a retry (the operator asked for it to stop); a retryable outcome is
    queued again while ``attempts_used`` is below ``policy.max_attempts``;
    anything else fails the task for good.
    """
    if status == "succeeded":
        return Outcome("succeeded")
    if status == "cancelled" or cancel_requested:
        return Outcome("cancelled")
    if is_retryable(policy, status, exit_code) and attempts_used < policy.max_attempts:
        return Outcome("queued", now + backoff_delay(policy, attempts_used, jitter_factor))
    return Outcome("failed")


def requeue_policy(policy: RetryPolicy, consume: bool) -> RetryPolicy:
    """The policy that settles a lost attempt of a worker taken away.

    A crash (``consume``) is judged by the spec's own policy, so a poison task
    cannot kill workers forever; an operator's stop or a roll (not ``consume``)
    requeues the task at once, whatever ``retryOn`` says.
    """
    if consume:
        return policy
    return RetryPolicy(max_attempts=max(policy.max_attempts, 1))
