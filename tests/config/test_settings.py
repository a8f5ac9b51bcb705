"""Settings: every misconfiguration stops start-up with a message naming the variable."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.config import ConfigurationError, Settings, load_settings
from app.routing.router import FlowTarget, default_router
from app.routing.templates import TemplateError, template_lookup

FLOW_ID = "3f2a1b0c-9d8e-4f7a-8b6c-5d4e3f2a1b01"
ACCOUNT_ID = "a1a1a1a1-b2b2-4c3c-8d4d-e5e5e5e5e5e5"
WORKSPACE_ID = "f6f6f6f6-0707-4808-9909-101010101010"
JOB_ID = "5f0c6a4e-8a55-4d0c-9b1e-0d7a3c2b1a01"

TOKEN = "webhook-token-TOPSECRET-0123456789"
API_KEY = "pnu_APIKEY-TOPSECRET-abcdef0123456789"
AUTH_STRING = "admin:AUTHSTRING-TOPSECRET-pass"
ADMIN_TOKEN = "admin-token-TOPSECRET-0123456789"
SECRET_VALUES = [TOKEN, API_KEY, AUTH_STRING, ADMIN_TOKEN, "TOPSECRET"]

VALID_ENV = {
    "BRIDGE_WEBHOOK_TOKEN": TOKEN,
    "PREFECT_API_URL": "http://prefect:4200/api",
    "PREFECT_FLOW_ID": FLOW_ID,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PREFECT_*/BRIDGE_* (nor a variable spelled like a field) from the developer's
    environment, no .env, and an empty secrets directory instead of /run/secrets."""
    fields = set(Settings.model_fields) - {"environment", "secret_files"}
    for name in list(os.environ):
        if name.upper().startswith(("PREFECT_", "BRIDGE_")) or name.lower() in fields:
            monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    monkeypatch.setenv("BRIDGE_SECRETS_DIR", str(secrets))
    return secrets


