"""One error hierarchy, one handler, one JSON shape for every error the service answers.

    BridgeError                     the base: a status code, a code and a message
    ├── Unauthorized          401   no or wrong token (with WWW-Authenticate: Bearer)
    ├── Forbidden             403   the token may not do this (a drop-in call's target)
    ├── NotFound              404
    ├── Conflict              409   e.g. replaying a delivery that is still pending
    ├── PayloadTooLarge       413   body over BRIDGE_MAX_BODY_BYTES
    ├── UnsupportedMediaType  415   not application/json
    ├── InvalidBody           400   not parseable as JSON
    ├── RequestTimeout        408   the body did not arrive within BRIDGE_BODY_TIMEOUT
    ├── TooManyRequests       429   over BRIDGE_RATE_LIMIT for this token (Retry-After)
    ├── ValidationFailed      422   names every missing or invalid field
    ├── ServiceUnavailable    503   nothing was acknowledged; send it again
    ├── QueryTimeout          503   a read ran past BRIDGE_DB_READ_TIMEOUT and was stopped
    └── TargetUnverifiable    503   a drop-in call's deployment cannot be checked now

Every error body is ``{"error": {"code": ..., "message": ..., "fields": [...]}}``. The
store's :class:`StoreUnavailable` is answered as a 503; anything else
unexpected as a 500, logged once with its traceback (by :class:`app.logs.RequestContext`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger("erathos_prefect_bridge.errors")
M = TypeVar("M", bound=BaseModel)


class StoreUnavailable(Exception):
    """The store cannot read or commit right now (locked, read-only, disk full, gone,
    restarting): the caller answers 503 or tries again later."""


class QueryTimedOut(StoreUnavailable):
    """An operator's read ran past ``BRIDGE_DB_READ_TIMEOUT`` and was stopped."""


class FieldError(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: list[FieldError] = []


class ErrorBody(BaseModel):
    """The shape of every error answer."""

    error: ErrorDetail


class BridgeError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        fields: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = list(fields)
        self.headers = headers


class Unauthorized(BridgeError):
    status_code = 401
    code = "unauthorized"

    def __init__(
        self, message: str = "a valid 'Authorization: Bearer <token>' is required"
    ) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(BridgeError):
    status_code = 403
    code = "forbidden"


class NotFound(BridgeError):
    status_code = 404
    code = "not_found"


class Conflict(BridgeError):
    status_code = 409
    code = "conflict"


class InvalidBody(BridgeError):
    status_code = 400
    code = "invalid_json"


class RequestTimeout(BridgeError):
    status_code = 408
    code = "request_timeout"


class TooManyRequests(BridgeError):
    status_code = 429
    code = "rate_limited"


class PayloadTooLarge(BridgeError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(BridgeError):
    status_code = 415
    code = "unsupported_media_type"


class ValidationFailed(BridgeError):
    status_code = 422
    code = "validation_failed"


class ServiceUnavailable(BridgeError):
    status_code = 503
    code = "store_unavailable"

    def __init__(
        self, message: str = "the event could not be stored; nothing was acknowledged"
    ) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class QueryTimeout(BridgeError):
    """An operator's read ran past BRIDGE_DB_READ_TIMEOUT and was stopped."""

    status_code = 503
    code = "query_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class TargetUnverifiable(BridgeError):
    """Prefect could not be asked whether a drop-in call's deployment is allowed."""

    status_code = 503
    code = "target_unverifiable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


def error_response(
    status: int, code: str, message: str, fields: Sequence[FieldError] = (), headers: Any = None
) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, fields=list(fields)))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def responses(*errors: type[BridgeError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the errors a route can answer."""
    return {
        error.status_code: {"model": ErrorBody, "description": error.__doc__ or error.code}
        for error in errors
    }


def fields_from_pydantic(errors: Sequence[Any], *, skip: int = 0) -> list[FieldError]:
    """Name each invalid field (``rows``, ``query.limit``); never echo the value."""
    out = []
    for error in errors:
        loc = [str(part) for part in error["loc"][skip:]]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required"
        field = ".".join(loc) if loc else "body"
        if not loc and ": " in message:
            field, message = message.split(": ", 1)
        out.append(FieldError(field=field, message=message))
    return out


def validated(model: type[M], payload: Any) -> M:
    """``model`` from an incoming JSON payload, or a 422 naming every invalid field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        fields = fields_from_pydantic(exc.errors())
        raise ValidationFailed(
            "invalid " + ", ".join(dict.fromkeys(f.field for f in fields)), fields=fields
        ) from None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BridgeError)
    async def _bridge(_: Request, exc: BridgeError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.fields, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = fields_from_pydantic(exc.errors())
        message = "invalid " + ", ".join(f.field for f in fields)
        return error_response(422, ValidationFailed.code, message, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(QueryTimedOut)
    async def _query_timeout(_: Request, exc: QueryTimedOut) -> JSONResponse:
        log.warning("read stopped at its deadline", error=str(exc))
        slow = QueryTimeout(str(exc))
        return error_response(slow.status_code, slow.code, slow.message, headers=slow.headers)

    @app.exception_handler(StoreUnavailable)
    async def _store(_: Request, exc: StoreUnavailable) -> JSONResponse:
        log.error("store unavailable", error=str(exc))
        down = ServiceUnavailable("the store cannot be used right now; nothing was changed")
        return error_response(down.status_code, down.code, down.message, headers=down.headers)


def internal_error() -> JSONResponse:
    """The answer to an exception no handler took (:class:`app.logs.RequestContext` logs
    it): nothing of the exception is said."""
    return error_response(500, "internal_error", "internal error; see the service's log")
