"""What the service answers when something breaks inside it: a 500 in the one error shape,
logged once with its traceback and never re-raised to the server (which would log it a
second time), while the request line still records the 500."""

from __future__ import annotations

import json

import httpx
import pytest
from asgi_lifespan import LifespanManager

from app.config import Settings
from app.logs import configure_logging
from app.main import create_app

pytestmark = pytest.mark.anyio


async def test_an_unexpected_error_is_answered_500_and_logged_once(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("json", "INFO")
    app = create_app(settings)

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug-0123456789")

    # ASGITransport re-raises whatever escapes the app, as a server would log it: reaching
    # the assertions at all means the exception stayed inside.
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(transport=httpx.ASGITransport(manager.app), base_url="http://b") as c,
    ):
        response = await c.get("/broken")

    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal error; see the service's log",
            "fields": [],
        }
    }
    assert "a bug-0123456789" not in response.text
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    errors = [line for line in lines if "a bug-0123456789" in json.dumps(line)]
    assert [(line["msg"], line["level"]) for line in errors] == [("unexpected error", "error")]
    assert "Traceback" in errors[0]["exception"]
    [request] = [line for line in lines if line["msg"] == "request"]
    assert (request["path"], request["status"]) == ("/broken", 500)