def set_env(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> None:
    """The valid environment with changes; None removes a variable."""
    for name, value in {**VALID_ENV, **env}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def build(**values: Any) -> Settings:
    """Settings from keyword values only (no .env, no secrets directory)."""
    base: dict[str, Any] = {
        "webhook_tokens": TOKEN,
        "prefect_api_url": "http://prefect:4200/api",
        "prefect_flow_id": FLOW_ID,
    }
    return Settings(_env_file=None, _secrets_dir=None, **{**base, **values})


def configuration_error(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> str:
    set_env(monkeypatch, **env)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    return str(caught.value)


def test_a_minimal_environment_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch)

    settings = load_settings()

    assert settings.api_url == "http://prefect:4200/api"
    assert str(settings.prefect_flow_id) == FLOW_ID
    assert [t.get_secret_value() for t in settings.webhook_tokens] == [TOKEN]
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.jobs == []


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        pytest.param({"PREFECT_API_URL": None}, "PREFECT_API_URL", id="no-prefect-url"),
        pytest.param({"PREFECT_API_URL": ""}, "PREFECT_API_URL", id="blank-prefect-url"),
        pytest.param({"PREFECT_API_URL": "ftp://prefect/api"}, "PREFECT_API_URL", id="ftp-url"),
        pytest.param({"PREFECT_API_URL": "http://"}, "PREFECT_API_URL", id="url-without-host"),
        pytest.param({"PREFECT_API_URL": "not a url"}, "PREFECT_API_URL", id="words"),
        pytest.param(
            {"PREFECT_API_URL": "http://not a host/api"}, "PREFECT_API_URL", id="host-with-spaces"
        ),
        pytest.param(
            {"PREFECT_API_URL": "http://pre$fect:4200/api"}, "PREFECT_API_URL", id="host-symbol"
        ),
        pytest.param(
            {"PREFECT_API_URL": "http://prefect:42x/api"}, "PREFECT_API_URL", id="port-not-number"
        ),
        pytest.param(
            {"PREFECT_API_URL": "http://prefect:99999/api"}, "PREFECT_API_URL", id="port-too-big"
        ),
        pytest.param(
            {"PREFECT_API_URL": "prefect.example.com/api"},
            "PREFECT_API_URL",
            id="bare-host-with-a-path",
        ),
        pytest.param(
            {"PREFECT_API_URL": "http://prefect:4200/api?x=1"}, "PREFECT_API_URL", id="query"
        ),
        pytest.param(
            {"PREFECT_API_URL": "https://user:pw@prefect.example.com/api"},
            "PREFECT_API_URL",
            id="url-with-credentials",
        ),
        pytest.param(
            {"PREFECT_API_URL": None, "PREFECT_ACCOUNT_ID": ACCOUNT_ID},
            "PREFECT_WORKSPACE_ID",
            id="only-account-id",
        ),
        pytest.param(
            {"PREFECT_API_URL": None, "PREFECT_WORKSPACE_ID": WORKSPACE_ID},
            "PREFECT_ACCOUNT_ID",
            id="only-workspace-id",
        ),
        pytest.param(
            {"PREFECT_ACCOUNT_ID": ACCOUNT_ID}, "PREFECT_WORKSPACE_ID", id="url-and-account-id"
        ),
        pytest.param(
            {"PREFECT_API_URL": None, "PREFECT_ACCOUNT_ID": "acct-1", "PREFECT_WORKSPACE_ID": ""},
            "PREFECT_ACCOUNT_ID",
            id="account-id-not-uuid",
        ),
        pytest.param({"PREFECT_FLOW_ID": "my-flow"}, "PREFECT_FLOW_ID", id="flow-id-not-uuid"),
        pytest.param({"PREFECT_FLOW_ID": None}, "PREFECT_FLOW_ID", id="no-flow-id"),
        pytest.param(
            {"PREFECT_FLOW_NAME": "dbt-build"}, "PREFECT_FLOW_NAME", id="flow-id-and-flow-name"
        ),
        pytest.param(
            {"PREFECT_FLOW_ID": None, "PREFECT_FLOW_NAME": "dbt/prod"},
            "PREFECT_FLOW_NAME",
            id="flow-name-prefect-refuses",
        ),
        pytest.param({"BRIDGE_WEBHOOK_TOKEN": None}, "BRIDGE_WEBHOOK_TOKEN", id="no-token"),
        pytest.param({"BRIDGE_WEBHOOK_TOKEN": ""}, "BRIDGE_WEBHOOK_TOKEN", id="blank-token"),
        pytest.param({"BRIDGE_WEBHOOK_TOKEN": " , ,"}, "BRIDGE_WEBHOOK_TOKEN", id="only-commas"),
        pytest.param(
            {"BRIDGE_WEBHOOK_TOKEN": "short-secret"}, "BRIDGE_WEBHOOK_TOKEN", id="short-token"
        ),
        pytest.param(
            {"BRIDGE_WEBHOOK_TOKEN": f"{TOKEN},tiny-secret"},
            "BRIDGE_WEBHOOK_TOKEN",
            id="one-short-token-of-two",
        ),
        pytest.param(
            {"PREFECT_API_KEY": API_KEY, "PREFECT_API_AUTH_STRING": AUTH_STRING},
            "PREFECT_API_AUTH_STRING",
            id="api-key-and-auth-string",
        ),
        pytest.param(
            {"PREFECT_API_AUTH_STRING": "no-colon-TOPSECRET"},
            "PREFECT_API_AUTH_STRING",
            id="auth-string-without-colon",
        ),
        pytest.param({"PREFECT_API_VERSION": "v2"}, "PREFECT_API_VERSION", id="version-v2"),
        pytest.param({"PREFECT_API_VERSION": "0.8"}, "PREFECT_API_VERSION", id="version-short"),
        pytest.param({"PREFECT_API_VERSION": "latest"}, "PREFECT_API_VERSION", id="version-word"),
        pytest.param({"BRIDGE_JOBS": "orders-job"}, "BRIDGE_JOBS", id="job-not-uuid"),
        pytest.param({"BRIDGE_JOBS": f"{JOB_ID},nope"}, "BRIDGE_JOBS", id="second-job-not-uuid"),
        pytest.param({"BRIDGE_LEASE": "10s"}, "BRIDGE_LEASE", id="lease-equals-timeout"),
        pytest.param(
            {"BRIDGE_LEASE": "5s", "BRIDGE_PREFECT_TIMEOUT": "30s"},
            "BRIDGE_LEASE",
            id="lease-shorter-than-timeout",
        ),
        pytest.param(
            {"BRIDGE_RETRY_BASE": "10m", "BRIDGE_RETRY_CAP": "1m"},
            "BRIDGE_RETRY_CAP",
            id="retry-cap-below-base",
        ),
        pytest.param(
            {"BRIDGE_PREFECT_TIMEOUT": "15x"}, "BRIDGE_PREFECT_TIMEOUT", id="bad-duration"
        ),
        pytest.param({"BRIDGE_RETENTION": "-5s"}, "BRIDGE_RETENTION", id="negative-duration"),
        pytest.param(
            {"BRIDGE_ADMIN_TOKEN": "short-secret"}, "BRIDGE_ADMIN_TOKEN", id="short-admin-token"
        ),
        pytest.param(
            {"BRIDGE_DATABASE_URL": "mysql://db/bridge"},
            "BRIDGE_DATABASE_URL",
            id="database-neither-sqlite-nor-postgresql",
        ),
        pytest.param(
            {"BRIDGE_DATABASE_URL": "postgresql+psycopg2://db/bridge"},
            "BRIDGE_DATABASE_URL",
            id="database-another-driver",
        ),
        pytest.param(
            {"BRIDGE_DATABASE_URL": "sqlite+aiosqlite:////data/bridge.db"},
            "BRIDGE_DATABASE_URL",
            id="database-a-driver-no-longer-used",
        ),
        pytest.param({"BRIDGE_DB_POOL_SIZE": "0"}, "BRIDGE_DB_POOL_SIZE", id="no-pool"),
        pytest.param({"BRIDGE_DB_POOL_TIMEOUT": "0s"}, "BRIDGE_DB_POOL_TIMEOUT", id="pool-0s"),
        pytest.param({"BRIDGE_PORT": "0"}, "BRIDGE_PORT", id="port-zero"),
        pytest.param({"BRIDGE_PORT": "70000"}, "BRIDGE_PORT", id="port-too-big"),
        pytest.param({"BRIDGE_PORT": "http"}, "BRIDGE_PORT", id="port-word"),
        pytest.param({"BRIDGE_MAX_BODY_BYTES": "100"}, "BRIDGE_MAX_BODY_BYTES", id="tiny-body"),
        pytest.param({"BRIDGE_HEADER_TIMEOUT": "0s"}, "BRIDGE_HEADER_TIMEOUT", id="header-0s"),
        pytest.param(
            {"BRIDGE_HEADER_TIMEOUT": "soon"}, "BRIDGE_HEADER_TIMEOUT", id="header-timeout-word"
        ),
        pytest.param(
            {"BRIDGE_MAX_HEADER_BYTES": "512"}, "BRIDGE_MAX_HEADER_BYTES", id="tiny-headers"
        ),
        pytest.param(
            {"BRIDGE_MAX_HEADER_BYTES": "16k"}, "BRIDGE_MAX_HEADER_BYTES", id="header-bytes-unit"
        ),
        pytest.param({"BRIDGE_MAX_CONNECTIONS": "0"}, "BRIDGE_MAX_CONNECTIONS", id="connections-0"),
        pytest.param(
            {"BRIDGE_KEEPALIVE_TIMEOUT": "-1s"}, "BRIDGE_KEEPALIVE_TIMEOUT", id="keepalive-negative"
        ),
        pytest.param({"BRIDGE_KEEPALIVE_TIMEOUT": "0"}, "BRIDGE_KEEPALIVE_TIMEOUT", id="idle-zero"),
        pytest.param(
            {"BRIDGE_TRUSTED_PROXIES": "10.0.0.5,proxy"}, "BRIDGE_TRUSTED_PROXIES", id="proxy-name"
        ),
        pytest.param(
            {"BRIDGE_TRUSTED_PROXIES": "10.0.0.5/8"}, "BRIDGE_TRUSTED_PROXIES", id="proxy-host-bits"
        ),
        pytest.param({"BRIDGE_DURABILITY": "always"}, "BRIDGE_DURABILITY", id="durability"),
        pytest.param({"BRIDGE_LOG_LEVEL": "LOUD"}, "BRIDGE_LOG_LEVEL", id="log-level"),
        pytest.param({"BRIDGE_LOG_FORMAT": "xml"}, "BRIDGE_LOG_FORMAT", id="log-format"),
        pytest.param({"BRIDGE_MAX_ATTEMPTS": "0"}, "BRIDGE_MAX_ATTEMPTS", id="no-attempts"),
        pytest.param({"BRIDGE_MAX_RATE": "0"}, "BRIDGE_MAX_RATE", id="zero-rate"),
        pytest.param({"PREFECT_UI_URL": "localhost:4200"}, "PREFECT_UI_URL", id="ui-not-absolute"),
        pytest.param({"BRIDGE_DROPIN": "sometimes"}, "BRIDGE_DROPIN", id="dropin-not-a-boolean"),
        pytest.param(
            {"BRIDGE_FOLLOW_RUNS": "sometimes"}, "BRIDGE_FOLLOW_RUNS", id="follow-not-a-boolean"
        ),
        pytest.param(
            {"BRIDGE_DROPIN_ALLOW": "dbt-build"}, "BRIDGE_DROPIN_ALLOW", id="dropin-allow-name"
        ),
        pytest.param(
            {"BRIDGE_DROPIN_ALLOW_FIELDS": "state,flow_id"},
            "BRIDGE_DROPIN_ALLOW_FIELDS",
            id="dropin-allow-unknown-field",
        ),
    ],
)
def test_a_misconfiguration_is_a_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None], variable: str
) -> None:
    message = configuration_error(monkeypatch, **env)

    assert re.search(rf"(^|; ){variable}: ", message), message


