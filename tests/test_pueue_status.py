"""Reading ``pueue status --json`` (``reconciler.pueuestatus``).

pueue cannot be installed on the build machines, so the parser is held to pueue's
serde contract (``pueue_lib/src/task.rs`` and ``state.rs`` at v4.0.4 and v3.4.1) by
three real documents (``tests/fixtures/pueue``: a 4.0.x status, the same tasks in the
3.4.x shape, and pueue's own v4.0.0 state file) whose expected values are written out
by hand below, and by generated documents of both shapes: every status and result
variant, missing, null, mistyped and extra fields, unknown variants, and arbitrary
JSON, which must never make the parser fail other than with one line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import PueueStatusError, ReconcilerError
from reconciler.pueuestatus import (
    PueueGroup,
    PueueState,
    PueueTask,
    label_for,
    parse_label,
    parse_status,
    parse_timestamp,
)
from tests.helpers import ROOT

FIXTURES = Path(__file__).parent / "fixtures" / "pueue"

# Unix seconds of midnight UTC, counted by hand: 2025-06-07 is day 55*365 + 14 leap
# days (1972..2024) + 157 (Jan-May is 151 days, then 6 more) = 20246 since 1970-01-01;
# 2024-07-18 is day 54*365 + 13 + 199 (a leap year's Jan-Jun is 182 days, then 17).
JUNE_7_2025 = 20246 * 86400
JULY_18_2024 = 19922 * 86400
HOUR = 3600


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def clock(midnight_utc: int, hours: int, minutes: int, seconds: float, offset_hours: int
          ) -> float:
    """Unix seconds of a local time ``offset_hours`` east of UTC on a given UTC day."""
    return midnight_utc + (hours - offset_hours) * HOUR + minutes * 60 + seconds


def june7(hours: int, minutes: int, seconds: float) -> float:
    return clock(JUNE_7_2025, hours, minutes, seconds, offset_hours=2)


def july18(hours: int, minutes: int, seconds: float) -> float:
    return clock(JULY_18_2024, hours, minutes, seconds, offset_hours=2)


TIMES = ("enqueued_at", "started_at", "ended_at")
DEFAULT_GROUP = "default"


def assert_tasks_equal(actual: PueueTask, expected: PueueTask) -> None:
    """Equal, with timestamps to the microsecond (a float holds no more of them)."""
    def blank(t: PueueTask) -> PueueTask:
        return dataclasses.replace(t, enqueued_at=None, started_at=None, ended_at=None,
                                   created_at=None)

    assert blank(actual) == blank(expected)
    for name in TIMES:
        got, want = getattr(actual, name), getattr(expected, name)
        assert (got is None) == (want is None), (actual.id, name, got, want)
        if want is not None:
            assert got == pytest.approx(want, abs=1e-6), (actual.id, name)


def assert_states_equal(actual: PueueState, expected: PueueState) -> None:
    assert actual.version == expected.version
    assert list(actual.tasks) == list(expected.tasks)
    for task_id, task in expected.tasks.items():
        assert_tasks_equal(actual.tasks[task_id], task)
    assert dict(actual.groups) == dict(expected.groups)


def task(task_id: int, group: str, label: str | None, priority: int, state: str,
         result: str | None = None, exit_code: int | None = None,
         times: tuple[float | None, float | None, float | None] = (None, None, None)
         ) -> PueueTask:
    return PueueTask(task_id, group, label, priority, state, result,  # type: ignore[arg-type]
                     exit_code, *times)


# -- the real documents ---------------------------------------------------------------

STATUS_TASKS = {
    0: task(0, "default", "lint", 0, "done", "success", None,
            (june7(10, 0, 1.118290514), june7(10, 0, 1.302471993), june7(10, 0, 2.911875305))),
    1: task(1, "default", None, 0, "done", "failed", 1,
            (june7(10, 0, 5.640009346), june7(10, 0, 5.904113870), june7(10, 0, 41.227340158))),
    2: task(2, "workers", "task-17", 0, "running", None, None,
            (june7(10, 1, 12.009321877), june7(10, 1, 12.215603442), None)),
    3: task(3, "workers", "task-18", 5, "queued", None, None,
            (june7(10, 1, 14.771139052), None, None)),
}
STATUS_GROUPS = {"default": PueueGroup("default", "running", 1),
                 "workers": PueueGroup("workers", "running", 1)}


def test_pueue_4_status_fixture_reads_as_written() -> None:
    assert_states_equal(parse_status(fixture("status-v4.json")),
                        PueueState("4", STATUS_TASKS, STATUS_GROUPS))


@pytest.mark.parametrize("name", ["status-v4.json", "status-v3.json"])
def test_pueue_created_at_is_read_in_both_shapes(name: str) -> None:
    """``created_at`` (a top-level task field in 4.0.x and 3.4.x) survives an in-place
    restart, so with the id it names one task for the restart count of supervise: all."""
    tasks = parse_status(fixture(name)).tasks
    assert tasks[0].created_at == pytest.approx(june7(10, 0, 1.118304221), abs=1e-6)
    assert tasks[3].created_at == pytest.approx(june7(10, 1, 14.771150964), abs=1e-6)


def test_pueue_3_status_fixture_reads_the_same_as_its_4_twin() -> None:
    assert_states_equal(parse_status(fixture("status-v3.json")),
                        PueueState("3", STATUS_TASKS, STATUS_GROUPS))


def test_pueue_own_v4_state_file_reads_as_written() -> None:
    expected = PueueState("4", {
        0: task(0, "default", None, 0, "done", "success", None,
                (july18(14, 55, 2.656334442), july18(14, 55, 2.890447203),
                 july18(14, 55, 3.191922436))),
        1: task(1, "default", None, 0, "done", "failed", 2,
                (july18(14, 55, 9.965430002), july18(14, 55, 10.116492792),
                 july18(14, 55, 10.418112074))),
        2: task(2, "default", None, 0, "stashed"),
        3: task(3, "default", None, 0, "running", None, None,
                (july18(14, 55, 23.253039780), july18(14, 55, 23.365190551), None)),
        4: task(4, "default", None, 0, "queued", None, None,
                (july18(14, 55, 52.901136338), None, None)),
        5: task(5, "default", None, 0, "queued", None, None,
                (july18(14, 56, 35.928788860), None, None)),
    }, {"default": PueueGroup("default", "running", 1), "test": PueueGroup("test", "running", 1)})
    assert_states_equal(parse_status(fixture("state-v4.0.0.json")), expected)


@pytest.mark.parametrize("name", ["status-v4.json", "status-v3.json", "state-v4.0.0.json"])
def test_pueue_compact_output_and_bytes_read_like_the_pretty_fixture(name: str) -> None:
    """Real ``status --json`` output is one compact line, and arrives as bytes."""
    pretty = parse_status(fixture(name))
    compact = json.dumps(json.loads(fixture(name)), separators=(",", ":"))
    assert "\n" not in compact
    assert parse_status(compact) == pretty
    assert parse_status(compact.encode() + b"\n") == pretty


def test_pueue_state_is_frozen_and_ordered_by_id() -> None:
    shuffled = json.loads(fixture("status-v4.json"))
    shuffled["tasks"] = dict(reversed(shuffled["tasks"].items()))
    state = parse_status(json.dumps(shuffled))
    assert list(state.tasks) == [0, 1, 2, 3]
    with pytest.raises(TypeError):
        state.tasks[9] = state.tasks[0]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.tasks[0].state = "queued"  # type: ignore[misc]


# -- every variant, by hand --------------------------------------------------------------

E, S, F = "2025-06-07T10:00:01.5+02:00", "2025-06-07T08:00:04Z", "2025-06-07T08:00:05.25-00:00"
E_, S_, F_ = june7(10, 0, 1.5), june7(10, 0, 4), june7(10, 0, 5.25)


@dataclass(frozen=True)
class Variant:
    """One status as each version prints it, and what it reads as."""

    name: str
    v4: object
    v3: object
    v3_times: tuple[str | None, str | None, str | None]  # top-level enqueued_at, start, end
    state: str
    result: str | None = None
    exit_code: int | None = None
    times: tuple[float | None, float | None, float | None] = (None, None, None)


RESULTS: list[tuple[object, str, int | None]] = [
    ("Success", "success", None),
    ({"Failed": 1}, "failed", None),  # exit code filled in below
    ({"FailedToSpawn": "No such file or directory (os error 2)"}, "failed_to_spawn", None),
    ("Killed", "killed", None),
    ("Errored", "errored", None),
    ("DependencyFailed", "dependency_failed", None),
    ("Vanished", "unknown", None),  # a result variant of some later pueue
    ({"Exploded": 3}, "unknown", None),
]


def done(result: object, kind: str, exit_code: int | None) -> Variant:
    return Variant(f"done-{kind}-{json.dumps(result)}",
                   {"Done": {"enqueued_at": E, "start": S, "end": F, "result": result}},
                   {"Done": result}, (E, S, F), "done", kind, exit_code, (E_, S_, F_))


VARIANTS = [
    Variant("queued", {"Queued": {"enqueued_at": E}}, "Queued", (E, None, None), "queued",
            times=(E_, None, None)),
    Variant("stashed", {"Stashed": {"enqueue_at": None}}, {"Stashed": {"enqueue_at": None}},
            (None, None, None), "stashed"),
    Variant("stashed-until", {"Stashed": {"enqueue_at": F}}, {"Stashed": {"enqueue_at": F}},
            (None, None, None), "stashed"),
    Variant("running", {"Running": {"enqueued_at": E, "start": S}}, "Running", (E, S, None),
            "running", times=(E_, S_, None)),
    Variant("paused", {"Paused": {"enqueued_at": E, "start": S}}, "Paused", (E, S, None),
            "paused", times=(E_, S_, None)),
    Variant("locked", {"Locked": {"previous_status": {"Queued": {"enqueued_at": E}}}}, "Locked",
            (E, None, None), "locked", times=(E_, None, None)),
    Variant("locked-stashed", {"Locked": {"previous_status": {"Stashed": {"enqueue_at": None}}}},
            "Locked", (None, None, None), "locked"),
    *(done(result, kind, 1 if kind == "failed" else None) for result, kind, _ in RESULTS),
    # a status variant of some later pueue: its name is unknown, its data ignored
    Variant("unknown", {"Sleeping": {"until": E}}, "Sleeping", (None, None, None), "unknown"),
]


def one_task_document(status: object, top_level: dict[str, object] | None = None,
                      **fields: object) -> str:
    body: dict[str, object] = {"id": 7, "group": "workers", "label": "x", "priority": 2,
                               "status": status, **(top_level or {}), **fields}
    return json.dumps({"tasks": {"7": body}, "groups": {}})


def v3_top_level(times: tuple[str | None, str | None, str | None]) -> dict[str, object]:
    return {"enqueued_at": times[0], "start": times[1], "end": times[2], "prev_status": "Queued"}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_pueue_4_status_variant_reads_as(variant: Variant) -> None:
    state = parse_status(one_task_document(variant.v4))
    assert state.version == "4" or variant.name.startswith(("stashed", "unknown"))
    assert_tasks_equal(state.tasks[7], task(7, "workers", "x", 2, variant.state,
                                            variant.result, variant.exit_code, variant.times))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_pueue_3_status_variant_reads_as(variant: Variant) -> None:
    state = parse_status(one_task_document(variant.v3, v3_top_level(variant.v3_times)))
    assert state.version == "3"
    assert_tasks_equal(state.tasks[7], task(7, "workers", "x", 2, variant.state,
                                            variant.result, variant.exit_code, variant.times))


@pytest.mark.parametrize(("result", "kind", "exit_code"), [
    ({"Failed": 137}, "failed", 137), ({"Failed": -1}, "failed", -1),
    ({"Failed": 0}, "failed", 0), ({"Failed": True}, "failed", None),
    ({"Failed": 1.0}, "failed", None), ({"Failed": "1"}, "failed", None),
    ({"Failed": None}, "failed", None), ("Failed", "failed", None),
    ({"Failed": 1, "Killed": None}, "unknown", None)])
def test_pueue_failed_exit_code_is_an_integer_or_none(result: object, kind: str,
                                                       exit_code: int | None) -> None:
    for document in (one_task_document({"Done": {"enqueued_at": E, "result": result}}),
                     one_task_document({"Done": result}, v3_top_level((E, S, F)))):
        parsed = parse_status(document).tasks[7]
        assert (parsed.state, parsed.result, parsed.exit_code) == ("done", kind, exit_code)


@pytest.mark.parametrize("status", [
    None, 3, True, [], ["Running"], {}, {"Running": {"enqueued_at": E}, "Queued": {}}, "running",
    "", {"": {}}, {"Done": None}, {"Done": {}}, {"Done": []}])
def test_pueue_status_of_no_known_shape_is_unknown_or_done_with_unknown_result(status: object
                                                                               ) -> None:
    for document in (one_task_document(status), one_task_document(status, v3_top_level(
            (None, None, None)))):
        parsed = parse_status(document).tasks[7]
        if isinstance(status, dict) and list(status) == ["Done"]:
            assert (parsed.state, parsed.result) == ("done", "unknown")
        else:
            assert (parsed.state, parsed.result) == ("unknown", None)


def test_pueue_v4_status_in_a_v3_document_and_back_reads_by_name_only() -> None:
    """A status of the other shape in a document of known shape still reads by its name
    (never a crash); only its data is looked for where the document's version keeps it."""
    v3 = parse_status(json.dumps({"tasks": {
        "0": {"status": "Running", "start": S},
        "1": {"status": {"Paused": {"start": S}}, "start": None}}, "groups": {}}))
    assert v3.version == "3"
    assert v3.tasks[0].state == "running" and v3.tasks[0].started_at == pytest.approx(S_)
    assert (v3.tasks[1].state, v3.tasks[1].started_at) == ("paused", None)
    v4 = parse_status(json.dumps({"tasks": {
        "0": {"status": {"Running": {"enqueued_at": E, "start": S}}},
        "1": {"status": "Stashed", "enqueued_at": E}}, "groups": {}}))
    assert v4.version == "4"
    assert (v4.tasks[1].state, v4.tasks[1].enqueued_at) == ("stashed", None)


