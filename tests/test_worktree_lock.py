"""What holds the repository lock while worktrees are made and removed, against real git.

Only git's metadata updates are serialised (``worktree add --no-checkout``,
``worktree remove``); the checkout, the deletion of a worktree's files and the
choice of a branch name run outside the lock, and workers that chose the same
name still end up on different branches (real concurrent processes).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from reconciler.errors import GitError
from reconciler.worktrees import (
    PREPARING,
    add_worktree,
    commit_wip,
    has_uncommitted,
    is_being_prepared,
    list_worktrees,
    remove_worktree,
    repo_lock,
    reuse_worktree,
    worktree_git_dir,
)
from tests.helpers import GIT_IDENTITY, ROOT, git, wait_for

# a git hook that records its name and whether the repository lock was held when it ran
HOOK = textwrap.dedent("""
    import fcntl, os, sys
    from pathlib import Path
    held = False
    for lock in Path(os.environ["TEST_LOCK_DIR"]).glob("repo-*.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = True
        finally:
            os.close(fd)
    name = Path(sys.argv[0]).name
    refs = ",".join(line.split()[2] for line in sys.stdin) if name.startswith("ref") else ""
    with open(os.environ["TEST_HOOK_LOG"], "a") as log:
        log.write(f"{name} {sys.argv[1] if len(sys.argv) > 1 else ''} {refs} "
                  f"{'locked' if held else 'free'}\\n")
""")


def add_files(repo: Path, count: int) -> None:
    for i in range(count):
        path = repo / f"src/pkg{i % 5}/file{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"x = {i}\n")
    git(repo, "add", "-A")
    git(repo, *GIT_IDENTITY, "commit", "-q", "-m", "files")


def install_hooks(repo: Path, *names: str) -> None:
    hooks = repo / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    for name in names:
        (hooks / name).write_text(f"#!{sys.executable}\n{HOOK}")
        (hooks / name).chmod(0o755)


def test_the_checkout_runs_outside_the_lock_and_ends_like_git_worktree_add(
        git_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_files(git_repo, 30)
    install_hooks(git_repo, "reference-transaction", "post-checkout")
    locks, log = tmp_path / "locks", tmp_path / "hooks.log"
    monkeypatch.setenv("TEST_LOCK_DIR", str(locks))
    monkeypatch.setenv("TEST_HOOK_LOG", str(log))
    reference = tmp_path / "reference"
    git(git_repo, "worktree", "add", "-q", "-b", "plain", str(reference), "main")
    log.unlink()

    wt = add_worktree(git_repo, tmp_path / "worktrees", "task-1-a1", "task/1", "main",
                      lock_dir=locks)

    calls = log.read_text().splitlines()
    # the branch is created under the lock; the checkout (its hook) runs after it
    assert "reference-transaction prepared refs/heads/task/1 locked" in calls
    checkouts = [c for c in calls if c.startswith("post-checkout")]
    assert len(checkouts) == 1 and checkouts[0].endswith(" free"), calls
    # and the worktree ends as one made by `git worktree add`
    assert git(wt.path, "rev-parse", "HEAD") == git(reference, "rev-parse", "HEAD")
    assert git(wt.path, "symbolic-ref", "--short", "HEAD").strip() == "task/1"
    assert git(wt.path, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(wt.path, "ls-files", "--stage") == git(reference, "ls-files", "--stage")
    files = sorted(p.relative_to(wt.path) for p in wt.path.rglob("*") if p.is_file()
                   and p.name != ".git")
    assert files == sorted(p.relative_to(reference) for p in reference.rglob("*")
                           if p.is_file() and p.name != ".git")
    assert len(files) == 31


def test_removal_deletes_the_files_before_it_waits_for_the_lock(git_repo: Path,
                                                                tmp_path: Path) -> None:
    add_files(git_repo, 20)
    locks = tmp_path / "locks"
    wt = add_worktree(git_repo, tmp_path / "worktrees", "task-2-a1", "task/2", "main",
                      lock_dir=locks)
    (wt.path / "work.txt").write_text("done\n")
    git(wt.path, "add", "work.txt")
    git(wt.path, *GIT_IDENTITY, "commit", "-q", "-m", "work")

    with repo_lock(locks, git_repo):  # another worker busy with git's metadata
        remover = threading.Thread(target=remove_worktree, args=(git_repo, wt.path),
                                   kwargs={"lock_dir": locks})
        remover.start()
        wait_for(lambda: [p.name for p in wt.path.iterdir()] == [".git"], timeout=30,
                 interval=0.01, message="the worktree's files to be deleted")
        assert remover.is_alive()  # git's metadata waits for the lock
        assert str(wt.path) in list_worktrees(git_repo)
    remover.join(timeout=30)

    assert not remover.is_alive()
    assert not wt.path.exists()
    assert str(wt.path) not in list_worktrees(git_repo)
    assert git(git_repo, "log", "-1", "--format=%s", "task/2").strip() == "work"


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from reconciler.worktrees import make_task_worktree

    repo, root, locks, name = map(Path, sys.argv[1:5])

    def record(branch):
        print("chose", branch, flush=True)
        return True

    branch, fresh = make_task_worktree(repo, root, str(name), "task/same", 1, "main",
                                       reuse=False, lock_dir=locks, record=record)
    print("got", branch, flush=True)
""")