def test_the_drop_in_needs_the_environments_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("routes.json").write_text(json.dumps({"routes": [{"name": "x", "flow_id": FLOW_ID}]}))

    message = configuration_error(
        monkeypatch,
        PREFECT_API_URL=None,
        PREFECT_FLOW_ID=None,
        BRIDGE_ROUTES_FILE="routes.json",
        BRIDGE_DROPIN="true",
    )

    assert message.startswith("BRIDGE_DROPIN: needs PREFECT_API_URL"), message


def test_several_bad_variables_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    message = configuration_error(
        monkeypatch, PREFECT_FLOW_ID="my-flow", BRIDGE_PORT="http", BRIDGE_JOBS="x"
    )

    for variable in ("PREFECT_FLOW_ID", "BRIDGE_PORT", "BRIDGE_JOBS"):
        assert f"{variable}: " in message


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"BRIDGE_WEBHOOK_TOKEN": "TOPSECRET-short"}, id="short-token"),
        pytest.param({"BRIDGE_WEBHOOK_TOKEN": f"{TOKEN},TOPSECRET-x"}, id="one-short-token"),
        pytest.param({"BRIDGE_ADMIN_TOKEN": "TOPSECRET-short"}, id="short-admin-token"),
        pytest.param(
            {"PREFECT_API_KEY": API_KEY, "PREFECT_API_AUTH_STRING": AUTH_STRING},
            id="key-and-auth-string",
        ),
        pytest.param({"PREFECT_API_AUTH_STRING": "no-colon-TOPSECRET"}, id="auth-without-colon"),
        pytest.param({"PREFECT_API_KEY": API_KEY, "PREFECT_FLOW_ID": None}, id="key-no-flow"),
        pytest.param(
            {"PREFECT_API_KEY": API_KEY, "BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN, "BRIDGE_PORT": "x"},
            id="secrets-and-another-error",
        ),
        pytest.param(
            {"BRIDGE_WEBHOOK_TOKEN": TOKEN, "BRIDGE_LEASE": "1s", "PREFECT_API_KEY": API_KEY},
            id="secrets-and-a-model-error",
        ),
    ],
)
def test_a_configuration_error_never_contains_a_secret(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]
) -> None:
    set_env(monkeypatch, **env)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    shown = f"{caught.value} {caught.value!r}"
    for secret in SECRET_VALUES:
        assert secret not in shown
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    ("template", "names"),
    [
        pytest.param(
            "run_${{variables.NO_SUCH_VARIABLE_XYZ}}", ["NO_SUCH_VARIABLE_XYZ"], id="variable"
        ),
        pytest.param("run_${{secrets.NO_SUCH_SECRET_XYZ}}", ["NO_SUCH_SECRET_XYZ"], id="secret"),
        pytest.param("run_${{erathos.started_at}}", ["started_at"], id="metadata"),
        pytest.param("run_${{env.HOME}}", ["env"], id="namespace"),
    ],
)
def test_a_flow_run_name_naming_something_unknown_stops_the_router(
    monkeypatch: pytest.MonkeyPatch, template: str, names: list[str]
) -> None:
    set_env(monkeypatch, BRIDGE_FLOW_RUN_NAME=template)
    settings = load_settings()

    with pytest.raises(TemplateError) as caught:
        default_router(settings, template_lookup(settings))

    message = str(caught.value)
    assert message.startswith("BRIDGE_FLOW_RUN_NAME: ")
    for name in names:
        assert name in message