def test_pueue_optional_fields_missing_null_or_mistyped_get_defaults() -> None:
    bare = parse_status('{"tasks": {"4": {"status": {"Queued": {"enqueued_at": "x"}}}},'
                        ' "groups": {}}').tasks[4]
    assert bare == PueueTask(4, "default", None, 0, "queued", None, None, None, None, None)
    mistyped: list[tuple[object, object, object]] = [
        (None, None, None), (5, "high", 3), ([], True, {}), ({"a": 1}, 1.5, None)]
    for label, priority, group in mistyped:
        parsed = parse_status(one_task_document({"Queued": {"enqueued_at": E}}, label=label,
                                                priority=priority, group=group)).tasks[7]
        assert (parsed.label, parsed.priority, parsed.group) == (None, 0, "default")


def test_pueue_task_id_is_its_key_not_its_id_field() -> None:
    """pueue's tasks are a BTreeMap keyed by id; the key is what ``pueue`` commands take."""
    state = parse_status('{"tasks": {"12": {"id": 3, "status": "Queued"}}, "groups": {}}')
    assert list(state.tasks) == [12] and state.tasks[12].id == 12


def test_pueue_extra_fields_are_ignored() -> None:
    document = json.loads(fixture("status-v4.json"))
    document["settings"] = {"daemon": {"pause_group_on_failure": True}}
    document["groups"]["default"]["colour"] = "blue"
    for body in document["tasks"].values():
        body["status"][next(iter(body["status"]))]["cpu"] = 99
        body["retries"] = [1, 2]
    assert parse_status(json.dumps(document)) == parse_status(fixture("status-v4.json"))


