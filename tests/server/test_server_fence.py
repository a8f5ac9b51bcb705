"""The fence around uvicorn's private httptools protocol, which app/server/connections.py
subclasses.

pyproject bounds uvicorn below its next minor release; within it, each method of
uvicorn's ``HttpToolsProtocol`` that the service overrides, calls by name or whose state
it reads is recorded here by a digest of its source. An upgrade that changes one fails
here by the method's name: read how app/server/connections.py uses it, adapt, then record the new
digest (``python -m tests.server.test_server_fence`` prints them).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.server.connections import LimitedHttpToolsProtocol

# uvicorn 0.54: the first 16 hex digits of the sha256 of each method's source.
FENCED: dict[str, str] = {
    "HttpToolsProtocol.__init__": "4f08999410347141",
    "HttpToolsProtocol.connection_made": "6efb565ff3d36b91",
    "HttpToolsProtocol.connection_lost": "c91a4c9bf2e29c55",
    "HttpToolsProtocol.eof_received": "5652627579a02369",
    "HttpToolsProtocol.data_received": "010a7ae59a5d3b1a",
    "HttpToolsProtocol.on_message_begin": "96d377fdc7c2baef",
    "HttpToolsProtocol.on_headers_complete": "1ea8589acfad92d8",
    "HttpToolsProtocol.on_body": "dba9c32aeba35b6a",
    "HttpToolsProtocol.on_message_complete": "1fbad42dc31fc01f",
    "HttpToolsProtocol.on_response_complete": "64e254f28e389e76",  # replaced whole: kept in step
    "HttpToolsProtocol._start_asgi_task": "9c08c2571ae9b038",
    "HttpToolsProtocol.pause_writing": "17a8fd215d96a13c",
    "HttpToolsProtocol.resume_writing": "7844bbaa8cceb1ef",
    "HttpToolsProtocol.timeout_keep_alive_handler": "8b53bf5f2e202970",
    "HttpToolsProtocol._unset_keepalive_if_required": "00a6a4e47214e68e",
    "HttpToolsProtocol.shutdown": "d7351fa33f00d430",
    # the cycle's response_complete, read to tell whether an answer is still being sent
    "RequestResponseCycle.__init__": "4d2f220910c33c12",
}
OWNERS: dict[str, type[Any]] = {
    "HttpToolsProtocol": HttpToolsProtocol,
    "RequestResponseCycle": RequestResponseCycle,
}


def digest(qualified: str) -> str:
    owner, _, name = qualified.partition(".")
    method: Callable[..., Any] = getattr(OWNERS[owner], name)
    return hashlib.sha256(inspect.getsource(method).encode()).hexdigest()[:16]


@pytest.mark.parametrize("hook", sorted(FENCED))
def test_uvicorn_hook_is_the_one_the_server_was_written_against(hook: str) -> None:
    assert digest(hook) == FENCED[hook], (
        f"uvicorn's {hook} changed: re-read app/server/connections.py's use of it, then record "
        "the new digest in FENCED"
    )


def test_every_uvicorn_method_the_server_overrides_is_fenced() -> None:
    overridden = {
        f"HttpToolsProtocol.{name}"
        for name, value in vars(LimitedHttpToolsProtocol).items()
        if callable(value) and hasattr(HttpToolsProtocol, name)
    }
    assert overridden, "LimitedHttpToolsProtocol overrides nothing: this fence is stale"
    assert overridden <= FENCED.keys(), f"not fenced: {sorted(overridden - FENCED.keys())}"


if __name__ == "__main__":
    for qualified in sorted(FENCED):
        print(f'    "{qualified}": "{digest(qualified)}",')