def test_a_flow_run_name_may_use_the_environment_dotenv_and_secret_files(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    Path(".env").write_text("TEAM=analytics\n")
    (clean_environment / "dbt_token").write_text("dbt-TOPSECRET-value\n")
    set_env(
        monkeypatch,
        REGION="sa-east-1",
        BRIDGE_FLOW_RUN_NAME=(
            "${{variables.team}}-${{variables.REGION}}-${{erathos.table_name}}"
            "-${{secrets.DBT_TOKEN}}"
        ),
    )
    settings = load_settings()
    lookup = template_lookup(settings)

    route = default_router(settings, lookup).routes[0]

    assert route.flow_run["name"].render(None, lookup, mask=True) == "analytics-sa-east-1--********"
    assert route.flow_run["name"].render(None, lookup).endswith("-dbt-TOPSECRET-value")


def test_a_secret_setting_is_not_readable_as_a_plain_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        PREFECT_API_KEY=API_KEY,
        BRIDGE_ADMIN_TOKEN=ADMIN_TOKEN,
        BRIDGE_DATABASE_URL="postgresql://bridge:TOPSECRET@db/bridge",
    )
    settings = load_settings()
    lookup = template_lookup(settings)

    for name in (
        "PREFECT_API_KEY",
        "BRIDGE_WEBHOOK_TOKEN",
        "BRIDGE_ADMIN_TOKEN",
        "BRIDGE_DATABASE_URL",
    ):
        assert lookup.variable(name) is None, name
        assert lookup.secret(name) is not None, name
    for secret in (API_KEY, TOKEN, ADMIN_TOKEN):
        assert secret not in repr(lookup)


