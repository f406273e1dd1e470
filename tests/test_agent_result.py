"""What an agent reports of its run (``worker.result``), from its output's last JSON object.

The Claude Code preset is read from outputs shaped as ``claude -p --output-format
json`` prints them (``tests/fixtures/claude-code``): success, ``is_error``, a report
without a cost, and output that holds no report at all.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler import pending
from reconciler.agentresult import PRESETS, field_paths, last_json_object, read_report
from reconciler.attempt import judge_report
from reconciler.model import AgentReport, RetryPolicy
from reconciler.store.sqlite import Store
from reconciler.taskrun import RunResult
from tests.e2e import add_task, apply, events, show_task, status, wait_tasks
from tests.helpers import reconcile, wait_for, write_spec

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"
CLAUDE = field_paths("claude-code", {})


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_a_claude_code_success_gives_its_cost_tokens_turns_and_session() -> None:
    assert read_report(fixture("success.txt"), CLAUDE) == AgentReport(
        is_error=False, cost_usd=0.0734, input_tokens=9 + 6120 + 41873, output_tokens=1230,
        turns=4, session_id="5f0c2a8e-2c4b-4d21-9a3e-0b7c1d9e6f42", message=None)


def test_a_claude_code_error_is_an_error_with_its_subtype_after_stderr_lines() -> None:
    report = read_report(fixture("error-max-turns.txt"), CLAUDE)
    assert report is not None and report.is_error
    assert report.message == "error_max_turns" and report.cost_usd == 1.2841
    assert report.turns == 31


def test_a_report_without_a_cost_records_none_and_the_rest() -> None:
    report = read_report(fixture("no-cost.txt"), CLAUDE)
    assert report == AgentReport(False, None, 5, 80, 2,
                                 "0e9d8c7b-6a5f-4e3d-2c1b-0a9f8e7d6c5b", None)


def test_output_without_a_report_gives_none() -> None:
    assert read_report(fixture("not-json.txt"), CLAUDE) is None
    assert read_report("", CLAUDE) is None
    # a report followed by more output is not the last word
    assert read_report(fixture("success.txt") + "and then it printed this\n", CLAUDE) is None


@pytest.mark.parametrize("output", [
    '{"cost": 1}\n{"cost": 2}\n',  # the last one counts
    'progress\n{\n  "cost": 2,\n  "nested": {"a": [1, 2]}\n}\n\n',  # pretty-printed
])
def test_the_last_object_counts_on_one_line_or_spread_over_several(output: str) -> None:
    found = last_json_object(output)
    assert found is not None and found["cost"] == 2


@pytest.mark.parametrize("output", ['[1, 2]\n', '{"a": 1\n', '"text"\n', '{"a": 1} x\n',
                                    '{"a": 1}}\n', "{\n\x00}\n", "}\n"])
def test_what_is_not_a_closing_object_is_no_report(output: str) -> None:
    assert last_json_object(output) is None


def test_figures_of_the_wrong_kind_are_none_never_a_guess() -> None:
    paths = field_paths(None, {"isError": ["failed"], "costUsd": ["cost"],
                               "inputTokens": ["a", "b"], "outputTokens": ["out"],
                               "turns": ["turns"], "sessionId": ["id"]})
    report = read_report(json.dumps({"failed": "yes", "cost": True, "a": -3, "b": 2.5,
                                     "out": "12", "turns": 3.0, "id": 7}) + "\n", paths)
    assert report == AgentReport(False, None, None, None, 3, None, None)


def test_fields_override_the_preset_one_by_one() -> None:
    paths = field_paths("claude-code", {"costUsd": ["billing.usd"]})
    assert paths["costUsd"] == ("billing.usd",)
    assert paths["turns"] == PRESETS["claude-code"]["turns"]


@pytest.mark.parametrize(("status", "report", "max_cost", "expected"), [
    ("succeeded", AgentReport(is_error=True, message="error_max_turns"), None,
     ("failed", "the agent reported an error: error_max_turns")),
    ("succeeded", AgentReport(cost_usd=3.1), 2.5,
     ("failed", "cost $3.10 is over tasks.maxCostUsd $2.50")),
    ("succeeded", AgentReport(cost_usd=2.5), 2.5, ("succeeded", None)),
    ("succeeded", AgentReport(cost_usd=None), 2.5, ("succeeded", None)),
    ("succeeded", None, 2.5, ("succeeded", None)),
    ("timeout", AgentReport(is_error=True), None, ("timeout", "timed out")),
])
def test_a_report_can_only_turn_a_success_into_a_failure(
        tmp_path: Path, status: str, report: AgentReport | None, max_cost: float | None,
        expected: tuple[str, str | None]) -> None:
    result = RunResult(status, 0, "timed out" if status == "timeout" else None, 1.0)
    judged = judge_report(result, report, max_cost, tmp_path / "log")
    assert (judged.status, judged.error) == expected
    assert judged.exit_code == 0 and judged.ended_at == 1.0


REPORTING_AGENT = textwrap.dedent("""
    import json, sys
    title = sys.argv[1]
    reports = {
        "ok": {"is_error": False, "total_cost_usd": 0.25, "num_turns": 3,
               "session_id": "s-ok", "usage": {"input_tokens": 10, "output_tokens": 20}},
        "agent error": {"is_error": True, "subtype": "error_during_execution",
                        "total_cost_usd": 0.1},
        "pricey": {"is_error": False, "total_cost_usd": 9.5},
    }
    print("working on", title, file=sys.stderr)
    if title in reports:
        print(json.dumps(reports[title]))
    else:
        print("no report from this agent")
