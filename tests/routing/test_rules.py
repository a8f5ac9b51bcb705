"""Erathos rules: every operator for every metadata type, the docs' presets, bad rules."""

from __future__ import annotations

from typing import Any

import pytest

from app.routing.event import METADATA, ErathosEvent, MetadataType
from app.routing.rules import (
    ALLOWED,
    Operation,
    Rule,
    RuleError,
    first_failing,
    parse_rules,
    to_erathos,
)
from tests.support.erathos import execution

JOB_ID = "5f0c6a4e-8a55-4d0c-9b1e-0d7a3c2b1a01"
CONNECTION_ID = "0b7d3c2a-1e4f-4a6b-8c9d-0e1f2a3b4c02"
EXECUTION_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c03"
OTHER_ID = "11111111-2222-4333-8444-555555555555"


def event(**overrides: Any) -> ErathosEvent:
    """A FINISHED load of raw_shop.orders: 1520 rows, Saturday 2026-11-28 06:15 UTC."""
    fixed = {"job_id": JOB_ID, "connection_id": CONNECTION_ID, "execution_id": EXECUTION_ID}
    return ErathosEvent.model_validate(execution(**{**fixed, **overrides}))


def rule(name: str | None, operation: str | None, value: Any) -> dict[str, Any]:
    return {"variable_name": name, "operation": operation, "value": value}


def holds(raw: dict[str, Any], ev: ErathosEvent) -> bool:
    return Rule.parse(raw).holds(ev)


def all_hold(raws: list[dict[str, Any]], ev: ErathosEvent) -> bool:
    return first_failing(parse_rules(raws), ev) is None


