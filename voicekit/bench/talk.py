"""`python -m voicekit bench talk --json FILE`: talking out loud, measured through the real `/v1/realtime` socket.

A kit is loaded and served in this process; a WebSocket client streams spoken questions (the kit's own voice,
at real time, as a microphone would) and times what a user waits for:
- `turn_end_to_first_audio_s`: from the server saying the turn ended (`speech_stopped`, i.e. after the silence
  threshold) to the first reply audio arriving; `speech_end_to_first_audio_s` counts from the last spoken sample
  sent instead (the silence threshold included);
- `asr_rtf`: recognizer seconds per second of speech;
- `barge_in_stop_s`: from the first sample of speech sent over a playing reply to that reply's `response.done`
  (its audio stops there; later deltas of it are counted as `late_audio_deltas`, which must be 0).
The JSON names the recognizer that heard the turns (`recognizer`: model, device, compute type, and `fallback_reason`
when it runs on the CPU instead of the GPU) and what the kit holds in GPU memory (`resources`: each vLLM engine's
share and KV-cache tokens, the GPU's memory in use).
With `--browser` (Playwright + chromium), the page's first sound for Gradio's player and the Talk page's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time
from typing import Any

import numpy as np

from voicekit.audio import float_to_pcm16, resample
from voicekit.bench.pipeline import machine_info

RATE = 24000
CHUNK = 960  # 40 ms
LEAD_S = 0.5  # silence before each question
QUESTIONS = ("What is the capital of France?", "How far away is the moon?", "Can you name three colors?",
             "What do cats like to eat?", "Why is the sky blue?")
STORY = "Tell me a long story about a dragon who learns to sing."


def _spoken(kit: Any, text: str) -> np.ndarray:
    speech = resample(kit.say(text).audio(), kit.sample_rate, RATE)
    return np.concatenate([np.zeros(int(LEAD_S * RATE), np.float32), speech, np.zeros(RATE, np.float32)])


async def _send(ws: Any, samples: np.ndarray, marks: dict[str, float], speech_end: int) -> None:
    """Stream at real time; note when the first speech sample and the last one left."""
    started = time.perf_counter()
    for i in range(0, len(samples), CHUNK):
        pcm = base64.b64encode(float_to_pcm16(samples[i:i + CHUNK])).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": pcm}))
        if i <= LEAD_S * RATE < i + CHUNK:
            marks.setdefault("speech_start_sent", time.perf_counter())
        if i <= speech_end < i + CHUNK:
            marks["speech_end_sent"] = time.perf_counter()
        await asyncio.sleep(max(0.0, started + (i + CHUNK) / RATE - time.perf_counter()))


async def _until(ws: Any, wanted: str, on_event: Any, timeout: float = 120.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            on_event(event, time.perf_counter())
            if event["type"] == wanted:
                return event


async def spoken_turn(url: str, question: np.ndarray) -> dict[str, Any]:
    """Stream `question` (24 kHz, LEAD_S of silence first) into a new session at real time; time its answer."""
    from websockets.asyncio.client import connect

    marks: dict[str, float] = {}
    figures: dict[str, Any] = {}

    def note(event: dict[str, Any], now: float) -> None:
        kind = event["type"]
        if kind == "input_audio_buffer.speech_stopped":
            marks.setdefault("turn_end", now)
        elif kind == "response.output_audio.delta":
            marks.setdefault("first_audio", now)
        elif kind == "conversation.item.input_audio_transcription.completed":
            figures.update(transcript=event["transcript"], asr_s=event["asr_s"], speech_s=event["duration_s"])

    speech_end = len(question) - RATE
    async with connect(url, max_size=None) as ws:
        await ws.recv()  # session.created
        sender = asyncio.create_task(_send(ws, question, marks, speech_end))
        done = await _until(ws, "response.done", note)
        await sender
    first = marks.get("first_audio")
    return {**figures, "status": done["response"]["status"],
            "turn_end_to_first_audio_s": round(first - marks["turn_end"], 4) if first else None,
            "speech_end_to_first_audio_s": round(first - marks["speech_end_sent"], 4) if first else None,
            "asr_rtf": round(figures["asr_s"] / figures["speech_s"], 4) if figures.get("speech_s") else None,
            "server": done["response"].get("timings", {})}


async def barge_in(url: str, question: np.ndarray) -> dict[str, Any]:
    """Ask for a long story; once it plays, speak `question` over it; time until the story's audio stops."""
    from websockets.asyncio.client import connect

    marks: dict[str, float] = {}
    old: dict[str, Any] = {"late": 0}

    def note(event: dict[str, Any], now: float) -> None:
        if event["type"] == "response.output_audio.delta" and old.get("done") and event["response_id"] == old["id"]:
            old["late"] += 1

    async with connect(url, max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "session.update", "session": {
            "instructions": "You tell long stories. Answer with at least six sentences."}}))
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": STORY}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        first = await _until(ws, "response.output_audio.delta", note)
        old["id"] = first["response_id"]
        await asyncio.sleep(0.8)  # the user listens a little, past the echo grace period, then speaks
        sender = asyncio.create_task(_send(ws, question, marks, len(question) - RATE))
        while True:
            done = await _until(ws, "response.done", note)
            if done["response"]["id"] == old["id"]:
                break
        stopped = time.perf_counter()
        old["done"] = True
        await _until(ws, "response.done", note)  # the answer to the interruption; late deltas would come first
        await sender
    return {"status": done["response"]["status"], "reason": done["response"].get("status_details", {}).get("reason"),
            "barge_in_stop_s": round(stopped - marks["speech_start_sent"], 4), "late_audio_deltas": old["late"]}


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return round(statistics.median(values), 4) if values else None