@pytest.mark.parametrize(("raw", "expected"), [
    ({"status": "Running", "parallel_tasks": 4}, PueueGroup("g", "running", 4)),
    ({"status": "Paused", "parallel_tasks": 0}, PueueGroup("g", "paused", 0)),
    ({"status": "Reset", "parallel_tasks": 2}, PueueGroup("g", "reset", 2)),
    ({"status": "Frozen", "parallel_tasks": 2}, PueueGroup("g", "unknown", 2)),
    ({"status": {"Running": {}}}, PueueGroup("g", "unknown", 1)),
    ({}, PueueGroup("g", "unknown", 1)),
    ({"status": "Running", "parallel_tasks": -3}, PueueGroup("g", "running", 1)),
    ({"status": "Running", "parallel_tasks": True}, PueueGroup("g", "running", 1)),
    ({"status": "Running", "parallel_tasks": 2.0}, PueueGroup("g", "running", 1)),
])
def test_pueue_group_reads_its_status_and_parallel_tasks(raw: dict[str, object],
                                                         expected: PueueGroup) -> None:
    assert parse_status(json.dumps({"tasks": {}, "groups": {"g": raw}})).groups == {"g": expected}


def test_pueue_empty_document_is_4_unless_hinted() -> None:
    empty = '{"tasks": {}, "groups": {"default": {"status": "Running", "parallel_tasks": 1}}}'
    assert parse_status(empty).version == "4"
    assert parse_status(empty, version_hint="3").version == "3"
    assert parse_status(empty, version_hint="3").groups == parse_status(empty).groups
    with pytest.raises(ValueError, match="version_hint"):
        parse_status(empty, version_hint="5")  # type: ignore[arg-type]


