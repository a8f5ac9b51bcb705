"""Where settings come from beside the environment and ``.env``: the secrets directory
(``/run/secrets`` as Docker and Kubernetes mount it, or ``BRIDGE_SECRETS_DIR``), and the
template environment a routes file's ``${{variables.X}}`` and ``${{secrets.X}}`` read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
)

DEFAULT_SECRETS_DIR = Path("/run/secrets")
MAX_SECRET_BYTES = 64 * 1024


class ConfigurationError(Exception):
    """The settings cannot run the service: each problem is one line that names its
    variable (all of them at once, so one restart fixes them all)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class TemplateEnvironment(PydanticBaseSettingsSource):
    """The ``environment`` and ``secret_files`` settings: every variable the environment
    and .env sources read (the environment's value wins), by upper-case name, and every
    file in the secrets directory the secrets source reads."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        env: EnvSettingsSource,
        dotenv: EnvSettingsSource,
        secret_files: SecretsSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self.env, self.dotenv, self.secrets = env, dotenv, secret_files
        self.skip: set[str] = set()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        found: dict[str, str] = {}
        for source in (self.dotenv, self.env):  # the environment over .env
            found |= {k.upper(): v for k, v in source.env_vars.items() if v is not None}
        files: dict[str, SecretStr] = {}
        directory = self.secrets.secrets_dir
        if isinstance(directory, str | os.PathLike) and Path(directory).is_dir():
            for path in Path(directory).iterdir():
                if (secret := secret_file(path)) is not None:
                    files[path.name.upper()] = secret
        read = {"environment": found, "secret_files": files}
        return {name: value for name, value in read.items() if name not in self.skip}


def secret_file(path: Path) -> SecretStr | None:
    """A mounted secret: a small text file; anything else in the directory is skipped."""
    if path.name.startswith(".") or not path.is_file() or path.stat().st_size > MAX_SECRET_BYTES:
        return None
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError):
        return None


def secrets_dir() -> Path | None:
    """Where mounted secret files live, when that directory exists."""
    configured = os.environ.get("BRIDGE_SECRETS_DIR")
    path = Path(configured) if configured else DEFAULT_SECRETS_DIR
    if configured and not path.is_dir():
        raise ConfigurationError(f"BRIDGE_SECRETS_DIR: {configured} is not a directory")
    return path if path.is_dir() else None
