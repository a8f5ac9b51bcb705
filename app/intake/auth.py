"""Who may call what: bearer tokens checked in constant time, as FastAPI dependencies.

The webhook and the Prefect-shaped endpoints take ``BRIDGE_WEBHOOK_TOKEN`` (any of
its comma-separated tokens, each with its own ``BRIDGE_RATE_LIMIT`` bucket); the admin
API ``BRIDGE_ADMIN_TOKEN``; ``/metrics`` ``BRIDGE_METRICS_TOKEN`` when it is set; the
details of ``/readyz`` either of the last two.
Tokens are read from ``Authorization: Bearer`` only, never from the query string.
"""

from __future__ import annotations

from fastapi import Request

from app.errors import TooManyRequests, Unauthorized
from app.server.tokens import bearer_token, matching_token
from app.service import BridgeDep


async def require_webhook_token(request: Request, bridge: BridgeDep) -> None:
    """401 without one of the webhook tokens; 429 past BRIDGE_RATE_LIMIT for that token,
    before anything is read or stored."""
    index = matching_token(bearer_token(request), bridge.settings.webhook_tokens)
    if index is None:
        raise Unauthorized()
    if bridge.limiter is not None and (wait := bridge.limiter.retry_after(index)) is not None:
        raise TooManyRequests(
            f"more than {bridge.limiter.rate:g} requests per second for this token",
            headers={"Retry-After": str(wait)},
        )


async def require_admin_token(request: Request, bridge: BridgeDep) -> None:
    token = bridge.settings.admin_token
    if token is None or matching_token(bearer_token(request), [token]) is None:
        raise Unauthorized("a valid 'Authorization: Bearer <admin token>' is required")


async def may_read_details(request: Request, bridge: BridgeDep) -> bool:
    """Whether the caller presented the metrics or the admin token (``/readyz``'s
    details); False without a token; 401 for a token that is neither."""
    presented = bearer_token(request)
    if presented is None:
        return False
    tokens = [t for t in (bridge.settings.metrics_token, bridge.settings.admin_token) if t]
    if matching_token(presented, tokens) is None:
        raise Unauthorized("a valid 'Authorization: Bearer <metrics or admin token>' is required")
    return True


async def require_metrics_token(request: Request, bridge: BridgeDep) -> None:
    token = bridge.settings.metrics_token
    if token is not None and matching_token(bearer_token(request), [token]) is None:
        raise Unauthorized("a valid 'Authorization: Bearer <metrics token>' is required")
