"""One attempt of one task: its worktree, setup, the agent, hooks, the agent's report,
the rescue of uncommitted work, clean-up, and its recorded result.

A tmux or process worker runs one ``AttemptRunner`` per task it claims; the pueue
runtime's ``reconcile run-task`` runs one for the attempt pueue started.  Either
way the attempt is the same code: there is one attempt runner.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from reconciler import pending
from reconciler.agentresult import read_report
from reconciler.durations import day_start
from reconciler.errors import ReconcilerError
from reconciler.log import logger
from reconciler.marks import pool_key
from reconciler.model import AgentReport, Claim
from reconciler.naming import branch_for
from reconciler.paths import PoolPaths, open_private_append, write_private
from reconciler.policies import keeps_worktree, rate_limited_until
from reconciler.proctree import create_time_of
from reconciler.specmodel import PoolSpec
from reconciler.store.sqlite import Store
from reconciler.taskrun import RunResult, log_tail, run_command
from reconciler.templates import render_argv
from reconciler.wakeup import ring_workers
from reconciler.worktrees import (
    clear_setup_output,
    commit_wip,
    current_branch,
    exclude_setup_output,
    has_uncommitted,
    make_task_worktree,
    move_worktree,
    path_under,
    remove_worktree,
    repo_lock,
    setup_digest,
    setup_stamp,
)

# Linux refuses to start a program when any one argument or environment string is
# over 128 KiB (E2BIG), so a large value never goes into the environment: the whole
# prompt is always in RECONCILER_TASK_PROMPT_FILE, and RECONCILER_TASK_PROMPT
# holds it only while it is this small.
MAX_ENV_PROMPT = 8 * 1024  # bytes of UTF-8


def agent_env(spec_env: tuple[tuple[str, str], ...], values: dict[str, str]) -> dict[str, str]:
    """The environment of a task's commands: ours, ``worker.env``, then ``RECONCILER_*``."""
    env = {**os.environ, **dict(spec_env),
           **{"RECONCILER_" + k.upper().replace(".", "_"): v for k, v in values.items()}}
    if len(values["task.prompt"].encode("utf-8")) > MAX_ENV_PROMPT:
        del env["RECONCILER_TASK_PROMPT"]
    return env