# (metadata, operation, value, holds for `event()`)
OPERATOR_TABLE: list[tuple[str, str, Any, bool]] = [
    # uuid: EQUAL, NOT_EQUAL, IN, NOT_IN
    ("JOB_ID", "EQUAL", JOB_ID, True),
    ("JOB_ID", "EQUAL", JOB_ID.upper(), True),
    ("JOB_ID", "EQUAL", OTHER_ID, False),
    ("JOB_ID", "NOT_EQUAL", OTHER_ID, True),
    ("JOB_ID", "NOT_EQUAL", JOB_ID, False),
    ("JOB_ID", "IN", [OTHER_ID, JOB_ID], True),
    ("JOB_ID", "IN", [OTHER_ID], False),
    ("JOB_ID", "NOT_IN", [OTHER_ID], True),
    ("JOB_ID", "NOT_IN", [OTHER_ID, JOB_ID.upper()], False),
    ("CONNECTION_ID", "EQUAL", CONNECTION_ID, True),
    ("CONNECTION_ID", "NOT_EQUAL", CONNECTION_ID, False),
    ("CONNECTION_ID", "IN", [CONNECTION_ID], True),
    ("CONNECTION_ID", "NOT_IN", [CONNECTION_ID], False),
    # string: EQUAL, NOT_EQUAL, IN, NOT_IN
    ("STATUS", "EQUAL", "FINISHED", True),
    ("STATUS", "EQUAL", "FAILED", False),
    ("STATUS", "NOT_EQUAL", "FAILED", True),
    ("STATUS", "NOT_EQUAL", "FINISHED", False),
    ("STATUS", "IN", ["FAILED", "FINISHED"], True),
    ("STATUS", "IN", ["FAILED"], False),
    ("STATUS", "NOT_IN", ["FAILED"], True),
    ("STATUS", "NOT_IN", ["FINISHED", "FAILED"], False),
    ("TABLE_NAME", "EQUAL", "orders", True),
    ("TABLE_NAME", "EQUAL", "Orders", False),
    ("TABLE_NAME", "IN", ["customers", "orders"], True),
    ("TABLE_NAME", "NOT_IN", ["customers"], True),
    ("SCHEMA_NAME", "EQUAL", "raw_shop", True),
    ("SCHEMA_NAME", "NOT_EQUAL", "raw_shop", False),
    ("CONNECTION_NAME", "EQUAL", "Shop Postgres", True),
    ("CONNECTION_NAME", "IN", ["Shop MySQL"], False),
    ("TRIGGERED_BY", "EQUAL", "Erathos Schedule", True),
    ("TRIGGERED_BY", "NOT_EQUAL", "Erathos Schedule", False),
    # integer: EQUAL, NOT_EQUAL, IN, NOT_IN, LESS_THAN, GREATER_THAN (as numbers)
    ("ROWS", "EQUAL", "1520", True),
    ("ROWS", "EQUAL", "1521", False),
    ("ROWS", "EQUAL", " 1520 ", True),
    ("ROWS", "NOT_EQUAL", "0", True),
    ("ROWS", "NOT_EQUAL", "1520", False),
    ("ROWS", "IN", ["1", "1520"], True),
    ("ROWS", "IN", ["1", "2"], False),
    ("ROWS", "NOT_IN", ["0"], True),
    ("ROWS", "NOT_IN", ["0", "1520"], False),
    ("ROWS", "LESS_THAN", "1521", True),
    ("ROWS", "LESS_THAN", "1520", False),
    ("ROWS", "LESS_THAN", "10000", True),
    ("ROWS", "GREATER_THAN", "1519", True),
    ("ROWS", "GREATER_THAN", "1520", False),
    ("ROWS", "GREATER_THAN", "999", True),
    ("ROWS", "GREATER_THAN", "-1", True),
    ("COLUMNS", "EQUAL", "12", True),
    ("COLUMNS", "GREATER_THAN", "12", False),
    ("TOTAL_DURATION", "LESS_THAN", "60", True),
    ("TOTAL_DURATION", "GREATER_THAN", "60", False),
    ("FINISHED_AT_WEEKDAY", "EQUAL", "6", True),
    ("FINISHED_AT_WEEKDAY", "IN", ["1", "2", "3", "4", "5"], False),
    ("FINISHED_AT_WEEKDAY", "NOT_IN", ["0", "6"], False),
    ("FINISHED_AT_WEEKDAY", "GREATER_THAN", "5", True),
    # boolean: EQUAL, NOT_EQUAL (case-insensitive)
    ("FORCE_HISTORY", "EQUAL", "false", True),
    ("FORCE_HISTORY", "EQUAL", "true", False),
    ("FORCE_HISTORY", "EQUAL", "FALSE", True),
    ("FORCE_HISTORY", "EQUAL", "False", True),
    ("FORCE_HISTORY", "NOT_EQUAL", "true", True),
    ("FORCE_HISTORY", "NOT_EQUAL", "TRUE", True),
    ("FORCE_HISTORY", "NOT_EQUAL", "false", False),
    ("NESTED_TABLE", "EQUAL", "false", True),
    ("IS_ORCHESTRATION", "EQUAL", "true", False),
    # date: LESS_THAN, GREATER_THAN (in time order)
    ("FINISHED_AT_DATE", "LESS_THAN", "2026-11-29", True),
    ("FINISHED_AT_DATE", "LESS_THAN", "2027-01-01", True),
    ("FINISHED_AT_DATE", "LESS_THAN", "2026-11-28", False),
    ("FINISHED_AT_DATE", "GREATER_THAN", "2026-11-27", True),
    ("FINISHED_AT_DATE", "GREATER_THAN", "2026-11-28", False),
    ("FINISHED_AT_DATE", "GREATER_THAN", "2027-01-01", False),
    # time: LESS_THAN, GREATER_THAN (in time order)
    ("FINISHED_AT_TIME", "LESS_THAN", "06:16", True),
    ("FINISHED_AT_TIME", "LESS_THAN", "06:15", False),
    ("FINISHED_AT_TIME", "LESS_THAN", "10:00", True),
    ("FINISHED_AT_TIME", "GREATER_THAN", "06:14", True),
    ("FINISHED_AT_TIME", "GREATER_THAN", "06:15", False),
    ("FINISHED_AT_TIME", "GREATER_THAN", "23:59", False),
]