def test_pueue_statuses_decide_the_version_over_the_hint() -> None:
    assert parse_status(fixture("status-v4.json"), version_hint="3").version == "4"
    assert parse_status(fixture("status-v3.json"), version_hint="4").version == "3"


def test_pueue_3_document_of_stashed_tasks_only_is_told_by_its_top_level_fields() -> None:
    """Stashed is the same object in both versions; 3.4.x's top-level start/end tell."""
    stashed = {"status": {"Stashed": {"enqueue_at": None}}, "label": "s"}
    v3 = parse_status(json.dumps({"tasks": {"0": {**stashed, **v3_top_level((E, None, None))}},
                                  "groups": {}}))
    assert v3.version == "3" and v3.tasks[0].enqueued_at == pytest.approx(E_)
    hinted = parse_status(json.dumps({"tasks": {"0": stashed}, "groups": {}}), version_hint="3")
    assert hinted.version == "3"
    assert parse_status(json.dumps({"tasks": {"0": stashed}, "groups": {}})).version == "4"


def test_pueue_locked_task_takes_the_times_of_the_status_it_interrupted() -> None:
    inner: object = {"Queued": {"enqueued_at": E}}
    for _ in range(3):
        inner = {"Locked": {"previous_status": inner}}
    nested = parse_status(one_task_document(inner)).tasks[7]
    assert nested.state == "locked" and nested.enqueued_at == pytest.approx(E_)
    broken: list[object] = [{"Locked": {}}, {"Locked": {"previous_status": None}},
                            {"Locked": {"previous_status": "Queued"}}, {"Locked": None}]
    for locked in broken:
        parsed = parse_status(one_task_document(locked)).tasks[7]
        assert (parsed.state, parsed.enqueued_at) == ("locked", None)
    deep: object = {"Queued": {"enqueued_at": E}}
    for _ in range(200):
        deep = {"Locked": {"previous_status": deep}}
    assert parse_status(one_task_document(deep)).tasks[7].state == "locked"


