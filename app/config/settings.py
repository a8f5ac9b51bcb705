"""The service's configuration: one pydantic-settings model, validated at start-up.

Values come from the environment, an optional ``.env`` file and files in a
secrets directory (``/run/secrets`` as Docker and Kubernetes mount them, or
``BRIDGE_SECRETS_DIR``). A bad value stops start-up with one message that names
the variable (:func:`load_settings`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any
from uuid import UUID

from annotated_types import Ge, Gt
from pydantic import (
    Field,
    SecretStr,
    field_validator,
)
from pydantic_settings import (
    NoDecode,
)

from app.config.base import DROPIN_GUARDED_FIELDS, MIN_TOKEN_LENGTH, CommaList, Duration, Wait
from app.config.prefect import PrefectSettings
from app.config.store import StoreSettings
from app.config.values import (
    IPNetwork,
    check_flow_name,
    parse_duration,
    parse_networks,
    split_list,
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
    # Connection limits (app.server.connections): how long and how large a request head may be, how
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
    # The proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (app.server.forwarded):
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
    # Following flow runs to their end (app.delivery.follow): at most one request per
    # connection per interval, for runs delivered up to follow_for ago. Off: no request
    # for runs at all (runs followed elsewhere, or an API key that may not read them).
    follow_runs: bool = Field(True, validation_alias="BRIDGE_FOLLOW_RUNS")
    follow_interval: Duration = Field(
        timedelta(seconds=5), validation_alias="BRIDGE_FOLLOW_INTERVAL"
    )
    follow_for: Duration = Field(timedelta(hours=24), validation_alias="BRIDGE_FOLLOW_FOR")
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
        "follow_interval",
        "follow_for",
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
