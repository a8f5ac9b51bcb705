"""The Erathos event: every value as Erathos renders it (a string), any case of name."""

from __future__ import annotations

from datetime import date, time
from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from app.routing.event import METADATA, ErathosEvent, MetadataType
from tests.support.erathos import execution

JOB_ID = "5f0c6a4e-8a55-4d0c-9b1e-0d7a3c2b1a01"
CONNECTION_ID = "0b7d3c2a-1e4f-4a6b-8c9d-0e1f2a3b4c02"
EXECUTION_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c03"


def sent(**overrides: Any) -> dict[str, str]:
    """What Erathos sends for one execution: every documented field, as strings."""
    fixed = {"job_id": JOB_ID, "connection_id": CONNECTION_ID, "execution_id": EXECUTION_ID}
    return execution(**{**fixed, **overrides})


def errors_at(exc: ValidationError, field: str) -> list[str]:
    return [str(error["msg"]) for error in exc.errors() if error["loc"] == (field,)]


def test_the_model_knows_exactly_the_documented_metadata() -> None:
    assert METADATA == {
        "job_id": MetadataType.UUID,
        "connection_id": MetadataType.UUID,
        "connection_name": MetadataType.STRING,
        "schema_name": MetadataType.STRING,
        "table_name": MetadataType.STRING,
        "execution_id": MetadataType.UUID,
        "status": MetadataType.STRING,
        "rows": MetadataType.INTEGER,
        "columns": MetadataType.INTEGER,
        "total_duration": MetadataType.INTEGER,
        "triggered_by": MetadataType.STRING,
        "is_orchestration": MetadataType.BOOLEAN,
        "force_history": MetadataType.BOOLEAN,
        "nested_table": MetadataType.BOOLEAN,
        "finished_at_date": MetadataType.DATE,
        "finished_at_time": MetadataType.TIME,
        "finished_at_weekday": MetadataType.INTEGER,
    }


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("JOB_ID", JOB_ID, UUID(JOB_ID)),
        ("CONNECTION_ID", CONNECTION_ID, UUID(CONNECTION_ID)),
        ("CONNECTION_NAME", "Shop Postgres", "Shop Postgres"),
        ("SCHEMA_NAME", "raw_shop", "raw_shop"),
        ("TABLE_NAME", "orders", "orders"),
        ("EXECUTION_ID", EXECUTION_ID, EXECUTION_ID),
        ("STATUS", "FINISHED", "FINISHED"),
        ("STATUS", "FAILED", "FAILED"),
        ("ROWS", "1520", 1520),
        ("ROWS", "0", 0),
        ("COLUMNS", "12", 12),
        ("TOTAL_DURATION", "42", 42),
        ("TRIGGERED_BY", "Erathos Schedule", "Erathos Schedule"),
        ("TRIGGERED_BY", "ana@example.com", "ana@example.com"),
        ("IS_ORCHESTRATION", "true", True),
        ("FORCE_HISTORY", "false", False),
        ("NESTED_TABLE", "false", False),
        ("FINISHED_AT_DATE", "2026-11-28", date(2026, 11, 28)),
        ("FINISHED_AT_TIME", "06:15", time(6, 15)),
        ("FINISHED_AT_TIME", "00:00", time(0, 0)),
        ("FINISHED_AT_WEEKDAY", "6", 6),
        ("FINISHED_AT_WEEKDAY", "0", 0),
    ],
)
def test_every_documented_field_is_typed_from_the_string_erathos_sends(
    name: str, text: str, expected: object
) -> None:
    event = ErathosEvent.model_validate(sent(**{name: text}))

    value = event.value(name)

    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("field", ["IS_ORCHESTRATION", "FORCE_HISTORY", "NESTED_TABLE"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False)],
)
def test_a_boolean_is_read_in_any_case(field: str, text: str, expected: bool) -> None:
    event = ErathosEvent.model_validate(sent(**{field: text}))

    assert event.value(field) is expected