# -- timestamps --------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("2025-06-07T10:00:01.118290514+02:00", june7(10, 0, 1.118290514)),
    ("2025-06-07T08:00:01Z", june7(10, 0, 1)),
    ("2025-06-07t08:00:01z", june7(10, 0, 1)),
    ("2025-06-07 08:00:01+00:00", june7(10, 0, 1)),
    ("2025-06-07T02:30:01.5-05:30", june7(10, 0, 1.5)),
    ("2025-06-07T10:00:01.1234567890123+02:00", june7(10, 0, 1.1234567890123)),
    ("2025-06-07T09:40:29+01:40:28", june7(10, 0, 1)),  # an offset with seconds
    ("2016-12-31T23:59:60Z", 17167 * 86400 + 0.0),  # a leap second: 2017-01-01T00:00:00Z
    ("1970-01-01T00:00:00Z", 0.0),
])
def test_pueue_timestamp_reads_rfc3339_with_nanoseconds_and_offsets(text: str, expected: float
                                                                    ) -> None:
    assert parse_timestamp(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("value", [
    None, 1749283201, 1749283201.5, True, [], {}, "", "2025-06-07", "10:00:01",
    "2025-06-07T10:00:01", "2025-06-07T10:00:01+0200", "2025-06-07T10:00:01.+02:00",
    "2025-02-30T10:00:01Z", "2025-06-07T24:00:01Z", "2025-06-07T10:61:01Z",
    "2025-06-07T10:00:01+24:00", "2025-06-07T10:00:01+02:60", "2025-06-07T10:00:01Z\n",
    " 2025-06-07T10:00:01Z", "+12025-06-07T10:00:01Z", "0000-01-01T00:00:00Z",
    "２０２５-06-07T10:00:01Z", "2025-06-07T10:00:0١Z", "2025-06-07T10:00:01.1" + "0" * 80 + "Z",
])
def test_pueue_timestamp_that_is_not_rfc3339_is_none(value: object) -> None:
    assert parse_timestamp(value) is None


def test_pueue_unparseable_timestamps_in_a_task_are_none() -> None:
    parsed = parse_status(one_task_document({"Done": {"enqueued_at": "yesterday", "start": 5,
                                                      "end": None, "result": "Success"}}))
    assert parsed.tasks[7] == PueueTask(7, "workers", "x", 2, "done", "success", None,
                                        None, None, None)


# -- generated documents ------------------------------------------------------------------

OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
# what each shape's serde struct names (never generated as an "extra" field)
KNOWN_FIELDS = {"id", "created_at", "original_command", "command", "path", "envs", "group",
                "dependencies", "priority", "label", "status", "prev_status", "enqueued_at",
                "start", "end"}


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[str, float]:
    """An RFC 3339 timestamp as chrono writes one, and its Unix seconds."""
    moment = draw(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                               timezones=OFFSETS)).replace(microsecond=0)
    nanos = draw(st.integers(0, 999_999_999))
    offset = moment.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    zone = (draw(st.sampled_from(["Z", "+00:00"])) if minutes == 0
            else f"{'+' if minutes > 0 else '-'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")
    fraction = f".{nanos:09d}" if nanos or draw(st.booleans()) else ""
    return (moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + zone,
            moment.timestamp() + nanos / 1e9)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8)
RESULT_CHOICES: list[tuple[Callable[[int, str], object], str, bool]] = [
    (lambda code, msg: "Success", "success", False),
    (lambda code, msg: {"Failed": code}, "failed", True),
    (lambda code, msg: {"FailedToSpawn": msg}, "failed_to_spawn", False),
    (lambda code, msg: "Killed", "killed", False),
    (lambda code, msg: "Errored", "errored", False),
    (lambda code, msg: "DependencyFailed", "dependency_failed", False),
    (lambda code, msg: "Vanished", "unknown", False),
    (lambda code, msg: {"Exploded": code}, "unknown", False),
]
STATES = ["queued", "stashed", "running", "paused", "locked", "done", "unknown"]


@st.composite
def generated_task(draw: st.DrawFn, task_id: int, shape: str
                   ) -> tuple[dict[str, object], PueueTask]:
    """A task in ``shape`` ("3" or "4"), of any state and result, with optional fields
    missing or null and extra fields, and the task it must read as."""
    state = draw(st.sampled_from(STATES))
    (enq, enq_s), (start, start_s), (end, end_s) = (draw(timestamps()) for _ in range(3))
    make_result, kind, has_code = draw(st.sampled_from(RESULT_CHOICES))
    code = draw(st.integers(-(2**31), 2**31 - 1))
    raw_result = make_result(code, draw(st.text(max_size=20)))
    name = {"unknown": "Sleeping"}.get(state, state.capitalize())
    times: tuple[str | None, str | None, str | None] = {
        "queued": (enq, None, None), "locked": (enq, None, None), "running": (enq, start, None),
        "paused": (enq, start, None), "done": (enq, start, end)}.get(state, (None, None, None))
    seconds = tuple(None if t is None else s
                    for t, s in zip(times, (enq_s, start_s, end_s), strict=True))
    status: object
    if shape == "4":
        fields = {key: value for key, value in zip(("enqueued_at", "start", "end"), times,
                                                   strict=True) if value is not None}
        status = {name: {**fields, "result": raw_result} if state == "done" else fields}
        if state == "stashed":
            status = {"Stashed": {"enqueue_at": draw(st.none() | st.just(enq))}}
        elif state == "locked":
            status = {"Locked": {"previous_status": {"Queued": fields}}}
        elif state == "unknown":
            status = {"Sleeping": draw(st.dictionaries(st.sampled_from(["until", "why"]), JSON))}
        body: dict[str, object] = {"status": status}
    else:
        status = {"Done": raw_result} if state == "done" else name
        if state == "stashed":
            status = {"Stashed": {"enqueue_at": draw(st.none() | st.just(enq))}}
        body = {"status": status, "prev_status": "Queued", "enqueued_at": times[0],
                "start": times[1], "end": times[2]}
    label = draw(st.sampled_from(["missing", "null", "text"]))
    label_text = draw(st.text(max_size=30))
    if label != "missing":
        body["label"] = label_text if label == "text" else None
    priority = draw(st.none() | st.integers(-(2**31), 2**31 - 1))
    if priority is not None:
        body["priority"] = priority
    group = draw(st.none() | st.text(min_size=1, max_size=12))
    if group is not None:
        body["group"] = group
    if draw(st.booleans()):
        body.update(id=task_id, created_at=enq, original_command="true", command="true",
                    path="/tmp", envs={"HOME": "/root"},
                    dependencies=draw(st.lists(st.integers(0, 99), max_size=3)))
    body.update(draw(st.dictionaries(st.text(max_size=10).filter(lambda k: k not in KNOWN_FIELDS),
                                     JSON, max_size=3)))
    expected = PueueTask(
        id=task_id, group=DEFAULT_GROUP if group is None else group,
        label=label_text if label == "text" else None, priority=priority or 0,
        state=state,  # type: ignore[arg-type]
        result=kind if state == "done" else None,  # type: ignore[arg-type]
        exit_code=code if state == "done" and has_code else None,
        enqueued_at=seconds[0], started_at=seconds[1], ended_at=seconds[2])
    return body, expected