class AttemptRunner:
    """Runs ``claim``'s attempt for ``runner_id`` (a worker's id; a reused worktree is
    named after it).  ``cancel`` abandons it (a lost lease, ``task cancel``); while it
    runs, ``last_output`` says when the agent last printed (for the heartbeat)."""

    def __init__(self, paths: PoolPaths, spec: PoolSpec, store: Store, runner_id: str,
                 claim: Claim, cancel: threading.Event | None = None) -> None:
        self.paths = paths
        self.spec = spec
        self.store = store
        self.runner_id = runner_id
        self.claim = claim
        self.cancel = cancel if cancel is not None else threading.Event()
        self.last_output: float | None = None  # when the agent last printed
        self.phases: dict[str, float] = {}  # seconds per phase
        self.report: AgentReport | None = None  # what the agent reported (worker.result)
        self.pool_key = pool_key(paths.root)  # marks every process of the attempt

    def run(self) -> str:
        """Prepare, run, judge and record the attempt; its result is never lost (a store
        that refuses it keeps it in ``pending``).  Returns its outcome (``succeeded``,
        ``failed``, ``timeout``...)."""
        claim = self.claim
        task, spec = claim.task, self.spec
        log = self.paths.logs / f"task-{task.id}-a{claim.attempt_number}.log"
        logger.info("task {} attempt {}: {}", task.id, claim.attempt_number, task.title)
        worktree_path: Path | None = None
        try:
            worktree_path, result = self._prepare_and_run(claim, log)
        except ReconcilerError as exc:
            result = RunResult("failed", None, exc.one_line())
            write_log_line(log, f"reconciler: {exc.one_line()}")
        except Exception as exc:  # a bug must cost one attempt, never the worker and the task
            logger.exception("task {}: unexpected error", task.id)
            result = RunResult("failed", None, f"internal error: {type(exc).__name__}: {exc}")
            write_log_line(log, f"reconciler: {result.error}")
        tail = log_tail(log)
        resume_at = rate_limited_until(spec.worker.rate_limit, result.status, result.exit_code,
                                       tail, time.time())
        if resume_at is not None:
            until = time.strftime("%H:%M:%S", time.localtime(resume_at))
            result = RunResult("rate_limited", result.exit_code, f"rate limited until {until}",
                               result.ended_at)
        finishing = time.monotonic()
        rescued: str | None = None
        if worktree_path is not None and worktree_path.exists():
            rescued, result = self._keep_the_work(claim, worktree_path, result, log)
        reused = spec.worktrees.reuse == "perWorker"
        if worktree_path is not None and reused and rescued == "kept":
            worktree_path = self._move_aside(claim, worktree_path, log)
        # clean up before finishing, so a finished attempt never leaves a worktree behind;
        # never one that still holds work which is not on its branch (a worker's own
        # worktree stays for its next task)
        if worktree_path is not None and rescued != "kept" and not reused \
                and not keeps_worktree(spec.worktrees.cleanup, result.status):
            try:  # only git's metadata update holds the repository lock
                remove_worktree(spec.repo, worktree_path, lock_dir=self.paths.repo_locks)
            except ReconcilerError as exc:
                logger.error("could not remove worktree {}: {}", worktree_path, exc.one_line())
        self.phases["finish"] = time.monotonic() - finishing
        try:  # the store retries transient faults itself for a while
            self.store.set_attempt_phases(claim, self.phases)
            new_status = self.store.finish_attempt(
                claim, result.status, exit_code=result.exit_code, error=result.error,
                output_tail=tail, policy=spec.retry_policy, resume_at=resume_at,
                now=result.ended_at, report=self.report)
        except ReconcilerError as exc:  # still refused: keep the result, never lose it
            kept = pending.save(self.paths.root, claim, status=result.status,
                                exit_code=result.exit_code, error=result.error,
                                output_tail=tail, resume_at=resume_at,
                                ended_at=result.ended_at, report=self.report)
            logger.error("task {}: cannot record its result ({}): {}; kept in {} and "
                         "recorded once the store takes writes again", task.id,
                         result.status, exc.one_line(), kept)
            return result.status
        if self.report is not None and self.report.cost_usd:
            self._check_budget()
        if new_status == "queued":
            ring_workers(self.paths.root)  # a retry: the others learn when it is due
        if new_status is None:
            logger.warning("task {}: lease lost, result ({}) rejected", task.id, result.status)
        else:
            logger.info("task {} attempt {} {}: task {}", task.id, claim.attempt_number,
                        result.status, new_status)
        return result.status

    def _check_budget(self) -> None:
        """Once the attempts that ended today reported ``budget.perDayUsd``, pause claiming
        until midnight (local time), unless an operator resumed the pool for today.  The
        budget is the newest applied spec's: changing it needs no worker restarted."""
        try:
            latest = self.store.latest_spec()
            budget = latest[1]["spec"].get("budget", {}).get("perDayUsd") if latest else None
            if budget is None:
                return
            now = time.time()
            spent = self.store.spend_since(day_start(now))
            if spent < budget or self.store.resumed_until() > now:
                return
            until = day_start(now, days=1)
            paused = self.store.pause_claiming(
                until, f"over budget: ${spent:.2f} spent today of budget.perDayUsd "
                f"${budget:.2f}", kind="pool.over_budget", now=now)
        except ReconcilerError as exc:  # the next attempt's end checks again
            logger.warning("could not check the day's budget: {}", exc.one_line())
            return
        if paused:
            logger.warning("over budget: ${:.2f} spent today of ${:.2f}; claiming paused "
                           "until midnight", spent, budget)

    def _move_aside(self, claim: Claim, worktree: Path, log: Path) -> Path:
        """A worker's own worktree kept for its uncommitted work (``onDirty: keep``) moves to
        the attempt's name, so the worker's next task gets a clean one."""
        aside = path_under(worktree.parent, f"task-{claim.task.id}-a{claim.attempt_number}")
        try:
            with repo_lock(self.paths.repo_locks, self.spec.repo):
                move_worktree(self.spec.repo, worktree, aside)
            self.store.update_attempt(claim, branch=current_branch(aside),
                                      worktree=str(aside), log_path=str(log))
        except ReconcilerError as exc:
            logger.error("could not move the kept worktree {} aside: {}", worktree,
                         exc.one_line())
            return worktree
        write_log_line(log, f"reconciler: kept worktree moved to {aside}")
        return aside

    def _keep_the_work(self, claim: Claim, worktree: Path, result: RunResult,
                       log: Path) -> tuple[str | None, RunResult]:
        """Whatever the outcome, work the attempt left uncommitted is not lost: it is
        committed to the branch (``worktrees.onDirty: commit``, the default, and
        ``fail``, which also fails the attempt) or its worktree is kept (``keep``).
        Returns how (``committed``, ``kept`` or None: nothing was left) and the result."""
        on_dirty, task = self.spec.worktrees.on_dirty, claim.task
        try:
            if not has_uncommitted(worktree):
                return None, result
            if on_dirty == "keep":
                how = "kept"
                write_log_line(log, f"reconciler: uncommitted work kept in {worktree} "
                               "(worktrees.onDirty: keep)")
            else:
                how = "committed"
                status = "failed: onDirty" if on_dirty == "fail" else result.status
                commit_wip(worktree, f"reconciler: uncommitted work of task {task.id} attempt "
                           f"{claim.attempt_number} ({status}), rescued")
                write_log_line(log, "reconciler: uncommitted work rescued: committed to the "
                               "branch (--no-verify)")
        except ReconcilerError as exc:  # it could not be committed: keep it where it is
            how = "kept"
            write_log_line(log, f"reconciler: could not commit the uncommitted work "
                           f"({exc.one_line()}); worktree kept: {worktree}")
        try:
            self.store.set_attempt_rescued(claim, how)
        except ReconcilerError as exc:  # the work is safe either way; only the note is lost
            logger.warning("task {}: could not record the rescue: {}", task.id, exc.one_line())
        logger.info("task {}: uncommitted work {}", task.id,
                    "rescued to its branch" if how == "committed" else f"kept in {worktree}")
        if on_dirty == "fail" and result.status == "succeeded":
            result = RunResult("failed", result.exit_code, "left uncommitted work "
                               "(worktrees.onDirty: fail); it was committed to the branch"
                               if how == "committed" else "left uncommitted work "
                               "(worktrees.onDirty: fail)", result.ended_at)
        return how, result

    def _prepare_and_run(self, claim: Claim, log: Path) -> tuple[Path | None, RunResult]:
        """Create the worktree (its path recorded first), then run setup, command, hooks."""
        task, spec = claim.task, self.spec
        wanted = branch_for(spec.worktrees.branch, pool=spec.name, task_id=task.id,
                            title=task.title, attempt=claim.attempt_number)
        root = self.paths.worktree_root(spec.worktrees.dir)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)  # an existing dir keeps its mode
        reuse = spec.worktrees.reuse == "perWorker"
        started = time.monotonic()
        path = path_under(root, f"worker-{self.runner_id}" if reuse
                          else f"task-{task.id}-a{claim.attempt_number}")
        made = make_task_worktree(
            spec.repo, root, path.name, wanted, claim.attempt_number, spec.base_ref,
            reuse=reuse, lock_dir=self.paths.repo_locks,
            record=lambda branch: self.store.update_attempt(
                claim, branch=branch, worktree=str(path), log_path=str(log)))
        if made is None:
            return None, RunResult("failed", None, "lease lost before the task started")
        branch, fresh = made
        self.phases["worktree"] = time.monotonic() - started
        prompt_file = self.paths.prompts / f"task-{task.id}.txt"
        write_private(prompt_file, task.prompt.encode())
        values = {"task.id": str(task.id), "task.title": task.title,
                  "task.prompt": task.prompt, "task.prompt_file": str(prompt_file),
                  "task.branch": branch, "worktree": str(path),
                  "attempt": str(claim.attempt_number), "pool": spec.name}
        return path, self._run_steps(claim, values, agent_env(spec.worker.env, values), path,
                                     log, fresh=fresh)

    def _record_agent(self, claim: Claim, pid: int) -> None:
        """Record the agent's pid and start time, so it can be killed if this worker dies."""
        if not self.store.set_attempt_pid(claim, pid, create_time_of(pid)):
            logger.warning("task {}: lease lost before its agent (pid {}) was recorded",
                           claim.task.id, pid)

    def _saw_output(self) -> None:
        self.last_output = time.time()

    def _run_steps(self, claim: Claim, values: dict[str, str], env: dict[str, str],
                   cwd: Path, log: Path, *, fresh: bool = True) -> RunResult:
        spec = self.spec
        timeout, grace = spec.tasks.timeout, spec.worker.stop_grace

        def run(argv: tuple[str, ...], cancellable: bool = True) -> RunResult:
            return run_command(render_argv(argv, values), cwd=cwd, env=env, log=log,
                               timeout=timeout, grace=grace,
                               should_cancel=self.cancel.is_set if cancellable else lambda: False,
                               on_start=lambda pid: self._record_agent(claim, pid),
                               on_output=self._saw_output,
                               mark=(self.pool_key, claim.attempt_id))

        digest = setup_digest(cwd, spec.worktrees.setup, spec.worktrees.setup_when)
        stamp = setup_stamp(cwd) if spec.worktrees.reuse == "perWorker" else None
        warm = stamp is not None and not fresh and stamp.is_file() \
            and stamp.read_text() == digest
        if warm and spec.worktrees.setup:
            write_log_line(log, "=== reconciler: setup skipped (reused worktree, inputs "
                           "unchanged) ===")
        started = time.monotonic()
        if stamp is not None and not fresh and not warm and spec.worktrees.setup:
            clear_setup_output(cwd)  # inputs changed: no stale package survives the rerun
        for argv in () if warm else spec.worktrees.setup:
            write_log_line(log, f"=== reconciler: setup {argv[0]} ===")
            setup = run(argv)
            if setup.status != "succeeded":
                self.phases["setup"] = time.monotonic() - started
                if stamp is not None:
                    stamp.unlink(missing_ok=True)
                return RunResult(setup.status, setup.exit_code,
                                 f"setup {argv[0]!r} failed: {setup.error}")
        if stamp is not None and not warm:
            stamp.write_text(digest)
        if spec.worktrees.setup and not warm:
            with repo_lock(self.paths.repo_locks, spec.repo):  # it may write the repo's config
                created = exclude_setup_output(cwd)
            if created:
                write_log_line(log, "reconciler: setup output kept out of commits: "
                               + ", ".join(created[:10]) + (" …" if len(created) > 10 else ""))
        self.phases["setup"] = time.monotonic() - started
        write_log_line(log, "=== reconciler: agent ===")
        started = time.monotonic()
        agent_output_from = log.stat().st_size
        result = run(spec.worker.command)
        self.phases["agent"] = time.monotonic() - started
        if spec.worker.result is not None:  # before the hooks: onSuccess is for successes
            self.report = read_report(agent_output(log, agent_output_from),
                                       spec.worker.result.path_map())
            result = judge_report(result, self.report, spec.tasks.max_cost_usd, log)
        started = time.monotonic()
        for argv in spec.hooks.on_success if result.status == "succeeded" \
                else spec.hooks.on_failure:
            write_log_line(log, f"=== reconciler: hook {argv[0]} ===")
            run(argv, cancellable=False)
        self.phases["hooks"] = time.monotonic() - started
        return result


