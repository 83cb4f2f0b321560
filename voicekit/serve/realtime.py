"""`/v1/realtime`: a WebSocket speaking a subset of the OpenAI Realtime API (docs/API.md, "Realtime").

Each connection is one `AsyncRealtimeSession` (voicekit/listening/session.py): client events are checked and
handed to it, its events are encoded (audio as base64 pcm16, 24 kHz mono) and sent back. A malformed or unknown
event gets an `error` event and the connection stays open; a client that vanishes ends the session, which aborts
a reply in progress. Replies take a running slot of the server's admission control for as long as they speak;
a busy server answers with an `error` (code `busy`, `retry_after`) instead of a reply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from voicekit.audio import float_to_pcm16
from voicekit.errors import VoicekitError
from voicekit.listening.echo import ECHO_MODES
from voicekit.listening.events import INPUT_RATE, with_turn_detection
from voicekit.listening.session import AsyncRealtimeSession, Event
from voicekit.serve.auth import socket_authorized
from voicekit.serve.deps import state_of
from voicekit.serve.metrics import REALTIME_ROUTE

if TYPE_CHECKING:
    from voicekit.kitlike import ServedKit
    from voicekit.serve.metrics import Metrics

log = logging.getLogger("voicekit.realtime")

MAX_EVENT_BYTES = 4 << 20  # one client event (an append of ~85 s of pcm16 in base64); larger ones are refused


router = APIRouter()


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    """One spoken conversation per connection (same credentials as the other routes)."""
    state = state_of(websocket)
    allowed, subprotocol = socket_authorized(websocket.headers, state.api_key, state.password)
    if not allowed:
        await websocket.close(code=1008, reason="missing or wrong credentials")
        return
    open_sessions = state.sessions  # /health's capacity and /metrics read them
    if len(open_sessions) >= state.admission.limits.max_sessions:
        state.metrics.turned_away.labels(REALTIME_ROUTE).inc()
        await websocket.close(code=1013, reason="the server has as many realtime sessions as it can take")
        return
    await websocket.accept(subprotocol=subprotocol)
    session = state.kit.arealtime(gate=state.admission.slot)
    open_sessions.add(session.id)
    state.metrics.sessions_opened.inc()
    sender = asyncio.create_task(_send_events(websocket, session, state.metrics))
    warm_up = asyncio.create_task(_warm_up(state.kit))  # beside the first audio, which the VAD reads meanwhile
    try:
        await _receive_events(websocket, session)
    finally:
        open_sessions.discard(session.id)
        warm_up.cancel()
        await session.aclose()  # stops a reply in progress: its engine requests are aborted
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, 5)
        with contextlib.suppress(Exception):
            await websocket.close()


async def _warm_up(kit: ServedKit) -> None:
    # The recognizer loads on first use (~0.3 s for tiny.en, seconds for a large model): load it while the
    # user starts talking, not after their first turn.
    with contextlib.suppress(Exception):
        await asyncio.to_thread(lambda: kit.transcriber)


async def _send_events(websocket: WebSocket, session: AsyncRealtimeSession, metrics: Metrics) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client went away: the receiver notices
        async for event in session:
            metrics.observe_event(event)  # replies, refusals and transcripts, for /metrics
            await websocket.send_text(json.dumps(encode_event(event)))


def encode_event(event: Event) -> dict[str, Any]:
    """The wire form of an event: its fields, audio as base64 pcm16 in `delta`."""
    body = event.as_dict()
    if event.audio is not None:
        body["delta"] = base64.b64encode(float_to_pcm16(event.audio)).decode("ascii")
    return body


async def _receive_events(websocket: WebSocket, session: AsyncRealtimeSession) -> None:
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            session.error("binary_not_supported", "send JSON text frames (audio goes base64 in "
                                                  "input_audio_buffer.append)")
            continue
        if len(text) > MAX_EVENT_BYTES:
            session.error("event_too_large", f"an event may be at most {MAX_EVENT_BYTES} bytes; "
                                             "send audio in smaller appends")
            continue
        await handle_event(session, text)


async def handle_event(session: AsyncRealtimeSession, text: str) -> None:
    """Apply one client event (JSON text); bad events become `error` events."""
    try:
        event = json.loads(text)
    except ValueError as error:
        session.error("invalid_json", f"the event is not JSON: {error}")
        return
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        session.error("invalid_event", "an event is a JSON object with a string `type`")
        return
    handler = HANDLERS.get(event["type"])
    if handler is None:
        session.error("unknown_event", f"unsupported event type {event['type']!r}; supported: "
                                       f"{', '.join(sorted(HANDLERS))}", param="type", event_id=event.get("event_id"))
        return
    try:
        await handler(session, event)
    except (ValueError, TypeError, KeyError, VoicekitError) as error:
        session.error("invalid_event", f"{event['type']}: {error}", event_id=event.get("event_id"))


async def _session_update(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    settings = event.get("session") or {}
    if not isinstance(settings, dict):
        raise TypeError("`session` must be an object")
    voice, instructions = settings.get("voice"), settings.get("instructions")
    if any(value is not None and not isinstance(value, str) for value in (voice, instructions)):
        raise TypeError("`voice` and `instructions` are strings")
    # OpenAI's GA shape nests input settings under audio.input; the beta shape has them at the top
    audio_input = (settings.get("audio") or {}).get("input") or {} if isinstance(settings.get("audio"), dict) else {}
    if not isinstance(audio_input, dict):
        raise TypeError("`audio.input` must be an object")
    options = None
    for source in (settings, audio_input):
        if "turn_detection" in source:
            spec = source["turn_detection"]
            if spec is not None and not isinstance(spec, dict):
                raise TypeError("`turn_detection` must be an object or null")
            options = with_turn_detection(session.options, spec)
    rate = _input_rate(audio_input.get("format", settings.get("input_audio_format")))
    echo = settings.get("echo_cancellation")
    if echo is not None and echo not in ECHO_MODES:
        raise ValueError(f"`echo_cancellation` must be one of {', '.join(ECHO_MODES)}, not {echo!r}")
    if rate is not None and not 8000 <= rate <= 48000:
        raise ValueError(f"the input audio rate must be between 8000 and 48000 Hz, not {rate}")
    if voice is not None:
        session.kit.resolve_voice(voice)  # all of it is checked before any of it applies
    if rate is not None:
        session.set_input_rate(rate)
    if echo is not None:
        session.set_echo_cancellation(echo)
    session.update(voice=voice, instructions=instructions, options=options)


def _input_rate(spec: Any) -> int | None:
    """The input rate a format names: "pcm16" (24 kHz), or {"type": "audio/pcm", "rate": R}; None when unnamed."""
    if spec is None:
        return None
    if spec == "pcm16":
        return INPUT_RATE
    if not isinstance(spec, dict) or spec.get("type") not in ("audio/pcm", "pcm16"):
        raise ValueError("the input format must be pcm16: {\"type\": \"audio/pcm\", \"rate\": 24000}")
    rate = spec.get("rate", INPUT_RATE)
    if not isinstance(rate, int):
        raise TypeError("the input format's `rate` must be a whole number of Hz")
    return rate


async def _append(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise TypeError("`audio` must be base64-encoded pcm16 (24 kHz mono)")
    try:
        pcm = base64.b64decode(audio, validate=True)
    except binascii.Error as error:
        raise ValueError(f"`audio` is not valid base64 ({error})") from None
    await session.append_audio(pcm)


_TEXT_PARTS = {"user": ("input_text", "text"), "assistant": ("output_text", "text", "output_audio")}


async def _item_create(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    item = event.get("item") or {}
    role = item.get("role") if isinstance(item, dict) else None
    if not isinstance(item, dict) or item.get("type", "message") != "message" or role not in _TEXT_PARTS:
        raise ValueError("only messages can be added: {type: 'message', role: 'user' or 'assistant', content: [...]}")
    parts = item.get("content") or []
    texts = [part.get("text") or part.get("transcript") or "" for part in parts
             if isinstance(part, dict) and part.get("type") in _TEXT_PARTS[role]]
    if not texts or not "".join(texts).strip():
        kinds = " or ".join(_TEXT_PARTS[role][:2])
        raise ValueError(f"the {role} message needs a content part of type {kinds}, with some text")
    session.add_message(" ".join(texts), role, interrupted=item.get("status") == "incomplete")


async def _truncate(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
    if not isinstance(item_id, str) or not isinstance(end_ms, int | float):
        raise TypeError("`item_id` (string) and `audio_end_ms` (number) are required")
    session.truncate(item_id, int(end_ms))


async def _playback_started(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    response_id = event.get("response_id")
    if not isinstance(response_id, str):
        raise TypeError("`response_id` (string) is required")
    session.playback_started(response_id)


async def _playback_stopped(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    response_id, end_ms = event.get("response_id"), event.get("audio_end_ms")
    if not isinstance(response_id, str) or (end_ms is not None and not isinstance(end_ms, int | float)):
        raise TypeError("`response_id` (string) is required; `audio_end_ms` is a number")
    session.playback_stopped(response_id, None if end_ms is None else int(end_ms))


async def _cancel(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    if not session.cancel():
        session.error("response_cancel_not_active", "there is no response to cancel")


async def _create_response(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    session.create_response()


async def _commit(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    session.commit()


async def _clear(session: AsyncRealtimeSession, event: dict[str, Any]) -> None:
    session.clear()


HANDLERS = {
    "session.update": _session_update,
    "input_audio_buffer.append": _append,
    "input_audio_buffer.commit": _commit,
    "input_audio_buffer.clear": _clear,
    "conversation.item.create": _item_create,
    "conversation.item.truncate": _truncate,
    "response.create": _create_response,
    "response.cancel": _cancel,
    # voicekit: the client says what it played (OpenAI sends these names from the server on WebRTC connections)
    "output_audio_buffer.started": _playback_started,
    "output_audio_buffer.stopped": _playback_stopped,
}
