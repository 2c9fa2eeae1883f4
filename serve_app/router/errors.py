"""OpenAI-style error bodies and the FastAPI handlers that make every failure one of them."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import ServeAppError

logger = logging.getLogger("serve_app.router")

# FastAPI's HTTPException detail when the body cannot be decoded at all (fastapi.routing).
_FASTAPI_PARSE_FAILURE = "There was an error parsing the body"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class OpenAIError(ServeAppError):
    """Raised anywhere in request handling; rendered as ``{"error": {...}}`` with its status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def sse_event(self) -> str:
        return f"data: {json.dumps(self.body())}\n\n"


# Pydantic names the member of a union it tried in the error location ("stop.str",
# "stop.list[str].0"); a client's parameter path has no such parts.
_UNION_MEMBER = re.compile(r"(str|int|float|bool|none|list|dict|function-\w+)(\[.*\])?|.*\[.*\]")


def _param_of(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p != "body" and not (isinstance(p, str) and _UNION_MEMBER.fullmatch(p))]
    return ".".join(parts) or None


def _body_error(first: dict[str, Any], content_type: str) -> OpenAIError | None:
    """Errors about the body as a whole (not one field), which pydantic words poorly."""
    if first.get("type") == "json_invalid":
        detail = f"request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": ")
        return OpenAIError(400, detail, code="invalid_json")
    if tuple(first.get("loc", ())) != ("body",):
        return None
    if "json" not in content_type.split(";")[0].lower():
        return OpenAIError(
            415, "send the request body as JSON with Content-Type: application/json", code="bad_media_type"
        )
    if first.get("type") == "missing":
        return OpenAIError(400, "a JSON object request body is required", code="missing_body")
    return OpenAIError(400, "the request body must be a JSON object", code="invalid_body")


def validation_error(exc: RequestValidationError, content_type: str = "application/json") -> OpenAIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    body_error = _body_error(first, content_type)
    if body_error is not None:
        return body_error
    param = _param_of(tuple(first.get("loc", ())))
    if first.get("type") == "extra_forbidden":
        return OpenAIError(400, f"unknown parameter: {param!r}", param=param, code="unknown_parameter")
    if first.get("type") == "missing":
        return OpenAIError(
            400, f"missing required parameter: {param!r}", param=param, code="missing_required_parameter"
        )
    message = "; ".join(f"{_param_of(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}" for e in errors[:5])
    return OpenAIError(400, message, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai(_: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc, request.headers.get("content-type", "")).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        code = None
        if exc.status_code == 400 and message == _FASTAPI_PARSE_FAILURE:
            # invalid UTF-8, nesting past the JSON parser's recursion limit, integers too long to parse
            message, code = (
                "request body is not JSON (invalid UTF-8, too deeply nested, or a number too long)",
                "invalid_json",
            )
        if exc.status_code == 404:
            message = "unknown route; see /v1/models, /v1/chat/completions, /v1/completions, /generate"
        return OpenAIError(exc.status_code, message, code=code, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error in request")
        return OpenAIError(500, "internal server error", type="server_error").response()