def test_settings_built_without_a_dotenv_file_never_read_the_developers(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    Path(".env").write_text("TEAM=analytics\nREGION=from-dotenv\n")
    (clean_environment / "dbt_token").write_text("dbt-TOPSECRET-value\n")
    monkeypatch.setenv("REGION", "sa-east-1")

    isolated = template_lookup(build())
    configured = template_lookup(load_settings_with(monkeypatch))

    assert (isolated.variable("TEAM"), isolated.variable("REGION")) == (None, "sa-east-1")
    assert isolated.secret("DBT_TOKEN") is None
    assert (configured.variable("TEAM"), configured.variable("REGION")) == (
        "analytics",
        "sa-east-1",  # the environment wins over .env, as for every setting
    )
    secret = configured.secret("DBT_TOKEN")
    assert secret is not None
    assert secret.get_secret_value() == "dbt-TOPSECRET-value"


def test_variables_given_as_arguments_are_the_whole_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REGION", "sa-east-1")

    lookup = template_lookup(build(environment={"TEAM": "analytics"}))

    assert (lookup.variable("TEAM"), lookup.variable("REGION")) == ("analytics", None)


def test_a_platforms_environment_variable_named_like_an_internal_field_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, ENVIRONMENT="production", SECRET_FILES="not json", REGION="eu")

    lookup = template_lookup(load_settings())

    assert (lookup.variable("ENVIRONMENT"), lookup.variable("REGION")) == ("production", "eu")


def load_settings_with(monkeypatch: pytest.MonkeyPatch) -> Settings:
    set_env(monkeypatch)
    return load_settings()


@pytest.mark.parametrize(
    ("given", "api_url"),
    [
        pytest.param("prefect.example.com", "https://prefect.example.com/api", id="bare-host"),
        pytest.param("prefect.example.com/", "https://prefect.example.com/api", id="host-slash"),
        pytest.param("prefect:4200", "https://prefect:4200/api", id="host-and-port"),
        pytest.param("http://prefect:4200/api/", "http://prefect:4200/api", id="trailing-slash"),
        pytest.param("http://prefect:4200/api//", "http://prefect:4200/api", id="two-slashes"),
        pytest.param("  http://prefect:4200/api  ", "http://prefect:4200/api", id="spaces"),
        pytest.param("https://p.example.com/api", "https://p.example.com/api", id="full-url"),
        pytest.param("http://127.0.0.1:4200/api", "http://127.0.0.1:4200/api", id="ipv4"),
        pytest.param("http://[::1]:4200/api", "http://[::1]:4200/api", id="ipv6"),
        pytest.param("http://prefect_server:4200/api", "http://prefect_server:4200/api", id="_"),
        pytest.param("prefect.example.com.", "https://prefect.example.com./api", id="fqdn-dot"),
    ],
)
def test_the_prefect_url_is_normalised(given: str, api_url: str) -> None:
    assert build(prefect_api_url=given).api_url == api_url


def test_a_prefect_url_that_is_not_a_url_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = configuration_error(monkeypatch, PREFECT_API_URL="not a url")

    assert message == (
        "PREFECT_API_URL: must be an absolute http(s) URL such as http://prefect:4200/api, "
        "or a bare host name such as prefect.example.com"
    )