""")


def test_a_pool_records_what_its_agents_report_and_fails_what_they_say_failed(
        host: Path, git_repo: Path) -> None:
    agent = host / "reporting_agent.py"
    agent.write_text(REPORTING_AGENT)
    spec = write_spec(host, replicas=2, runtime="process",
                      command=[sys.executable, str(agent), "{task.title}"],
                      extra={"worker": {"command": [sys.executable, str(agent), "{task.title}"],
                                        "result": {"preset": "claude-code"}},
                             "tasks": {"maxAttempts": 1, "maxCostUsd": 5}})
    assert apply(spec).returncode == 0
    ids = {title: add_task(spec, title=title)
           for title in ("ok", "agent error", "pricey", "silent")}
    wait_tasks(spec, *ids.values())
    shown = {title: show_task(spec, task_id) for title, task_id in ids.items()}
    assert {t: s["status"] for t, s in shown.items()} == {
        "ok": "succeeded", "agent error": "failed", "pricey": "failed", "silent": "succeeded"}
    ok = shown["ok"]["attempt_details"][0]
    assert ok["report"] == {"is_error": False, "cost_usd": 0.25, "input_tokens": 10,
                            "output_tokens": 20, "turns": 3, "session_id": "s-ok",
                            "message": None}
    assert shown["agent error"]["attempt_details"][0]["error"] == \
        "the agent reported an error: error_during_execution"
    assert shown["agent error"]["attempt_details"][0]["exit_code"] == 0
    assert "over tasks.maxCostUsd $5.00" in shown["pricey"]["attempt_details"][0]["error"]
    assert shown["silent"]["attempt_details"][0]["report"] is None
    text = reconcile("task", "show", ids["ok"], "-f", str(spec), check=True).stdout
    assert "reported: success, cost $0.2500, 10 tokens in, 20 out, 3 turns, session s-ok" \
        in text


def test_a_report_kept_while_the_store_refused_writes_is_recorded_with_the_result(
        tmp_path: Path) -> None:
    root = tmp_path / "pool"
    root.mkdir(mode=0o700)
    with Store(root / "store.db") as store:
        store.add_tasks([("t", "p", 0)])
        claim = store.claim_task("w-1", 60)
        assert claim is not None
        report = AgentReport(False, 0.5, 10, 20, 3, "s-1", None)
        pending.save(root, claim, status="succeeded", exit_code=0, error=None,
                     output_tail="", resume_at=None, ended_at=5.0, report=report)
        assert pending.flush(root, store, RetryPolicy()) == 0
        (attempt,) = store.attempts(claim.task.id)
        assert attempt.report == report


def test_the_days_spend_pauses_and_resumes_in_the_store(tmp_path: Path) -> None:
    with Store(tmp_path / "store.db") as store:
        store.add_tasks([("a", "p", 0), ("b", "p", 0), ("c", "p", 0)])
        for cost, ended in ((0.5, 100.0), (0.25, 200.0), (None, 300.0)):
            claim = store.claim_task("w-1", 60, now=ended - 1)
            assert claim is not None
            store.finish_attempt(claim, "succeeded", now=ended,
                                 report=AgentReport(cost_usd=cost))
        assert store.spend_since(150.0) == 0.25 and store.spend_since(0.0) == 0.75
        assert store.pause_claiming(1000.0, "over budget", kind="pool.over_budget",
                                    now=400.0)
        # a shorter pause, or the same again (the next worker over budget): no change
        assert not store.pause_claiming(500.0, "a shorter pause", now=400.0)
        assert not store.pause_claiming(1000.0, "over budget", kind="pool.over_budget",
                                        now=410.0)
        assert (store.paused_until(), store.paused_reason()) == (1000.0, "over budget")
        assert store.resume_claiming(hold_until=2000.0, now=450.0) == 1000.0
        assert store.paused_until() == 0.0 and store.resumed_until() == 2000.0
        # nothing to lift, or a pause that was not the budget's: the budget still holds
        assert store.resume_claiming(hold_until=3000.0, now=460.0) == 0.0
        assert store.pause_claiming(5000.0, "rate limited", now=470.0)
        assert store.resume_claiming(hold_until=3000.0, now=480.0) == 5000.0
        assert store.resumed_until() == 2000.0
        kinds = [e.kind for e in store.find_events(kind="pool")]
        assert kinds == ["pool.over_budget", "pool.resumed", "pool.paused", "pool.resumed"]


def test_a_pool_pauses_once_the_days_budget_is_spent_until_resumed(
        host: Path, git_repo: Path) -> None:
    agent = host / "reporting_agent.py"
    agent.write_text(REPORTING_AGENT)
    command = [sys.executable, str(agent), "{task.title}"]
    spec = write_spec(host, replicas=1, runtime="process", command=command,
                      extra={"worker": {"command": command, "result": {"preset": "claude-code"}},
                             "budget": {"perDayUsd": 0.3}})
    first, second, third = (add_task(spec, title="ok") for _ in range(3))
    assert apply(spec).returncode == 0
    wait_tasks(spec, first, second)
    # the worker pauses the pool right after recording the second result
    document = wait_for(lambda: (d := status(spec))["claiming_paused_until"] and d,
                        message="the pool to pause")
    assert document["spend_today_usd"] == 0.5 and document["budget_per_day_usd"] == 0.3
    assert document["claiming_paused_reason"] == \
        "over budget: $0.50 spent today of budget.perDayUsd $0.30"
    assert show_task(spec, third)["status"] == "queued"
    text = reconcile("status", "-f", str(spec)).stdout
    assert "spent today: $0.50 of budget.perDayUsd $0.30" in text
    assert "over budget: $0.50 spent today" in text and "`reconcile resume` lifts it" in text
    assert [e["kind"] for e in events(spec, "pool.over_budget")] == ["pool.over_budget"]

    resumed = reconcile("resume", "-f", str(spec), "-o", "json", check=True)
    assert json.loads(resumed.stdout)["reason"].startswith("over budget")
    wait_tasks(spec, third)  # resumed for the rest of the day: no new pause
    assert status(spec)["claiming_paused_until"] is None
    again = reconcile("resume", "-f", str(spec), check=True).stdout
    assert "claiming was not paused; nothing to resume" in again
