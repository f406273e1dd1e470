"""The CLI contract: help, JSON output, pool selection and one-line errors (real CLI runs)."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e import add_task, apply, delete, diff, reconcile_json, status, tasks
from tests.helpers import (
    CLI,
    error_lines,
    one_error_line,
    reconcile,
    reconcile_background,
    write_spec,
)

COMMANDS = ["validate", "diff", "apply", "delete", "status", "history", "events", "demo",
            "controller", "restart", "scale", "task", "task add", "task import", "task list",
            "task show", "task cancel", "task retry", "task wait", "backup"]


@pytest.mark.parametrize("command", COMMANDS, ids=[c.replace(" ", "-") for c in COMMANDS])
def test_every_command_explains_itself(command: str) -> None:
    proc = reconcile(*command.split(), "--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: reconcile")


def test_top_level_help_documents_exit_codes_and_hides_internal_commands() -> None:
    out = reconcile("--help").stdout
    assert "exit codes: 0 success (diff: in sync), 2 diff found changes pending" in out
    assert "3 status found a failed worker" in out and "down, 1 error." in out
    commands = [line.split()[0] for line in out.split("options:")[0].splitlines()
                if line.startswith("    ") and line.split()]
    assert "worker" not in commands and "validate" in commands


@pytest.mark.usefixtures("host")
class TestPoolSelection:
    def test_no_pool_at_all(self) -> None:
        line = one_error_line(reconcile("status"))
        assert "no pool found in" in line and "pass -f workers.yaml" in line

    def test_unknown_pool_name(self, host: Path) -> None:
        add_task(write_spec(host), title="x")
        line = one_error_line(reconcile("status", "--pool", "nope"))
        assert "no pool named 'nope'" in line and "known pools: testpool" in line

    def test_single_pool_is_the_default(self, host: Path) -> None:
        add_task(write_spec(host), title="x")
        listed = reconcile_json("task", "list")  # no -f: the only pool there is
        assert [t["title"] for t in listed] == ["x"]

    def test_two_pools_need_a_choice(self, host: Path) -> None:
        for name in ("one", "two"):
            spec = write_spec(host, name=name, filename=f"{name}.yaml")
            add_task(spec, title="x")
        line = one_error_line(reconcile("task", "list"))
        assert "2 pools in" in line and "one, two" in line and "--pool NAME" in line

    def test_pool_and_file_must_agree(self, host: Path) -> None:
        spec = write_spec(host)
        line = one_error_line(reconcile("status", "-f", str(spec), "--pool", "other"))
        assert "does not match" in line

    def test_apply_on_a_missing_repo_says_how_to_fix(self, host: Path) -> None:
        spec = write_spec(host, repo="no-such-repo")
        line = one_error_line(reconcile("apply", "-f", str(spec)))
        assert "does not exist" in line and "set spec.repo" in line
        assert not (host / "state").exists(), "nothing may be half-applied"


@pytest.mark.usefixtures("host")
class TestTasks:
    def test_add_list_show_cancel_roundtrip_as_json(self, host: Path) -> None:
        spec = write_spec(host)
        added = reconcile_json("task", "add", "-f", str(spec), "--title", "First",
                               "--prompt", "p1", "--priority", "3")
        shown = reconcile_json("task", "show", str(added["id"]), "-f", str(spec))
        assert (shown["title"], shown["prompt"], shown["priority"], shown["status"]) == (
            "First", "p1", 3, "queued")
        assert shown["attempt_details"] == []
        cancelled = reconcile_json("task", "cancel", str(added["id"]), "-f", str(spec))
        assert cancelled == {"id": added["id"], "status": "cancelled"}
        line = one_error_line(reconcile("task", "cancel", str(added["id"]), "-f", str(spec)))
        assert "already cancelled" in line

    def test_prompt_defaults_to_title_and_reads_files_exactly(self, host: Path) -> None:
        spec = write_spec(host)
        prompt = host / "p.md"
        prompt.write_text("line 1\n  line 2 with $(x)\n")
        add_task(spec, title="T1")
        add_task(spec, title="T2", prompt_file=prompt)
        assert [t["prompt"] for t in tasks(spec)] == ["T1", prompt.read_text()]

    def test_import_is_all_or_nothing(self, host: Path) -> None:
        spec = write_spec(host)
        bad = host / "tasks.yaml"
        bad.write_text("- title: ok\n- titel: typo\n")
        line = one_error_line(reconcile("task", "import", str(bad), "-f", str(spec)))
        assert f"{bad}:2:3: task 1: unknown key `titel`" in line
        add_task(spec, title="t")
        assert len(tasks(spec)) == 1

    @pytest.mark.parametrize(("args", "expected"), [
        pytest.param(["task", "show", "99"], "no task with id 99", id="unknown-id"),
        pytest.param(["task", "add", "--title", "  "], "must not be empty", id="blank-title"),
        pytest.param(["task", "add", "--title", "t", "--prompt-file", "/nonexistent"],
                     "--prompt-file /nonexistent", id="missing-prompt-file"),
        pytest.param(["task", "wait", "--timeout", "soon"], "--timeout", id="bad-duration"),
        pytest.param(["task", "add", "--title", "t", "--priority", "high"],
                     "invalid int value", id="usage-error"),
    ])
    def test_bad_input_is_one_line(self, host: Path, args: list[str], expected: str) -> None:
        spec = write_spec(host)
        add_task(spec, title="seed")
        assert expected in one_error_line(reconcile(*args, "-f", str(spec)))

    def test_wait_times_out_with_exit_1_when_no_worker_runs(self, host: Path) -> None:
        spec = write_spec(host)
        add_task(spec, title="t")
        proc = reconcile("task", "wait", "-f", str(spec), "--timeout", "500ms", "-o", "json")
        assert proc.returncode == 1
        assert json.loads(proc.stdout) == {"finished": False,
                                           "tasks": [{"id": 1, "status": "queued"}]}


def test_read_commands_emit_json(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)
    apply(spec)
    documents = {cmd: reconcile_json(cmd, "-f", str(spec))
                 for cmd in ("status", "history", "events")}
    assert documents["status"]["pool"] == "testpool"
    assert set(documents["status"]["queue"]) == {"queued", "running", "succeeded", "failed",
                                                 "cancelled"}
    assert [w["id"] for w in documents["status"]["workers"]] == ["w-1"]
    assert len(documents["history"]) == 1
    assert {e["kind"] for e in documents["events"]} >= {"spec.applied", "worker.started"}
    plan = json.loads(diff(spec, "-o", "json").stdout)
    assert plan == {"pool": "testpool", "in_sync": True, "spec_changes": [],
                    "summary": "No changes. The pool matches the spec.", "counts": {},
                    "generation": 1, "transitions": [], "actions": []}
    write_spec(host, replicas=2)  # not applied yet: no generation
    assert json.loads(diff(spec, "-o", "json").stdout)["generation"] is None
    delete(spec)


def test_scale_rewrites_only_the_replicas_value_and_applies(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=1)
    original = spec.read_text()
    commented = original.replace("replicas: 1", "replicas: 1   # how many agents\n  # keep me")
    spec.write_text("# top comment\n" + commented)
    proc = reconcile("scale", "2", "-f", str(spec), "--wait")
    assert proc.returncode == 0, proc.stderr
    assert spec.read_text() == "# top comment\n" + commented.replace("replicas: 1", "replicas: 2")
    assert [w["id"] for w in status(spec)["workers"]] == ["w-1", "w-2"]
    line = one_error_line(reconcile("scale", "999", "-f", str(spec)))
    assert "replicas must be from 0 to 256" in line
    assert "replicas: 2" in spec.read_text()
    delete(spec)


def test_task_retry_and_events_follow(host: Path) -> None:
    spec = write_spec(host)
    task_id = add_task(spec)
    line = one_error_line(reconcile("task", "retry", task_id, "-f", str(spec)))
    assert "only failed or cancelled tasks can be retried" in line
    reconcile("task", "cancel", task_id, "-f", str(spec), check=True)
    retried = reconcile_json("task", "retry", task_id, "-f", str(spec))
    assert retried == {"id": int(task_id), "status": "queued"}
    follow = reconcile_background("events", "-f", str(spec), "--follow", "-o", "json",
                                  stdout=subprocess.PIPE)
    try:
        first = json.loads(follow.stdout.readline() if follow.stdout else "{}")
        assert first["kind"] == "task.queued"
        add_task(spec, title="later")
        kinds = [json.loads(follow.stdout.readline())["kind"] for _ in range(3)] \
            if follow.stdout else []
        assert kinds[-1] == "task.queued"
    finally:
        follow.terminate()
        follow.wait(timeout=10)
        if follow.stdout:
            follow.stdout.close()


def _missing_help(parser: argparse.ArgumentParser, path: str) -> list[str]:
    from reconciler.cli import HIDDEN_COMMANDS

    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if name in HIDDEN_COMMANDS:
                    continue
                if not helps.get(name):
                    missing.append(f"{path} {name}")
                missing += _missing_help(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_explains_itself() -> None:
    """Issue 12: `--help` must describe every subcommand and option."""
    from reconciler.cli import build_parser

    assert _missing_help(build_parser(), "reconcile") == []


def test_top_level_help_names_every_exit_code() -> None:
    from reconciler.cli import build_parser

    text = build_parser().format_help()
    assert "3 status found a failed worker" in text and "1 error" in text


@pytest.mark.parametrize(("argv", "expected"), [
    (["stauts"], "invalid choice: 'stauts'; did you mean `status`? (choose from validate, "),
    (["task", "lst"], "invalid choice: 'lst'; did you mean `list`?"),
    (["status", "--bogus"], "unrecognized arguments: --bogus (see `reconcile status --help`)"),
    (["task", "list", "--x"], "(see `reconcile task list --help`)"),
])
def test_usage_mistakes_get_one_line_that_helps(argv: list[str], expected: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert expected in line
    if argv == ["stauts"]:  # the hidden command is not offered
        assert line.count("worker") == 0 and "run-task)" in line


def test_prompt_files_keep_their_bytes_and_dash_reads_stdin(tmp_path: Path) -> None:
    """Issue 12: CR and CRLF stay as written; `--prompt-file -` reads stdin; bytes that
    are not UTF-8 get one clear line."""
    import io

    from reconciler.errors import TaskError
    from reconciler.taskfile import MAX_PROMPT, read_prompt_file

    written = tmp_path / "prompt.txt"
    written.write_bytes(b"one\r\ntwo\rthree\n")
    assert read_prompt_file(written) == "one\r\ntwo\rthree\n"
    assert read_prompt_file(Path("-"), io.BytesIO(b"a\r\nb")) == "a\r\nb"
    with pytest.raises(TaskError, match=r"not UTF-8 text \(byte 2\)"):
        read_prompt_file(Path("-"), io.BytesIO(b"ok\xff"))
    with pytest.raises(TaskError, match="larger than the limit"):
        read_prompt_file(Path("-"), io.BytesIO(b"x" * (MAX_PROMPT + 1)))


def test_task_add_reads_the_prompt_from_stdin_as_bytes(host: Path, git_repo: Path) -> None:
    spec = write_spec(host, replicas=0)
    proc = subprocess.run([*CLI, "task", "add", "-f", str(spec), "--title", "t",
                           "--prompt-file", "-"], input=b"line one\r\nline two\r",
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    task = reconcile_json("task", "show", proc.stdout.decode().strip(), "-f", str(spec))
    assert task["prompt"] == "line one\r\nline two\r"


def test_pools_lists_every_pool_of_the_state_directory(host: Path, git_repo: Path) -> None:
    """Issue 12: `reconcile pools`, as `pm2 ls` or `kubectl get`, from the stores alone."""
    empty = reconcile("pools")
    assert empty.returncode == 0 and "no pools in" in empty.stdout
    first = write_spec(host, name="alpha", replicas=1, runtime="process")
    second = write_spec(host, name="beta", replicas=2, runtime="process",
                        filename="beta.yaml")
    apply(first)
    apply(second)
    add_task(first, "[seconds=30] long", title="t")
    delete(second, "--force")
    listed = {row["pool"]: row for row in reconcile_json("pools")}
    assert set(listed) == {"alpha", "beta"}
    alpha, beta = listed["alpha"], listed["beta"]
    assert (alpha["workers_up"], alpha["workers_wanted"], alpha["generation"]) == (1, 1, 1)
    assert alpha["spec_file"] == str(first) and alpha["runtime"] == "process"
    assert alpha["queue"]["queued"] + alpha["queue"]["running"] == 1
    assert alpha["controller"] == "disabled"  # write_spec turns the controller off
    assert (beta["workers_up"], beta["workers_wanted"], beta["controller"]) == (0, 0, "deleted")
    text = reconcile("pools", check=True).stdout.splitlines()
    assert text[0].split()[:4] == ["POOL", "GENERATION", "WORKERS", "CONTROLLER"]
    assert text[1].split()[:4] == ["alpha", "1", "1/1", "disabled"]
    assert " 0 succeeded, 0 failed " in text[1]  # every count of the queue, as status has


def test_state_dir_works_after_the_command_too(host: Path, git_repo: Path,
                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """Issue 12: global options after the subcommand, as kubectl users type them."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    spec = write_spec(host, name="far", replicas=0)
    reconcile("apply", "-f", str(spec), "--state-dir", str(elsewhere), check=True)
    reconcile("task", "add", "--title", "x", "--pool", "far", "--state-dir", str(elsewhere),
              check=True)
    listed = json.loads(reconcile("pools", "-o", "json", "--state-dir", str(elsewhere),
                                  check=True).stdout)
    assert [row["pool"] for row in listed] == ["far"] and listed[0]["queue"]["queued"] == 1
    before = reconcile("--state-dir", str(elsewhere), "task", "list", "--pool", "far", "-o",
                       "json", check=True).stdout
    after = reconcile("task", "list", "--pool", "far", "-o", "json", "--state-dir",
                      str(elsewhere), check=True).stdout
    assert before == after and json.loads(after)[0]["title"] == "x"
    assert reconcile("pools", "-o", "json", check=True).stdout.strip() == "[]"  # the default