def test_a_flow_name_instead_of_a_flow_id_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, PREFECT_FLOW_ID=None, PREFECT_FLOW_NAME="dbt build (prod)")

    settings = load_settings()
    [route] = default_router(settings, template_lookup(settings)).routes

    assert (settings.prefect_flow_id, settings.prefect_flow_name) == (None, "dbt build (prod)")
    assert route.target == FlowTarget(name="dbt build (prod)")


def test_a_flow_name_beside_a_routes_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    Path("routes.json").write_text(json.dumps({"routes": [{"name": "x", "flow": "dbt"}]}))

    message = configuration_error(
        monkeypatch, PREFECT_FLOW_ID=None, PREFECT_FLOW_NAME="dbt", BRIDGE_ROUTES_FILE="routes.json"
    )

    assert message.startswith("PREFECT_FLOW_NAME: "), message


def test_a_bare_host_from_the_environment_means_https_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, PREFECT_API_URL="prefect.example.com/")

    assert load_settings().api_url == "https://prefect.example.com/api"


def test_prefect_cloud_ids_build_the_cloud_workspace_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(
        monkeypatch,
        PREFECT_API_URL=None,
        PREFECT_ACCOUNT_ID=ACCOUNT_ID,
        PREFECT_WORKSPACE_ID=WORKSPACE_ID,
        PREFECT_API_KEY=API_KEY,
    )

    settings = load_settings()

    assert settings.api_url == (
        f"https://api.prefect.cloud/api/accounts/{ACCOUNT_ID}/workspaces/{WORKSPACE_ID}"
    )


def test_cloud_ids_are_canonical_uuids() -> None:
    settings = build(
        prefect_api_url=None,
        prefect_account_id=ACCOUNT_ID.upper(),
        prefect_workspace_id=WORKSPACE_ID.upper(),
    )

    assert settings.api_url is not None
    assert settings.api_url.endswith(f"/accounts/{ACCOUNT_ID}/workspaces/{WORKSPACE_ID}")


@pytest.mark.parametrize(
    ("given", "tokens"),
    [
        pytest.param(TOKEN, [TOKEN], id="one"),
        pytest.param(f"{TOKEN},{ADMIN_TOKEN}", [TOKEN, ADMIN_TOKEN], id="two"),
        pytest.param(f" {TOKEN} , {ADMIN_TOKEN} ,", [TOKEN, ADMIN_TOKEN], id="spaces-and-comma"),
    ],
)
def test_comma_separated_webhook_tokens_are_several_tokens(
    monkeypatch: pytest.MonkeyPatch, given: str, tokens: list[str]
) -> None:
    set_env(monkeypatch, BRIDGE_WEBHOOK_TOKEN=given)

    from_env = load_settings()
    from_values = build(webhook_tokens=given)

    assert [t.get_secret_value() for t in from_env.webhook_tokens] == tokens
    assert [t.get_secret_value() for t in from_values.webhook_tokens] == tokens


def test_jobs_are_a_comma_separated_list_of_canonical_uuids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = "11111111-2222-4333-8444-555555555555"
    set_env(monkeypatch, BRIDGE_JOBS=f" {JOB_ID.upper()} ,{other},")

    assert load_settings().jobs == [JOB_ID, other]


@pytest.mark.parametrize(
    ("given", "duration"),
    [
        ("90", timedelta(seconds=90)),
        ("90s", timedelta(seconds=90)),
        ("500ms", timedelta(milliseconds=500)),
        ("15m", timedelta(minutes=15)),
        ("24h", timedelta(hours=24)),
        ("30d", timedelta(days=30)),
        ("1.5h", timedelta(minutes=90)),
        (" 15m ", timedelta(minutes=15)),
        ("PT15M", timedelta(minutes=15)),
    ],
)
def test_durations_take_a_number_and_a_unit(given: str, duration: timedelta) -> None:
    assert build(retention=given).retention == duration
    assert build(max_age=given).max_age == duration


@pytest.mark.parametrize(
    ("variable", "attribute"),
    [
        ("BRIDGE_RETENTION", "retention"),
        ("BRIDGE_SYNC_WAIT", "sync_wait"),
        ("BRIDGE_MAX_AGE", "max_age"),
        ("BRIDGE_SHUTDOWN_GRACE", "shutdown_grace"),
        ("BRIDGE_POLL_INTERVAL", "poll_interval"),
        ("BRIDGE_RETRY_CAP", "retry_cap"),
        ("BRIDGE_DB_READ_TIMEOUT", "db_read_timeout"),
    ],
)
def test_durations_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, attribute: str
) -> None:
    set_env(monkeypatch, **{variable: "15m"})

    assert getattr(load_settings(), attribute) == timedelta(minutes=15)