@st.composite
def generated_document(draw: st.DrawFn, shape: str) -> tuple[str, dict[int, PueueTask]]:
    ids = draw(st.lists(st.integers(0, 2**32), unique=True, max_size=6))
    tasks = [draw(generated_task(task_id, shape)) for task_id in ids]
    groups = draw(st.dictionaries(st.text(max_size=8), st.fixed_dictionaries(
        {"status": st.sampled_from(["Running", "Paused", "Reset"]),
         "parallel_tasks": st.integers(0, 64)}), max_size=3))
    document = {"tasks": {str(body_id): body for body_id, (body, _) in zip(ids, tasks,
                                                                         strict=True)},
                "groups": groups}
    return (json.dumps(document, separators=(",", ":")),
            {expected.id: expected for _, expected in tasks})


@pytest.mark.parametrize("shape", ["4", "3"])
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_pueue_generated_documents_read_every_variant_as_expected(shape: str,
                                                                  data: st.DataObject) -> None:
    text, expected = data.draw(generated_document(shape))
    state = parse_status(text)
    assert state.version == (shape if expected else "4")
    assert list(state.tasks) == sorted(expected)
    for task_id, want in expected.items():
        assert_tasks_equal(state.tasks[task_id], want)


@settings(max_examples=50, deadline=None)
@given(timestamp=timestamps())
def test_pueue_generated_timestamps_read_to_the_microsecond(timestamp: tuple[str, float]
                                                             ) -> None:
    text, seconds = timestamp
    assert parse_timestamp(text) == pytest.approx(seconds, abs=1e-6)


STATUS_LIKE = st.one_of(
    JSON,
    st.sampled_from(["Queued", "Stashed", "Running", "Paused", "Locked", "Done", "Success"]),
    st.builds(lambda name, inner: {name: inner},
              st.sampled_from(["Queued", "Stashed", "Running", "Paused", "Locked", "Done"]),
              st.one_of(JSON, st.fixed_dictionaries(
                  {}, optional={"enqueued_at": JSON, "start": JSON, "end": JSON,
                                "result": JSON, "previous_status": JSON, "Failed": JSON}))))
ANY_TASK = st.fixed_dictionaries({}, optional={
    "id": JSON, "status": STATUS_LIKE, "label": JSON, "priority": JSON, "group": JSON,
    "enqueued_at": JSON, "start": JSON, "end": JSON, "prev_status": JSON, "envs": JSON})


@settings(max_examples=100, deadline=None)
@given(tasks=st.dictionaries(st.integers(0, 10**6).map(str), ANY_TASK, max_size=5),
       groups=st.dictionaries(st.text(max_size=5), st.dictionaries(
           st.sampled_from(["status", "parallel_tasks"]), JSON), max_size=3))
def test_pueue_any_json_in_the_fields_reads_or_refuses_mixed_shapes_only(
        tasks: dict[str, object], groups: dict[str, object]) -> None:
    """Tasks and groups that are objects never make the parser fail, whatever their
    fields hold, except when their statuses are of both versions' shapes."""
    try:
        state = parse_status(json.dumps({"tasks": tasks, "groups": groups}))
    except PueueStatusError as error:
        assert "both the pueue 3.x and 4.x shapes" in error.one_line()
        return
    assert set(state.tasks) == {int(key) for key in tasks}
    assert set(state.groups) == set(groups)
    for parsed in state.tasks.values():
        assert parsed.state in STATES
        assert (parsed.result is None) == (parsed.state != "done")
        assert parsed.exit_code is None or parsed.result == "failed"


@settings(max_examples=100, deadline=None)
@given(document=st.one_of(JSON, st.fixed_dictionaries({"tasks": JSON, "groups": JSON})))
def test_pueue_any_json_document_reads_or_fails_with_one_line(document: object) -> None:
    assert_reads_or_one_line_error(json.dumps(document))


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=40) | st.binary(max_size=40))
def test_pueue_any_text_or_bytes_read_or_fail_with_one_line(text: str | bytes) -> None:
    assert_reads_or_one_line_error(text)


def assert_reads_or_one_line_error(text: str | bytes) -> None:
    try:
        parse_status(text)
    except PueueStatusError as error:
        assert_one_line(error)


def assert_one_line(error: PueueStatusError) -> None:
    assert isinstance(error, ReconcilerError)
    line = error.one_line()
    assert line.startswith("pueue status --json: ")
    assert "\n" not in line and "\r" not in line and len(line) < 200
    # raised outside any except block: no chained exception keeps the document alive
    assert error.__cause__ is None and error.__context__ is None