@pytest.mark.parametrize("key", ["TABLE_NAME", "table_name", "Table_Name", "tAbLe_NaMe"])
def test_names_are_case_insensitive(key: str) -> None:
    event = ErathosEvent.model_validate({"EXECUTION_ID": EXECUTION_ID, key: "orders"})

    assert event.table_name == "orders"
    assert event.value("TABLE_NAME") == event.value("table_name") == "orders"


def test_the_execution_id_name_is_case_insensitive_too() -> None:
    event = ErathosEvent.model_validate({"Execution_Id": EXECUTION_ID})

    assert event.execution_id == EXECUTION_ID


OPTIONAL = [name for name in METADATA if name != "execution_id"]


@pytest.mark.parametrize("name", OPTIONAL)
@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_string_is_no_value_for_an_optional_field(name: str, blank: str) -> None:
    event = ErathosEvent.model_validate(sent(**{name: blank}))

    assert event.value(name) is None


@pytest.mark.parametrize("name", OPTIONAL)
def test_an_optional_field_may_be_left_out(name: str) -> None:
    body = {key: value for key, value in sent().items() if key.lower() != name}

    event = ErathosEvent.model_validate(body)

    assert event.value(name) is None


def test_only_the_execution_id_is_required() -> None:
    event = ErathosEvent.model_validate({"execution_id": EXECUTION_ID})

    assert event.execution_id == EXECUTION_ID
    assert all(event.value(name) is None for name in OPTIONAL)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"table_name": "orders"}, id="missing"),
        pytest.param({"execution_id": ""}, id="empty"),
        pytest.param({"execution_id": "   "}, id="blank"),
        pytest.param({"execution_id": None}, id="null"),
        pytest.param({"execution_id": "a b"}, id="space-inside"),
        pytest.param({"execution_id": "x" * 200}, id="200-chars"),
        pytest.param({"execution_id": "x" * 129}, id="129-chars"),
        pytest.param({"execution_id": "-starts-with-dash"}, id="leading-dash"),
        pytest.param({"execution_id": "exec/42"}, id="slash"),
        pytest.param({"execution_id": "${{secrets.KEY}}"}, id="placeholder"),
        pytest.param({"execution_id": True}, id="boolean"),
        pytest.param({"execution_id": ["9a8b"]}, id="list"),
    ],
)
def test_a_missing_or_malformed_execution_id_is_refused_by_name(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        ErathosEvent.model_validate(body)

    assert errors_at(caught.value, "execution_id")
    assert "execution_id" in str(caught.value)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        pytest.param(EXECUTION_ID.upper(), EXECUTION_ID, id="upper-case-uuid"),
        pytest.param(EXECUTION_ID.replace("-", ""), EXECUTION_ID, id="uuid-without-hyphens"),
        pytest.param(f"urn:uuid:{EXECUTION_ID}", EXECUTION_ID, id="urn-uuid"),
        pytest.param(f"  {EXECUTION_ID}  ", EXECUTION_ID, id="surrounding-spaces"),
        pytest.param(EXECUTION_ID, EXECUTION_ID, id="canonical"),
        pytest.param("exec-42", "exec-42", id="id-shaped-not-uuid"),
        pytest.param("x" * 128, "x" * 128, id="128-chars"),
        pytest.param(42, "42", id="integer"),
    ],
)
def test_the_execution_id_is_canonical(given: object, stored: str) -> None:
    event = ErathosEvent.model_validate({"execution_id": given})

    assert event.execution_id == stored


@pytest.mark.parametrize(
    ("first", "second", "value"),
    [
        ("STATUS", "status", "FINISHED"),
        ("table_name", "Table_Name", "orders"),
        ("EXECUTION_ID", "execution_id", EXECUTION_ID),
    ],
)
def test_the_same_name_twice_in_different_case_is_refused(
    first: str, second: str, value: str
) -> None:
    body = {"execution_id": EXECUTION_ID, first: value, second: value}

    with pytest.raises(ValidationError) as caught:
        ErathosEvent.model_validate(body)

    assert first.lower() in str(caught.value)
    assert "more than once" in str(caught.value)


