"""The tokens every test service takes, and the header that presents one."""

from __future__ import annotations

TOKEN = "test-webhook-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
