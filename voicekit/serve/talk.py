"""The Talk page: talk out loud with the kit in a browser, over the `/v1/realtime` WebSocket.

`GET /talk` is one plain HTML page (no build step, nothing from a CDN); its script, worklets and style are under
`/talk/static/` (voicekit/serve/static/). The page captures the microphone in an AudioWorklet (pcm16 at 24 kHz,
`input_audio_buffer.append` every 20 ms), shows the transcript and the reply as they stream, and plays the reply
through a jitter-buffered AudioWorklet player that flushes at once on barge-in or Stop. When the socket drops (a
proxy cut, a restarted pod) the page says "reconnecting…", opens it again with backoff (talk-socket.js) and gives the
new session its settings and the conversation so far (talk-conversation.js), asking for no reply.

A browser cannot put an Authorization header on a WebSocket, so when the server has a password or an API key,
`/talk` itself asks for credentials (HTTP Basic or Bearer, or the Gradio page's login cookie) and embeds a
short-lived signed token (`voicekit.serve.auth.page_token`) that the page offers as the subprotocol
`voicekit.token.<token>`. The password and the API key never reach the page. Every URL in the page is relative,
so it works behind the RunPod HTTPS proxy (wss) and under a path prefix.
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from voicekit.serve.auth import header_authorized, page_token, socket_secret
from voicekit.serve.deps import state_of

STATIC = Path(__file__).resolve().parent / "static"
PAGE_FILE = "talk.html"
REALM = 'Basic realm="voicekit"'
PAGE_HEADERS = {
    "Cache-Control": "no-store",  # the page carries a token
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                               "style-src 'self'; script-src 'self'; frame-ancestors 'self'",
    "Permissions-Policy": "microphone=(self), autoplay=(self)",
}


@functools.cache
def static_version(folder: Path = STATIC) -> str:
    """A short hash of the static files, appended to their URLs so a new version is never read from a cache."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def render_page(token: str | None, version: str, folder: Path = STATIC) -> str:
    """The Talk page's HTML with the socket token (empty when the server is open) and the static version."""
    template = (folder / PAGE_FILE).read_text(encoding="utf-8")
    return (template.replace("__VOICEKIT_TOKEN__", html.escape(token or "", quote=True))
                    .replace("__VOICEKIT_VERSION__", html.escape(version, quote=True)))


def gradio_user(request: Request) -> str | None:
    """The user logged in on the Gradio page mounted on this app (its session cookie), if any: the Talk tab's
    iframe then opens without asking again."""
    for route in getattr(request.app, "routes", ()):
        gradio_app = getattr(route, "app", None)
        tokens, cookie_id = getattr(gradio_app, "tokens", None), getattr(gradio_app, "cookie_id", None)
        if isinstance(tokens, dict) and cookie_id:
            cookie = (request.cookies.get(f"access-token-{cookie_id}")
                      or request.cookies.get(f"access-token-unsecure-{cookie_id}"))
            if cookie and cookie in tokens:
                return str(tokens[cookie])
    return None


class _StaticFiles(StaticFiles):
    """The page's scripts, revalidated on every load (ETag: a 304 when unchanged), so the page, its modules and
    its worklets always come from one version."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


_static = _StaticFiles(directory=STATIC)
router = APIRouter(include_in_schema=False)


def _allowed(request: Request, secret: str | None) -> bool:
    if secret is None:
        return True
    state = state_of(request)
    authorization = request.headers.get("authorization", "")
    return (bool(authorization) and header_authorized(authorization, state.api_key, state.password)) \
        or gradio_user(request) is not None


@router.get("/talk")
async def talk_page(request: Request) -> Response:
    state = state_of(request)
    secret = socket_secret(state.api_key, state.password)
    if not _allowed(request, secret):
        return PlainTextResponse("voicekit: log in with the configured password (any user name when it "
                                 "names none), or send the API key as a Bearer token\n", status_code=401,
                                 headers={"WWW-Authenticate": REALM, "Cache-Control": "no-store"})
    token = page_token(secret) if secret is not None else None
    return HTMLResponse(render_page(token, static_version()), headers=PAGE_HEADERS)


@router.get("/talk/")
async def talk_slash() -> Response:
    return RedirectResponse("../talk", status_code=307)  # relative: keeps a path prefix


@router.api_route("/talk/static/{path:path}", methods=["GET", "HEAD"])
async def talk_static(path: str, request: Request) -> Response:
    # A route, not a mount: an APIRouter carries routes only. StaticFiles still answers (ETag, 304, 404).
    return await _static.get_response(os.path.normpath(os.path.join(*path.split("/"))), request.scope)
