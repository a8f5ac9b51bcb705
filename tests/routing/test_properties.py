"""Property tests (Hypothesis): whatever a caller sends, templates never expand it, rules
never raise, and an event either validates or is refused with a ValidationError."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from app.routing.event import METADATA, ErathosEvent
from app.routing.rules import Operation, Rule, RuleError
from app.routing.templates import Lookup, compile_json, compile_text, render_json

SECRET = "s3cr3t-value-never-shown"
LOOKUP = Lookup(variables={"TEAM": "analytics"}, secrets={"API_KEY": SecretStr(SECRET)})
PLACEHOLDERISH = st.sampled_from(
    ["${{secrets.API_KEY}}", "${{variables.TEAM}}", "${{erathos.table_name}}", "${{", "}}", "$"]
)
TEXT = st.lists(st.one_of(st.text(max_size=20), PLACEHOLDERISH), max_size=6).map("".join)
METADATA_NAMES = st.sampled_from(sorted(METADATA))
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    TEXT,
    st.lists(TEXT, max_size=3),
    st.dictionaries(TEXT, TEXT, max_size=3),
)


@given(table=TEXT, schema=TEXT)
@settings(max_examples=300)
def test_incoming_values_are_inserted_as_data_never_expanded(table: str, schema: str) -> None:
    event = ErathosEvent(execution_id="e-1", table_name=table, schema_name=schema)
    name = compile_text("run ${{erathos.table_name}}/${{erathos.schema_name}}", LOOKUP, where="t")
    body = compile_json({"p": {"table": "${{erathos.table_name}}"}}, LOOKUP, where="t")

    rendered = name.render(event, LOOKUP)
    typed = render_json(body, event, LOOKUP)

    assert rendered == f"run {event.table_name or ''}/{event.schema_name or ''}"
    assert typed == {"p": {"table": event.table_name}}
    if SECRET not in table + schema:
        assert SECRET not in rendered


@given(
    variable=st.one_of(METADATA_NAMES, TEXT),
    operation=st.one_of(st.sampled_from([o.value for o in Operation]), TEXT),
    value=ANY_VALUE,
    event=st.dictionaries(METADATA_NAMES, TEXT, max_size=8),
)
@settings(max_examples=500)
def test_rules_parse_or_refuse_and_never_raise_while_evaluating(
    variable: str, operation: str, value: Any, event: dict[str, str]
) -> None:
    try:
        rule = Rule.parse({"variable_name": variable, "operation": operation, "value": value})
    except RuleError:
        return
    try:
        parsed = ErathosEvent.model_validate({"execution_id": "e-1", **event})
    except ValidationError:
        return
    assert rule.holds(parsed) in (True, False)
    assert isinstance(rule.explain_failure(parsed), str)


@given(
    st.dictionaries(
        st.one_of(METADATA_NAMES, METADATA_NAMES.map(str.upper), TEXT), ANY_VALUE, max_size=20
    )
)
@settings(max_examples=500)
def test_any_body_validates_or_is_refused_with_a_validation_error(body: dict[str, Any]) -> None:
    try:
        event = ErathosEvent.model_validate(body)
    except ValidationError:
        return  # refused the one way the webhook turns into a 422
    assert event.execution_id
    assert set(event.as_strings()) == set(METADATA)