# -- malformed documents -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("", "not JSON (Expecting value, line 1 column 1)"),
    ("pueue: connection refused", "not JSON (Expecting value, line 1 column 1)"),
    ('{"tasks": {}, "groups": {}', "not JSON (Expecting ',' delimiter, line 1 column 27)"),
    ('{"tasks": {},\n "groups": {}} trailing', "not JSON (Extra data, line 2 column 16)"),
    (b'{"tasks": {}, "groups": {"\xff": {}}}', "not UTF-8 (byte 27)"),
    ("[" * 100_000, "not JSON Python can read (a number too long or nesting too deep)"),
    ('{"tasks": {"0": {"priority": 1' + "0" * 5000 + '}}, "groups": {}}',
     "not JSON Python can read (a number too long or nesting too deep)"),
    ("[]", 'expected an object with "tasks" and "groups", got an array'),
    ('"tasks"', 'expected an object with "tasks" and "groups", got a string'),
    ("null", 'expected an object with "tasks" and "groups", got null'),
    ('{"groups": {}}', 'no "tasks" in the document'),
    ('{"tasks": {}}', 'no "groups" in the document'),
    ('{"tasks": [], "groups": {}}', '"tasks" is an array, not an object'),
    ('{"tasks": null, "groups": {}}', '"tasks" is null, not an object'),
    ('{"tasks": {}, "groups": [{"status": "Running"}]}', '"groups" is an array, not an object'),
    ('{"tasks": {"0": "Running"}, "groups": {}}', "task 0 is a string, not an object"),
    ('{"tasks": {"0": {}, "5": [1]}, "groups": {}}', "task 5 is an array, not an object"),
    ('{"tasks": {}, "groups": {"a": {}, "b": 4}}',
     'group #2 in "groups" is a number, not an object'),
    ('{"tasks": {"0": {"status": "Running"}, "1": {"status": {"Queued": {"enqueued_at": null}}}},'
     ' "groups": {}}',
     "statuses in both the pueue 3.x and 4.x shapes (task 0 is 3.x, task 1 is 4.x)"),
])
def test_pueue_malformed_document_is_one_line_error(text: str | bytes, message: str) -> None:
    with pytest.raises(PueueStatusError) as caught:
        parse_status(text)
    assert caught.value.one_line() == f"pueue status --json: {message}"
    assert_one_line(caught.value)


@pytest.mark.parametrize("key", ["abc", "-1", "1.5", "01", " 1", "1 ", "", "١", "1e3", "0x1",
                                 "123456789012345678901"])
def test_pueue_task_key_that_is_not_an_id_is_one_line_error(key: str) -> None:
    document = json.dumps({"tasks": {"0": {"status": "Queued"}, key: {"status": "Queued"}},
                           "groups": {}})
    with pytest.raises(PueueStatusError) as caught:
        parse_status(document)
    assert caught.value.one_line() == ('pueue status --json: task #2 in "tasks" has a key that'
                                       " is not a task id (a non-negative integer)")
    assert_one_line(caught.value)


def test_pueue_one_bad_task_refuses_the_whole_document() -> None:
    """Not skipped: a document pueue could not print is not trusted, lest a live
    worker's task be taken for gone (see ``parse_status``)."""
    document = json.loads(fixture("status-v4.json"))
    document["tasks"]["4"] = ["not", "a", "task"]
    with pytest.raises(PueueStatusError, match="task 4 is an array"):
        parse_status(json.dumps(document))


# -- secrets -------------------------------------------------------------------------------

MARKER = "SECRET-c0ffee-MARKER"


def leaky_task(status: object) -> dict[str, object]:
    return {"id": 0, "status": status, "label": "reconciler:demo:1:1",
            "command": f"deploy --token={MARKER}", "original_command": f"deploy {MARKER}",
            "path": f"/home/{MARKER}", "envs": {MARKER: MARKER, "TOKEN": MARKER},
            "created_at": "2025-06-07T10:00:01+02:00"}


def test_pueue_envs_and_commands_never_reach_the_parsed_state() -> None:
    document = {"tasks": {
        "0": leaky_task({"Done": {"enqueued_at": E, "start": S, "end": F,
                                  "result": {"FailedToSpawn": f"no such file: {MARKER}"}}}),
        "1": leaky_task({"Running": {"enqueued_at": E, "start": S}}),
        "2": leaky_task({"Locked": {"previous_status": {"Queued": {"enqueued_at": E}}}})},
        "groups": {"default": {"status": "Running", "parallel_tasks": 1}}}
    for text in (json.dumps(document), json.dumps(document).encode()):
        state = parse_status(text)
        assert len(state.tasks) == 3 and state.tasks[0].result == "failed_to_spawn"
        assert MARKER not in repr(state) and MARKER not in str(state)
        for parsed in state.tasks.values():
            assert all(MARKER not in repr(value) for value in dataclasses.astuple(parsed))
    names = {field.name for field in dataclasses.fields(PueueTask)}
    assert not names & {"envs", "command", "original_command", "path"}


