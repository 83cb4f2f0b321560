"""Who may use the API and the page: VOICEKIT_API_KEY (a bearer key) and VOICEKIT_PASSWORD (`password` or
`user:password`).

The API takes `Authorization: Bearer <API key or password>` or HTTP Basic with the password; FastAPI's security
helpers read the header (and show both schemes in /api/docs), and every comparison is constant-time
(`hmac.compare_digest`). With neither secret set, everything is open. `/health` never asks.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="the API key, or the password")
_basic = HTTPBasic(auto_error=False, description="any user name (or the one in VOICEKIT_PASSWORD) and the password")


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


def credentials_check(api_key: str | None, password: str | None) -> Callable[..., Awaitable[bool]]:
    """A FastAPI dependency that answers whether the request carries valid credentials."""
    secrets = [secret for secret in (api_key, password_secret(password)) if secret]

    async def authorized(bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                         basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> bool:
        if not secrets:
            return True
        if bearer is not None:
            return any(_same(bearer.credentials.strip(), secret) for secret in secrets)
        if basic is not None and password:
            return check_password(password, basic.username, basic.password)
        return False

    return authorized
