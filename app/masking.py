"""Secrets masked in every form they travel in: one :class:`Masker`, made from every
configured secret, for whatever the service shows or keeps of another system's words
(Prefect's answers in attempts and errors, ``/readyz``, the logs, the admin API, the
console). Pure text functions: any module may use them.

A secret's parts (the whole value, and the user and the password of ``user:password``)
are masked raw, base64-encoded (as Basic auth carries them), URL-encoded and JSON-escaped,
and in combinations of these an echo makes (a URL-encoded base64 value, a JSON-escaped
URL). Text is masked before it is cut short: a cut secret is no longer found.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

MASK = "********"
MIN_SECRET_CHARS = 6  # shorter parts would mask ordinary words
# What URL encoders leave as it is, beyond letters and digits: RFC 3986's unreserved
# characters (Python's quote), and JavaScript's encodeURIComponent's.
_URL_SAFE = ("", "/", "!'()*")
_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def secret_forms(secret: str) -> set[str]:
    """Every text ``secret`` may show as: each part (the whole, and for ``user:password``
    the user and the password, when at least MIN_SECRET_CHARS long), raw and in base64
    (standard and URL-safe, padded or not, and the characters the part alone decides when
    it starts a longer encoded value), each of those URL-encoded (any common encoder, hex
    in either case, ``+`` for a space) and JSON-escaped (ASCII or not, ``/`` as ``\\/``)."""
    parts = {secret}
    user, colon, password = secret.partition(":")
    if colon:
        parts |= {user, password}
    texts: set[str] = set()
    for part in parts:
        if len(part) < MIN_SECRET_CHARS:
            continue
        texts.add(part)
        raw = part.encode()
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(raw).decode()
            texts |= {encoded, encoded.rstrip("="), encoded[: len(raw) * 8 // 6]}
    forms: set[str] = set()
    for text in texts:
        forms |= _escaped(text)
    return {form for form in forms if len(form) >= MIN_SECRET_CHARS}


def _escaped(text: str) -> set[str]:
    """``text``, URL-encoded and JSON-escaped as an echo may show it."""
    found = {text}
    for safe in _URL_SAFE:
        encoded = quote(text, safe=safe)
        lower = _HEX_ESCAPE.sub(lambda m: m.group().lower(), encoded)
        found |= {encoded, lower, encoded.replace("%20", "+"), lower.replace("%20", "+")}
    for form in list(found):
        for ascii_only in (True, False):
            escaped = json.dumps(form, ensure_ascii=ascii_only)[1:-1]
            found |= {escaped, escaped.replace("/", "\\/")}
    return found


class Masker:
    """Every form of the given secrets replaced by ``********``: the logs' last processor,
    Prefect's answers as they are kept, and what the admin API and the console show."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms = {form for secret in secrets for form in secret_forms(secret)}
        self._forms = sorted(forms, key=len, reverse=True)  # longest first: no partial masks

    def mask(self, text: str | None) -> str:
        if not text:
            return ""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def cut(self, text: str, limit: int) -> str:
        """At most ``limit`` characters of ``text``, masked before it is cut."""
        return self.mask(text)[:limit]

    def __call__(self, _: Any, __: str, line: Any) -> Any:
        """As a structlog processor: the rendered line, masked."""
        return self.mask(line) if isinstance(line, str) else line
