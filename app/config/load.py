"""Loading settings: every problem at once, each naming its variable, so a configuration
error stops start-up with one message instead of one retry per mistake."""

from __future__ import annotations

from typing import Any, overload

from pydantic import (
    ValidationError,
)

from app.config.base import PublicSettings, S
from app.config.settings import Settings
from app.config.sources import ConfigurationError, secrets_dir


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
