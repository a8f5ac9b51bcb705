"""The service's configuration: pydantic-settings models validated at start-up, from the
environment, an optional ``.env`` and a secrets directory. A bad value stops start-up
naming its variable; :func:`load_settings` reports every problem at once."""

from app.config.base import (
    DROPIN_GUARDED_FIELDS,
    MIN_TOKEN_LENGTH,
    PREFECT_API_VERSION,
    PREFECT_CLOUD_API,
    Durability,
    PublicSettings,
)
from app.config.load import describe_validation_error, load_settings
from app.config.prefect import PrefectSettings
from app.config.settings import Settings
from app.config.sources import ConfigurationError, TemplateEnvironment, secrets_dir
from app.config.store import StoreSettings

__all__ = [
    "DROPIN_GUARDED_FIELDS",
    "MIN_TOKEN_LENGTH",
    "PREFECT_API_VERSION",
    "PREFECT_CLOUD_API",
    "ConfigurationError",
    "Durability",
    "PrefectSettings",
    "PublicSettings",
    "Settings",
    "StoreSettings",
    "TemplateEnvironment",
    "describe_validation_error",
    "load_settings",
    "secrets_dir",
]