def test_task_show_gives_the_prompt_and_why_each_attempt_ended(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12: the prompt (cut, --full for all), every attempt's reason (lost ones
    included), and tries used apart from attempts run."""
    from reconciler.model import RetryPolicy
    from reconciler.report.render import PROMPT_SHOWN, render_task
    from reconciler.store.sqlite import Store

    with Store(tmp_path / "store.db") as store:
        (task_id,) = store.add_tasks([("t", "first line\n" + "x" * 600, 0)])
        store.claim_task("w-1", 30)
        store.requeue_attempts_of("w-1", "worker w-1: pool deleted", consume=False,
                                  policy=RetryPolicy(max_attempts=2))
        claim = store.claim_task("w-2", 30)
        assert claim is not None
        store.finish_attempt(claim, "failed", exit_code=-9, error="killed by SIGKILL (exit "
                             "137)", policy=RetryPolicy(max_attempts=1))
        task, attempts = store.task(task_id), store.attempts(task_id)
    render_task(task, attempts)
    out = capsys.readouterr().out
    assert "(priority 0, 1 try used, 2 attempt(s))" in out
    assert "first line" in out and f"{600 + 11 - PROMPT_SHOWN} more characters" in out
    assert "reason:   worker w-1: pool deleted" in out
    assert "attempt 2 on w-2: failed (killed by SIGKILL (exit 137))" in out
    render_task(task, attempts, full=True)
    assert "more characters" not in capsys.readouterr().out


def test_a_foreground_controller_of_a_pool_without_one_says_so(host: Path,
                                                               git_repo: Path) -> None:
    """Issue 12: with controller.enabled false it claimed it got SIGTERM or that the pool
    was deleted; now one line with the fix, exit 1."""
    spec = write_spec(host, replicas=0)  # controller: {enabled: false}
    for args in (["-f", str(spec)], ["--pool", "testpool"]):
        if args[0] == "--pool":
            apply(spec)
        refused = reconcile("controller", *args, timeout=30)
        assert refused.returncode == 1
        line = one_error_line(refused)
        assert "controller.enabled is false" in line and "set controller.enabled: true" in line


def test_a_foreground_controller_of_a_deleted_pool_says_so(host: Path, git_repo: Path) -> None:
    """It logged an INFO line and exited 0, which a systemd unit takes for a clean stop."""
    spec = write_spec(host, replicas=0, extra={"controller": {"enabled": True}})
    apply(spec)
    delete(spec)
    refused = reconcile("controller", "--pool", "testpool", timeout=30)
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert "pool testpool was deleted" in line and "reconcile controller -f workers.yaml" in line


def test_logs_of_a_task_follow_until_it_ends_and_of_a_worker(host: Path,
                                                             git_repo: Path) -> None:
    """Issue 12: `reconcile logs TASK -f` ends when the attempt does; `logs w-N`."""
    spec = write_spec(host, replicas=1, runtime="process")
    apply(spec)
    task = add_task(spec, "[seconds=2] slowly", title="followed")
    followed = reconcile("logs", task, "-f", "--pool", "testpool", timeout=60)
    assert followed.returncode == 0, followed.stderr
    assert "slowly" in followed.stdout or "followed" in followed.stdout
    assert reconcile_json("task", "show", task, "-f", str(spec))["status"] == "succeeded"
    last = reconcile("logs", task, "--tail", "1", "--spec", str(spec), check=True).stdout
    assert last.count("\n") == 1 and last == followed.stdout.splitlines(keepends=True)[-1]
    worker = reconcile("logs", "w-1", "--pool", "testpool", check=True).stdout
    assert "w-1 started" in worker
    for target, words in (("999", "no task with id 999"), ("w-9", "no worker w-9"),
                          ("frob", "neither a task id")):
        refused = reconcile("logs", target, "--pool", "testpool")
        assert refused.returncode == 1 and words in one_error_line(refused)
    assert "has no log: it has not had attempt 5 yet" in one_error_line(
        reconcile("logs", task, "--attempt", "5", "--pool", "testpool"))


def test_bulk_retry_and_cancel_say_what_each_task_became(host: Path) -> None:
    """Issue 12: `task retry 1 2 3`, `task retry --failed`, `task cancel --queued` (which
    asks to confirm unless --yes: without a terminal, it refuses)."""
    spec = write_spec(host)
    ids = [add_task(spec, title=f"t{n}") for n in range(4)]
    refused = reconcile("task", "cancel", "--queued", "-f", str(spec))
    assert refused.returncode == 1 and "add --yes" in one_error_line(refused)
    assert [t["status"] for t in tasks(spec)] == ["queued"] * 4  # nothing changed
    cancelled = reconcile_json("task", "cancel", "--queued", "--yes", "-f", str(spec))
    assert [(r["id"], r["status"]) for r in cancelled] == [(int(i), "cancelled") for i in ids]
    mixed = reconcile("task", "retry", ids[0], ids[1], "999", "-f", str(spec))
    assert mixed.returncode == 1
    assert mixed.stdout.splitlines() == [f"task {ids[0]}: queued again",
                                         f"task {ids[1]}: queued again",
                                         "task 999: not changed: no task with id 999 (see "
                                         "`reconcile task list`)"]
    both = reconcile("task", "retry", ids[2], "--failed", "-f", str(spec))
    assert "give task ids or --failed, not both" in one_error_line(both)
    none = reconcile("task", "retry", "-f", str(spec))
    assert "give the ids of the tasks to queue again, or --failed" in one_error_line(none)
    assert reconcile("task", "retry", "--failed", "--yes", "-f", str(spec),
                     check=True).stdout == "no failed tasks\n"


def test_task_list_since_shows_only_tasks_that_changed_lately(host: Path) -> None:
    """Issue 12: `task list --status failed --limit 50 --since 2h`."""
    import time as clock

    from reconciler.store.sqlite import Store
    from tests.e2e import pool_dir

    spec = write_spec(host)
    old, new = add_task(spec, title="old"), add_task(spec, title="new")
    with Store(pool_dir(host) / "store.db") as store:  # the old one changed 3 hours ago
        store._db.execute("UPDATE tasks SET updated_at = ? WHERE id = ?",
                          (clock.time() - 3 * 3600, int(old)))
        store._db.commit()
    recent = reconcile_json("task", "list", "--since", "2h", "-f", str(spec))
    assert [t["id"] for t in recent] == [int(new)]
    assert [t["id"] for t in reconcile_json("task", "list", "--status", "queued", "--since",
                                            "4h", "--limit", "50", "-f", str(spec))] == \
        [int(old), int(new)]
    text = reconcile("task", "list", "--since", "2h", "-f", str(spec), check=True).stdout
    assert "new" in text and " old " not in text
    assert "--since" in one_error_line(reconcile("task", "list", "--since", "soon", "-f",
                                                 str(spec)))


def test_status_of_a_deleted_pool_says_so(host: Path, git_repo: Path) -> None:
    """Issue 12 walk: after `delete`, status said "controller: down", as if broken."""
    spec = write_spec(host, replicas=1, runtime="process", extra={"controller": {"enabled": True}})
    apply(spec)
    delete(spec)
    shown = reconcile("status", "-f", str(spec))
    assert shown.returncode == 0, shown.stdout
    assert "controller: stopped (the pool was deleted)" in shown.stdout
    assert "deleted at " in shown.stdout and "`reconcile apply` brings it back" in shown.stdout
    assert status(spec)["deleted_at"] is not None
    apply(spec)
    assert status(spec)["deleted_at"] is None
    delete(spec)


@pytest.mark.parametrize(("extra", "words"), [
    ({"worker": {"command": ["no-such-agent-xyz", "{task.prompt}"]}},
     "worker.command: program 'no-such-agent-xyz' is not found on PATH ("),
    ({"worktrees": {"setup": [["npm-not-here-xyz", "ci"]]}},
     "worktrees.setup[0]: program 'npm-not-here-xyz' is not found on PATH"),
    ({"worker": {"command": ["/nonexistent/agent"]}},
     "worker.command: /nonexistent/agent is not an executable file"),
])
def test_diff_and_apply_catch_a_program_that_is_not_there(host: Path, git_repo: Path,
                                                          extra: dict[str, object],
                                                          words: str) -> None:
    """Issue 12 preflight: caught at diff time, not after every task failed; apply
    refuses unless --force."""
    spec = write_spec(host, replicas=0, extra=extra)
    for command in (["diff"], ["apply"]):
        refused = reconcile(*command, "-f", str(spec))
        assert refused.returncode == 1 and words in one_error_line(refused)
    assert reconcile("apply", "-f", str(spec), "--force").returncode == 0


def test_a_worktree_directory_inside_the_repository_must_be_ignored_by_it(
        host: Path, git_repo: Path) -> None:
    """Issue 12 preflight: unignored, every task's worktree shows as untracked in the
    repository (and a `git add -A` there commits them); ignored, or inside .git, is fine."""
    spec = write_spec(host, replicas=0, extra={"worktrees": {"dir": "repo/.worktrees"}})
    for command in (["diff"], ["apply"]):
        refused = reconcile(*command, "-f", str(spec))
        line = one_error_line(refused)
        assert refused.returncode == 1, line
        assert f"worktrees.dir {git_repo}/.worktrees is inside the repository" in line
        assert "git does not ignore it" in line and "add `/.worktrees/` to" in line
    assert not (git_repo / ".worktrees").exists()  # refused before anything was made
    (git_repo / ".git" / "info" / "exclude").write_text("/.worktrees/\n")
    assert reconcile("diff", "-f", str(spec)).returncode == 0  # no refusal (replicas: 0)
    inside_git = write_spec(host, name="gitdir", replicas=0,
                            extra={"worktrees": {"dir": "repo/.git/agent-worktrees"}},
                            filename="gitdir.yaml")
    assert reconcile("diff", "-f", str(inside_git)).returncode == 0


def test_a_tmux_socket_held_by_someone_elses_server_is_refused(host: Path,
                                                               git_repo: Path) -> None:
    """Issue 12 preflight: `tmux.socket: default` is the operator's own server; a pool
    must not put its windows among their sessions.  Our own server is accepted again,
    and --force uses the foreign one anyway."""
    spec = write_spec(host, replicas=0)
    foreign = subprocess.run(["tmux", "-L", "rt-testpool", "-f", "/dev/null", "new-session",
                              "-d", "-s", "mine", "sleep", "600"], check=False)
    assert foreign.returncode == 0
    for command in (["diff"], ["apply"]):
        refused = reconcile(*command, "-f", str(spec))
        line = one_error_line(refused)
        assert refused.returncode == 1, line
        assert "tmux.socket 'rt-testpool'" in line and "reconciler did not start" in line
        assert "tmux.socket: reconciler-testpool" in line
    assert reconcile("apply", "-f", str(spec), "--force").returncode == 0
    subprocess.run(["tmux", "-L", "rt-testpool", "kill-server"], check=True)
    spec = write_spec(host, replicas=1)
    reconcile("apply", "-f", str(spec), "--wait", check=True)  # starts a server of its own
    assert reconcile("diff", "-f", str(spec)).returncode == 0  # ... which is ours
    delete(spec)


def test_preflight_names_every_problem_and_force_says_what_it_went_ahead_despite(
        host: Path, git_repo: Path) -> None:
    """Issue 12: one run names them all (it stopped at the first), and `apply --force`
    says which checks it overrode instead of saying nothing."""
    spec = write_spec(host, replicas=0, extra={
        "worker": {"command": ["no-such-agent-xyz", "{task.prompt}"]},
        "worktrees": {"dir": "repo/.worktrees", "setup": [["npm-not-here-xyz", "ci"]]}})
    lines = error_lines(reconcile("diff", "-f", str(spec)), count=3)
    assert "worker.command: program 'no-such-agent-xyz' is not found" in lines[0]
    assert "worktrees.setup[0]: program 'npm-not-here-xyz' is not found" in lines[1]
    assert ".worktrees is inside the repository" in lines[2]
    forced = reconcile("apply", "-f", str(spec), "--force")
    assert forced.returncode == 0, forced.stderr
    warnings = [line for line in forced.stderr.splitlines()
                if line.startswith("warning: applied despite (--force): ")]
    assert len(warnings) == 3 and "no-such-agent-xyz" in warnings[0]
    assert reconcile_json("apply", "-f", str(spec), "--force")["forced"][2].startswith(
        f"worktrees.dir {git_repo}/.worktrees is inside the repository")