REPORT_BYTES = 1024 * 1024  # of the agent's output read for its report: it comes last


def agent_output(log: Path, start: int) -> str:
    """What the agent printed: the log from ``start`` on (its last MiB at most)."""
    try:
        with log.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(start, size - REPORT_BYTES))
            return file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def judge_report(result: RunResult, report: AgentReport | None, max_cost: float | None,
                 log: Path) -> RunResult:
    """The attempt's outcome given what its agent reported: an agent that says it failed
    (``is_error``), or that spent more than ``tasks.maxCostUsd``, fails the attempt even
    with exit code 0.  No report: the exit code stands (said in the log)."""
    if report is None:
        write_log_line(log, "reconciler: no report found at the end of the agent's output "
                       "(worker.result); the exit code decides")
        return result
    if result.status != "succeeded":
        return result
    if report.is_error:
        said = report.message or "is_error"
        return RunResult("failed", result.exit_code,
                         f"the agent reported an error: {said}", result.ended_at)
    if max_cost is not None and report.cost_usd is not None and report.cost_usd > max_cost:
        return RunResult("failed", result.exit_code,
                         f"cost ${report.cost_usd:.2f} is over tasks.maxCostUsd "
                         f"${max_cost:.2f}", result.ended_at)
    return result


def write_log_line(log: Path, line: str) -> None:
    fd = open_private_append(log)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
