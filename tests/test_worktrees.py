"""Branch names, worktree paths and the worktree lifecycle, against real git repositories."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import GitError
from reconciler.worktrees import (
    add_worktree,
    check_branch_name,
    check_repo,
    list_worktrees,
    path_under,
    remove_worktree,
    unique_branch,
)
from tests.helpers import GIT_IDENTITY, git

# --------------------------------------------------------------------------- branch names

BRANCH_NAMES = [
    pytest.param("feature/x", id="plain-two-parts"),
    pytest.param("task/12-fix-login", id="template-like"),
    pytest.param("a@b", id="at-inside"),
    pytest.param("x/@", id="at-component"),
    pytest.param("a./b", id="component-ends-with-dot"),
    pytest.param("a/-b", id="later-component-starts-with-dash"),
    pytest.param("a.lockx", id="lock-not-at-end"),
    pytest.param("ünïcødé/β-✓", id="unicode"),
    pytest.param("a b", id="space"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a..b", id="double-dot"),
    pytest.param("a~1", id="tilde"),
    pytest.param("a^b", id="caret"),
    pytest.param("a:b", id="colon"),
    pytest.param("a?b", id="question-mark"),
    pytest.param("a*b", id="asterisk"),
    pytest.param("a[b", id="open-bracket"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("a@{b", id="at-brace"),
    pytest.param("a//b", id="double-slash"),
    pytest.param("-a", id="leading-dash"),
    pytest.param("/a", id="leading-slash"),
    pytest.param("a/", id="trailing-slash"),
    pytest.param("a.", id="trailing-dot"),
    pytest.param("a.lock", id="ends-with-lock"),
    pytest.param("a/b.lock/c", id="component-ends-with-lock"),
    pytest.param("a/.b", id="component-starts-with-dot"),
    pytest.param(".a", id="starts-with-dot"),
    pytest.param("a\x01b", id="control-char"),
    pytest.param("a\x7fb", id="delete-char"),
    pytest.param("HEAD", id="HEAD"),
]


def git_accepts_branch(name: str, cwd: Path) -> bool:
    proc = subprocess.run(["git", "check-ref-format", "--branch", name], cwd=cwd,
                          capture_output=True, check=False)
    return proc.returncode == 0


def we_accept_branch(name: str) -> bool:
    try:
        check_branch_name(name)
    except GitError:
        return False
    return True


@pytest.mark.parametrize("name", BRANCH_NAMES)
def test_branch_name_verdict_matches_git(name: str, tmp_path: Path) -> None:
    assert we_accept_branch(name) == git_accepts_branch(name, tmp_path)


def test_lone_at_is_refused_although_git_accepts_it(tmp_path: Path) -> None:
    """``@`` is git's shorthand for HEAD; we are deliberately stricter than git here."""
    assert git_accepts_branch("@", tmp_path)
    assert not we_accept_branch("@")


def test_invalid_branch_error_names_the_branch() -> None:
    with pytest.raises(GitError, match=r"invalid branch name 'a\.\.b'"):
        check_branch_name("a..b")


# --------------------------------------------------------------------------- paths


def test_path_under_accepts_a_plain_name(tmp_path: Path) -> None:
    assert path_under(tmp_path, "task-1-a1") == tmp_path.resolve() / "task-1-a1"