@pytest.mark.parametrize(
    ("name", "operation", "value", "expected"),
    [pytest.param(*row, id=f"{row[0]}-{row[1]}-{row[2]}-{row[3]}") for row in OPERATOR_TABLE],
)
def test_every_operator_compares_as_the_metadata_type(
    name: str, operation: str, value: Any, expected: bool
) -> None:
    assert holds(rule(name, operation, value), event()) is expected


def test_the_operator_table_covers_every_allowed_operation_of_every_type() -> None:
    covered = {(METADATA[name.lower()], Operation(op)) for name, op, _, _ in OPERATOR_TABLE}
    allowed = {(kind, op) for kind, ops in ALLOWED.items() for op in ops}

    assert covered == allowed


def test_the_allowed_operations_are_the_documented_ones() -> None:
    eq = {Operation.EQUAL, Operation.NOT_EQUAL}
    member = {Operation.IN, Operation.NOT_IN}
    order = {Operation.LESS_THAN, Operation.GREATER_THAN}

    documented = {
        MetadataType.UUID: eq | member,
        MetadataType.STRING: eq | member,
        MetadataType.INTEGER: eq | member | order,
        MetadataType.DATE: order,
        MetadataType.TIME: order,
        MetadataType.BOOLEAN: eq,
    }

    assert documented == ALLOWED


@pytest.mark.parametrize(
    ("operation", "value", "expected"),
    [
        ("EQUAL", EXECUTION_ID, True),
        ("EQUAL", EXECUTION_ID.upper(), True),
        ("EQUAL", OTHER_ID, False),
        ("NOT_EQUAL", EXECUTION_ID, False),
        ("NOT_EQUAL", OTHER_ID, True),
        ("IN", [OTHER_ID, EXECUTION_ID], True),
        ("IN", [OTHER_ID], False),
        ("NOT_IN", [EXECUTION_ID], False),
        ("NOT_IN", [OTHER_ID], True),
    ],
)
def test_an_execution_id_rule_compares_the_execution_id(
    operation: str, value: Any, expected: bool
) -> None:
    assert holds(rule("EXECUTION_ID", operation, value), event()) is expected


@pytest.mark.parametrize("sent", ["06:15Z", "06:15+00:00"])
def test_a_time_sent_with_a_utc_offset_is_compared_not_a_crash(sent: str) -> None:
    ev = event(finished_at_time=sent)

    assert holds(rule("FINISHED_AT_TIME", "GREATER_THAN", "02:59"), ev) is True
    assert holds(rule("FINISHED_AT_TIME", "LESS_THAN", "06:00"), ev) is False


# The presets Erathos's docs suggest.

SUCCESS_WITH_DATA = [rule("STATUS", "EQUAL", "FINISHED"), rule("ROWS", "GREATER_THAN", "0")]
WEEKDAY_NIGHTS = [
    rule("FINISHED_AT_WEEKDAY", "IN", ["1", "2", "3", "4", "5"]),
    rule("FINISHED_AT_TIME", "GREATER_THAN", "02:59"),
    rule("FINISHED_AT_TIME", "LESS_THAN", "11:00"),
]