@pytest.mark.parametrize("breakage", ["truncated", "mixed", "bad-task", "bad-key", "bad-group"])
def test_pueue_errors_never_echo_envs_or_commands(breakage: str) -> None:
    tasks: dict[str, object] = {"0": leaky_task("Running"), "1": leaky_task("Queued")}
    groups: dict[str, object] = {"default": {"status": "Running", "parallel_tasks": 1}}
    if breakage == "mixed":
        tasks["2"] = leaky_task({"Queued": {"enqueued_at": E}})
    elif breakage == "bad-task":
        tasks["2"] = [MARKER]
    elif breakage == "bad-key":
        tasks[MARKER] = leaky_task("Queued")
    elif breakage == "bad-group":
        groups[MARKER] = MARKER
    text = json.dumps({"tasks": tasks, "groups": groups})
    if breakage == "truncated":
        text = text[:text.rindex(MARKER) + len(MARKER) + 2]
    with pytest.raises(PueueStatusError) as caught:
        parse_status(text)
    error = caught.value
    assert_one_line(error)
    for shown in (str(error), repr(error), error.one_line(), repr(error.args),
                  repr(vars(error))):
        assert MARKER not in shown


# -- labels --------------------------------------------------------------------------------

SCHEMA_POOL_NAME = json.loads((ROOT / "schemas" / "workers.schema.json").read_text())[
    "properties"]["metadata"]["properties"]["name"]["pattern"]
IDS = st.integers(1, 10**18 - 1)


def test_pueue_label_names_pool_task_and_attempt() -> None:
    assert label_for("demo", 42, 1) == "reconciler:demo:42:1"
    assert parse_label("reconciler:demo:42:1") == ("demo", 42, 1)
    assert parse_label("reconciler:a-0:7:12") == ("a-0", 7, 12)


@settings(max_examples=100, deadline=None)
@given(pool=st.from_regex(SCHEMA_POOL_NAME, fullmatch=True), task_id=IDS, attempt=IDS)
def test_pueue_label_round_trips(pool: str, task_id: int, attempt: int) -> None:
    assert parse_label(label_for(pool, task_id, attempt)) == (pool, task_id, attempt)


@settings(max_examples=100, deadline=None)
@given(pool=st.text(alphabet="az09-_:A. \n", max_size=42))
def test_pueue_label_takes_exactly_the_pool_names_workers_yaml_allows(pool: str) -> None:
    # fullmatch: jsonschema's re.search would let "$" take a name ending in a newline
    allowed = re.fullmatch(SCHEMA_POOL_NAME, pool) is not None
    assert (parse_label(f"reconciler:{pool}:1:1") is not None) == allowed


@pytest.mark.parametrize("label", [
    None, "", "lint", "task-17", "reconciler", "reconciler:demo", "reconciler:demo:1",
    "reconciler:demo:1:2:3", "reconciler::1:1", "reconciler:Demo:1:1", "reconciler:-demo:1:1",
    "reconciler:demo-:1:1", "reconciler:de_mo:1:1", "reconciler:" + "a" * 41 + ":1:1",
    "reconciler:demo:0:1", "reconciler:demo:1:0", "reconciler:demo:01:1", "reconciler:demo:1:01",
    "reconciler:demo:+1:1", "reconciler:demo:-1:1", "reconciler:demo: 1:1", "reconciler:demo:1:1 ",
    "reconciler:demo:1:1\n", "reconciler:demo:١:1", "reconciler:demo:1e3:1",
    "reconciler:demo:1_0:1", "reconciler:demo:1.0:1", "reconciler:demo:1:" + "9" * 19,
    "reconciler:demo:" + "1" * 5000 + ":1",
    "Reconciler:demo:1:1", "reconcilers:demo:1:1", " reconciler:demo:1:1", "other:demo:1:1",
])
def test_pueue_foreign_label_is_not_ours(label: str | None) -> None:
    assert parse_label(label) is None


@pytest.mark.parametrize(("pool", "task_id", "attempt"), [
    ("Demo", 1, 1), ("", 1, 1), ("a:b", 1, 1), ("demo\n", 1, 1), ("demo", 0, 1), ("demo", 1, 0),
    ("demo", -1, 1), ("demo", True, 1), ("demo", 1, 10**18), ("demo", "1", 1)])
def test_pueue_label_for_refuses_what_parse_label_would_not_read(pool: str, task_id: int,
                                                                 attempt: int) -> None:
    with pytest.raises(ValueError):
        label_for(pool, task_id, attempt)


def test_pueue_labels_are_read_from_parsed_tasks() -> None:
    """Our tasks are told by label: after ``pueue clean`` an id may be another task's."""
    document = {"tasks": {
        "0": {"status": "Running", "label": label_for("demo", 17, 2)},
        "1": {"status": "Running", "label": "task-17"},
        "2": {"status": "Queued", "label": None}}, "groups": {}}
    state = parse_status(json.dumps(document))
    assert {task_id: parse_label(t.label) for task_id, t in state.tasks.items()} == {
        0: ("demo", 17, 2), 1: None, 2: None}


# -- purity --------------------------------------------------------------------------------

def test_pueue_status_module_does_no_io_even_transitively() -> None:
    """The observer and the stand-in tests import it: no subprocess, socket or store."""
    probe = ("import json, sys\n"
             "import reconciler.pueuestatus\n"
             "print(json.dumps(sorted(m for m in sys.modules if m in {'subprocess', 'socket',"
             " 'sqlite3', 'psutil', 'fcntl', 'shutil', 'reconciler.store', 'reconciler.observe',"
             " 'reconciler.runtimes.process', 'reconciler.runtimes.tmux', 'reconciler.tmuxcli',"
             " 'reconciler.worktrees', 'reconciler.proctree'})))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "[]"
