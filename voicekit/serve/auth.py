"""Who may use the API and the page: VOICEKIT_API_KEY (a bearer key) and VOICEKIT_PASSWORD (`password` or
`user:password`).

The API takes `Authorization: Bearer <API key or password>` or HTTP Basic with the password; FastAPI's security
helpers read the header (and show both schemes in /api/docs), and every comparison is constant-time
(`hmac.compare_digest`). With neither secret set, everything is open. `/health` never asks.
The realtime socket and the Talk page (below) check the same secrets: `header_authorized` reads one
Authorization header, `socket_authorized` a WebSocket handshake (header, subprotocol or the page's signed token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

bearer_scheme = HTTPBearer(auto_error=False, description="the API key, or the password")
basic_scheme = HTTPBasic(auto_error=False,
                         description="any user name (or the one in VOICEKIT_PASSWORD) and the password")


def password_secret(password: str | None) -> str | None:
    """The secret part of VOICEKIT_PASSWORD (`password` or `user:password`)."""
    if not password:
        return None
    return password.split(":", 1)[1] if ":" in password else password


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def check_password(configured: str, user: str, given: str) -> bool:
    """True when `user`/`given` match VOICEKIT_PASSWORD (any user name when it names none)."""
    expected_user, _, secret = configured.partition(":") if ":" in configured else ("", "", configured)
    user_ok = not expected_user or _same(user, expected_user)
    return _same(given, secret) and user_ok


def credentials_valid(bearer: HTTPAuthorizationCredentials | None, basic: HTTPBasicCredentials | None,
                      api_key: str | None, password: str | None) -> bool:
    """Whether the credentials FastAPI's security helpers read (`bearer_scheme`, `basic_scheme`) are valid."""
    secrets = _secrets(api_key, password)
    if not secrets:
        return True
    if bearer is not None:
        return any(_same(bearer.credentials.strip(), secret) for secret in secrets)
    if basic is not None and password:
        return check_password(password, basic.username, basic.password)
    return False


def _secrets(api_key: str | None, password: str | None) -> list[str]:
    return [secret for secret in (api_key, password_secret(password)) if secret]


# -- the browser's realtime socket ------------------------------------------------------------------------
# A browser cannot set headers on a WebSocket. The Talk page (served only to a client that authenticated) carries a
# short-lived token signed with the secret; the page offers it as a subprotocol, `voicekit.token.<token>`, so the
# password itself never reaches the page. Programs send the usual Authorization header, or OpenAI's browser form
# `openai-insecure-api-key.<key>`.

TOKEN_PROTOCOL = "voicekit.token."
OPENAI_KEY_PROTOCOL = "openai-insecure-api-key."
PAGE_TOKEN_TTL_S = 12 * 3600


def _signature(secret: str, expiry: int) -> str:
    return hmac.new(secret.encode(), f"voicekit-page:{expiry}".encode(), hashlib.sha256).hexdigest()[:40]


def page_token(secret: str, ttl_s: int = PAGE_TOKEN_TTL_S, now: float | None = None) -> str:
    """A token for the Talk page's socket, valid for `ttl_s` seconds: `<expiry>.<signature>`."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    return f"{expiry}.{_signature(secret, expiry)}"


def check_page_token(token: str, secret: str, now: float | None = None) -> bool:
    """True when `token` came from `page_token(secret)` and has not expired."""
    expiry_text, _, signature = token.partition(".")
    if not expiry_text.isdigit() or int(expiry_text) < (time.time() if now is None else now):
        return False
    return _same(signature, _signature(secret, int(expiry_text)))


def socket_secret(api_key: str | None, password: str | None) -> str | None:
    """The secret that signs page tokens (the password's, else the API key); None when the server is open."""
    return password_secret(password) or api_key or None


def socket_authorized(headers: Mapping[str, str], api_key: str | None, password: str | None) -> tuple[bool, str | None]:
    """(allowed, subprotocol to accept) for a WebSocket handshake with these headers (case-insensitive keys)."""
    offered = [item.strip() for item in headers.get("sec-websocket-protocol", "").split(",") if item.strip()]
    chosen = next((item for item in offered if item.startswith((TOKEN_PROTOCOL, OPENAI_KEY_PROTOCOL))), None)
    chosen = chosen or ("realtime" if "realtime" in offered else None)
    secret = socket_secret(api_key, password)
    if secret is None:
        return True, chosen
    secrets = _secrets(api_key, password)
    for item in offered:
        if item.startswith(TOKEN_PROTOCOL) and check_page_token(item[len(TOKEN_PROTOCOL):], secret):
            return True, item
        if item.startswith(OPENAI_KEY_PROTOCOL) and any(_same(item[len(OPENAI_KEY_PROTOCOL):], s) for s in secrets):
            return True, item
    return header_authorized(headers.get("authorization", ""), api_key, password), chosen


def _basic_pair(value: str) -> tuple[str, str] | None:
    try:
        user, sep, given = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, given) if sep else None


def header_authorized(authorization: str, api_key: str | None, password: str | None) -> bool:
    """Whether an Authorization header value carries the API key or the password (Bearer; or Basic: the password,
    or the API key as the password with any user name, for a browser when only a key is set)."""
    scheme, _, value = authorization.partition(" ")
    secrets = _secrets(api_key, password)
    if scheme.lower() == "bearer":
        return any(_same(value.strip(), secret) for secret in secrets)
    if scheme.lower() == "basic" and (pair := _basic_pair(value)) is not None:
        user, given = pair
        if password and check_password(password, user, given):
            return True
        return _same(given, api_key) if api_key else False
    return False
