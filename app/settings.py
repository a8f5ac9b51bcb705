"""The service's configuration: one pydantic-settings model, validated at start-up.

Values come from the environment, an optional ``.env`` file and files in a
secrets directory (``/run/secrets`` as Docker and Kubernetes mount them, or
``BRIDGE_SECRETS_DIR``). A bad value stops start-up with one message that names
the variable (:func:`load_settings`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, overload
from uuid import UUID

from annotated_types import Ge, Gt
from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from app.sources import ConfigurationError as ConfigurationError
from app.sources import TemplateEnvironment, secrets_dir
from app.values import (
    IPNetwork,
    check_flow_name,
    database_kind,
    normalise_api_url,
    not_negative_duration,
    parse_duration,
    parse_networks,
    positive_duration,
    split_list,
)

PREFECT_CLOUD_API = "https://api.prefect.cloud/api"
# Fields of Prefect's create-run bodies that change how or where a run executes, or what
# it becomes: refused on the drop-in endpoints unless BRIDGE_DROPIN_ALLOW_FIELDS lists them.
DROPIN_GUARDED_FIELDS = ("state", "context", "job_variables", "work_queue_name", "work_pool_name")
PREFECT_API_VERSION = "0.8.4"  # the x-prefect-api-version header Prefect's own clients send
MIN_TOKEN_LENGTH = 16

_API_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


class Durability(StrEnum):
    """How far an acknowledged event survives: a crash of the process, or a power loss."""

    CRASH = "crash"
    POWER = "power"


# A duration longer than 0: where 0 means nothing (a timeout that fails at once, a poll
# that never rests, a backoff that never waits). A wait that may be none: not negative.
Duration = Annotated[timedelta, NoDecode, AfterValidator(positive_duration)]
Wait = Annotated[timedelta, NoDecode, AfterValidator(not_negative_duration)]
CommaList = Annotated[list[str], NoDecode]
S = TypeVar("S", bound="PublicSettings")


class PublicSettings(BaseSettings):
    """The settings that describe the service to Erathos (``erathos-template`` needs
    only these), and how every setting is read."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,  # VAR= (compose's ${VAR:-}, a half-filled .env) means unset
        case_sensitive=False,
        populate_by_name=True,
        frozen=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword arguments may use attribute names (tests, the CLI), but the environment,
        # .env and secret files are read by the documented variable names only: a
        # platform's own PORT, HOST or DATABASE_URL must not reconfigure the service.
        for source in (env_settings, dotenv_settings, file_secret_settings):
            source.config = {**source.config, "populate_by_name": False, "validate_by_name": False}
        sources = [init_settings, env_settings, dotenv_settings, file_secret_settings]
        if "environment" in settings_cls.model_fields:
            assert isinstance(env_settings, EnvSettingsSource)  # pydantic-settings' own
            assert isinstance(dotenv_settings, EnvSettingsSource)
            assert isinstance(file_secret_settings, SecretsSettingsSource)
            environment = TemplateEnvironment(
                settings_cls, env_settings, dotenv_settings, file_secret_settings
            )
            # Given as arguments (tests), they are the whole of it: nothing is merged in.
            given = getattr(init_settings, "init_kwargs", {})
            environment.skip = {name for name in ("environment", "secret_files") if name in given}
            sources.insert(1, environment)
        return tuple(sources)

    jobs: CommaList = Field(default_factory=list, validation_alias="BRIDGE_JOBS")
    public_url: str | None = Field(None, validation_alias="BRIDGE_PUBLIC_URL")
    routes_file: Path | None = Field(None, validation_alias="BRIDGE_ROUTES_FILE")
    # Every Erathos event also emitted as a Prefect event on the environment's connection
    # (public: then Erathos must send every load, FAILED ones too).
    prefect_events: bool = Field(False, validation_alias="BRIDGE_PREFECT_EVENTS")

    @field_validator("jobs", mode="before")
    @classmethod
    def _jobs(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("jobs")
    @classmethod
    def _job_ids(cls, jobs: list[str]) -> list[str]:
        try:
            return [str(UUID(job)) for job in jobs]
        except ValueError:
            raise ValueError("every job id must be an Erathos job UUID") from None

    @field_validator("public_url", mode="before")
    @classmethod
    def _blank_url(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value


class StoreSettings(PublicSettings):
    """Where events are stored, and how the service logs: all that the commands which
    only read or replay the store (``events``, ``replay``) need."""

    log_format: Literal["auto", "json", "console"] = Field(
        "auto", validation_alias="BRIDGE_LOG_FORMAT"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias="BRIDGE_LOG_LEVEL"
    )

    database_url: str = Field("sqlite:///./data/bridge.db", validation_alias="BRIDGE_DATABASE_URL")
    durability: Durability = Field(Durability.CRASH, validation_alias="BRIDGE_DURABILITY")
    retention: Duration = Field(timedelta(days=30), validation_alias="BRIDGE_RETENTION")
    db_lock_timeout: Duration = Field(
        timedelta(seconds=5), validation_alias="BRIDGE_DB_LOCK_TIMEOUT"
    )
    # How long an operator's read (admin API, console, CLI, gauges) may run before it is
    # stopped and answered 503 query_timeout.
    db_read_timeout: Duration = Field(
        timedelta(seconds=5), validation_alias="BRIDGE_DB_READ_TIMEOUT"
    )
    db_pool_size: Annotated[int, Ge(1)] = Field(5, validation_alias="BRIDGE_DB_POOL_SIZE")
    db_pool_timeout: Duration = Field(
        timedelta(seconds=10), validation_alias="BRIDGE_DB_POOL_TIMEOUT"
    )

    @field_validator(
        "retention", "db_lock_timeout", "db_read_timeout", "db_pool_timeout", mode="before"
    )
    @classmethod
    def _store_durations(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = value.strip()
        if database_kind(value) is None:
            raise ValueError(
                "must be a sqlite:/// URL (for example "
                "sqlite:///./data/bridge.db) or a postgresql:// URL (for example "
                "postgresql://bridge:<password>@db:5432/bridge)"
            )
        return value


class PrefectSettings(PublicSettings):
    """The environment's Prefect connection: the default route's (and the drop-in's and
    the events'), and all the ``automation`` command needs."""

    prefect_api_url: str | None = Field(None, validation_alias="PREFECT_API_URL")
    prefect_account_id: UUID | None = Field(None, validation_alias="PREFECT_ACCOUNT_ID")
    prefect_workspace_id: UUID | None = Field(None, validation_alias="PREFECT_WORKSPACE_ID")
    prefect_api_key: SecretStr | None = Field(None, validation_alias="PREFECT_API_KEY")
    prefect_api_auth_string: SecretStr | None = Field(
        None, validation_alias="PREFECT_API_AUTH_STRING"
    )
    prefect_api_version: str = Field(PREFECT_API_VERSION, validation_alias="PREFECT_API_VERSION")
    # Where a browser reaches Prefect's UI, when not where the service reaches its API
    # (compose: http://prefect:4200/api inside, http://localhost:4200 outside).
    prefect_ui_url: str | None = Field(None, validation_alias="PREFECT_UI_URL")
    prefect_timeout: Duration = Field(
        timedelta(seconds=10), validation_alias="BRIDGE_PREFECT_TIMEOUT"
    )

    @field_validator("prefect_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("prefect_api_url", mode="before")
    @classmethod
    def _blank_api_url(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("prefect_ui_url")
    @classmethod
    def _ui_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "://" not in value:
            raise ValueError("must be an absolute http(s) URL such as http://localhost:4200")
        return normalise_api_url(value, credentials="nothing: the UI needs none")

    @field_validator("prefect_api_url")
    @classmethod
    def _api_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return normalise_api_url(value, credentials="PREFECT_API_AUTH_STRING")

    @field_validator("prefect_api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if not _API_VERSION.match(value):
            raise ValueError(f"must look like {PREFECT_API_VERSION}")
        return value

    @field_validator("prefect_api_auth_string")
    @classmethod
    def _auth_string(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError("must be 'user:password'")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Self:
        # Every problem across settings at once, one line each (each names its variable).
        problems = self._problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _problems(self) -> list[str]:
        """What is wrong across settings (each one was valid on its own)."""
        problems = []
        if (self.prefect_account_id is None) != (self.prefect_workspace_id is None):
            missing = (
                "PREFECT_WORKSPACE_ID"
                if self.prefect_workspace_id is None
                else "PREFECT_ACCOUNT_ID"
            )
            problems.append(f"{missing}: is required with the other Prefect Cloud id")
        if self.prefect_events and self.api_url is None:
            problems.append(
                "BRIDGE_PREFECT_EVENTS: needs PREFECT_API_URL (or the Prefect Cloud ids): "
                "events go to the environment's Prefect (a routes file's connection takes "
                '"events": true)'
            )
        if self.prefect_api_key is not None and self.prefect_api_auth_string is not None:
            problems.append(
                "PREFECT_API_AUTH_STRING: set either it (self-hosted Basic auth) or "
                "PREFECT_API_KEY (Prefect Cloud), not both"
            )
        return problems

    @property
    def api_url(self) -> str | None:
        """The Prefect API base URL of the default connection, if the environment has one."""
        if self.prefect_api_url is not None:
            return self.prefect_api_url
        if self.prefect_account_id is None:
            return None
        return (
            f"{PREFECT_CLOUD_API}/accounts/{self.prefect_account_id}"
            f"/workspaces/{self.prefect_workspace_id}"
        )


class Settings(PrefectSettings, StoreSettings):
    """Every setting of the service. Attribute names drop the variable's prefix."""

    # Prefect: the default route's flow (the connection is PrefectSettings').
    prefect_flow_id: UUID | None = Field(None, validation_alias="PREFECT_FLOW_ID")
    # Or the flow by name: looked up, or created, on first use (Prefect's POST /flows/).
    prefect_flow_name: str | None = Field(None, validation_alias="PREFECT_FLOW_NAME")

    # The webhook and the HTTP server.
    webhook_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, validation_alias="BRIDGE_WEBHOOK_TOKEN"
    )
    admin_token: SecretStr | None = Field(None, validation_alias="BRIDGE_ADMIN_TOKEN")
    metrics_token: SecretStr | None = Field(None, validation_alias="BRIDGE_METRICS_TOKEN")
    # How long a sign-in to the operator console (/ui/, with the admin token) lasts.
    console_session: Duration = Field(timedelta(hours=8), validation_alias="BRIDGE_CONSOLE_SESSION")
    host: str = Field("127.0.0.1", validation_alias="BRIDGE_HOST")
    port: Annotated[int, Ge(1)] = Field(8080, le=65535, validation_alias="BRIDGE_PORT")
    max_body_bytes: Annotated[int, Ge(1024)] = Field(
        65536, validation_alias="BRIDGE_MAX_BODY_BYTES"
    )
    body_timeout: Duration = Field(timedelta(seconds=10), validation_alias="BRIDGE_BODY_TIMEOUT")
    # Connection limits (app.server): how long and how large a request head may be, how
    # many connections may be open, and how long an idle one is kept open.
    header_timeout: Duration = Field(timedelta(seconds=5), validation_alias="BRIDGE_HEADER_TIMEOUT")
    max_header_bytes: Annotated[int, Ge(1024)] = Field(
        16384, validation_alias="BRIDGE_MAX_HEADER_BYTES"
    )
    max_connections: Annotated[int, Ge(1)] = Field(512, validation_alias="BRIDGE_MAX_CONNECTIONS")
    keepalive_timeout: Duration = Field(
        timedelta(seconds=5), validation_alias="BRIDGE_KEEPALIVE_TIMEOUT"
    )
    rate_limit: Annotated[float, Gt(0)] | None = Field(None, validation_alias="BRIDGE_RATE_LIMIT")
    # The proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (app.forwarded):
    # none unless listed, so that no client can name its own address.
    trusted_proxies: Annotated[list[IPNetwork], NoDecode] = Field(
        default_factory=list, validation_alias="BRIDGE_TRUSTED_PROXIES"
    )
    # The Prefect-shaped endpoints: off unless turned on, and then only for the targets the
    # service is configured for (and those listed), without the fields that change how or
    # where a run executes (unless listed).
    dropin: bool = Field(False, validation_alias="BRIDGE_DROPIN")
    dropin_allow: CommaList = Field(default_factory=list, validation_alias="BRIDGE_DROPIN_ALLOW")
    dropin_allow_fields: CommaList = Field(
        default_factory=list, validation_alias="BRIDGE_DROPIN_ALLOW_FIELDS"
    )
    flow_run_name: str = Field(
        "erathos_run_${{erathos.table_name}}", validation_alias="BRIDGE_FLOW_RUN_NAME"
    )

    # What ${{variables.X}} and ${{secrets.X}} in a routes file read, as the sources of the
    # other settings read them (never set by a variable of their own): every variable of
    # the environment and of .env, and every file of the secrets directory.
    # (NoDecode: a platform's own ENVIRONMENT=production is never parsed as this field; the
    # source that sets these comes first and wins.)
    environment: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, exclude=True, repr=False
    )
    secret_files: Annotated[dict[str, SecretStr], NoDecode] = Field(
        default_factory=dict, exclude=True, repr=False
    )

    # The dispatcher.
    sync_wait: Wait = Field(timedelta(seconds=2), validation_alias="BRIDGE_SYNC_WAIT")
    max_attempts: Annotated[int, Ge(1)] = Field(30, validation_alias="BRIDGE_MAX_ATTEMPTS")
    max_age: Duration = Field(timedelta(hours=24), validation_alias="BRIDGE_MAX_AGE")
    retry_base: Duration = Field(timedelta(seconds=5), validation_alias="BRIDGE_RETRY_BASE")
    retry_cap: Duration = Field(timedelta(hours=1), validation_alias="BRIDGE_RETRY_CAP")
    max_concurrency: Annotated[int, Ge(1)] = Field(4, validation_alias="BRIDGE_MAX_CONCURRENCY")
    max_rate: Annotated[float, Gt(0)] | None = Field(None, validation_alias="BRIDGE_MAX_RATE")
    lease: Duration = Field(timedelta(seconds=60), validation_alias="BRIDGE_LEASE")
    poll_interval: Duration = Field(timedelta(seconds=1), validation_alias="BRIDGE_POLL_INTERVAL")
    # The whole time from SIGTERM to exit: within Docker's default 10 s stop timeout.
    shutdown_grace: Wait = Field(timedelta(seconds=8), validation_alias="BRIDGE_SHUTDOWN_GRACE")

    @field_validator(
        "body_timeout",
        "console_session",
        "header_timeout",
        "keepalive_timeout",
        "sync_wait",
        "max_age",
        "retry_base",
        "retry_cap",
        "lease",
        "poll_interval",
        "shutdown_grace",
        mode="before",
    )
    @classmethod
    def _durations(cls, value: Any) -> Any:
        return parse_duration(value)

    @field_validator("webhook_tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return split_list(value)

    @field_validator("webhook_tokens")
    @classmethod
    def _strong_tokens(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for token in tokens:
            if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
                raise ValueError(f"every token must be at least {MIN_TOKEN_LENGTH} characters long")
        return tokens

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted_proxies(cls, value: Any) -> Any:
        return parse_networks(value)

    @field_validator("dropin_allow", "dropin_allow_fields", mode="before")
    @classmethod
    def _dropin_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("dropin_allow")
    @classmethod
    def _dropin_targets(cls, targets: list[str]) -> list[str]:
        for target in targets:
            flow, slash, deployment = target.partition("/")
            if slash and flow and deployment and "/" not in deployment:
                continue
            try:
                UUID(target)
            except ValueError:
                raise ValueError(
                    f"{target[:80]!r} is neither a flow or deployment id (UUID) nor a "
                    "'flow-name/deployment-name'"
                ) from None
        return [str(UUID(t)) if "/" not in t else t for t in targets]

    @field_validator("dropin_allow_fields")
    @classmethod
    def _dropin_fields(cls, fields: list[str]) -> list[str]:
        unknown = sorted(set(fields) - set(DROPIN_GUARDED_FIELDS))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: not a field that can be allowed "
                f"(one of {', '.join(DROPIN_GUARDED_FIELDS)})"
            )
        return fields

    @field_validator("admin_token", "metrics_token")
    @classmethod
    def _strong_admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters long")
        return token

    @field_validator("prefect_flow_name", mode="before")
    @classmethod
    def _blank_flow_name(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("prefect_flow_name")
    @classmethod
    def _flow_name(cls, value: str | None) -> str | None:
        return None if value is None else check_flow_name(value)

    def _problems(self) -> list[str]:
        problems = super()._problems()
        if not self.webhook_tokens:
            problems.append(
                "BRIDGE_WEBHOOK_TOKEN: is required: the token Erathos must send as "
                "'Authorization: Bearer'"
            )
        if self.prefect_flow_id is not None and self.prefect_flow_name is not None:
            problems.append(
                "PREFECT_FLOW_NAME: set either it (the flow by name) or PREFECT_FLOW_ID, not both"
            )
        # With a routes file, connections and targets may all come from the file.
        if self.routes_file is None:
            if self.prefect_api_url is None and self.prefect_account_id is None:
                problems.append(
                    "PREFECT_API_URL: is required (or PREFECT_ACCOUNT_ID and "
                    "PREFECT_WORKSPACE_ID for Prefect Cloud, or a BRIDGE_ROUTES_FILE)"
                )
            if self.prefect_flow_id is None and self.prefect_flow_name is None:
                problems.append(
                    "PREFECT_FLOW_ID: is required: the flow the default route runs "
                    "(or PREFECT_FLOW_NAME, or a BRIDGE_ROUTES_FILE)"
                )
        elif not self.routes_file.is_file():
            problems.append(f"BRIDGE_ROUTES_FILE: {self.routes_file} is not a file")
        elif self.prefect_flow_name is not None:
            problems.append(
                "PREFECT_FLOW_NAME: the default route's flow, which a BRIDGE_ROUTES_FILE "
                'replaces: give a route "flow" instead'
            )
        if self.dropin and self.api_url is None:
            problems.append(
                "BRIDGE_DROPIN: needs PREFECT_API_URL (or the Prefect Cloud ids): drop-in "
                "calls are forwarded to the environment's Prefect"
            )
        if self.lease <= self.prefect_timeout:
            problems.append("BRIDGE_LEASE: must be longer than BRIDGE_PREFECT_TIMEOUT")
        if self.retry_cap < self.retry_base:
            problems.append("BRIDGE_RETRY_CAP: must not be shorter than BRIDGE_RETRY_BASE")
        return problems


@overload
def load_settings() -> Settings: ...
@overload
def load_settings(model: type[S]) -> S: ...
def load_settings(model: type[PublicSettings] = Settings) -> PublicSettings:
    """Read and validate the settings, or raise one :class:`ConfigurationError` that
    lists every problem, one line each: the invalid values, then what is wrong across
    settings (found again with each invalid value at its default)."""
    try:
        return model(_secrets_dir=secrets_dir())
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        failed = _failed_fields(model, exc)
    if failed is not None:
        try:
            model(_secrets_dir=secrets_dir(), **failed)
        except ValidationError as again:
            # A line that names a setting already reported only follows from its default.
            named = {line.partition(":")[0] for line in problems}
            problems += [
                line
                for line in describe_validation_error(again)
                if not any(variable in line for variable in named)
            ]
    raise ConfigurationError(*problems) from None


def _failed_fields(model: type[PublicSettings], exc: ValidationError) -> dict[str, Any] | None:
    """The fields that failed on their own, at their defaults; None when one has none
    (or the failure is not a single field's)."""
    by_variable = {
        (field.validation_alias if isinstance(field.validation_alias, str) else name).upper(): name
        for name, field in model.model_fields.items()
    }
    defaults: dict[str, Any] = {}
    for error in exc.errors(include_input=False, include_url=False):
        name = by_variable.get(str(error["loc"][0]).upper()) if error["loc"] else None
        if name is None:
            return None
        field = model.model_fields[name]
        if field.is_required():
            return None
        defaults[name] = field.get_default(call_default_factory=True)
    return defaults


def describe_validation_error(exc: ValidationError) -> list[str]:
    """Turn pydantic's error list into lines that name the variable, never its value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            lines.append(f"{_variable_name(str(error['loc'][0]))}: {message}")
        else:
            lines.extend(message.splitlines())
    return lines


def _variable_name(field_or_alias: str) -> str:
    field = Settings.model_fields.get(field_or_alias)
    if field is not None and isinstance(field.validation_alias, str):
        return field.validation_alias
    return field_or_alias.upper()
