"""Reading a request's body within a size cap and a time cap, for every endpoint that
takes one (the webhook's JSON, the console's forms): a client may not make the service
hold more than the cap, nor hold a request open by sending slowly."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from app.errors import PayloadTooLarge, RequestTimeout


async def read_capped_body(request: Request, limit: int, within: float, what: str) -> bytes:
    """The body, read chunk by chunk: 413 (:class:`PayloadTooLarge`) as soon as it is
    declared or streamed past ``limit`` bytes, so no more than that is ever held; 408
    (:class:`RequestTimeout`) when it has not all arrived ``within`` seconds.
    ``what`` names the body in the messages ("the body", "the form")."""
    too_large = f"{what} is larger than {limit} bytes"
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large)
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise PayloadTooLarge(too_large)
    except TimeoutError:
        raise RequestTimeout(f"{what} did not arrive in time") from None
    return bytes(body)
