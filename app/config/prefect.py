"""The default Prefect connection's settings: its API (self-hosted or Cloud), its
credentials, its timeout, and the flow or deployment the seed's single route runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Self
from uuid import UUID

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from app.config.base import (
    _API_VERSION,
    PREFECT_API_VERSION,
    PREFECT_CLOUD_API,
    Duration,
    PublicSettings,
)
from app.config.values import (
    normalise_api_url,
    parse_duration,
)


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
