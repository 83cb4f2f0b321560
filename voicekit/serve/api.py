"""The HTTP API: `create_app(kit)` returns a FastAPI app with the routers of the kit's faces (no Gradio here;
`voicekit.serve.app` mounts the page beside it). docs/API.md documents every route.

Each face is a module with an `APIRouter` (speech.py, chat.py, events.py, voices.py, transcriptions.py, realtime.py,
health.py, metrics.py); their routes read the server's state through the dependencies in deps.py. `create_app`
includes them, then the `/v1/{rest:path}` catch-all last, so no route can land behind it; `RouteMetrics` counts every
HTTP response for `GET /metrics`. Audio streams as it is made (streaming.py, shared by the WAV/PCM routes and the
NDJSON events of events.py): input is checked at call time, so a bad request gets a 4xx JSON error before any audio
is promised, and the reply is closed however the stream ends, so a client that disconnects mid-stream aborts its
engine requests. Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from voicekit.serve import chat, events, health, metrics, realtime, speech, transcriptions, voices
from voicekit.serve.admission import Admission, Limits
from voicekit.serve.deps import RequestId, ServerState
from voicekit.serve.metrics import RouteMetrics
from voicekit.serve.schema import ApiError, error_body, validation_error

if TYPE_CHECKING:
    from voicekit.kitlike import ServedKit

log = logging.getLogger("voicekit.server")

#: The faces' routers, in the order they are matched; one line each.
ROUTERS: tuple[APIRouter, ...] = (
    speech.router,
    chat.router,
    events.router,  # NDJSON events of chats and speech: /v1/chat/events, /v1/audio/speech/events
    voices.router,
    transcriptions.router,
    realtime.router,
    health.router,
    metrics.router,  # GET /metrics
)

unknown = APIRouter(include_in_schema=False)


@unknown.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def unknown_route(rest: str, rid: RequestId) -> None:
    raise ApiError(404, f"no such route: /v1/{rest}; see /api/docs", code="not_found")


def create_app(kit: ServedKit, *, api_key: str | None = None, password: str | None = None,
               title: str = "voicekit", limits: Limits | None = None, routers: Iterable[APIRouter] = ()) -> FastAPI:
    """The API app for a loaded kit; `api_key` / `password` (VOICEKIT_API_KEY / VOICEKIT_PASSWORD) require auth;
    `limits` bound the requests running, waiting and their duration (default: the preset's, admission.py);
    `routers` come after the faces' own (the Talk page's), all before the catch-all."""
    app = FastAPI(title=title, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    admission = Admission(limits or Limits.for_preset(kit.settings.preset))
    state = app.state.voicekit = ServerState(kit, admission, api_key=api_key, password=password)
    app.add_middleware(RouteMetrics, metrics=state.metrics)  # every HTTP response, by route template (/metrics)
    app.add_exception_handler(ApiError, _on_api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _on_invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    for router in (*ROUTERS, *routers, unknown):
        app.include_router(router)
    return app


async def _on_api_error(request: Request, error: ApiError) -> JSONResponse:
    return _error_response(request, error)


async def _on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return _error_response(request, validation_error(error))


async def _on_http(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = "not_found" if error.status_code == 404 else None
    return _error_response(request, ApiError(error.status_code, str(error.detail), code=code,
                                             headers=dict(error.headers or {})))


def _error_response(request: Request, error: ApiError) -> JSONResponse:
    headers = dict(error.headers)
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers["X-Request-Id"] = rid
    log.info("request %s %s %s -> %d %s", rid or "-", request.method, request.url.path, error.status,
             error.code or error.kind)
    return JSONResponse(error_body(error.message, error.kind, error.param, error.code), status_code=error.status,
                        headers=headers)
