"""What Erathos does with a webhook definition: substitute its placeholders into strings.

Used by the tests to send exactly what Erathos would send for the template the
service prints (every value a string), never a hand-made body: :func:`webhook_body`.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from app.cli import webhook_body_template

PLACEHOLDER = re.compile(r"\$\{\{\s*(variables|secrets|erathos)\.([A-Za-z0-9_]+)\s*\}\}")


def execution(**overrides: Any) -> dict[str, str]:
    """Metadata of one finished Erathos execution, as strings (upper-case names, as documented)."""
    values = {
        "JOB_ID": str(uuid.uuid4()),
        "CONNECTION_ID": str(uuid.uuid4()),
        "CONNECTION_NAME": "Shop Postgres",
        "SCHEMA_NAME": "raw_shop",
        "TABLE_NAME": "orders",
        "EXECUTION_ID": str(uuid.uuid4()),
        "STATUS": "FINISHED",
        "ROWS": "1520",
        "COLUMNS": "12",
        "TOTAL_DURATION": "42",
        "TRIGGERED_BY": "Erathos Schedule",
        "IS_ORCHESTRATION": "false",
        "FORCE_HISTORY": "false",
        "NESTED_TABLE": "false",
        "FINISHED_AT_DATE": "2026-11-28",
        "FINISHED_AT_TIME": "06:15",
        "FINISHED_AT_WEEKDAY": "6",
    }
    values.update({k.upper(): str(v) for k, v in overrides.items()})
    return values


def webhook_body(**metadata: Any) -> dict[str, str]:
    """The body Erathos sends for the printed template, for one execution: every
    documented field, every value a string; ``metadata`` overrides the sample's."""
    body: dict[str, str] = render(webhook_body_template(), execution(**metadata))
    return body


def render(
    template: Any,
    metadata: dict[str, str],
    variables: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> Any:
    """Substitute every placeholder in every string of a JSON value, as Erathos does."""
    namespaces = {
        "erathos": {k.lower(): v for k, v in metadata.items()},
        "variables": variables or {},
        "secrets": secrets or {},
    }

    def substitute(match: re.Match[str]) -> str:
        return namespaces[match.group(1)][
            match.group(2).lower() if match.group(1) == "erathos" else match.group(2)
        ]

    if isinstance(template, str):
        return PLACEHOLDER.sub(substitute, template)
    if isinstance(template, dict):
        return {k: render(v, metadata, variables, secrets) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, metadata, variables, secrets) for v in template]
    return template


def request_from(
    definition: dict[str, Any], metadata: dict[str, str], secrets: dict[str, str]
) -> tuple[str, dict[str, str], bytes]:
    """The URL, headers and body Erathos sends for a webhook definition."""
    url = render(definition["url"], metadata, secrets=secrets)
    headers = render(definition["header"] or {}, metadata, secrets=secrets)
    body = json.dumps(render(definition["body"], metadata, secrets=secrets)).encode()
    return url, headers, body
