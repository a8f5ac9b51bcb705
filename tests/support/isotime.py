"""The one form every time takes in the API's answers and the CLI's output: ISO 8601 in
UTC with a ``Z`` (``2026-11-30T08:03:59.225778Z``), as pydantic writes a UTC datetime."""

from __future__ import annotations

import re
import time
from datetime import datetime

ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")


def recent_iso_utc(value: object, within: float = 120.0) -> bool:
    """``value`` is a time in that form, and within ``within`` seconds of now."""
    if not isinstance(value, str) or not ISO_UTC.fullmatch(value):
        return False
    return abs(datetime.fromisoformat(value).timestamp() - time.time()) < within
