"""Erathos placeholders: compiled once, rendered as Erathos would, never re-scanned."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import SecretStr

from app.routing.event import METADATA, ErathosEvent
from app.routing.templates import (
    MASK,
    Lookup,
    Template,
    TemplateError,
    compile_json,
    compile_text,
    render_json,
)
from tests.support.erathos import execution

SECRET = "pnu_Sup3rS3cretApiKeyValue_4711"
HOME = "/home/bridge-operator-9137"
FLOW_ID = "00000000-0000-0000-0000-00000000f10e"
JOB_ID = "5f0c6a4e-8a55-4d0c-9b1e-0d7a3c2b1a01"
CONNECTION_ID = "0b7d3c2a-1e4f-4a6b-8c9d-0e1f2a3b4c02"
EXECUTION_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c03"

LOOKUP = Lookup(
    variables={"HOME": HOME, "PREFECT_FLOW_ID": FLOW_ID, "EMPTY": ""},
    secrets={"PREFECT_API_KEY": SecretStr(SECRET)},
)


def event(**overrides: Any) -> ErathosEvent:
    fixed = {"job_id": JOB_ID, "connection_id": CONNECTION_ID, "execution_id": EXECUTION_ID}
    return ErathosEvent.model_validate(execution(**{**fixed, **overrides}))


def render(template: str, ev: ErathosEvent | None = None, *, mask: bool = False) -> str:
    return compile_text(template, LOOKUP, where="T").render(ev, LOOKUP, mask=mask)


@pytest.mark.parametrize(
    ("name", "sent", "rendered"),
    [
        ("job_id", JOB_ID.upper(), JOB_ID),
        ("connection_id", CONNECTION_ID, CONNECTION_ID),
        ("connection_name", "Shop Postgres", "Shop Postgres"),
        ("schema_name", "raw_shop", "raw_shop"),
        ("table_name", "orders", "orders"),
        ("execution_id", EXECUTION_ID, EXECUTION_ID),
        ("status", "FINISHED", "FINISHED"),
        ("rows", "1520", "1520"),
        ("rows", "0", "0"),
        ("columns", "12", "12"),
        ("total_duration", "42", "42"),
        ("triggered_by", "Erathos Schedule", "Erathos Schedule"),
        ("is_orchestration", "True", "true"),
        ("force_history", "TRUE", "true"),
        ("nested_table", "false", "false"),
        ("nested_table", "False", "false"),
        ("finished_at_date", "2026-11-28", "2026-11-28"),
        ("finished_at_time", "06:15", "06:15"),
        ("finished_at_time", "06:15:42", "06:15"),
        ("finished_at_weekday", "6", "6"),
        ("finished_at_weekday", "0", "0"),
    ],
)
def test_erathos_placeholders_render_as_erathos_renders_them(
    name: str, sent: str, rendered: str
) -> None:
    ev = event(**{name: sent})

    assert render(f"<${{{{erathos.{name}}}}}>", ev) == f"<{rendered}>"


@pytest.mark.parametrize("name", [name for name in METADATA if name != "execution_id"])
def test_a_missing_value_renders_as_an_empty_string(name: str) -> None:
    ev = ErathosEvent.model_validate({"execution_id": EXECUTION_ID})

    assert render(f"[${{{{erathos.{name}}}}}]", ev) == "[]"


def test_without_an_event_erathos_placeholders_render_empty() -> None:
    assert render("run_${{erathos.table_name}}_${{variables.HOME}}") == f"run__{HOME}"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${{erathos.TABLE_NAME}}", "orders"),
        ("${{Erathos.Table_Name}}", "orders"),
        ("${{ERATHOS.table_name}}", "orders"),
        ("${{variables.home}}", HOME),
        ("${{VARIABLES.Home}}", HOME),
        ("${{secrets.prefect_api_key}}", SECRET),
        ("${{Secrets.PREFECT_API_KEY}}", SECRET),
    ],
)
def test_namespaces_and_names_are_case_insensitive(template: str, expected: str) -> None:
    assert render(template, event()) == expected


@pytest.mark.parametrize(
    "template",
    [
        "${{ erathos.table_name }}",
        "${{erathos.table_name }}",
        "${{   erathos.table_name}}",
        "${{\terathos.table_name\t}}",
    ],
)
def test_spaces_inside_the_braces_are_allowed(template: str) -> None:
    assert render(template, event()) == "orders"


def test_the_seed_body_renders_every_kind_of_placeholder() -> None:
    template = {
        "name": "erathos_run_${{erathos.table_name}}",
        "flow_id": "${{variables.prefect_flow_id}}",
        "idempotency_key": "${{erathos.execution_id}}",
        "auth": "Bearer ${{secrets.prefect_api_key}}",
    }

    rendered = render_json(compile_json(template, LOOKUP, where="body"), event(), LOOKUP)

    assert rendered == {
        "name": "erathos_run_orders",
        "flow_id": FLOW_ID,
        "idempotency_key": EXECUTION_ID,
        "auth": f"Bearer {SECRET}",
    }


def test_variables_are_resolved_when_compiling() -> None:
    compiled = compile_text("${{variables.HOME}}/${{variables.EMPTY}}x", LOOKUP, where="T")
    nothing = Lookup(variables={}, secrets={})

    assert compiled.is_literal
    assert compiled.render(None, nothing) == f"{HOME}/x"


def test_secrets_are_resolved_only_when_rendering() -> None:
    compiled = compile_text("key=${{secrets.PREFECT_API_KEY}}", LOOKUP, where="T")
    rotated = Lookup(variables={}, secrets={"PREFECT_API_KEY": SecretStr("rotated-key")})

    assert compiled.uses_secrets()
    assert not compiled.is_literal
    assert SECRET not in repr(compiled)
    assert compiled.render(None, rotated) == "key=rotated-key"


def test_a_variable_value_that_looks_like_a_placeholder_stays_literal() -> None:
    lookup = Lookup(
        variables={"TRICK": "${{secrets.PREFECT_API_KEY}}"},
        secrets={"PREFECT_API_KEY": SecretStr(SECRET)},
    )

    rendered = compile_text("${{variables.TRICK}}", lookup, where="T").render(event(), lookup)

    assert rendered == "${{secrets.PREFECT_API_KEY}}"


@pytest.mark.parametrize(
    ("template", "name"),
    [
        pytest.param("run_${{variables.NO_SUCH_VARIABLE}}", "NO_SUCH_VARIABLE", id="variable"),
        pytest.param("Bearer ${{secrets.NO_SUCH_SECRET}}", "NO_SUCH_SECRET", id="secret"),
        pytest.param("${{erathos.started_at}}", "started_at", id="metadata"),
        pytest.param("${{erathos.table}}", "table", id="metadata-typo"),
        pytest.param("${{env.HOME}}", "env", id="namespace"),
        pytest.param("${{variable.HOME}}", "variable", id="namespace-typo"),
        pytest.param("ok ${{erathos.rows}} then ${{secrets.MISSING}}", "MISSING", id="second"),
    ],
)
def test_an_unknown_name_is_a_template_error_naming_where_and_what(
    template: str, name: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_text(template, LOOKUP, where="BRIDGE_FLOW_RUN_NAME")

    message = str(caught.value)
    assert message.startswith("BRIDGE_FLOW_RUN_NAME: ")
    assert name in message
    assert isinstance(caught.value, ValueError)


def test_an_unknown_name_deep_in_json_is_reported_with_its_path() -> None:
    template = {"conf": {"tables": ["${{erathos.table_name}}", "${{variables.NOPE}}"]}}

    with pytest.raises(TemplateError, match=r"^body\.conf\.tables\[1\]: .*NOPE"):
        compile_json(template, LOOKUP, where="body")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("${{erathos.rows}}", 1520, id="integer"),
        pytest.param("${{ erathos.ROWS }}", 1520, id="integer-spaced"),
        pytest.param("${{erathos.finished_at_weekday}}", 6, id="weekday"),
        pytest.param("${{erathos.force_history}}", False, id="boolean-false"),
        pytest.param("${{erathos.is_orchestration}}", True, id="boolean-true"),
        pytest.param("${{erathos.table_name}}", "orders", id="string"),
        pytest.param("${{erathos.job_id}}", JOB_ID, id="uuid-as-string"),
        pytest.param("${{erathos.finished_at_date}}", "2026-11-28", id="date-as-string"),
        pytest.param("${{erathos.finished_at_time}}", "06:15:00", id="time-as-iso-string"),
        pytest.param("at ${{erathos.finished_at_time}}", "at 06:15", id="time-in-text"),
        pytest.param("rows=${{erathos.rows}}", "rows=1520", id="embedded-is-a-string"),
        pytest.param("${{erathos.rows}}${{erathos.columns}}", "152012", id="two-is-a-string"),
        pytest.param("${{variables.HOME}}", HOME, id="variable"),
    ],
)
def test_render_json_keeps_the_type_of_a_lone_metadata_placeholder(
    template: str, expected: object
) -> None:
    compiled = compile_json(template, LOOKUP, where="body")

    rendered = render_json(compiled, event(is_orchestration="true"), LOOKUP)

    assert rendered == expected
    assert type(rendered) is type(expected)


def test_render_json_walks_objects_and_lists_and_leaves_keys_and_non_strings_alone() -> None:
    template = {
        "${{erathos.table_name}}": "key stays literal",
        "conf": {"rows": "${{erathos.rows}}", "full": "${{erathos.force_history}}"},
        "tables": ["${{erathos.schema_name}}.${{erathos.table_name}}", 7, None, True, 1.5],
    }

    rendered = render_json(compile_json(template, LOOKUP, where="body"), event(), LOOKUP)

    assert rendered == {
        "${{erathos.table_name}}": "key stays literal",
        "conf": {"rows": 1520, "full": False},
        "tables": ["raw_shop.orders", 7, None, True, 1.5],
    }


@pytest.mark.parametrize(
    "template",
    [
        "${{secrets.PREFECT_API_KEY}}",
        "Bearer ${{secrets.PREFECT_API_KEY}}",
        "${{secrets.prefect_api_key}}:${{secrets.PREFECT_API_KEY}}",
    ],
)
def test_mask_hides_every_secret_and_nothing_else(template: str) -> None:
    compiled = compile_text(template, LOOKUP, where="T")

    masked = compiled.render(event(), LOOKUP, mask=True)

    assert SECRET not in masked
    assert masked == template_with_mask(template)


def template_with_mask(template: str) -> str:
    for spelling in ("${{secrets.PREFECT_API_KEY}}", "${{secrets.prefect_api_key}}"):
        template = template.replace(spelling, MASK)
    return template


def test_mask_applies_inside_json_and_keeps_metadata() -> None:
    template = {
        "headers": {"Authorization": "Bearer ${{secrets.PREFECT_API_KEY}}"},
        "name": "run_${{erathos.table_name}}",
        "rows": "${{erathos.rows}}",
        "home": "${{variables.HOME}}",
    }

    rendered = render_json(compile_json(template, LOOKUP, where="body"), event(), LOOKUP, mask=True)

    assert rendered == {
        "headers": {"Authorization": f"Bearer {MASK}"},
        "name": "run_orders",
        "rows": 1520,
        "home": HOME,
    }


# THE INJECTION TEST: text arriving in an event is data. A `${{...}}` inside any
# incoming field is rendered as that literal text; it is never resolved.

INJECTIONS = [
    "${{secrets.PREFECT_API_KEY}}",
    "${{ secrets.prefect_api_key }}",
    "${{SECRETS.PREFECT_API_KEY}}",
    "${{variables.HOME}}",
    "${{ Variables.home }}",
    "${{variables.PREFECT_FLOW_ID}}",
    "x${{secrets.PREFECT_API_KEY}}y${{variables.HOME}}z",
    "${{${{secrets.PREFECT_API_KEY}}}}",
    "${{erathos.table_name}}",
]

STRING_FIELDS = ["connection_name", "schema_name", "table_name", "triggered_by", "status"]

EVERY_METADATA_TEMPLATE = {
    "name": "erathos_run_${{erathos.table_name}}",
    "idempotency_key": "${{erathos.execution_id}}",
    "all": "|".join(f"{name}=${{{{erathos.{name}}}}}" for name in METADATA),
    "each": {name: f"${{{{erathos.{name}}}}}" for name in METADATA},
    "list": [f"<${{{{erathos.{name}}}}}>" for name in STRING_FIELDS],
}


def hostile_event(payload: str) -> ErathosEvent:
    body: dict[str, Any] = {name.upper(): payload for name in STRING_FIELDS}
    body["EXECUTION_ID"] = EXECUTION_ID
    body["an_unknown_field"] = payload
    return ErathosEvent.model_validate(body)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_a_placeholder_inside_event_data_renders_as_literal_text(payload: str) -> None:
    ev = hostile_event(payload)
    expected = {name: ev.value(name) for name in STRING_FIELDS}
    compiled = compile_json(EVERY_METADATA_TEMPLATE, LOOKUP, where="body")

    rendered = render_json(compiled, ev, LOOKUP)

    dumped = json.dumps(rendered)
    assert SECRET not in dumped
    assert HOME not in dumped
    assert FLOW_ID not in dumped
    assert rendered["name"] == f"erathos_run_{payload}"
    assert rendered["each"]["table_name"] == payload
    assert rendered["list"] == [f"<{expected[name]}>" for name in STRING_FIELDS]
    for name in STRING_FIELDS:
        assert f"{name}={expected[name]}" in rendered["all"]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_event_data_cannot_reach_a_secret_through_a_text_template(payload: str) -> None:
    ev = hostile_event(payload)
    template = "erathos_run_${{erathos.table_name}} by ${{erathos.triggered_by}}"

    rendered = compile_text(template, LOOKUP, where="BRIDGE_FLOW_RUN_NAME").render(ev, LOOKUP)

    assert rendered == f"erathos_run_{payload} by {payload}"
    assert SECRET not in rendered
    assert HOME not in rendered


@pytest.mark.parametrize("payload", INJECTIONS)
def test_a_template_that_uses_a_secret_gets_it_only_where_it_asked(payload: str) -> None:
    ev = hostile_event(payload)
    template = {"auth": "Bearer ${{secrets.PREFECT_API_KEY}}", "table": "${{erathos.table_name}}"}

    rendered = render_json(compile_json(template, LOOKUP, where="header"), ev, LOOKUP)

    assert rendered == {"auth": f"Bearer {SECRET}", "table": payload}
    assert json.dumps(rendered).count(SECRET) == 1


def test_the_compiled_template_is_a_text_of_parts() -> None:
    compiled = compile_text("a${{variables.HOME}}b${{erathos.rows}}", LOOKUP, where="T")

    assert isinstance(compiled, Template)
    assert compiled.parts[0] == f"a{HOME}b"
    assert compiled.single_metadata is None
    assert compile_text("${{erathos.ROWS}}", LOOKUP, where="T").single_metadata == "rows"
    assert compile_text("${{secrets.PREFECT_API_KEY}}", LOOKUP, where="T").single_metadata is None
