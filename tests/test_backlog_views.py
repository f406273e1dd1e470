"""Readable at the scale of a real backlog (issue 8 item 5): slugs cut at a word
boundary, commits per task branch in ``task list``, ``prune --empty-branches``,
``events`` filters, and task titles in ``status``."""

from __future__ import annotations

import pytest

from reconciler.naming import slugify


class TestSlugWordBoundary:
    @pytest.mark.parametrize(("title", "limit", "slug"), [
        pytest.param("Refactor the authentication middleware for sessions", 40,
                     "refactor-the-authentication-middleware", id="cut-before-a-word"),
        pytest.param("one two three", 9, "one-two", id="never-mid-word"),
        pytest.param("one two three", 7, "one-two", id="boundary-right-at-limit"),
        pytest.param("x" * 100, 40, "x" * 40, id="single-overlong-word-still-cut"),
        pytest.param("ab " + "y" * 60, 40, "ab", id="short-word-then-long-word"),
        pytest.param("Fix the login bug!", 40, "fix-the-login-bug", id="short-title-unchanged"),
    ])
    def test_cut(self, title: str, limit: int, slug: str) -> None:
        assert slugify(title, limit) == slug

    def test_never_longer_than_limit(self) -> None:
        for n in range(1, 60):
            title = " ".join(["word"] * 20)
            assert len(slugify(title, n)) <= n