@pytest.mark.parametrize("name", [
    pytest.param("../x", id="parent"),
    pytest.param("a/../../x", id="parent-via-subdir"),
    pytest.param("/etc", id="absolute"),
    pytest.param("/tmp/elsewhere", id="absolute-tmp"),
])
def test_path_under_refuses_escapes(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(GitError, match="escapes"):
        path_under(root, name)


def test_path_under_refuses_symlink_pointing_outside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(GitError, match="escapes"):
        path_under(root, "link")


# --------------------------------------------------------------------------- lifecycle


def branch_commit(repo: Path, branch: str) -> str:
    return git(repo, "rev-parse", "--verify", f"refs/heads/{branch}").strip()


def branches(repo: Path) -> set[str]:
    return set(git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads").split())


def test_add_and_remove_worktree_keeps_branch_and_commits(git_repo: Path,
                                                          tmp_path: Path) -> None:
    base = branch_commit(git_repo, "main")
    root = tmp_path / "worktrees"
    wt = add_worktree(git_repo, root, "task-1-a1", "task/1-fix", "main")

    assert wt.path == root.resolve() / "task-1-a1"
    assert wt.branch == "task/1-fix"
    assert (wt.path / "README.md").read_text() == "# test repo\n"
    assert git(wt.path, "rev-parse", "HEAD").strip() == base
    assert git(wt.path, "symbolic-ref", "--short", "HEAD").strip() == "task/1-fix"
    assert str(wt.path) in list_worktrees(git_repo)

    (wt.path / "work.txt").write_text("done\n")
    git(wt.path, "add", "work.txt")
    git(wt.path, *GIT_IDENTITY, "commit", "-q", "-m", "work")
    work_commit = git(wt.path, "rev-parse", "HEAD").strip()

    remove_worktree(git_repo, wt.path)

    assert not wt.path.exists()
    assert str(wt.path) not in list_worktrees(git_repo)
    assert branch_commit(git_repo, "task/1-fix") == work_commit
    assert git(git_repo, "rev-list", "--count", "main..task/1-fix").strip() == "1"
    # the operator's checkout is untouched
    assert branch_commit(git_repo, "main") == base
    assert git(git_repo, "status", "--porcelain").strip() == ""


def test_unique_branch_adds_attempt_suffix_and_never_forces(git_repo: Path,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "worktrees"
    assert unique_branch(git_repo, "task/7", 2) == "task/7"

    first = add_worktree(git_repo, root, "task-7-a1", "task/7", "main")
    (first.path / "a.txt").write_text("a\n")
    git(first.path, "add", "a.txt")
    git(first.path, *GIT_IDENTITY, "commit", "-q", "-m", "attempt 1")
    kept = branch_commit(git_repo, "task/7")
    remove_worktree(git_repo, first.path)

    second_branch = unique_branch(git_repo, "task/7", 2)
    assert second_branch == "task/7-a2"
    add_worktree(git_repo, root, "task-7-a2", second_branch, "main")
    assert unique_branch(git_repo, "task/7", 2) == "task/7-a2-2"

    # asking git for an existing branch fails instead of moving it
    with pytest.raises(GitError):
        add_worktree(git_repo, root, "task-7-a3", "task/7", "main")
    assert branch_commit(git_repo, "task/7") == kept
    assert branches(git_repo) == {"main", "task/7", "task/7-a2"}


def test_add_worktree_never_deletes_a_directory_it_did_not_create(git_repo: Path,
                                                                  tmp_path: Path) -> None:
    """Issue 7, item 14: a directory that is not a worktree of ours was deleted."""
    root = tmp_path / "worktrees"
    stranger = root / "task-2-a1"
    stranger.mkdir(parents=True)
    (stranger / "notes.txt").write_text("somebody's files\n")

    with pytest.raises(GitError, match="never deletes what it did not create"):
        add_worktree(git_repo, root, "task-2-a1", "task/2", "main")
    remove_worktree(git_repo, stranger)  # nor does a cleanup
    assert (stranger / "notes.txt").read_text() == "somebody's files\n"


@pytest.mark.parametrize("mode", [pytest.param(0o777, id="world-writable"),
                                  pytest.param(0o1777, id="sticky-tmp-like"),
                                  pytest.param(0o770, id="group-writable")])
def test_a_worktree_root_others_can_write_to_is_refused(git_repo: Path, tmp_path: Path,
                                                        mode: int) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(GitError, match="others could write there"):
        add_worktree(git_repo, root, "task-4-a1", "task/4", "main")
    assert root.stat().st_mode & 0o7777 == mode  # its mode is not ours to change


def test_add_worktree_recovers_from_registered_but_missing(git_repo: Path,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "worktrees"
    first = add_worktree(git_repo, root, "task-3-a1", "task/3", "main")
    shutil.rmtree(first.path)
    assert str(first.path) in list_worktrees(git_repo)

    again = add_worktree(git_repo, root, "task-3-a1", "task/3-a2", "main")

    assert again.path == first.path
    assert (again.path / "README.md").exists()
    assert git(again.path, "symbolic-ref", "--short", "HEAD").strip() == "task/3-a2"
    assert list_worktrees(git_repo).count(str(again.path)) == 1
    assert "task/3" in branches(git_repo)


def test_a_worktree_that_vanishes_while_it_is_removed_is_simply_gone(git_repo: Path,
                                                                     tmp_path: Path) -> None:
    """A newcomer's walk (issue 11): `delete` crashed with FileNotFoundError when the
    attempt's own wrapper removed the worktree between the check and the listing."""
    from reconciler import worktrees

    worktrees._delete_files_of(tmp_path / "vanished")  # no error: nothing left to delete


def test_remove_worktree_refuses_the_repository_checkout(git_repo: Path) -> None:
    with pytest.raises(GitError, match="refusing"):
        remove_worktree(git_repo, git_repo)
    with pytest.raises(GitError, match="refusing"):
        remove_worktree(git_repo, git_repo / "." )
    assert (git_repo / "README.md").exists()
    assert (git_repo / ".git").is_dir()


# --------------------------------------------------------------------------- check_repo


def test_check_repo_returns_base_commit(git_repo: Path) -> None:
    assert check_repo(git_repo, "main") == branch_commit(git_repo, "main")


def test_check_repo_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="does not exist"):
        check_repo(tmp_path / "nope", "main")


def test_check_repo_not_a_git_repository(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    # never let git find a repository above the test's directory
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", os.fspath(tmp_path))
    with pytest.raises(GitError, match="not a git repository"):
        check_repo(plain, "main")


@pytest.mark.parametrize("ref", [
    pytest.param("no-such-branch", id="missing-branch"),
    pytest.param("--output=/tmp/x", id="option-like"),
    pytest.param("0" * 40, id="missing-commit"),
])
def test_check_repo_bad_base_ref(git_repo: Path, ref: str) -> None:
    with pytest.raises(GitError, match="baseRef"):
        check_repo(git_repo, ref)