@pytest.mark.parametrize(
    "variable",
    [
        "BRIDGE_POLL_INTERVAL",
        "BRIDGE_PREFECT_TIMEOUT",
        "BRIDGE_BODY_TIMEOUT",
        "BRIDGE_RETRY_BASE",
        "BRIDGE_RETRY_CAP",
        "BRIDGE_MAX_AGE",
        "BRIDGE_LEASE",
        "BRIDGE_RETENTION",
        "BRIDGE_DB_LOCK_TIMEOUT",
        "BRIDGE_DB_READ_TIMEOUT",
        "BRIDGE_DB_POOL_TIMEOUT",
        "BRIDGE_HEADER_TIMEOUT",
        "BRIDGE_KEEPALIVE_TIMEOUT",
        "BRIDGE_CONSOLE_SESSION",
    ],
)
@pytest.mark.parametrize("zero", ["0", "0s", "0ms"])
def test_a_duration_where_0_means_nothing_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, zero: str
) -> None:
    message = configuration_error(monkeypatch, **{variable: zero})

    assert f"{variable}: must be longer than 0 s" in message


def test_waiting_for_prefect_and_the_grace_to_stop_may_be_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, BRIDGE_SYNC_WAIT="0", BRIDGE_SHUTDOWN_GRACE="0s")

    settings = load_settings()

    assert (settings.sync_wait, settings.shutdown_grace) == (timedelta(0), timedelta(0))
    assert "BRIDGE_SYNC_WAIT: must not be negative" in configuration_error(
        monkeypatch, BRIDGE_SYNC_WAIT="-PT1S"
    )


def test_lease_and_timeout_are_durations_too(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, BRIDGE_PREFECT_TIMEOUT="500ms", BRIDGE_LEASE="2m")

    settings = load_settings()

    assert settings.prefect_timeout == timedelta(milliseconds=500)
    assert settings.lease == timedelta(minutes=2)


def test_secrets_are_read_from_files_in_the_secrets_directory(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    (clean_environment / "BRIDGE_WEBHOOK_TOKEN").write_text(f"{TOKEN}\n")
    (clean_environment / "PREFECT_API_KEY").write_text(f"{API_KEY}\n")
    set_env(monkeypatch, BRIDGE_WEBHOOK_TOKEN=None)

    settings = load_settings()

    assert [t.get_secret_value() for t in settings.webhook_tokens] == [TOKEN]
    assert settings.prefect_api_key is not None
    assert settings.prefect_api_key.get_secret_value() == API_KEY


def test_a_secret_file_may_hold_several_comma_separated_tokens(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    (clean_environment / "BRIDGE_WEBHOOK_TOKEN").write_text(f"{TOKEN},{ADMIN_TOKEN}\n")
    set_env(monkeypatch, BRIDGE_WEBHOOK_TOKEN=None)

    tokens = load_settings().webhook_tokens

    assert [t.get_secret_value() for t in tokens] == [TOKEN, ADMIN_TOKEN]


def test_a_too_short_token_in_a_secret_file_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    (clean_environment / "BRIDGE_WEBHOOK_TOKEN").write_text("TOPSECRET\n")
    set_env(monkeypatch, BRIDGE_WEBHOOK_TOKEN=None)

    with pytest.raises(ConfigurationError, match=r"^BRIDGE_WEBHOOK_TOKEN: ") as caught:
        load_settings()

    assert "TOPSECRET" not in str(caught.value)


@pytest.mark.parametrize("kind", ["missing", "a-file"])
def test_a_secrets_directory_that_is_not_a_directory_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "not-there"
    if kind == "a-file":
        path.write_text("x")
    set_env(monkeypatch, BRIDGE_SECRETS_DIR=str(path))

    with pytest.raises(ConfigurationError, match=r"^BRIDGE_SECRETS_DIR: "):
        load_settings()


def test_a_dotenv_file_in_the_working_directory_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text(f"BRIDGE_WEBHOOK_TOKEN={TOKEN}\nBRIDGE_PORT=9090\n")
    set_env(monkeypatch, BRIDGE_WEBHOOK_TOKEN=None)

    settings = load_settings()

    assert settings.port == 9090
    assert [t.get_secret_value() for t in settings.webhook_tokens] == [TOKEN]


def test_settings_built_without_an_env_file_ignore_the_dotenv_file() -> None:
    Path(".env").write_text("BRIDGE_PORT=9090\n")

    assert build().port == 8080


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "default"),
    [
        pytest.param("PORT", "1234", "port", 8080, id="PORT"),
        pytest.param("HOST", "10.1.2.3", "host", "127.0.0.1", id="HOST"),
        pytest.param("LOG_LEVEL", "DEBUG", "log_level", "INFO", id="LOG_LEVEL"),
        pytest.param("LEASE", "5m", "lease", timedelta(seconds=60), id="LEASE"),
        pytest.param(
            "DATABASE_URL",
            "sqlite:///./elsewhere.db",
            "database_url",
            "sqlite:///./data/bridge.db",
            id="DATABASE_URL",
        ),
    ],
)
def test_only_the_documented_variable_names_are_read(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, attribute: str, default: object
) -> None:
    set_env(monkeypatch)
    monkeypatch.setenv(variable, value)

    assert getattr(load_settings(), attribute) == default