def run_talk_bench(preset: str | None = None, repeats: int = 3, browser: bool = False,
                   room: str | None = None, *, kit: Any = None, url: str | None = None) -> dict[str, Any]:
    """Load a kit, serve it here, and time spoken turns, barge-in and (optionally) the browser's first sound; with
    `room`, the trials of voicekit/bench/talk_room.py instead. `kit`: one already loaded (left open); `url`: a
    server already serving that kit here (its page too, for `browser`). The JSON names the recognizer (model,
    device, and why it fell back to the CPU when it did) and the GPU memory the kit holds (`resources`)."""
    import voicekit
    from voicekit.serve import BackgroundServer, compose

    owned = kit is None
    kit = kit or voicekit.load(preset=preset)
    server = None
    if url is None:
        server = BackgroundServer(compose(kit) if browser else _api_only(kit))
        url = server.url
    try:
        socket_url = url.replace("http://", "ws://").rstrip("/") + "/v1/realtime"
        if room is not None:
            from voicekit.bench.talk_room import run_rooms

            asyncio.run(spoken_turn(socket_url, _spoken(kit, QUESTIONS[0])))  # warm-up: loads the recognizer
            return {"bench": "talk", "machine": machine_info(), "preset": kit.settings.preset,
                    "settings": _listening_settings(kit), "resources": _resources(kit),
                    **run_rooms(socket_url, kit, room, max(1, repeats))}
        questions = [_spoken(kit, text) for text in QUESTIONS[: max(1, repeats)]]
        asyncio.run(spoken_turn(socket_url, questions[0]))  # warm-up: loads the recognizer, fills caches
        turns = [asyncio.run(spoken_turn(socket_url, question)) for question in questions]
        barge = [asyncio.run(barge_in(socket_url, questions[i % len(questions)])) for i in range(max(1, repeats))]
        results: dict[str, Any] = {
            "bench": "talk", "machine": machine_info(), "preset": kit.settings.preset,
            "talk_mode": kit.settings.talk_mode, "turn_silence_s": kit.settings.turn_silence_s,
            "recognizer": _listening_settings(kit)["recognizer"],
            "turn_end_to_first_audio_s": _median(turns, "turn_end_to_first_audio_s"),
            "speech_end_to_first_audio_s": _median(turns, "speech_end_to_first_audio_s"),
            "asr_rtf": _median(turns, "asr_rtf"), "barge_in_stop_s": _median(barge, "barge_in_stop_s"),
            "late_audio_deltas": sum(run["late_audio_deltas"] for run in barge), "turns": turns, "barge_in": barge,
            "resources": _resources(kit)}
        if browser:
            results["browser"] = _browser(url, kit)
        return results
    finally:
        if server is not None:
            server.stop()
        if owned:
            kit.close()


def _listening_settings(kit: Any) -> dict[str, Any]:
    settings = kit.settings
    facts = kit.transcriber.facts()  # loads the recognizer when nothing has yet
    return {"turn_detection": settings.turn_detection, "turn_eagerness": settings.turn_eagerness,
            "echo_cancellation": settings.echo_cancellation, "talk_mode": settings.talk_mode,
            "recognizer": {key: facts[key] for key in ("model", "device", "compute_type", "fallback_reason")}}


def _resources(kit: Any) -> dict[str, Any]:
    from voicekit.build import resources

    return resources(kit)


def _api_only(kit: Any) -> Any:
    from voicekit.serve.api import create_app

    return create_app(kit)


def _browser(url: str, kit: Any) -> dict[str, Any]:
    """The browser's first sound: typed (Gradio's player against the Talk page's) and spoken (fake microphone)."""
    import tempfile

    try:
        from voicekit.bench.browser import browser_first_sound, browser_talk

        typed = browser_first_sound(url, message=QUESTIONS[0])
        with tempfile.TemporaryDirectory() as folder:
            question = kit.say(QUESTIONS[0]).save(f"{folder}/question.wav")
            spoken = browser_talk(url, question)
    except (ImportError, RuntimeError) as error:  # no playwright or chromium here: the socket figures stand
        return {"skipped": str(error)}
    return {"typed": typed, "spoken": spoken}