@pytest.mark.parametrize(
    ("rules", "overrides", "expected"),
    [
        pytest.param(SUCCESS_WITH_DATA, {}, True, id="data-finished"),
        pytest.param(SUCCESS_WITH_DATA, {"rows": "1"}, True, id="data-one-row"),
        pytest.param(SUCCESS_WITH_DATA, {"rows": "0"}, False, id="data-no-rows"),
        pytest.param(SUCCESS_WITH_DATA, {"status": "FAILED"}, False, id="data-failed"),
        pytest.param(SUCCESS_WITH_DATA, {"rows": ""}, False, id="data-rows-missing"),
        pytest.param([rule("STATUS", "EQUAL", "FAILED")], {"status": "FAILED"}, True, id="fail"),
        pytest.param([rule("STATUS", "EQUAL", "FAILED")], {}, False, id="fail-finished"),
        pytest.param(
            WEEKDAY_NIGHTS,
            {"finished_at_weekday": "1", "finished_at_time": "03:00"},
            True,
            id="nights-monday-03:00",
        ),
        pytest.param(
            WEEKDAY_NIGHTS,
            {"finished_at_weekday": "5", "finished_at_time": "10:59"},
            True,
            id="nights-friday-10:59",
        ),
        pytest.param(
            WEEKDAY_NIGHTS,
            {"finished_at_weekday": "3", "finished_at_time": "02:59"},
            False,
            id="nights-wednesday-02:59",
        ),
        pytest.param(
            WEEKDAY_NIGHTS,
            {"finished_at_weekday": "3", "finished_at_time": "11:00"},
            False,
            id="nights-wednesday-11:00",
        ),
        pytest.param(
            WEEKDAY_NIGHTS,
            {"finished_at_weekday": "0", "finished_at_time": "05:00"},
            False,
            id="nights-sunday",
        ),
        pytest.param(
            WEEKDAY_NIGHTS,
            {"finished_at_weekday": "6", "finished_at_time": "05:00"},
            False,
            id="nights-saturday",
        ),
        pytest.param(
            [rule("FORCE_HISTORY", "EQUAL", "true")], {"force_history": "true"}, True, id="full"
        ),
        pytest.param(
            [rule("FORCE_HISTORY", "EQUAL", "true")], {"force_history": "false"}, False, id="part"
        ),
        pytest.param(
            [rule("FORCE_HISTORY", "EQUAL", "TRUE")], {"force_history": "True"}, True, id="FULL"
        ),
        pytest.param(
            [rule("NESTED_TABLE", "EQUAL", "false")], {"nested_table": "false"}, True, id="main"
        ),
        pytest.param(
            [rule("NESTED_TABLE", "EQUAL", "false")], {"nested_table": "true"}, False, id="nested"
        ),
        pytest.param([rule("TRIGGERED_BY", "EQUAL", "Erathos Schedule")], {}, True, id="scheduled"),
        pytest.param(
            [rule("TRIGGERED_BY", "EQUAL", "Erathos Schedule")],
            {"triggered_by": "ana@example.com"},
            False,
            id="scheduled-by-a-user",
        ),
        pytest.param(
            [rule("IS_ORCHESTRATION", "EQUAL", "true")],
            {"is_orchestration": "true"},
            True,
            id="api-started",
        ),
        pytest.param(
            [rule("IS_ORCHESTRATION", "EQUAL", "true")],
            {"is_orchestration": "false"},
            False,
            id="not-api-started",
        ),
    ],
)
def test_the_documented_presets_select_the_events_they_promise(
    rules: list[dict[str, Any]], overrides: dict[str, str], expected: bool
) -> None:
    assert all_hold(rules, event(**overrides)) is expected


def test_no_rules_means_every_event_passes() -> None:
    assert parse_rules([]) == ()
    assert parse_rules(None) == ()
    assert first_failing((), event()) is None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({"erathos_variable": "STATUS", "operation": "EQUAL", "value": "FINISHED"}),
        pytest.param({"variable_name": "status", "operation": "equal", "value": "FINISHED"}),
        pytest.param({"variable_name": "Status", "operation": "Equal", "value": "FINISHED"}),
    ],
)
def test_other_spellings_of_a_rule_mean_the_same_rule(raw: dict[str, Any]) -> None:
    documented = Rule.parse(rule("STATUS", "EQUAL", "FINISHED"))

    parsed = Rule.parse(raw)

    assert (parsed.variable, parsed.operation, parsed.operands) == (
        documented.variable,
        documented.operation,
        documented.operands,
    )
    assert parsed.holds(event()) is True
    assert parsed.holds(event(status="FAILED")) is False


