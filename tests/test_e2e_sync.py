"""End to end: a pool follows a branch of a real (local, bare) remote (issue 12, GitOps).

The operator applies the spec committed in their clone; its ``sync`` section makes the
controller that ``apply`` starts fetch ``origin/main`` every second.  A teammate's push
that changes ``replicas`` is followed (history records the pushed commit); a push of a
broken file is refused with its ``file:line:col`` while the pool keeps running.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e import apply, delete, events, live_workers, status
from tests.helpers import git, one_error_line, push_spec, reconcile, wait_for

pytestmark = pytest.mark.e2e


def test_the_pool_follows_pushes_and_keeps_running_on_a_broken_one(
        host: Path, git_remote: dict[str, Path]) -> None:
    ops, dev = git_remote["ops"], git_remote["dev"]
    spec = ops / "workers.yaml"
    first = push_spec(ops, "follow origin/main", replicas=1, runtime="tmux",
                      controller={"enabled": True, "interval": "1s"},
                      sync={"ref": "origin/main", "interval": "1s"})
    apply(spec)
    wait_for(lambda: (status(spec)["sync"] or {}).get("synced_commit") == first,
             timeout=30, message="the controller syncing the commit applied")

    scaled = push_spec(dev, "two workers", replicas=2)
    wait_for(lambda: len(live_workers(spec)) == 2, timeout=30, message="a second worker")
    history = json.loads(reconcile("history", "-f", str(spec), "-o", "json",
                                   check=True).stdout)
    assert [h["git_commit"] for h in history] == [first, scaled]
    assert git(ops, "rev-parse", "HEAD").strip() == first  # the operator's clone: untouched
    assert git(ops, "status", "--porcelain") == ""
    behind = reconcile("diff", "-f", str(spec)).stdout  # the clone's file still says 1
    assert "- stop w-2" in behind and "your file differs from the one at the ref" in behind

    broken = push_spec(dev, "oops", replicas="two")
    invalid = wait_for(lambda: events(spec, "sync.invalid"), timeout=30,
                       message="the broken push reported")
    assert invalid[0]["fields"]["commit"] == broken
    assert "workers.yaml:" in invalid[0]["message"] and "spec.replicas" in invalid[0]["message"]
    # the event comes first, then the outcome the status reads: wait for that too
    document = wait_for(lambda: (found := status(spec))["sync"]["fetched_commit"] == broken
                        and found["sync"]["error"] and found, timeout=30,
                        message="status showing the broken commit")
    assert document["sync"]["running_generation"] == 2
    assert "spec.replicas" in document["sync"]["error"]
    assert len(live_workers(spec)) == 2 and document["controller"]["running"]
    text = reconcile("status", "-f", str(spec)).stdout
    assert f"runs generation 2 (commit {scaled[:12]})" in text and "sync error" in text
    shown = reconcile("diff", "-f", str(spec))  # the file in the clone still says 1
    assert shown.returncode == 2 and "the spec there is invalid" in shown.stdout

    # a second controller with --sync is refused in one line when the ref cannot work
    refused = reconcile("controller", "-f", str(spec), "--sync-ref", "upstream/main")
    assert "has no remote named 'upstream'" in one_error_line(refused)
    delete(spec)
