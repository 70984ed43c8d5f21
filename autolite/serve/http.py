"""HTTP plumbing: body-size limit, per-request metrics, API-key check and short JSON errors (never a traceback)."""
from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any, Awaitable, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autolite.errors import AutoliteError, NumericsError
from autolite.serve.batcher import QueueFullError, RequestTimeoutError, ShuttingDownError
from autolite.serve.engine import InputTooLongError, UnsupportedTaskError
from autolite.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]
DRAIN_LIMIT = 64 * 1024 * 1024  # an oversized body is read and discarded up to this, so the client sees the 413


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson: numpy rows natively (float32 at its shortest exact repr), ~25x faster than
    ``json`` for an embedding's 384 floats, the largest non-model cost of a request."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


class TooManyTextsError(AutoliteError):
    """More texts in one request than the server's limit (HTTP 413)."""


class AuthError(AutoliteError):
    """Missing or wrong API key (HTTP 401)."""


_STATUS = [(QueueFullError, 429, "rate_limit_error"), (RequestTimeoutError, 504, "timeout_error"),
           (ShuttingDownError, 503, "unavailable_error"), (InputTooLongError, 413, "invalid_request_error"),
           (TooManyTextsError, 413, "invalid_request_error"), (UnsupportedTaskError, 400, "invalid_request_error"),
           (AuthError, 401, "authentication_error"), (NumericsError, 500, "model_error")]


def error_response(status: int, message: str, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "code"}}`` with ``status``."""
    return JSONResponse({"error": {"message": message[:500], "type": kind, "code": status}},
                        status_code=status, headers=headers)


def autolite_error_response(exc: AutoliteError) -> JSONResponse:
    """The JSON error for a project error: its HTTP status and type from ``_STATUS`` (else 400)."""
    for cls, status, kind in _STATUS:
        if isinstance(exc, cls):
            headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
            if isinstance(exc, AuthError):
                headers = {"WWW-Authenticate": "Bearer"}
            return error_response(status, str(exc), kind, headers)
    return error_response(400, str(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Map project errors, validation errors, HTTP errors and anything unexpected to short JSON errors."""

    @app.exception_handler(AutoliteError)
    async def _autolite(_: Request, exc: AutoliteError) -> JSONResponse:
        return autolite_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "body is not valid JSON")
        return error_response(422, _summarise(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request error"
        if exc.status_code == 400 and "parsing the body" in message:
            message = "body is not valid UTF-8 JSON"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error: %s", exc)
        return error_response(500, f"internal error ({type(exc).__name__})", "server_error")


def _summarise(errors: list[dict[str, Any]]) -> str:
    """``body.input: Input should be a valid string; ...`` for at most three errors."""
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def check_api_key(expected: str | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that requires ``Authorization: Bearer <expected>`` (no-op when None).

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per request.
    """

    async def dependency(request: Request) -> None:
        problem = key_problem(request.headers.get("authorization", ""), expected)
        if problem:
            raise AuthError(problem)

    return dependency


def key_problem(authorization: str, expected: str | None) -> str | None:
    """What is wrong with an ``Authorization`` header for API key ``expected`` (None: nothing, or no key)."""
    if expected is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return "missing API key: send 'Authorization: Bearer <key>'"
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return "wrong API key"
    return None


class FastRoute:
    """ASGI middleware: a ``POST path`` body that ``schema`` validates is answered by ``handler(request)``
    straight away (orjson; no routing, dependency solving or thread hop: ~0.2 ms less CPU per request). Anything
    else (another route, a body that fails validation, a missing key) goes to ``app``, so FastAPI's answers
    (400, 401, 422) stay the one source of those errors. Project errors raised by ``handler`` map as in
    :func:`autolite_error_response`. Sits inside :class:`LimitAndMeasure`, which has read the whole body."""

    def __init__(self, app: ASGIApp, path: str, schema: Any, handler: Callable[[Any], Awaitable[dict]],
                 api_key: str | None) -> None:
        self.app, self.path, self.schema, self.handler, self.api_key = app, path, schema, handler, api_key

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        message = await receive()  # LimitAndMeasure replays the whole body as one message
        body, receive = message.get("body", b""), _replay(message.get("body", b""), receive)
        request = self._parse(scope, body)
        if request is None:
            await self.app(scope, receive, send)
            return
        try:
            response: JSONResponse = FastJSONResponse(await self.handler(request))
        except AutoliteError as exc:
            response = autolite_error_response(exc)
        await response(scope, receive, send)

    def _parse(self, scope: Scope, body: bytes) -> Any:
        """The validated request, or None when the app must answer (bad key, invalid body)."""
        if self.api_key is not None:
            authorization = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
            if key_problem(authorization, self.api_key):
                return None
        try:
            return self.schema.model_validate_json(body)
        except ValueError:  # pydantic's ValidationError; FastAPI answers it with the same 400/422
            return None


class LimitAndMeasure:
    """ASGI middleware: reject bodies over ``max_body_bytes`` with 413 and record latency/status per route."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, metrics: ServeMetrics, routes: set[str]) -> None:
        self.app, self.max_body_bytes, self.metrics, self.routes = app, max_body_bytes, metrics, routes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]
        if scope.get("method") == "POST":
            scope = _as_json(scope)
        endpoint = scope.get("path", "") if scope.get("path") in self.routes else "other"

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            body = await self._read_body(receive)
            if body is None:
                await _send_json(send_status, 413, f"request body over the limit of {self.max_body_bytes} bytes")
            else:
                await self.app(scope, _replay(body, receive), send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - start)

    async def _read_body(self, receive: Callable) -> bytes | None:
        """The whole body, or None when it is over the limit (read and discarded up to DRAIN_LIMIT)."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
            if size > DRAIN_LIMIT:
                return None
            if size <= self.max_body_bytes:
                chunks.append(message.get("body", b""))
        return b"".join(chunks) if size <= self.max_body_bytes else None


def _as_json(scope: Scope) -> Scope:
    """Bodies are always JSON: a missing or form content type (``curl -d``) is read as JSON too."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
    ctype = dict(scope.get("headers", [])).get(b"content-type", b"")
    if b"json" in ctype.lower():
        return scope
    return {**scope, "headers": headers + [(b"content-type", b"application/json")]}


def _replay(body: bytes, receive: Callable) -> Callable:
    sent = [False]

    async def replay() -> dict[str, Any]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later messages: http.disconnect

    return replay


async def _send_json(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