def test_unknown_fields_are_kept_apart_in_extra_with_their_spelling() -> None:
    body = {**sent(), "Customer": "acme", "retry": 2, "extra": {"nested": True}}

    event = ErathosEvent.model_validate(body)

    assert event.extra == {"Customer": "acme", "retry": 2, "extra": {"nested": True}}
    assert "Customer" not in event.model_dump()
    assert "extra" not in event.model_dump()


def test_strings_are_trimmed_and_the_status_upper_cased() -> None:
    event = ErathosEvent.model_validate(sent(table_name="  orders ", status=" finished "))

    assert event.table_name == "orders"
    assert event.status == "FINISHED"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("FINISHED_AT_WEEKDAY", "7"),
        ("FINISHED_AT_WEEKDAY", "-1"),
        ("ROWS", "-1"),
        ("COLUMNS", "-3"),
        ("TOTAL_DURATION", "-42"),
        ("ROWS", "many"),
        ("ROWS", "1.5"),
        ("FINISHED_AT_DATE", "28/11/2026"),
        ("FINISHED_AT_DATE", "2026-13-01"),
        ("FINISHED_AT_TIME", "25:00"),
        ("FINISHED_AT_TIME", "noon"),
        ("FORCE_HISTORY", "maybe"),
        ("JOB_ID", "not-a-uuid"),
        ("CONNECTION_ID", "1234"),
        ("TABLE_NAME", "t" * 1025),
    ],
)
def test_a_value_out_of_range_or_of_the_wrong_type_is_refused_by_name(name: str, text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ErathosEvent.model_validate(sent(**{name: text}))

    assert errors_at(caught.value, name.lower())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([], id="list"),
        pytest.param([{"execution_id": EXECUTION_ID}], id="list-of-objects"),
        pytest.param("execution_id", id="string"),
        pytest.param(42, id="number"),
        pytest.param(None, id="null"),
        pytest.param(True, id="boolean"),
    ],
)
def test_a_body_that_is_not_an_object_is_refused(body: object) -> None:
    with pytest.raises(ValidationError, match="must be a JSON object"):
        ErathosEvent.model_validate(body)


def test_as_strings_gives_back_what_erathos_sent() -> None:
    body = sent()

    event = ErathosEvent.model_validate(body)

    assert event.as_strings() == {name.lower(): text for name, text in body.items()}


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {"is_orchestration": "true", "force_history": "true", "nested_table": "true"},
            id="booleans-true",
        ),
        pytest.param({"status": "FAILED", "rows": "0", "finished_at_weekday": "0"}, id="failed"),
        pytest.param(
            {"finished_at_time": "00:00", "finished_at_date": "2027-01-01"}, id="midnight"
        ),
        pytest.param({"triggered_by": "ana@example.com"}, id="user"),
    ],
)
def test_as_strings_round_trips_through_the_model(overrides: dict[str, str]) -> None:
    body = sent(**overrides)
    event = ErathosEvent.model_validate(body)

    again = ErathosEvent.model_validate(event.as_strings())

    assert event.as_strings() == {name.lower(): text for name, text in body.items()}
    assert again == event


def test_as_strings_renders_missing_values_as_empty_strings() -> None:
    event = ErathosEvent.model_validate({"execution_id": EXECUTION_ID})

    strings = event.as_strings()

    assert strings["execution_id"] == EXECUTION_ID
    assert {strings[name] for name in OPTIONAL} == {""}


def test_as_strings_writes_booleans_times_and_uuids_as_erathos_does() -> None:
    event = ErathosEvent.model_validate(
        sent(force_history="True", finished_at_time="06:15", job_id=JOB_ID.upper())
    )

    strings = event.as_strings()

    assert strings["force_history"] == "true"
    assert strings["finished_at_time"] == "06:15"
    assert strings["job_id"] == JOB_ID
