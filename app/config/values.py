"""How a setting's text becomes a value: durations, comma-separated lists, database and
Prefect API URLs, flow names. Shared by the settings and the routes file; each raises
ValueError with a message that reads after the variable's or the field's name."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")  # _: compose service names
# Prefect refuses names with these characters (its own BANNED_CHARACTERS).
FLOW_NAME_BANNED = "/%&><"


def parse_duration(value: Any) -> Any:
    """``"90"``, ``"90s"``, ``"500ms"``, ``"15m"``, ``"24h"``, ``"30d"``; else pydantic's forms."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        number, unit = match.groups()
        return timedelta(seconds=float(number) * _UNIT_SECONDS[unit])
    return value


def positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0 s")
    return value


def not_negative_duration(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    return value


def database_kind(url: str) -> Literal["sqlite", "postgresql"] | None:
    """Which store a database URL names, by its scheme; None for anything else."""
    scheme = url.partition(":")[0].strip().lower()
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return "sqlite"
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg"):
        return "postgresql"
    return None


def normalise_api_url(value: str, *, credentials: str) -> str:
    """A Prefect API base URL as given (``http://prefect:4200/api``), or the bare host name
    of the seed template's ``prefect_api_url`` variable (``prefect.example.com`` means
    ``https://prefect.example.com/api``); raises ValueError for anything else.
    ``credentials`` names where credentials belong instead of the URL."""
    value = value.strip()
    shape = (
        "must be an absolute http(s) URL such as http://prefect:4200/api, or a bare host "
        "name such as prefect.example.com"
    )
    if "://" not in value:
        host = value.rstrip("/")
        if not host or "/" in host:
            raise ValueError(shape)
        value = f"https://{host}/api"
    value = value.rstrip("/")
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not _valid_host(parts.hostname)
        or any(c.isspace() for c in value)
        or parts.query
        or parts.fragment
    ):
        raise ValueError(shape)
    try:
        _ = parts.port  # urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError(shape) from None
    if parts.username or parts.password:
        # It would show in flow run links and /readyz; credentials have their settings.
        raise ValueError(f"must not carry credentials: use {credentials}")
    return value


def _valid_host(host: str | None) -> bool:
    """A DNS name or an IP address (urlsplit has lower-cased it and dropped IPv6's [])."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def check_flow_name(value: str) -> str:
    """A flow name Prefect accepts, or ValueError."""
    if not value.strip():
        raise ValueError("must not be blank")
    if any(c in FLOW_NAME_BANNED for c in value):
        raise ValueError(
            f"must not contain any of {' '.join(FLOW_NAME_BANNED)} (Prefect refuses them)"
        )
    return value


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: Any) -> Any:
    """Comma-separated IP addresses and networks (``10.0.0.5``, ``10.0.0.0/8``, ``::1``),
    each as a network; an address with host bits under its prefix is refused as a likely
    typo (``10.0.0.5/8``)."""
    networks: list[IPNetwork] = []
    for part in split_list(value) if isinstance(value, str) else value:
        if not isinstance(part, str):
            networks.append(part)
            continue
        try:
            networks.append(ipaddress.ip_network(part))
        except ValueError as exc:
            raise ValueError(
                f"{part[:80]!r} is not an IP address or network (such as 10.0.0.5, "
                f"10.0.0.0/8 or ::1): {exc}"
            ) from None
    return networks


def split_list(value: Any) -> Any:
    """Comma-separated environment values become lists; blanks are dropped."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value