GOOD = rule("STATUS", "EQUAL", "FINISHED")


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        pytest.param(rule("STARTED_AT", "EQUAL", "x"), "variable_name", id="unknown-metadata"),
        pytest.param(rule("", "EQUAL", "x"), "variable_name", id="empty-metadata"),
        pytest.param(rule(None, "EQUAL", "x"), "variable_name", id="null-metadata"),
        pytest.param({"operation": "EQUAL", "value": "x"}, "variable_name", id="no-metadata"),
        pytest.param(rule("STATUS", "CONTAINS", "x"), "operation", id="unknown-operation"),
        pytest.param(rule("STATUS", None, "x"), "operation", id="null-operation"),
        pytest.param(
            {"variable_name": "STATUS", "value": "x"}, "operation", id="missing-operation"
        ),
        pytest.param(rule("STATUS", "LESS_THAN", "x"), "operation", id="order-on-string"),
        pytest.param(rule("JOB_ID", "GREATER_THAN", JOB_ID), "operation", id="order-on-uuid"),
        pytest.param(rule("FINISHED_AT_DATE", "IN", ["2026-11-28"]), "operation", id="in-on-date"),
        pytest.param(
            rule("FINISHED_AT_DATE", "EQUAL", "2026-11-28"), "operation", id="equal-on-date"
        ),
        pytest.param(rule("FINISHED_AT_TIME", "EQUAL", "06:15"), "operation", id="equal-on-time"),
        pytest.param(
            rule("FINISHED_AT_TIME", "NOT_IN", ["06:15"]), "operation", id="not-in-on-time"
        ),
        pytest.param(rule("FORCE_HISTORY", "IN", ["true"]), "operation", id="in-on-boolean"),
        pytest.param(
            rule("FORCE_HISTORY", "GREATER_THAN", "false"), "operation", id="order-on-boolean"
        ),
        pytest.param(rule("STATUS", "EQUAL", ["FINISHED"]), "value", id="list-for-equal"),
        pytest.param(rule("ROWS", "GREATER_THAN", ["0"]), "value", id="list-for-order"),
        pytest.param(rule("STATUS", "IN", "FINISHED"), "value", id="scalar-for-in"),
        pytest.param(rule("STATUS", "NOT_IN", "FAILED"), "value", id="scalar-for-not-in"),
        pytest.param(rule("STATUS", "IN", []), "value", id="empty-list-for-in"),
        pytest.param(rule("ROWS", "GREATER_THAN", 0), "value", id="number-value"),
        pytest.param(rule("FORCE_HISTORY", "EQUAL", True), "value", id="boolean-value"),
        pytest.param(rule("STATUS", "EQUAL", None), "value", id="null-value"),
        pytest.param({"variable_name": "STATUS", "operation": "EQUAL"}, "value", id="no-value"),
        pytest.param(rule("ROWS", "IN", ["1", 2]), "value", id="number-in-list"),
        pytest.param(rule("ROWS", "GREATER_THAN", "many"), "value", id="bad-integer"),
        pytest.param(rule("ROWS", "GREATER_THAN", "1.5"), "value", id="fractional-integer"),
        pytest.param(rule("ROWS", "IN", ["1", "two"]), "value", id="bad-integer-in-list"),
        pytest.param(rule("FINISHED_AT_DATE", "LESS_THAN", "28/11/2026"), "value", id="bad-date"),
        pytest.param(
            rule("FINISHED_AT_DATE", "LESS_THAN", "2026-02-30"), "value", id="impossible-date"
        ),
        pytest.param(rule("FINISHED_AT_TIME", "LESS_THAN", "25:00"), "value", id="bad-time"),
        pytest.param(rule("FINISHED_AT_TIME", "LESS_THAN", "noon"), "value", id="word-time"),
        pytest.param(rule("JOB_ID", "EQUAL", "not-a-uuid"), "value", id="bad-uuid"),
        pytest.param(rule("JOB_ID", "IN", [JOB_ID, "nope"]), "value", id="bad-uuid-in-list"),
        pytest.param(rule("FORCE_HISTORY", "EQUAL", "yes"), "value", id="bad-boolean"),
        pytest.param(rule("FORCE_HISTORY", "EQUAL", "1"), "value", id="numeric-boolean"),
    ],
)
def test_a_malformed_rule_is_a_rule_error_naming_its_field(bad: dict[str, Any], path: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules([GOOD, bad])

    assert str(caught.value).startswith(f"rules[1].{path}: ")
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param("not a list", "rules: ", id="rules-not-a-list"),
        pytest.param({"variable_name": "STATUS"}, "rules: ", id="rules-an-object"),
        pytest.param(["STATUS EQUAL FINISHED"], "rules[0]: ", id="rule-a-string"),
        pytest.param([GOOD, None], "rules[1]: ", id="rule-null"),
    ],
)
def test_a_rule_list_of_the_wrong_shape_is_a_rule_error(raw: Any, message: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(raw)

    assert str(caught.value).startswith(message)


def test_the_path_prefix_is_the_callers() -> None:
    with pytest.raises(RuleError, match=r"^routes\.nightly\.rules\[0\]\.operation: "):
        parse_rules([rule("STATUS", "LESS_THAN", "x")], where="routes.nightly.rules")


@pytest.mark.parametrize(
    ("name", "operation", "value"),
    [
        ("JOB_ID", "EQUAL", JOB_ID),
        ("JOB_ID", "NOT_EQUAL", JOB_ID),
        ("JOB_ID", "NOT_IN", [OTHER_ID]),
        ("TABLE_NAME", "NOT_EQUAL", "customers"),
        ("TABLE_NAME", "NOT_IN", ["customers"]),
        ("STATUS", "EQUAL", "FINISHED"),
        ("ROWS", "GREATER_THAN", "-1"),
        ("ROWS", "NOT_EQUAL", "0"),
        ("ROWS", "NOT_IN", ["0"]),
        ("FORCE_HISTORY", "NOT_EQUAL", "true"),
        ("NESTED_TABLE", "EQUAL", "false"),
        ("FINISHED_AT_DATE", "GREATER_THAN", "1970-01-01"),
        ("FINISHED_AT_TIME", "LESS_THAN", "23:59"),
        ("FINISHED_AT_WEEKDAY", "NOT_IN", ["7"]),
    ],
)
def test_a_missing_metadata_value_makes_a_rule_not_hold(
    name: str, operation: str, value: Any
) -> None:
    bare = ErathosEvent.model_validate({"execution_id": EXECUTION_ID})

    assert holds(rule(name, operation, value), bare) is False


def test_first_failing_returns_the_first_rule_that_does_not_hold() -> None:
    rules = parse_rules(
        [
            rule("STATUS", "EQUAL", "FINISHED"),
            rule("ROWS", "GREATER_THAN", "5000"),
            rule("FORCE_HISTORY", "EQUAL", "true"),
        ]
    )

    assert first_failing(rules, event()) is rules[1]
    assert first_failing(rules, event(rows="6000")) is rules[2]
    assert first_failing(rules, event(rows="6000", force_history="true")) is None
    assert first_failing(rules, event(status="FAILED", rows="0")) is rules[0]


@pytest.mark.parametrize(
    ("raw", "overrides", "explanation"),
    [
        (
            rule("ROWS", "GREATER_THAN", "0"),
            {"rows": "0"},
            "ROWS GREATER_THAN '0' does not hold (ROWS is '0')",
        ),
        (
            rule("ROWS", "GREATER_THAN", "0"),
            {"rows": ""},
            "ROWS GREATER_THAN '0' does not hold (ROWS is missing)",
        ),
        (
            rule("status", "equal", "FINISHED"),
            {"status": "FAILED"},
            "STATUS EQUAL 'FINISHED' does not hold (STATUS is 'FAILED')",
        ),
        (
            rule("FORCE_HISTORY", "EQUAL", "true"),
            {},
            "FORCE_HISTORY EQUAL 'true' does not hold (FORCE_HISTORY is 'false')",
        ),
        (
            rule("FINISHED_AT_TIME", "LESS_THAN", "06:00"),
            {},
            "FINISHED_AT_TIME LESS_THAN '06:00' does not hold (FINISHED_AT_TIME is '06:15')",
        ),
        (
            rule("FINISHED_AT_WEEKDAY", "IN", ["1", "2"]),
            {},
            "FINISHED_AT_WEEKDAY IN ['1', '2'] does not hold (FINISHED_AT_WEEKDAY is '6')",
        ),
    ],
)
def test_explain_failure_says_which_rule_failed_and_what_the_value_was(
    raw: dict[str, Any], overrides: dict[str, str], explanation: str
) -> None:
    parsed = Rule.parse(raw)
    ev = event(**overrides)

    assert not parsed.holds(ev)
    assert parsed.explain_failure(ev) == explanation


CANONICAL_RULES = [
    rule("JOB_ID", "EQUAL", JOB_ID),
    rule("CONNECTION_ID", "NOT_IN", [JOB_ID, OTHER_ID]),
    rule("EXECUTION_ID", "NOT_EQUAL", OTHER_ID),
    rule("STATUS", "EQUAL", "FINISHED"),
    rule("TABLE_NAME", "IN", ["orders", "customers"]),
    rule("TRIGGERED_BY", "NOT_EQUAL", "Erathos Schedule"),
    rule("ROWS", "GREATER_THAN", "0"),
    rule("COLUMNS", "LESS_THAN", "100"),
    rule("TOTAL_DURATION", "NOT_IN", ["0", "1"]),
    rule("FINISHED_AT_WEEKDAY", "IN", ["1", "2", "3", "4", "5"]),
    rule("FORCE_HISTORY", "EQUAL", "true"),
    rule("NESTED_TABLE", "NOT_EQUAL", "false"),
    rule("FINISHED_AT_DATE", "GREATER_THAN", "2026-01-01"),
    rule("FINISHED_AT_TIME", "LESS_THAN", "11:00"),
]


@pytest.mark.parametrize(
    "raw", [pytest.param(r, id=f"{r['variable_name']}-{r['operation']}") for r in CANONICAL_RULES]
)
def test_to_erathos_writes_a_rule_back_as_erathos_takes_it(raw: dict[str, Any]) -> None:
    parsed = Rule.parse(raw)

    assert to_erathos(parsed) == raw
    assert Rule.parse(to_erathos(parsed)) == parsed


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(rule("FORCE_HISTORY", "EQUAL", "TRUE"), id="upper-case-boolean"),
        pytest.param(rule("JOB_ID", "IN", [JOB_ID.upper()]), id="upper-case-uuid"),
        pytest.param(rule("rows", "greater_than", "0"), id="lower-case-names"),
        pytest.param(rule("ROWS", "EQUAL", "007"), id="leading-zeros"),
        pytest.param({"erathos_variable": "STATUS", "operation": "EQUAL", "value": "FINISHED"}),
    ],
)
def test_to_erathos_round_trips_any_spelling_to_an_equal_rule(raw: dict[str, Any]) -> None:
    parsed = Rule.parse(raw)

    assert Rule.parse(to_erathos(parsed)) == parsed


def test_to_erathos_keeps_the_seconds_of_a_time() -> None:
    parsed = Rule.parse(rule("FINISHED_AT_TIME", "LESS_THAN", "11:00:30"))
    ev = event(finished_at_time="11:00:15")

    again = Rule.parse(to_erathos(parsed))

    assert again.operands == parsed.operands
    assert again.holds(ev) is parsed.holds(ev) is True
