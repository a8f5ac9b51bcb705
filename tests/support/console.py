"""The console's sign-in, as a browser does it: the form posted from the same site, and
the CSRF token of the session read back from a page."""

from __future__ import annotations

import re

import httpx

from tests.support.tokens import ADMIN_TOKEN

SAME_SITE = {"Origin": "http://bridge"}


async def sign_in(client: httpx.AsyncClient) -> str:
    """Sign in through the form; the CSRF token of the session."""
    signed = await client.post("/ui/sign-in", data={"token": ADMIN_TOKEN}, headers=SAME_SITE)
    assert signed.status_code == 303, signed.text
    return csrf_of((await client.get("/ui/")).text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)
