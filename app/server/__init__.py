"""HTTP plumbing every endpoint shares, below any one route: each connection's deadlines
and limits (uvicorn's protocol, fenced), reading a body within its caps, rate limits,
the client's address behind trusted proxies, and bearer tokens compared in constant time."""

from app.server.body import parse_json, read_capped_body, read_json_body
from app.server.connections import ConnectionLimits, limited_http_protocol
from app.server.forwarded import ForwardedClient, ip_of
from app.server.limits import RateLimiter
from app.server.tokens import bearer_token, matching_token

__all__ = [
    "ConnectionLimits",
    "ForwardedClient",
    "RateLimiter",
    "bearer_token",
    "ip_of",
    "limited_http_protocol",
    "matching_token",
    "parse_json",
    "read_capped_body",
    "read_json_body",
]
