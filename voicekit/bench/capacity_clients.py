"""The listeners of `bench capacity` (voicekit/bench/capacity.py): chat/speech streams over HTTP and spoken
realtime sessions over the socket, each timing its first audio and hearing where playback would stall.

A listener plays audio from the moment its first piece arrives, at real time (`Playback`): a piece that arrives
after the player ran out of audio is a gap the listener hears. The stream played slower than real time when its
gaps add up past a tolerance.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from voicekit.audio import float_to_pcm16, pcm16_to_float, resample
from voicekit.bench.load import CHAT_MESSAGES, SPEECH_TEXT
from voicekit.bench.talk import CHUNK, LEAD_S, QUESTIONS, RATE, _send, _until

WAV_HEADER = 44  # /chat streams a WAV: its header, then pcm16


@dataclass
class Playback:
    """A player fed as audio arrives: `gap_s` is how long it waited for audio after playing all it had."""

    started: float | None = None
    queued_s: float = 0.0
    gap_s: float = 0.0

    def arrive(self, seconds: float, now: float) -> None:
        """`seconds` of audio arrived at `now` (perf_counter)."""
        if self.started is None:
            self.started = now
        else:
            runs_out = self.started + self.queued_s + self.gap_s
            self.gap_s += max(0.0, now - runs_out)
        self.queued_s += seconds


# -- chat and speech streams (HTTP) ------------------------------------------------------------------------


async def stream_once(client: httpx.AsyncClient, index: int, max_tokens: int) -> dict[str, Any]:
    """One request, speech (pcm) or chat (wav) by turns, listened to whole: status, first audio, gaps."""
    speech = index % 2 == 0
    route, body = ("/v1/audio/speech", {"model": "tts-1", "input": SPEECH_TEXT, "response_format": "pcm"}) \
        if speech else ("/chat", {"message": CHAT_MESSAGES[index // 2 % len(CHAT_MESSAGES)], "max_tokens": max_tokens})
    record: dict[str, Any] = {"kind": "speech" if speech else "chat"}
    started, playback = time.perf_counter(), Playback()
    try:
        async with client.stream("POST", route, json=body) as response:
            record["status"] = response.status_code
            if response.status_code == 429:
                record["retry_after"] = int(response.headers.get("retry-after", "0") or 0)
            bytes_per_s = 2 * int(response.headers.get("x-sample-rate", "0") or 0)
            skip = 0 if speech else WAV_HEADER
            async for piece in response.aiter_bytes():
                audio = piece[skip:]
                skip = max(0, skip - len(piece))
                if audio and bytes_per_s:
                    now = time.perf_counter()
                    record.setdefault("first_audio_s", now - started)
                    playback.arrive(len(audio) / bytes_per_s, now)
    except httpx.HTTPError as error:
        record["status"], record["error"] = "error", type(error).__name__
    record.update(total_s=round(time.perf_counter() - started, 3), audio_s=round(playback.queued_s, 3),
                  gap_s=round(playback.gap_s, 3))
    if "first_audio_s" in record:
        record["first_audio_s"] = round(record["first_audio_s"], 4)
    return record


async def stream_listener(url: str, headers: dict[str, str], number: int, deadline: float,
                          max_tokens: int) -> list[dict[str, Any]]:
    """Requests one after the other until `deadline` (monotonic; at least one); stops once turned away."""
    records: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
        while not records or time.monotonic() < deadline:
            records.append(await stream_once(client, number + len(records), max_tokens))
            if records[-1]["status"] != 200:
                break
    return records


# -- spoken realtime sessions ---------------------------------------------------------------------------------


async def spoken_questions(url: str, headers: dict[str, str], count: int = 3) -> list[np.ndarray]:
    """Questions in the server's default voice (its own /v1/audio/speech), at the socket's 24 kHz, with LEAD_S of
    silence before and 1 s after, as bench talk speaks them: the client needs no kit of its own."""
    questions = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        for text in QUESTIONS[:count]:
            response = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": text,
                                                                   "response_format": "pcm"})
            response.raise_for_status()
            speech = resample(pcm16_to_float(response.content), int(response.headers["x-sample-rate"]), RATE)
            questions.append(np.concatenate([np.zeros(int(LEAD_S * RATE), np.float32), speech,
                                             np.zeros(RATE, np.float32)]))
    return questions


async def _silence_until(ws: Any, done: asyncio.Event) -> None:
    """After the question, the microphone goes on sending silence at real time until the reply is done."""
    silence = base64.b64encode(float_to_pcm16(np.zeros(CHUNK, np.float32))).decode()
    while not done.is_set():
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": silence}))
        await asyncio.sleep(CHUNK / RATE)


async def _spoken_turn(ws: Any, question: np.ndarray) -> dict[str, Any]:
    marks: dict[str, float] = {}
    playback, record = Playback(), {"status": None}

    def note(event: dict[str, Any], now: float) -> None:
        kind = event["type"]
        if kind == "input_audio_buffer.speech_stopped":
            marks.setdefault("turn_end", now)
        elif kind == "response.output_audio.delta":
            marks.setdefault("first_audio", now)
            playback.arrive(len(base64.b64decode(event["delta"])) / 2 / RATE, now)
        elif kind == "error" and event["error"].get("code") == "busy":
            record["retry_after"] = event["error"].get("retry_after")

    done = asyncio.Event()

    async def microphone() -> None:
        await _send(ws, question, marks, len(question) - RATE)
        await _silence_until(ws, done)

    mic = asyncio.create_task(microphone())
    try:
        finished = await _until(ws, "response.done", note, timeout=len(question) / RATE + 90)
    finally:
        done.set()
        await asyncio.gather(mic, return_exceptions=True)
    record["status"] = finished["response"]["status"]
    first, turn_end = marks.get("first_audio"), marks.get("turn_end")
    if first is not None and turn_end is not None:
        record["first_audio_s"] = round(first - turn_end, 4)
    record.update(audio_s=round(playback.queued_s, 3), gap_s=round(playback.gap_s, 3))
    return record


async def session_listener(url: str, headers: dict[str, str], questions: list[np.ndarray], number: int,
                           deadline: float) -> list[dict[str, Any]]:
    """One person talking in one session: questions streamed at real time, each reply heard whole, until
    `deadline` (monotonic; at least one turn). A refused session or reply ends it."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus, WebSocketException

    socket_url = url.replace("http://", "ws://").replace("https://", "wss://") + "/v1/realtime"
    turns: list[dict[str, Any]] = []
    try:
        async with connect(socket_url, additional_headers=headers, max_size=None) as ws:
            await ws.recv()  # session.created
            while not turns or time.monotonic() < deadline:
                turns.append(await _spoken_turn(ws, questions[(number + len(turns)) % len(questions)]))
                if turns[-1]["status"] != "completed":
                    break
    except InvalidStatus:  # the server had as many sessions as it takes: it refused the handshake
        turns.append({"status": "refused"})
    except (WebSocketException, OSError, TimeoutError) as error:
        turns.append({"status": "error", "error": type(error).__name__})
    return turns
