"""A realtime session: feed microphone audio, get events back (speech started/stopped, transcript, reply text and
audio, done), with turn-taking and barge-in.

    session = kit.arealtime(voice="en_US-joe-medium")        # async; kit.realtime() is the sync form
    await session.append_audio(pcm16_bytes)                   # 24 kHz mono pcm16 (or float32 at any rate)
    async for event in session: ...                           # Event(type, data, audio)

Event types and fields are those of the OpenAI Realtime API subset documented in docs/API.md, so the WebSocket
face (voicekit.serve.realtime) only encodes them. A reply starts as soon as the user's turn ends (its speech
transcribed); it speaks in the kit's talk mode (overlap, first clause early). Speech during a reply (after
`barge_in_grace_s` of its audio, which is taken for echo) stops it: its engine requests are aborted, and the
history keeps what was played, marked `interrupted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from voicekit.audio import StreamResampler
from voicekit.listening.asr import to_float_mono
from voicekit.listening.events import INPUT_RATE, OUTPUT_RATE, Event, SpokenReply, TalkOptions, new_id
from voicekit.listening.turns import SpeechPaused, SpeechStarted, SpeechStopped, TurnDetector
from voicekit.listening.vad import SAMPLE_RATE as VAD_RATE
from voicekit.listening.vad import SileroVAD

log = logging.getLogger("voicekit.realtime")

__all__ = ["INPUT_RATE", "OUTPUT_RATE", "AsyncRealtimeSession", "Event", "TalkOptions"]


class AsyncRealtimeSession:
    """One conversation spoken in real time (use from one event loop; see the module docstring)."""

    def __init__(self, kit: Any, voice: str | None = None, instructions: str | None = None,
                 history: list[dict[str, Any]] | None = None, options: TalkOptions | None = None,
                 gate: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None) -> None:
        """`gate`: entered around every reply (a server's admission slot); when entering raises, the reply fails
        with an `error` event carrying the exception's `code` and `retry_after`, if it has them."""
        self.kit = kit
        self._gate = gate or contextlib.nullcontext
        self.id = new_id("sess")
        self.voice = kit.resolve_voice(voice)
        self.instructions = instructions or kit.settings.system_prompt
        self.options = options or TalkOptions()
        self.history: list[dict[str, Any]] = list(history or [])
        self.detector = TurnDetector(SileroVAD(), self.options.turn)
        self.response: SpokenReply | None = None
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._input = StreamResampler(INPUT_RATE, VAD_RATE)
        self._input_rate = INPUT_RATE
        self._item_id = new_id("item")  # the user item the audio now arriving belongs to
        self._early: tuple[int, float, asyncio.Task[Any]] | None = None  # (turn, speech_s, transcription at a pause)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.emit("session.created", session=self.describe())

    # -- events ---------------------------------------------------------------------------------------

    def emit(self, type_: str, audio: np.ndarray | None = None, **data: Any) -> None:
        """Queue an event for the consumer."""
        if not self._closed:
            self._events.put_nowait(Event(type_, data, audio))

    def error(self, code: str, message: str, kind: str = "invalid_request_error", **extra: Any) -> None:
        """Queue an `error` event (the session goes on)."""
        self.emit("error", error={"type": kind, "code": code, "message": message, **extra})

    async def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event (None once the session is closed); TimeoutError after `timeout` seconds."""
        async with asyncio.timeout(timeout):
            return await self._events.get()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self._events.get()) is not None:
            yield event

    def describe(self) -> dict[str, Any]:
        """The session as `session.created` / `session.updated` show it."""
        turn = self.options.turn
        return {"id": self.id, "object": "realtime.session", "voice": self.voice, "instructions": self.instructions,
                "voices": [{"id": str(v), "family": v.family, "language": v.language, "description": v.description}
                           for v in self.kit.voices],
                "input_audio_format": {"type": "audio/pcm", "rate": INPUT_RATE},
                "output_audio_format": {"type": "audio/pcm", "rate": OUTPUT_RATE},
                "turn_detection": {"type": "server_vad", "threshold": turn.threshold,
                                   "silence_duration_ms": round(turn.silence_s * 1000),
                                   "prefix_padding_ms": round(turn.prefix_s * 1000)},
                "barge_in_grace_ms": round(self.options.barge_in_grace_s * 1000)}

    def update(self, voice: str | None = None, instructions: str | None = None) -> None:
        """Change the voice (checked: UnknownVoiceError) or the instructions (the system prompt) for later replies."""
        if voice is not None:
            self.voice = self.kit.resolve_voice(voice)
        if instructions is not None:
            self.instructions = instructions.strip() or self.kit.settings.system_prompt
        self.emit("session.updated", session=self.describe())

    # -- input ----------------------------------------------------------------------------------------

    async def append_audio(self, audio: bytes | np.ndarray, sample_rate: int = INPUT_RATE) -> None:
        """Feed microphone audio: pcm16 little-endian bytes, or an int16/float32 array, mono at `sample_rate`."""
        if isinstance(audio, bytes | bytearray | memoryview):
            if len(audio) % 2:
                raise ValueError("pcm16 audio must have an even number of bytes")
            audio = np.frombuffer(audio, dtype="<i2")
        if sample_rate != self._input_rate:
            self._input, self._input_rate = StreamResampler(sample_rate, VAD_RATE), sample_rate
        for event in self.detector.push(self._input.push(to_float_mono(audio))):
            if isinstance(event, SpeechStarted):
                self._speech_started(event)
            elif isinstance(event, SpeechPaused):
                self._paused(event)
            else:
                self._speech_stopped(event)

    def commit(self) -> None:
        """End the user's turn now (without waiting for silence): it is transcribed and answered."""
        events = self.detector.flush()
        if not events:
            self.error("input_audio_buffer_commit_empty", "there is no speech to commit")
        for event in events:
            self._speech_stopped(event)

    def clear(self) -> None:
        """Drop the audio heard since the last turn."""
        self.detector.reset()
        self.emit("input_audio_buffer.cleared")

    def _speech_started(self, event: SpeechStarted) -> None:
        self.emit("input_audio_buffer.speech_started", audio_start_ms=round(event.at_s * 1000), item_id=self._item_id)
        response = self.response
        if response is None or response.first_audio_at is None:
            return  # a reply not yet speaking is cut when the new turn is transcribed
        if time.perf_counter() - response.first_audio_at >= self.options.barge_in_grace_s:
            self._cancel(response, "turn_detected")

    def _paused(self, event: SpeechPaused) -> None:
        # Transcribe during the rest of the silence that will end the turn: when it ends with nothing said since,
        # the transcript is (nearly) ready. One at a time: a recognizer still busy with an older pause is left be.
        if self._early is None or self._early[2].done():
            self._early = (event.turn, event.speech_s, self._spawn(self._transcribe(event.audio)))

    def _speech_stopped(self, event: SpeechStopped) -> None:
        item_id, self._item_id = self._item_id, new_id("item")
        early, self._early = self._early, None
        self.emit("input_audio_buffer.speech_stopped", audio_end_ms=round(event.at_s * 1000), item_id=item_id)
        if not event.kept:
            return  # too short to be a turn (a cough, a click)
        self.emit("input_audio_buffer.committed", item_id=item_id)
        same = early is not None and early[:2] == (event.turn, event.speech_s)  # nothing said since the pause
        self._spawn(self._hear(item_id, event.audio, time.perf_counter(), early[2] if same and early else None))

    async def _transcribe(self, audio: np.ndarray) -> Any:
        return await self.kit.atranscribe(audio, VAD_RATE, language=self.options.language)

    async def _hear(self, item_id: str, audio: np.ndarray, ended_at: float,
                    early: asyncio.Task[Any] | None = None) -> None:
        try:
            transcript = await early if early is not None else await self._transcribe(audio)
        except Exception as error:  # reported to the client; the session goes on
            log.exception("transcription failed")
            self.emit("conversation.item.input_audio_transcription.failed", item_id=item_id,
                      error={"type": "server_error", "code": "transcription_failed", "message": str(error)})
            return
        text = transcript.text.strip()
        self.emit("conversation.item.input_audio_transcription.completed", item_id=item_id, content_index=0,
                  transcript=text, duration_s=round(transcript.duration_s, 3),
                  asr_s=round(transcript.seconds, 4))
        if not text:
            return  # heard nothing worth answering (noise the VAD let through)
        if self.response is not None:
            self._cancel(self.response, "turn_detected")  # the user spoke over a reply that was not yet speaking
        self.history.append({"role": "user", "content": text, "id": item_id})
        self._start_response(text, ended_at)

    # -- text input and responses ---------------------------------------------------------------------

    def add_message(self, text: str) -> str:
        """Add a typed user message to the conversation (answer it with `create_response()`); returns its item id."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a message needs some text")
        item_id = new_id("item")
        self.history.append({"role": "user", "content": text.strip(), "id": item_id})
        self.emit("conversation.item.added", item={"id": item_id, "type": "message", "role": "user",
                                                    "content": [{"type": "input_text", "text": text.strip()}]})
        return item_id

    def create_response(self) -> str | None:
        """Answer the last user message; None (and an `error` event) when a reply is already running or there is
        nothing to answer."""
        if self.response is not None:
            self.error("conversation_already_has_active_response", f"response {self.response.id} is still running")
            return None
        last = next((item for item in reversed(self.history) if item["role"] in ("user", "assistant")), None)
        if last is None or last["role"] != "user":
            self.error("nothing_to_answer", "add a user message (or speak) before asking for a response")
            return None
        return self._start_response(last["content"], None)

    async def ask(self, text: str) -> str | None:
        """Typed input: add `text` and answer it (cancelling a running reply); returns the response id."""
        if self.response is not None:
            self._cancel(self.response, "client_cancelled")
        self.add_message(text)
        return self.create_response()

    def cancel(self) -> bool:
        """Stop the running reply (its audio stops; history keeps what was played); False when none runs."""
        if self.response is None:
            return False
        self._cancel(self.response, "client_cancelled")
        return True

    def truncate(self, item_id: str, audio_end_ms: int) -> None:
        """The client played only `audio_end_ms` of the reply `item_id`: keep only that part in the history."""
        for item in self.history:
            if item.get("id") == item_id and item["role"] == "assistant" and "_response" in item:
                response: SpokenReply = item["_response"]
                item["content"] = self._heard(response, max(0, audio_end_ms) / 1000)
                item["interrupted"] = True
                self.emit("conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=audio_end_ms)
                return
        self.error("item_not_found", f"no reply {item_id!r} in this conversation", param="item_id")

    def _start_response(self, message: str, turn_ended_at: float | None) -> str:
        response = SpokenReply(new_id("resp"), new_id("item"), message, turn_ended_at=turn_ended_at)
        self.response = response
        self.emit("response.created", response={"id": response.id, "object": "realtime.response",
                                                 "status": "in_progress"})
        self.emit("response.output_item.added", response_id=response.id,
                  item={"id": response.item_id, "type": "message", "role": "assistant"})
        response.task = self._spawn(self._respond(response))
        return response.id

    async def _respond(self, response: SpokenReply) -> None:
        try:
            async with self._gate():
                await self._speak(response)
        except asyncio.CancelledError:
            pass  # _cancel() has finished the response
        except Exception as error:  # the gate refused (a busy server): reported, no reply
            self.error(getattr(error, "code", "server_error"), str(error), kind="server_error",
                       **({"retry_after": error.retry_after} if hasattr(error, "retry_after") else {}))
            response.status, response.reason = "failed", str(error)
        finally:
            self._finish(response)

    async def _speak(self, response: SpokenReply) -> None:
        past = self.history[:-1]  # the last item is the user message this reply answers
        try:
            response.reply = self.kit.achat(
                response.message, voice=self.voice, history=past, mode=self.options.mode,
                system_prompt=self.instructions, time_limit_s=self.options.time_limit_s,
                first_fragment_chars=self.options.first_fragment_chars)
            await self._stream(response)
            response.status = "completed"
        except Exception as error:  # reported to the client; the session goes on
            log.exception("response %s failed", response.id)
            response.status, response.reason = "failed", str(error)
        finally:
            if response.reply is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(response.reply.aclose())  # aborts its engine requests

    async def _stream(self, response: SpokenReply) -> None:
        reply, resampler, spoken = response.reply, None, -1
        async for chunk in reply:
            resampler = resampler or StreamResampler(chunk.sample_rate, OUTPUT_RATE)
            samples = resampler.push(chunk.samples)
            if chunk.piece_index != spoken:  # the transcript follows the audio, piece by piece
                spoken = chunk.piece_index
                response.piece_ends.append((chunk.piece, response.sent_s))
                self.emit("response.output_audio_transcript.delta", response_id=response.id,
                          item_id=response.item_id, delta=("" if spoken == 0 else " ") + chunk.piece)
            self._send_audio(response, samples)
        if resampler is not None:
            self._send_audio(response, resampler.flush())
        if reply.turn.timed_out:
            raise TimeoutError(f"the reply took longer than {self.options.time_limit_s:.0f} s")

    def _send_audio(self, response: SpokenReply, samples: np.ndarray) -> None:
        if not len(samples):
            return
        if response.first_audio_at is None:
            response.first_audio_at = time.perf_counter()
        response.sent_s += len(samples) / OUTPUT_RATE
        piece, _ = response.piece_ends[-1]
        response.piece_ends[-1] = (piece, response.sent_s)
        self.emit("response.output_audio.delta", audio=samples, response_id=response.id, item_id=response.item_id)

    def _cancel(self, response: SpokenReply, reason: str) -> None:
        if response.status == "in_progress":
            response.status, response.reason = "cancelled", reason
            if response.task is not None:
                response.task.cancel()
            self._finish(response)  # at once: the audio stops now, not when the engines have wound down

    def _finish(self, response: SpokenReply) -> None:
        if self.response is not response:
            return  # already finished (cancelled, then its task wound down)
        self.response = None
        reply = response.reply
        interrupted = response.status != "completed"
        text = self._heard(response, response.played_s(time.perf_counter())) if interrupted else reply.text
        self.history.append({"role": "assistant", "content": text, "id": response.item_id,
                             **({"interrupted": True} if interrupted else {}), "_response": response})
        self.emit("response.output_audio.done", response_id=response.id, item_id=response.item_id)
        self.emit("response.output_audio_transcript.done", response_id=response.id, item_id=response.item_id,
                  transcript=text)
        self.emit("response.done", response=self._summary(response))
        if reply is not None:
            reply.chunks.clear()  # sent already; the history keeps the reply's text, not its audio

    @staticmethod
    def _heard(response: SpokenReply, played_s: float) -> str:
        heard = response.heard_text(played_s)
        return f"{heard}…" if heard else ""

    def _summary(self, response: SpokenReply) -> dict[str, Any]:
        summary: dict[str, Any] = {"id": response.id, "object": "realtime.response", "status": response.status,
                                   "output": [{"id": response.item_id, "role": "assistant"}]}
        if response.reason:
            kind = "cancelled" if response.status == "cancelled" else "failed"
            summary["status_details"] = {"type": kind, "reason": response.reason}
        timings = dict(response.reply.timings.as_dict()) if response.reply is not None else {}
        if response.turn_ended_at is not None and response.first_audio_at is not None:
            timings["turn_end_to_first_audio_s"] = round(response.first_audio_at - response.turn_ended_at, 4)
        timings["audio_sent_s"] = round(response.sent_s, 3)
        summary["timings"] = timings
        return summary

    # -- lifetime -------------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def conversation(self) -> list[dict[str, Any]]:
        """The history as messages (`role`, `content`, `interrupted` for a cut reply), for `kit.chat(history=...)`."""
        return [{key: value for key, value in item.items() if not key.startswith("_")} for item in self.history]

    async def aclose(self) -> None:
        """Stop the running reply (aborting its engine requests) and end the event stream."""
        if self.response is not None:
            self._cancel(self.response, "session_closed")
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._closed = True
        self._events.put_nowait(None)