def test_an_unrelated_database_url_in_the_environment_does_not_stop_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", "postgres://user:pw@db/app")

    assert load_settings().database_url == "sqlite:///./data/bridge.db"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///./data/bridge.db",
        "sqlite+pysqlite:////data/bridge.db",
        "postgresql://bridge:pw@db:5432/bridge",
        "postgres://bridge:pw@db/bridge?sslmode=require",
        "postgresql+asyncpg://bridge@db/bridge",
    ],
)
def test_the_store_is_sqlite_or_postgresql(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    set_env(monkeypatch, BRIDGE_DATABASE_URL=url)

    assert load_settings().database_url == url


def test_the_postgresql_pool_is_sized_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (build().db_pool_size, build().db_pool_timeout) == (5, timedelta(seconds=10))
    set_env(monkeypatch, BRIDGE_DB_POOL_SIZE="12", BRIDGE_DB_POOL_TIMEOUT="2500ms")

    settings = load_settings()

    assert (settings.db_pool_size, settings.db_pool_timeout) == (12, timedelta(seconds=2.5))


def test_settings_never_show_a_secret_in_repr_or_str() -> None:
    settings = build(
        webhook_tokens=f"{TOKEN},{ADMIN_TOKEN}",
        admin_token=ADMIN_TOKEN,
        prefect_api_key=API_KEY,
        prefect_api_auth_string=None,
    )
    basic = build(prefect_api_auth_string=AUTH_STRING)

    for shown in (
        repr(settings),
        str(settings),
        f"{settings}",
        settings.model_dump_json(),
        str(settings.model_dump()),
        repr(basic),
        str(basic),
        basic.model_dump_json(),
    ):
        for secret in SECRET_VALUES:
            assert secret not in shown


def test_settings_are_frozen() -> None:
    settings = build()

    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


def test_every_missing_setting_is_listed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = configuration_error(
        monkeypatch, BRIDGE_WEBHOOK_TOKEN=None, PREFECT_API_URL=None, PREFECT_FLOW_ID=None
    ).splitlines()

    assert [line.partition(":")[0] for line in problems] == [
        "BRIDGE_WEBHOOK_TOKEN",
        "PREFECT_API_URL",
        "PREFECT_FLOW_ID",
    ]


def test_invalid_values_and_problems_across_settings_are_listed_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    problems = configuration_error(
        monkeypatch,
        BRIDGE_PORT="eighty",
        BRIDGE_LOG_LEVEL="LOUD",
        BRIDGE_WEBHOOK_TOKEN=None,
        PREFECT_API_KEY=API_KEY,
        PREFECT_API_AUTH_STRING=AUTH_STRING,
    ).splitlines()

    named = sorted(line.partition(":")[0] for line in problems)
    assert named == [
        "BRIDGE_LOG_LEVEL",
        "BRIDGE_PORT",
        "BRIDGE_WEBHOOK_TOKEN",
        "PREFECT_API_AUTH_STRING",
    ]
    assert not any(secret in line for line in problems for secret in SECRET_VALUES)


def test_a_setting_reported_invalid_is_not_reported_again_at_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At its default (5 s) the base would be longer than this cap: that follows from the
    # default, not from what was set, and is not reported.
    problems = configuration_error(
        monkeypatch, BRIDGE_RETRY_BASE="soon", BRIDGE_RETRY_CAP="1s"
    ).splitlines()

    assert [line.partition(":")[0] for line in problems] == ["BRIDGE_RETRY_BASE"]
