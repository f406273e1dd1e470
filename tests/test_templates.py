"""Tests for placeholder templates (reconciler.templates) and branch names (worktrees).

Task text is user data: it must land in exactly one argv element, verbatim,
and never be expanded again, however much it looks like a placeholder, a
format string or shell syntax.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import GitError
from reconciler.templates import (
    BRANCH_PLACEHOLDERS,
    COMMAND_PLACEHOLDERS,
    TemplateError,
    check_template,
    prefill,
    render,
    render_argv,
)
from reconciler.worktrees import branch_for, check_branch_name, slugify

VALUES = {
    "task.id": "42",
    "task.title": "Fix the login bug",
    "task.prompt": "Make login work",
    "task.prompt_file": "/state/prompts/42.md",
    "task.branch": "reconciler/demo/42-fix-the-login-bug",
    "task.slug": "fix-the-login-bug",
    "worktree": "/state/worktrees/42",
    "attempt": "1",
    "pool": "demo",
}

TRICKY_VALUES = [
    pytest.param("{task.id}", id="placeholder-lookalike"),
    pytest.param("{{task.id}}", id="escaped-placeholder-lookalike"),
    pytest.param("{", id="lone-open-brace"),
    pytest.param("}{", id="reversed-braces"),
    pytest.param("$(rm -rf ~); `reboot`", id="shell-substitution"),
    pytest.param("it's \"quoted\" and 'single'", id="quotes"),
    pytest.param("line one\nline two\r\n\tend", id="newlines-and-tabs"),
    pytest.param("a b  c", id="spaces"),
    pytest.param(r"\1 \g<0> \\ \n", id="regex-backreferences"),
    pytest.param("%s %(x)s {0} {x.__class__}", id="format-strings"),
    pytest.param("#{session_name} C-c Enter", id="tmux-format"),
    pytest.param("", id="empty"),
    pytest.param("ünïcødé ✓ 🚀", id="unicode"),
]


class TestCheckTemplate:
    @pytest.mark.parametrize("name", sorted(COMMAND_PLACEHOLDERS))
    def test_command_placeholder_allowed(self, name: str) -> None:
        check_template("--x={" + name + "}", COMMAND_PLACEHOLDERS)

    @pytest.mark.parametrize("name", sorted(BRANCH_PLACEHOLDERS))
    def test_branch_placeholder_allowed(self, name: str) -> None:
        check_template("agent/{" + name + "}", BRANCH_PLACEHOLDERS)

    @pytest.mark.parametrize("template", [
        pytest.param("no placeholders", id="plain"),
        pytest.param("", id="empty"),
        pytest.param("{{literal}}", id="escaped-braces"),
        pytest.param("{{", id="escaped-open"),
        pytest.param("}}", id="escaped-close"),
        pytest.param("json={{\"id\": {task.id}}}", id="json-with-placeholder"),
        pytest.param("{task.id}{attempt}", id="adjacent"),
    ])
    def test_valid_template(self, template: str) -> None:
        check_template(template, COMMAND_PLACEHOLDERS)

    @pytest.mark.parametrize(("template", "allowed", "name"), [
        pytest.param("{task.nope}", COMMAND_PLACEHOLDERS, "task.nope", id="unknown"),
        pytest.param("{task.slug}", COMMAND_PLACEHOLDERS, "task.slug", id="slug-not-in-command"),
        pytest.param("b/{task.title}", BRANCH_PLACEHOLDERS, "task.title",
                     id="title-not-in-branch"),
        pytest.param("{task.id.__class__}", COMMAND_PLACEHOLDERS, "task.id.__class__",
                     id="attribute-access"),
        pytest.param("{Task.Id}", COMMAND_PLACEHOLDERS, "Task.Id", id="case-sensitive"),
    ])
    def test_unknown_placeholder_lists_known_ones(self, template: str,
                                                  allowed: frozenset[str], name: str) -> None:
        with pytest.raises(TemplateError) as info:
            check_template(template, allowed)
        known = ", ".join("{" + n + "}" for n in sorted(allowed))
        assert str(info.value) == (
            f"unknown placeholder {{{name}}} in {template!r}; known: {known}")

    @pytest.mark.parametrize(("template", "brace"), [
        pytest.param("{task.id", "{", id="unclosed"),
        pytest.param("task.id}", "}", id="unopened"),
        pytest.param("{ task.id }", "{", id="spaces-inside"),
        pytest.param("{0}", "{", id="positional-format"),
        pytest.param("{}", "{", id="empty-braces"),
        pytest.param("{task[0]}", "{", id="index-access"),
        pytest.param("{{{task.id", "{", id="odd-brace-run"),
    ])
    def test_unbalanced_brace(self, template: str, brace: str) -> None:
        with pytest.raises(TemplateError, match=re.escape(
                f"unbalanced {brace!r} in {template!r}; write {brace * 2} for a literal brace")):
            check_template(template, COMMAND_PLACEHOLDERS)


class TestRender:
    @pytest.mark.parametrize("name", sorted(VALUES))
    def test_each_placeholder(self, name: str) -> None:
        assert render("<{" + name + "}>", VALUES) == f"<{VALUES[name]}>"

    def test_several_placeholders_in_one_element(self) -> None:
        template = "--branch={task.branch}@{worktree}#{attempt}"
        assert render(template, VALUES) == (
            "--branch=reconciler/demo/42-fix-the-login-bug@/state/worktrees/42#1")

    @pytest.mark.parametrize(("template", "expected"), [
        pytest.param("{{", "{", id="open"),
        pytest.param("}}", "}", id="close"),
        pytest.param("{{task.id}}", "{task.id}", id="escaped-placeholder"),
        pytest.param("{{{task.id}}}", "{42}", id="escaped-around-placeholder"),
        pytest.param("{{\"id\": {task.id}}}", "{\"id\": 42}", id="json"),
    ])
    def test_doubled_braces_are_literal(self, template: str, expected: str) -> None:
        assert render(template, VALUES) == expected

    @pytest.mark.parametrize("value", TRICKY_VALUES)
    def test_value_inserted_verbatim_and_never_expanded(self, value: str) -> None:
        values = {**VALUES, "task.title": value}
        assert render("{task.title}", values) == value
        assert render("[{task.title}]-{task.id}", values) == f"[{value}]-42"

    def test_missing_value_is_an_error(self) -> None:
        with pytest.raises(TemplateError, match=re.escape("cannot fill '{task.id}'")):
            render("x-{task.id}", {"pool": "demo"})

    def test_unchecked_bad_brace_is_an_error(self) -> None:
        with pytest.raises(TemplateError):
            render("{0}", VALUES)


class TestRenderArgv:
    @pytest.mark.parametrize("value", TRICKY_VALUES)
    def test_one_element_per_template_element(self, value: str) -> None:
        argv = ["agent", "--title", "{task.title}", "--prompt={task.title}", "{{literal}}"]
        values = {**VALUES, "task.title": value}
        rendered = render_argv(argv, values)
        assert rendered == ["agent", "--title", value, f"--prompt={value}", "{literal}"]

    def test_empty_argv(self) -> None:
        assert render_argv([], VALUES) == []

    def test_template_is_not_mutated(self) -> None:
        argv = ("agent", "{task.id}")
        assert render_argv(argv, VALUES) == ["agent", "42"]
        assert argv == ("agent", "{task.id}")


class TestPrefill:
    """``prefill`` fills some placeholders (``{spec_dir}`` at load) and keeps the rest."""

    @pytest.mark.parametrize(("template", "expected"), [
        pytest.param("{spec_dir}/agent", "/a{b}c/agent", id="value-braces-doubled-later-literal"),
        pytest.param("{spec_dir}:{task.id}", "/a{b}c:42", id="other-placeholder-kept"),
        pytest.param("{{spec_dir}}", "{spec_dir}", id="escaped-stays-literal"),
        pytest.param("{{{spec_dir}}}", "{/a{b}c}", id="escaped-around"),
    ])
    def test_prefill_then_render(self, template: str, expected: str) -> None:
        filled = prefill(template, {"spec_dir": "/a{b}c"})
        check_template(filled, COMMAND_PLACEHOLDERS)
        assert render(filled, VALUES) == expected


class TestSlugify:
    @pytest.mark.parametrize(("title", "slug"), [
        pytest.param("Fix the login bug!", "fix-the-login-bug", id="plain"),
        pytest.param("  --force  ", "force", id="leading-dashes"),
        pytest.param("../../etc/passwd", "etc-passwd", id="path-traversal"),
        pytest.param("a..b@{c}~^:?*[\\d", "a-b-c-d", id="ref-special-characters"),
        pytest.param("refs/heads/main.lock", "refs-heads-main-lock", id="lock-suffix"),
        pytest.param("$(touch x); `id`", "touch-x-id", id="shell"),
        pytest.param("Café crème", "cafe-creme", id="non-ascii"),
        pytest.param("Ünïcödé", "unicode", id="transliterated"),  # issue 12
        pytest.param("Straße über Ærø", "strasse-uber-aero", id="spelled-out"),
        pytest.param("ﬁle ①", "file-1", id="compatibility-forms"),
        pytest.param("", "task", id="empty"),
        pytest.param("!!! ???", "task", id="nothing-usable"),
        pytest.param("日本語", "task", id="no-ascii-at-all"),
        pytest.param("x" * 100, "x" * 40, id="truncated"),
        pytest.param("a" * 39 + " tail", "a" * 39, id="no-trailing-dash-after-truncation"),
    ])
    def test_slug(self, title: str, slug: str) -> None:
        assert slugify(title) == slug

    def test_custom_limit(self) -> None:
        assert slugify("one two three", limit=7) == "one-two"

    @given(st.text(max_size=200))
    @settings(max_examples=200, deadline=None)
    def test_slug_is_always_branch_safe(self, title: str) -> None:
        slug = slugify(title)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slug)
        assert len(slug) <= 40


class TestBranchFor:
    def test_default_template(self) -> None:
        branch = branch_for("reconciler/{pool}/{task.id}-{task.slug}", pool="demo",
                            task_id=42, title="Fix the login bug!", attempt=1)
        assert branch == "reconciler/demo/42-fix-the-login-bug"

    def test_attempt_and_literal_braces(self) -> None:
        branch = branch_for("agent/{task.id}-a{attempt}-{{x}}", pool="demo", task_id=7,
                            title="t", attempt=3)
        assert branch == "agent/7-a3-{x}"

    @pytest.mark.parametrize("title", TRICKY_VALUES)
    def test_hostile_titles_give_valid_branches(self, title: str) -> None:
        branch = branch_for("reconciler/{pool}/{task.id}-{task.slug}", pool="demo",
                            task_id=1, title=title, attempt=1)
        assert branch == check_branch_name(branch)
        assert branch.startswith("reconciler/demo/1-")

    @pytest.mark.parametrize("template", [
        pytest.param("-{task.id}", id="leading-dash"),
        pytest.param("{task.slug}.lock", id="lock-suffix"),
        pytest.param("a..{task.id}", id="double-dot"),
        pytest.param("a/{task.id}/", id="trailing-slash"),
        pytest.param("a//{task.id}", id="double-slash"),
        pytest.param("a/.{task.id}", id="dot-component"),
        pytest.param("a@{{{task.id}", id="at-brace"),
    ])
    def test_template_producing_bad_ref_is_rejected(self, template: str) -> None:
        with pytest.raises(GitError, match="invalid branch name"):
            branch_for(template, pool="demo", task_id=1, title="x", attempt=1)

    @given(st.text(max_size=300), st.integers(min_value=1, max_value=10**9))
    @settings(max_examples=200, deadline=None)
    def test_any_title_gives_a_valid_branch(self, title: str, task_id: int) -> None:
        branch = branch_for("reconciler/{pool}/{task.id}-{task.slug}", pool="demo",
                            task_id=task_id, title=title, attempt=1)
        assert check_branch_name(branch) == branch
