"""What every settings model shares: where values come from (the environment, ``.env``,
the secrets directory), the settings any command reads, and the service's constants."""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar
from uuid import UUID

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from app.config.sources import TemplateEnvironment
from app.config.values import (
    not_negative_duration,
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
