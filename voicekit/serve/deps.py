"""What every route of the server shares: its state (`ServerState`, on `app.state.voicekit`: the kit, admission,
credentials, requests in flight and recently finished, open realtime sessions, the metrics) and the dependencies that
read it (the request id, the credentials check), so that each face module can declare a plain `APIRouter`.

    @router.get("/v1/thing")
    async def thing(state: State, rid: Authorized) -> ...: ...
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasicCredentials
from starlette.requests import HTTPConnection

from voicekit.serve.admission import Admission, Busy
from voicekit.serve.auth import basic_scheme, bearer_scheme, credentials_valid
from voicekit.serve.schema import ApiError

if TYPE_CHECKING:
    from voicekit.kit import AsyncReply
    from voicekit.kitlike import ServedKit

log = logging.getLogger("voicekit.server")

FINISHED_KEPT = 64


@dataclass
class RequestRecord:
    """One streaming request: its reply (the turn: voice, text, timings) and the server's own bookkeeping."""

    id: str
    route: str
    reply: AsyncReply
    started: float = field(default_factory=time.perf_counter)  # once admitted
    arrived: float = field(default_factory=time.perf_counter)
    first_audio_s: float | None = None  # from its arrival (the wait in line included), for /metrics
    bytes_sent: int = 0
    outcome: str = "streaming"
    admitted: bool = False  # holds a running slot of the server's Admission until it finishes

    @property
    def voice(self) -> str:
        return str(self.reply.voice)


class ServerState:
    """The kit, its admission control, the credentials, requests in flight and totals, the open realtime sessions
    and the metrics (on `app.state.voicekit`)."""

    def __init__(self, kit: ServedKit, admission: Admission, *, api_key: str | None = None,
                 password: str | None = None) -> None:
        self.kit = kit
        self.admission = admission
        self.api_key, self.password = api_key, password
        self.active: dict[str, RequestRecord] = {}
        self.finished: OrderedDict[str, RequestRecord] = OrderedDict()  # the last FINISHED_KEPT, for GET /chat/{id}
        self.served = 0
        self.warnings: list[str] = []  # the last health check's, to log only what changed
        self.sessions: set[str] = set()  # ids of the open /v1/realtime sessions (realtime.py)
        # imported here: metrics.py's `GET /metrics` router reads the state through this module's dependencies
        from voicekit.serve.metrics import Metrics

        self.metrics = Metrics(self)  # the app's series and the hooks that move them (GET /metrics)

    def finish(self, record: RequestRecord) -> None:
        """Move a request from the active ones to the recently finished ones; free its running slot."""
        if record.admitted:
            record.admitted = False
            self.admission.leave(time.perf_counter() - record.started)
        self.active.pop(record.id, None)
        record.reply.chunks.clear()  # streamed already; the kept record needs its text and timings, not audio
        self.finished[record.id] = record
        while len(self.finished) > FINISHED_KEPT:
            self.finished.popitem(last=False)
        self.served += 1
        self.metrics.observe_stream(record, time.perf_counter())
        _log_finished(record)

    def find(self, request_id: str) -> RequestRecord | None:
        """An active or recently finished request."""
        return self.active.get(request_id) or self.finished.get(request_id)


def state_of(connection: HTTPConnection) -> ServerState:
    """The server's state, for a request or a WebSocket of an app made by `create_app`."""
    state: ServerState = connection.app.state.voicekit
    return state


async def request_id(request: Request) -> str:
    """A short id for the request, kept on `request.state` (error responses and the log carry it)."""
    rid = uuid.uuid4().hex[:12]
    request.state.request_id = rid
    return rid


async def authorize(request: Request, rid: Annotated[str, Depends(request_id)],
                    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
                    basic: Annotated[HTTPBasicCredentials | None, Depends(basic_scheme)]) -> str:
    """The request id, once the request's credentials are valid (401 otherwise; open when no secret is set)."""
    state = state_of(request)
    if not credentials_valid(bearer, basic, state.api_key, state.password):
        raise ApiError(401, "missing or wrong credentials: send 'Authorization: Bearer <API key or password>' "
                            "or HTTP Basic auth",
                       code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="voicekit"'})
    return rid


State = Annotated[ServerState, Depends(state_of)]
RequestId = Annotated[str, Depends(request_id)]
Authorized = Annotated[str, Depends(authorize)]  # the request id of a request with valid credentials


def busy_error(busy: Busy, rid: str, route: str) -> ApiError:
    """A request the server's Admission turned away: 429 with Retry-After, in OpenAI's shape."""
    log.info("request %s %s turned away: %s", rid, route, busy)
    return ApiError(429, str(busy), kind="rate_limit_error", code="server_busy",
                    headers={"Retry-After": str(busy.retry_after)})


def _log_finished(record: RequestRecord) -> None:
    timings: dict[str, Any] = record.reply.timings.as_dict()
    log.info("request %s %s %s: voice=%s bytes=%d wall=%.2fs timings=%s", record.id, record.route, record.outcome,
             record.voice, record.bytes_sent, time.perf_counter() - record.started, timings)
