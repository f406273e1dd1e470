"""Tests for loading and validating ``workers.yaml`` (reconciler.spec, reconciler.yamlsafe).

Every invalid spec must raise ``SpecError`` whose first problem names the file,
the line and column, the JSON path (where one applies) and what is wrong; the
CLI must turn it into ``error: `` lines and exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reconciler.demo import DEMO_SPEC
from reconciler.errors import SpecError
from reconciler.spec import PoolSpec, load_spec, spec_from_document
from reconciler.templates import render_argv
from reconciler.yamlsafe import MAX_ALIASES, MAX_BYTES, Position, YamlLoadError, load_yaml
from tests.helpers import (
    EXAMPLE_SPECS,
    FAKE_AGENT,
    dedent,
    error_lines,
    example_for,
    reconcile,
)

# Line numbers below refer to this text; cases either replace part of it or append
# lines to the ``spec`` mapping (appended lines start at line 10).
BASE = dedent("""
    apiVersion: reconciler/v1
    kind: WorkerPool
    metadata:
      name: t
    spec:
      replicas: 2
      repo: repo
      worker:
        command: [agent, "{task.prompt_file}"]
    """)

# file:line:col: json.path: what
LOCATED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<path>\S+): (?P<what>.+)$")


def write(directory: Path, text: str | bytes, name: str = "workers.yaml") -> Path:
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def spec_error(path: Path) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    error = info.value
    assert error.problems, "a SpecError always carries at least one problem"
    for problem in error.problems:
        assert "\n" not in problem, f"problem is not one line: {problem!r}"
    assert error.one_line().startswith(error.problems[0])
    assert "\n" not in error.one_line()
    return error


def load_text(directory: Path, text: str, name: str = "workers.yaml") -> PoolSpec:
    return load_spec(write(directory, text, name))


def billion_laughs() -> str:
    """The classic alias bomb: nine levels of nine aliases each (~10^9 strings)."""
    lines = ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        refs = ", ".join([f"*lol{level - 1}"] * 9)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    return "\n".join(lines) + "\n"


def doubling_bomb(levels: int = 30) -> str:
    """Few aliases (under the alias cap) that still expand to 2**levels values."""
    lines = ["a0: &a0 [x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- valid specs


class TestValidSpecs:
    @pytest.mark.parametrize("path", [
        pytest.param(DEMO_SPEC, id="demo_pool/workers.yaml"),
        *[pytest.param(p, id=f"examples/{p.name}") for p in EXAMPLE_SPECS],
    ])
    def test_shipped_spec_loads(self, path: Path, tmp_path: Path) -> None:
        if path in EXAMPLE_SPECS:  # an example loads once its repo placeholder is set
            path = example_for(path, tmp_path, tmp_path / "repo")
        spec = load_spec(path)
        assert spec.name
        assert spec.worker.command
        assert spec.repo.is_absolute()
        assert spec.source_path == path.resolve()
        assert len(spec.source_sha256) == 64

    def test_demo_spec_values(self) -> None:
        spec = load_spec(DEMO_SPEC)
        assert spec.name == "demo"
        assert spec.replicas == 4
        assert spec.runtime == "tmux"
        assert spec.tmux_socket == "reconciler-demo"
        assert spec.base_ref == "main"
        # the packaged spec is a symlink to specs/workers.yaml in a clone (a file in a
        # wheel): paths in it are relative to the file it resolves to
        home = DEMO_SPEC.resolve().parent
        assert spec.repo == (home.parent / "demo-repo").resolve()
        agent = spec.worker.command[0]
        # the agent next to the spec, both shipped in the package: the demo runs from anywhere
        assert agent == str(home / "fake-agent")
        assert Path(agent).resolve() == FAKE_AGENT.resolve()
        assert spec.worker.command[1:] == ("--prompt-file", "{task.prompt_file}",
                                           "--title", "{task.title}")
        assert spec.worker.env == (("FAKE_AGENT_SECONDS", "2"),)
        assert spec.health.heartbeat_interval == 1.0
        assert spec.worktrees.branch == "agent/{task.id}-{task.slug}"

    def test_repo_and_worktrees_dir_may_start_with_a_tilde(self, tmp_path: Path) -> None:
        """As a shell reads it (the hint for an example's placeholder suggests it)."""
        spec = load_text(tmp_path, BASE.replace("repo: repo", "repo: ~/src/myproject")
                         + "  worktrees:\n    dir: ~/worktrees\n")
        assert spec.repo == Path.home() / "src" / "myproject"
        assert spec.worktrees.dir == Path.home() / "worktrees"
        relative = load_text(tmp_path, BASE.replace("repo: repo", "repo: ./~x"))
        assert relative.repo == tmp_path.resolve() / "~x"  # only a leading ~ is home
        nobody = load_text(tmp_path, BASE.replace("repo: repo", "repo: ~no-such-user-x/app"))
        assert nobody.repo == tmp_path.resolve() / "~no-such-user-x" / "app"  # as written

    def test_normalised_document_round_trips(self, tmp_path: Path) -> None:
        spec = load_text(tmp_path, BASE)
        again = spec_from_document(json.loads(spec.document_json))
        assert again.document_hash == spec.document_hash
        assert again.template_hash() == spec.template_hash()
        assert again.worker == spec.worker
        assert again.health == spec.health

    @pytest.mark.parametrize("replicas", [
        pytest.param(0, id="zero"),
        pytest.param(256, id="max-256"),
    ])
    def test_replica_bounds_are_inclusive(self, tmp_path: Path, replicas: int) -> None:
        spec = load_text(tmp_path, BASE.replace("replicas: 2", f"replicas: {replicas}"))
        assert spec.replicas == replicas


class TestDefaults:
    def test_every_default_is_filled(self, tmp_path: Path) -> None:
        spec = load_text(tmp_path, BASE)
        assert spec.base_ref == "HEAD"
        assert spec.runtime == "tmux"
        assert spec.tmux_socket == "reconciler"
        assert spec.worker.env == ()
        assert spec.worker.stop_grace == 30.0
        assert spec.worktrees.dir is None
        assert spec.worktrees.branch == "reconciler/{pool}/{task.id}-{task.slug}"
        assert spec.worktrees.cleanup == "always"
        assert spec.worktrees.setup == ()
        assert (spec.tasks.timeout, spec.tasks.max_attempts, spec.tasks.retry_backoff) == (
            3600.0, 3, 10.0)
        assert spec.health.heartbeat_interval == 5.0
        assert spec.health.unresponsive_after == 15.0
        assert spec.health.dead_after == 30.0
        assert spec.health.slow_after == 900.0
        assert spec.health.stall_after == 600.0
        assert spec.restart.max_restarts == 5
        assert spec.restart.window == 600.0
        assert spec.restart.backoff == 1.0
        assert spec.restart.reset_after == 300.0
        assert spec.hooks.on_success == () and spec.hooks.on_failure == ()

    def test_defaults_are_recorded_in_the_document(self, tmp_path: Path) -> None:
        document = load_text(tmp_path, BASE).document["spec"]
        assert document["health"]["heartbeatInterval"] == "5s"
        assert document["restartPolicy"]["maxRestarts"] == 5
        assert document["worktrees"]["cleanup"] == "always"
        assert document["tmux"] == {"socket": "reconciler"}

    def test_partial_section_keeps_its_other_defaults(self, tmp_path: Path) -> None:
        spec = load_text(tmp_path, BASE + "  health:\n    heartbeatInterval: 2s\n"
                         "  restartPolicy:\n    window: 1h\n")
        assert spec.health.heartbeat_interval == 2.0
        assert spec.health.unresponsive_after == 15.0
        assert spec.restart.window == 3600.0
        assert spec.restart.max_restarts == 5


class TestPaths:
    def test_relative_repo_resolves_against_the_spec_file(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        spec_dir = tmp_path / "config" / "pools"
        spec_dir.mkdir(parents=True)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        write(spec_dir, BASE.replace("repo: repo", "repo: ../../code/repo"))
        monkeypatch.chdir(elsewhere)
        spec = load_spec(Path("..") / "config" / "pools" / "workers.yaml")
        assert spec.repo == (tmp_path / "code" / "repo").resolve()
        assert spec.document["spec"]["repo"] == str((tmp_path / "code" / "repo").resolve())

    def test_absolute_repo_is_kept(self, tmp_path: Path) -> None:
        target = tmp_path / "abs" / "repo"
        spec = load_text(tmp_path, BASE.replace("repo: repo", f"repo: {target}"))
        assert spec.repo == target.resolve()

    def test_relative_worktree_dir_resolves_against_the_spec_file(self, tmp_path: Path) -> None:
        spec = load_text(tmp_path, BASE + "  worktrees:\n    dir: trees\n")
        assert spec.worktrees.dir == (tmp_path / "trees").resolve()

    def test_spec_dir_placeholder_becomes_the_file_directory(self, tmp_path: Path) -> None:
        spec = load_text(tmp_path, dedent("""
            apiVersion: reconciler/v1
            kind: WorkerPool
            metadata: {name: t}
            spec:
              replicas: 1
              repo: repo
              worker:
                command: ["{spec_dir}/bin/agent", "--config={spec_dir}/agent.toml",
                          "{task.id}", "{{spec_dir}}"]
              worktrees:
                setup: [[cp, "{spec_dir}/.env", .env]]
              hooks:
                onSuccess: [["{spec_dir}/notify", "{task.id}"]]
            """))
        here = str(tmp_path.resolve())
        assert spec.worker.command[:3] == (f"{here}/bin/agent", f"--config={here}/agent.toml",
                                           "{task.id}")
        assert spec.worktrees.setup == (("cp", f"{here}/.env", ".env"),)
        assert spec.hooks.on_success == ((f"{here}/notify", "{task.id}"),)
        rendered = render_argv(spec.worker.command, {"task.id": "7"})
        assert rendered == [f"{here}/bin/agent", f"--config={here}/agent.toml", "7",
                            "{spec_dir}"]

    def test_spec_dir_with_braces_stays_literal(self, tmp_path: Path) -> None:
        odd = tmp_path / "we{task.id}rd}{"
        odd.mkdir()
        spec = load_text(odd, BASE.replace('"{task.prompt_file}"', '"{spec_dir}/agent"'))
        rendered = render_argv(spec.worker.command, {"task.id": "7"})
        assert rendered == ["agent", f"{odd.resolve()}/agent"]


class TestDurations:
    @pytest.mark.parametrize(("text", "seconds"), [
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("30s", 30.0, id="seconds"),
        pytest.param("15m", 900.0, id="minutes"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param("1h30m", 5400.0, id="hours-and-minutes"),
        pytest.param("1m500ms", 60.5, id="minutes-and-milliseconds"),
    ])
    def test_duration_parses(self, tmp_path: Path, text: str, seconds: float) -> None:
        spec = load_text(tmp_path, BASE + f"  tasks:\n    timeout: {text}\n")
        assert spec.tasks.timeout == pytest.approx(seconds)
        assert spec.document["spec"]["tasks"]["timeout"] == text


# --------------------------------------------------------------------------- invalid specs


class TestLocatedProblems:
    """Each problem is ``file:line:col: json.path: what`` with the exact place."""

    @pytest.mark.parametrize(("text", "line", "col", "path", "what"), [
        pytest.param(BASE.replace("replicas: 2", 'replicas: "three"'), 6, 13, "spec.replicas",
                     'expected a whole number from 0 to 256, got a string "three"',
                     id="wrong-type"),
        pytest.param(BASE.replace("replicas: 2", "replica: 2"), 6, 3, "spec.replica",
                     "unknown key `replica` (did you mean `replicas`?)", id="unknown-key"),
        pytest.param(BASE.replace("    command:", "    comand:"), 9, 5, "spec.worker.comand",
                     "unknown key `comand` (did you mean `command`?)", id="unknown-nested-key"),
        pytest.param(BASE.replace("kind: WorkerPool", "kind: WorkerPool\nzzz: 1"), 3, 1, "zzz",
                     "unknown key `zzz` (known keys: apiVersion, kind, metadata, spec)",
                     id="unknown-key-lists-known-keys"),
        pytest.param(BASE + "  health:\n    deadAfter: 5 minutes\n", 11, 16,
                     "spec.health.deadAfter",
                     'expected a duration like 500ms, 30s, 15m or 1h, got a string "5 minutes"',
                     id="bad-duration"),
        pytest.param(BASE.replace("replicas: 2", "replicas: -1"), 6, 13, "spec.replicas",
                     "expected a whole number from 0 to 256, got an integer -1",
                     id="negative-replicas"),
        pytest.param(BASE.replace("replicas: 2", "replicas: 257"), 6, 13, "spec.replicas",
                     "expected a whole number from 0 to 256, got an integer 257",
                     id="replicas-257"),
        pytest.param(BASE.split("  worker:")[0], 6, 3, "spec",
                     "missing required key: 'worker'", id="missing-worker"),
        pytest.param(BASE.replace("reconciler/v1", "reconciler/v2"), 1, 13, "apiVersion",
                     'expected the string reconciler/v1, got a string "reconciler/v2"',
                     id="wrong-api-version"),
        pytest.param(BASE.replace("repo: repo", "repo: /path/to/your/repo/"), 7, 9,
                     "spec.repo", "/path/to/your/repo is the example's placeholder (copy this "
                     "file into your repository and set `repo: .`, or set repo to your "
                     "repository's path: absolute, ~/..., or relative to this file)",
                     id="example-repo-placeholder"),
        pytest.param(BASE + "  runtime: docker\n", 10, 12, "spec.runtime",
                     'expected one of tmux, process, pueue, got a string "docker"',
                     id="bad-runtime"),
        pytest.param(BASE + "  worktrees:\n    cleanup: sometimes\n", 11, 14,
                     "spec.worktrees.cleanup",
                     'expected one of always, onSuccess, never, got a string "sometimes"',
                     id="bad-cleanup"),
        pytest.param(BASE.replace("name: t", "name: Bad_Name"), 4, 9, "metadata.name",
                     "expected a name of 1-40 lowercase letters", id="bad-pool-name"),
        pytest.param(BASE.replace('[agent, "{task.prompt_file}"]', "[]"), 9, 14,
                     "spec.worker.command",
                     'expected an argv list of strings, e.g. ["make", "test"], got an empty list',

                     id="empty-command"),
        pytest.param(BASE.replace('[agent, "{task.prompt_file}"]', "agent --go"), 9, 14,
                     "spec.worker.command",
                     'expected an argv list of strings, e.g. ["make", "test"], '
                     'got a string "agent --go"', id="command-as-shell-string"),
        pytest.param(BASE.replace('"{task.prompt_file}"', "3"), 9, 22, "spec.worker.command[1]",
                     "expected a string, got an integer 3", id="command-element-not-string"),
        pytest.param(BASE + "    env:\n      1BAD: x\n", 11, 7, "spec.worker.env",
                     '"1BAD" is not a valid environment variable name', id="env-name-digit"),
        pytest.param(BASE + "    env:\n      OK: x\n      MY-VAR: y\n", 12, 7, "spec.worker.env",
                     '"MY-VAR" is not a valid environment variable name', id="env-name-dash"),
        pytest.param(BASE + "    env:\n      PORT: 8080\n", 11, 13, "spec.worker.env.PORT",
                     "expected a string (quote the value), got an integer",
                     id="env-value-not-string"),
        pytest.param(BASE.replace("{task.prompt_file}", "{task.nope}"), 9, 22,
                     "spec.worker.command[1]", "unknown placeholder {task.nope} in '{task.nope}'"
                     "; known: {attempt}, {pool}, {spec_dir}, {task.branch}, {task.id}, "
                     "{task.prompt}, {task.prompt_file}, {task.title}, {worktree}",
                     id="unknown-placeholder"),
        pytest.param(BASE.replace("{task.prompt_file}", "--id={task.id"), 9, 22,
                     "spec.worker.command[1]",
                     "unbalanced '{' in '--id={task.id'; write {{ for a literal brace",
                     id="unbalanced-open-brace"),
        pytest.param(BASE.replace("{task.prompt_file}", "a}b"), 9, 22, "spec.worker.command[1]",
                     "unbalanced '}' in 'a}b'; write }} for a literal brace",
                     id="unbalanced-close-brace"),
        pytest.param(BASE + "  hooks:\n    onFailure: [[notify, \"{oops}\"]]\n", 11, 26,
                     "spec.hooks.onFailure[0][1]", "unknown placeholder {oops}",
                     id="unknown-placeholder-in-hook"),
        pytest.param(BASE + "  worktrees:\n    branch: \"x/{task.title}\"\n", 11, 13,
                     "spec.worktrees.branch", "unknown placeholder {task.title} in "
                     "'x/{task.title}'; known: {attempt}, {pool}, {task.id}, {task.slug}",
                     id="branch-placeholder-not-allowed"),
        pytest.param(BASE + "  health:\n    heartbeatInterval: 20s\n    unresponsiveAfter: 20s\n",
                     12, 24, "spec.health.unresponsiveAfter",
                     "must be longer than health.heartbeatInterval (20s), got 20s",
                     id="heartbeat-not-below-unresponsive"),
        pytest.param(BASE + "  health:\n    heartbeatInterval: 30s\n", 11, 5,
                     "spec.health.unresponsiveAfter",
                     "must be longer than health.heartbeatInterval (30s), got 15s",
                     id="heartbeat-above-default-unresponsive"),
        pytest.param(BASE + "  health:\n    unresponsiveAfter: 1m\n    deadAfter: 30s\n",
                     12, 16, "spec.health.deadAfter",
                     "must be longer than health.unresponsiveAfter (1m), got 30s",
                     id="dead-not-above-unresponsive"),
        pytest.param(BASE + "  sync:\n    ref: main\n", 11, 10, "spec.sync.ref",
                     'expected REMOTE/BRANCH, e.g. origin/main, got a string "main"',
                     id="sync-ref-without-remote"),
        pytest.param(BASE + "  sync:\n    ref: origin/a..b\n", 11, 10, "spec.sync.ref",
                     "sync ref 'origin/a..b': invalid branch name 'a..b'",
                     id="sync-ref-bad-branch"),
        pytest.param(BASE + "  sync:\n    path: ../workers.yaml\n", 11, 11, "spec.sync.path",
                     "sync path '../workers.yaml' is not a plain path inside the repository",
                     id="sync-path-leaves-the-repository"),
        pytest.param(BASE + "  sync:\n    interval: 0s\n", 11, 15, "spec.sync.interval",
                     "must be longer than 0, got 0s", id="sync-interval-zero"),
        pytest.param(BASE + "  sync:\n    every: 1m\n", 11, 5, "spec.sync.every",
                     "unknown key `every` (known keys: interval, path, ref)",
                     id="sync-unknown-key"),
    ])
    def test_problem_is_located(self, tmp_path: Path, text: str, line: int, col: int,
                                path: str, what: str) -> None:
        file = write(tmp_path, text)
        error = spec_error(file)
        first = error.problems[0]
        match = LOCATED.match(first)
        assert match, f"not file:line:col: path: what -> {first!r}"
        assert match["file"] == str(file)
        assert (int(match["line"]), int(match["col"]), match["path"]) == (line, col, path), first
        assert what in match["what"], first


class TestUnsafeOrMalformedInput:
    """Problems of the file itself: one line each, with the place where one applies."""

    @pytest.mark.parametrize(("text", "line", "col", "what"), [
        pytest.param(BASE.replace("replicas: 2", "replicas: [2"), 7, 7,
                     "malformed YAML: expected ',' or ']', but got ':' "
                     "(while parsing a flow sequence at line 6, column 13)",
                     id="unclosed-bracket"),
        pytest.param(BASE.replace('"{task.prompt_file}"]', '"{task.prompt_file}"'), 10, 1,
                     "malformed YAML: expected ',' or ']', but got '<stream end>' "
                     "(while parsing a flow sequence at line 9, column 14)",
                     id="unclosed-bracket-at-end"),
        pytest.param(BASE + '  baseRef: "main\n', 11, 1,
                     "malformed YAML: found unexpected end of stream "
                     "(while scanning a quoted scalar at line 10, column 12)",
                     id="unclosed-quote"),
        pytest.param(BASE.replace("  repo: repo", " repo: repo"), 7, 2,
                     "malformed YAML:", id="bad-indentation"),
        pytest.param(BASE + "  x: !!python/object/apply:os.system [echo pwned]\n", 10, 6,
                     "YAML tag !!python/object/apply:os.system is not allowed; "
                     "only plain YAML data is accepted", id="python-apply-tag"),
        pytest.param(BASE.replace("name: t", "name: !!python/name:os.system ''"), 4, 9,
                     "YAML tag !!python/name:os.system is not allowed", id="python-name-tag"),
        pytest.param(BASE.replace("name: t", "name: t\x00"), 4, 10,
                     "unacceptable character #x0000 in YAML", id="nul-byte"),
        pytest.param(billion_laughs(), 9, 21,
                     f"more than {MAX_ALIASES} YAML aliases (possible alias bomb)",
                     id="billion-laughs"),
        pytest.param(doubling_bomb(), 1, 1, "aliases expand the document by more than",
                     id="few-aliases-huge-expansion"),
        pytest.param("- apiVersion: reconciler/v1\n- kind: WorkerPool\n", 1, 1,
                     "expected a mapping, got a list", id="top-level-list"),
        pytest.param("just a string\n", 1, 1, 'expected a mapping, got a string "just a string"',
                     id="top-level-scalar"),
    ])
    def test_rejected_with_position(self, tmp_path: Path, text: str, line: int, col: int,
                                    what: str) -> None:
        file = write(tmp_path, text)
        error = spec_error(file)
        assert error.problems[0].startswith(f"{file}:{line}:{col}: {what}"), error.problems[0]
        assert "Traceback" not in error.one_line()

    def test_empty_file(self, tmp_path: Path) -> None:
        file = write(tmp_path, "")
        error = spec_error(file)
        assert error.problems == (f"{file}: the file is empty (write a WorkerPool spec: "
                                  "apiVersion, kind, metadata and spec)",)

    def test_comments_only_file_is_empty(self, tmp_path: Path) -> None:
        file = write(tmp_path, "# nothing here\n\n")
        assert spec_error(file).problems[0].startswith(f"{file}: the file is empty")

    def test_oversized_file(self, tmp_path: Path) -> None:
        file = write(tmp_path, BASE + "#" + "x" * MAX_BYTES + "\n")
        error = spec_error(file)
        assert error.problems == (f"{file}: file is larger than the {MAX_BYTES} byte limit",)

    def test_non_utf8_bytes(self, tmp_path: Path) -> None:
        file = write(tmp_path, BASE.encode().replace(b"name: t", b"name: t\xe9\xff"))
        error = spec_error(file)
        offset = BASE.encode().index(b"name: t") + len(b"name: t")
        assert error.problems == (
            f"{file}:4:10: not UTF-8 text (byte {offset}; save the file as UTF-8)",)

    def test_file_not_found(self, tmp_path: Path) -> None:
        file = tmp_path / "missing.yaml"
        error = spec_error(file)
        assert error.problems == (f"{file}: no such file",)
        assert error.one_line() == f"{file}: no such file (pass the pool spec with -f)"

    def test_directory_instead_of_file(self, tmp_path: Path) -> None:
        error = spec_error(tmp_path)
        assert error.problems[0].startswith(f"{tmp_path}: not a regular file")


class TestLoadYamlBytes:
    """``load_yaml`` also takes raw bytes (task files): bad bytes are located, not raised raw."""

    @pytest.mark.parametrize(("raw", "position", "what"), [
        pytest.param(b"x: 1\na: \xc3\xa9\xff\n", Position(2, 5), "not utf-8 text (byte 10)",
                     id="invalid-utf8-after-multibyte"),
        pytest.param("x: é\na: ü\x07\n".encode(), Position(2, 5),
                     "unacceptable character #x0007 in YAML", id="control-after-multibyte"),
    ])
    def test_bad_bytes_are_located(self, raw: bytes, position: Position, what: str) -> None:
        with pytest.raises(YamlLoadError) as info:
            load_yaml(raw)
        assert info.value.position == position
        assert info.value.message.startswith(what)
        assert "\n" not in info.value.message

    def test_positions_are_recorded_for_bytes(self) -> None:
        loaded = load_yaml("a: é\nb: [1, 2]\n".encode())
        assert loaded.data == {"a": "é", "b": [1, 2]}
        assert loaded.position_of(("b", 1)) == Position(2, 8)
        assert loaded.position_of(("b",), key=True) == Position(2, 1)


class TestManyProblems:
    def test_all_problems_reported_unknown_keys_first_then_by_position(
            self, tmp_path: Path) -> None:
        text = dedent("""
            apiVersion: reconciler/v1
            kind: Deployment
            metadata:
              name: t
            spec:
              runtime: docker
              replica: 2
              repo: repo
              worker:
                command: [agent]
                stopGrace: soon
            """)
        file = write(tmp_path, text)
        error = spec_error(file)
        where = [LOCATED.match(p) for p in error.problems]
        assert all(where), error.problems
        places = [(int(m["line"]), int(m["col"]), m["path"]) for m in where if m]
        assert places == [
            (7, 3, "spec.replica"),   # the typo first: it also explains the missing key
            (2, 7, "kind"),
            (6, 3, "spec"),           # missing replicas: reported at the spec mapping
            (6, 12, "spec.runtime"),
            (11, 16, "spec.worker.stopGrace"),
        ]
        assert str(error).startswith(error.problems[0])
        assert str(error).endswith("(and 4 more problem(s))")

    @pytest.mark.parametrize(("typo", "key"), [pytest.param("  worker:", "worker", id="worker"),
                                               pytest.param("spec:", "spec", id="spec"),
                                               pytest.param("metadata:", "metadata",
                                                            id="metadata")])
    def test_a_misspelt_required_key_is_named_first(self, tmp_path: Path, typo: str,
                                                    key: str) -> None:
        """The first line (the one diff and apply print) says "did you mean", not just
        that the key it replaces is missing."""
        wrong = typo.replace(key, key[:-1] + "z")
        error = spec_error(write(tmp_path, BASE.replace(typo, wrong, 1)))
        assert f"(did you mean `{key}`?)" in error.problems[0], error.problems

    def test_semantic_problems_all_reported(self, tmp_path: Path) -> None:
        text = (BASE.replace('[agent, "{task.prompt_file}"]', '["{a}", "{b", "ok"]')
                + "  health:\n    heartbeatInterval: 1m\n")
        error = spec_error(write(tmp_path, text))
        paths = [m["path"] for m in map(LOCATED.match, error.problems) if m]
        assert paths == ["spec.worker.command[0]", "spec.worker.command[1]",
                         "spec.health.unresponsiveAfter"]


# --------------------------------------------------------------------------- CLI


def bad_spec(directory: Path) -> Path:
    return write(directory, BASE.replace("replicas: 2", 'replicas: "three"')
                 .replace("    command:", "    comand:"), name="bad.yaml")


class TestCli:
    def test_validate_bad_file_prints_every_problem(self, host: Path) -> None:
        file = bad_spec(host)
        lines = error_lines(reconcile("validate", "-f", str(file)))
        expected = spec_error(file).problems
        assert lines == [f"error: {p}" for p in expected]
        assert lines[0].startswith(f"error: {file}:9:5: spec.worker.comand: unknown key ")
        assert any("did you mean `command`?" in line for line in lines)

    def test_validate_json(self, host: Path) -> None:
        file = bad_spec(host)
        proc = reconcile("validate", "-f", str(file), "-o", "json")
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        document = json.loads(proc.stdout)
        assert document["valid"] is False
        assert document["problems"] == list(spec_error(file).problems)

    def test_validate_valid_file(self, host: Path) -> None:
        file = write(host, BASE)
        proc = reconcile("validate", "-f", str(file))
        assert proc.returncode == 0, proc.stderr
        assert "valid" in proc.stdout
        assert proc.stderr == ""
        proc = reconcile("validate", "-f", str(file), "-o", "json")
        assert proc.returncode == 0, proc.stderr
        document = json.loads(proc.stdout)
        assert document["valid"] is True
        assert document["pool"] == "t"

    @pytest.mark.parametrize("content", [
        pytest.param(None, id="not-found"),
        pytest.param("", id="empty"),
        pytest.param(BASE.replace("name: t", "name: t\x07"), id="control-character"),
        pytest.param(billion_laughs(), id="alias-bomb"),
        pytest.param(BASE + "  x: !!python/object/apply:os.system [id]\n", id="python-tag"),
        pytest.param(b"\xff\xfe\x00", id="not-utf8"),
    ])
    def test_validate_unreadable_file(self, host: Path, content: str | bytes | None) -> None:
        file = host / "bad.yaml"
        if content is not None:
            write(host, content, name="bad.yaml")
        (line,) = error_lines(reconcile("validate", "-f", str(file)), count=1)
        assert line.startswith(f"error: {file}")

    @pytest.mark.parametrize("command", [
        pytest.param(["diff"], id="diff"),
        pytest.param(["diff", "-o", "json"], id="diff-json"),
        pytest.param(["apply"], id="apply"),
    ])
    def test_pool_commands_reject_bad_spec_in_one_line(self, host: Path,
                                                       command: list[str]) -> None:
        file = bad_spec(host)
        (line,) = error_lines(reconcile(*command, "-f", str(file)), count=1)
        assert line.startswith(f"error: {file}:9:5: spec.worker.comand: unknown key ")
        assert "(and 2 more problem(s))" in line

    @pytest.mark.parametrize("argv", [
        pytest.param(["apply"], id="apply-without-file"),
        pytest.param(["validate"], id="validate-without-file"),
        pytest.param(["validate", "-f", "x.yaml", "-o", "yaml"], id="bad-output-choice"),
        pytest.param(["frobnicate"], id="unknown-command"),
    ])
    def test_usage_error_is_one_line(self, host: Path, argv: list[str]) -> None:
        (line,) = error_lines(reconcile(*argv), count=1)
        assert "--help" in line


class TestWhatTheSchemaCannotSay:
    """Specs that parse and match the schema's shapes but could never run."""

    @pytest.mark.parametrize(("edit", "expected"), [
        pytest.param(("replicas: 2", "replicas: 2.0"),
                     ":6:13: spec.replicas: expected a whole number from 0 to 256, "
                     "got a number 2.0",
                     id="float-replicas"),
        pytest.param(("replicas: 2", "replicas: 2\n  repo: other"),
                     ":8:3: duplicate key `repo`", id="duplicate-key"),
        pytest.param(("replicas: 2", "replicas: 2\n  health: {heartbeatInterval: 0s}"),
                     ":7:31: spec.health.heartbeatInterval: must be longer than 0, got 0s",
                     id="zero-heartbeat"),
        pytest.param(("replicas: 2", "replicas: 2\n  tasks: {timeout: 0ms}"),
                     ":7:20: spec.tasks.timeout: must be longer than 0, got 0ms",
                     id="zero-timeout"),
        pytest.param(("replicas: 2", 'replicas: 2\n  worktrees: {branch: "x..y/{task.id}"}'),
                     ":7:23: spec.worktrees.branch: gives branch name 'x..y/1': it contains "
                     "'..', '@{' or '//' for a sample task", id="branch-template-never-valid"),
    ])
    def test_problem_is_located(self, tmp_path: Path, edit: tuple[str, str],
                                expected: str) -> None:
        file = write(tmp_path, BASE.replace(*edit))
        assert spec_error(file).problems[0] == f"{file}{expected}"

    def test_dates_are_plain_text(self, tmp_path: Path) -> None:
        text = BASE.replace("name: t", "name: t\n  description: 2024-01-01")
        spec = load_text(tmp_path, text)
        assert spec.document["metadata"]["description"] == "2024-01-01"

    def test_a_device_is_not_read(self, tmp_path: Path) -> None:
        problem = spec_error(Path("/dev/zero")).problems[0]
        assert problem.startswith("/dev/zero: not a regular file")


@pytest.mark.parametrize(("value", "shown"), [(".nan", "NaN"), (".inf", "Infinity"),
                                              ("-.inf", "-Infinity")])
def test_a_number_that_is_not_finite_is_refused(tmp_path: Path, value: str, shown: str) -> None:
    """YAML's ``.nan`` passes every minimum and maximum: it would never alert."""
    error = spec_error(write(tmp_path, BASE + f"  alerts: {{minFreeDiskPercent: {value}}}\n"))
    assert "spec.alerts.minFreeDiskPercent: expected a percentage from 0 to 100" in \
        error.one_line() and shown in error.one_line()


@pytest.mark.parametrize(("events", "expected"), [
    ("[worker.helth]", "'worker.helth' matches no alert (did you mean `worker.health`?)"),
    ("[task]", "'task' matches no alert (alerts are worker.health, attempt.failed"),
    ("[worker.started]", "'worker.started' matches no alert"),
])
def test_a_webhook_event_that_matches_no_alert_is_refused(tmp_path: Path, events: str,
                                                          expected: str) -> None:
    text = BASE + f"  alerts: {{webhooks: [{{url: 'http://127.0.0.1:9/h', events: {events}}}]}}\n"
    error = spec_error(write(tmp_path, text))
    assert ":10:" in error.one_line() and "spec.alerts.webhooks[0].events[0]: " in \
        error.one_line(), error.one_line()
    assert expected in error.one_line(), error.one_line()


@pytest.mark.parametrize("events", ["[worker.health]", "[attempt]", "[worker, pool]",
                                    "[controller.down, disk]", "[]"])
def test_a_webhook_event_that_names_alerts_is_accepted(tmp_path: Path, events: str) -> None:
    text = BASE + f"  alerts: {{webhooks: [{{url: 'http://127.0.0.1:9/h', events: {events}}}]}}\n"
    load_spec(write(tmp_path, text))