def test_workers_that_choose_the_same_branch_name_end_on_different_branches(
        git_repo: Path, tmp_path: Path) -> None:
    """Names are chosen outside the lock: every process here chooses while another one
    holds it, so all choose the same free name, and git gives it to only one."""
    root, locks, count = tmp_path / "worktrees", tmp_path / "locks", 5
    root.mkdir(mode=0o700)
    with repo_lock(locks, git_repo):
        children = [subprocess.Popen(
            [sys.executable, "-c", CHILD, str(git_repo), str(root), str(locks), f"task-{i}-a1"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)]
        first_choices = [child.stdout.readline().split() for child in children]  # type: ignore[union-attr]
    outputs = [child.communicate(timeout=60) for child in children]

    assert first_choices == [["chose", "task/same"]] * count
    assert [child.returncode for child in children] == [0] * count, outputs
    got = {i: out.splitlines()[-1].removeprefix("got ") for i, (out, _) in enumerate(outputs)}
    assert sorted(got.values()) == sorted(
        ["task/same", "task/same-a1"] + [f"task/same-a1-{n}" for n in range(2, count)])
    for i, branch in got.items():
        assert git(root / f"task-{i}-a1", "symbolic-ref", "--short", "HEAD").strip() == branch
    retries = sum(out.count("chose") for out, _ in outputs)  # after the first choice
    assert retries >= count - 1  # every loser chose again


def test_a_reused_worktree_creates_its_branch_under_the_lock_and_checks_out_outside(
        git_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``reconcile prune`` deletes empty task branches under the lock: a branch created
    outside it could be taken for one whose attempt prune did not see."""
    add_files(git_repo, 10)
    locks, log, root = tmp_path / "locks", tmp_path / "hooks.log", tmp_path / "worktrees"
    assert reuse_worktree(git_repo, root, "worker-w-1", "task/1", "main", lock_dir=locks)
    (root / "worker-w-1" / "left.txt").write_text("an earlier task's file\n")
    install_hooks(git_repo, "reference-transaction", "post-checkout")
    monkeypatch.setenv("TEST_LOCK_DIR", str(locks))
    monkeypatch.setenv("TEST_HOOK_LOG", str(log))

    assert not reuse_worktree(git_repo, root, "worker-w-1", "task/2", "main", lock_dir=locks)

    calls = log.read_text().splitlines()
    assert "reference-transaction prepared refs/heads/task/2 locked" in calls
    assert any(c.startswith("post-checkout") and c.endswith(" free") for c in calls), calls
    path = root / "worker-w-1"
    assert git(path, "symbolic-ref", "--short", "HEAD").strip() == "task/2"
    assert git(path, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_checkout_that_fails_leaves_no_half_made_worktree(
        git_repo: Path, tmp_path: Path) -> None:
    hook = git_repo / ".git" / "hooks" / "post-checkout"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!{sys.executable}\nraise SystemExit(3)\n")
    hook.chmod(0o755)
    root = tmp_path / "worktrees"

    with pytest.raises(GitError, match="checkout"):
        add_worktree(git_repo, root, "task-5-a1", "task/5", "main", lock_dir=tmp_path / "l")

    assert not (root / "task-5-a1").exists()
    assert str(root.resolve() / "task-5-a1") not in list_worktrees(git_repo)


def test_a_checkout_cut_short_is_never_rescued_as_work(git_repo: Path, tmp_path: Path) -> None:
    """A worker killed between ``worktree add --no-checkout`` and the end of its checkout
    leaves a worktree whose files read as "all deleted".  Rescuing that would commit the
    deletion of the whole tree to the task's branch; nothing ran there, so nothing is
    committed."""
    add_files(git_repo, 10)
    path = tmp_path / "worktrees" / "task-3-a1"
    path.parent.mkdir()
    git(git_repo, "worktree", "add", "-q", "--no-checkout", "-b", "task/3", str(path), "main")
    own = worktree_git_dir(path)
    assert own is not None
    (own / PREPARING).write_text("")  # as add_worktree leaves it when killed mid-checkout
    tip = git(git_repo, "rev-parse", "task/3").strip()
    assert has_uncommitted(path)  # git sees every file deleted
    assert commit_wip(path, "rescued") is False
    assert git(git_repo, "rev-parse", "task/3").strip() == tip
    # a finished checkout is not marked: the rescue works as before
    done = add_worktree(git_repo, tmp_path / "worktrees", "task-4-a1", "task/4", "main")
    assert not is_being_prepared(done.path)
    (done.path / "work.txt").write_text("agent work\n")
    assert commit_wip(done.path, "rescued") is True


def test_a_killed_agents_index_lock_does_not_block_the_rescue(git_repo: Path,
                                                             tmp_path: Path) -> None:
    """An agent SIGKILLed in the middle of ``git commit`` leaves ``index.lock`` in the
    worktree's git dir; every later ``git add`` failed ("remove the file manually"), so
    the rescue and the worktree's removal failed on every pass (found by the chaos test)."""
    wt = add_worktree(git_repo, tmp_path / "worktrees", "task-5-a1", "task/5", "main")
    (wt.path / "work.txt").write_text("agent work\n")
    own = worktree_git_dir(wt.path)
    assert own is not None
    (own / "index.lock").write_text("")
    assert commit_wip(wt.path, "rescued") is True
    assert git(git_repo, "show", "task/5:work.txt") == "agent work\n"
    assert not (own / "index.lock").exists()
