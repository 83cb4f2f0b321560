"""Speaking side of a realtime session: typed messages, replies and their audio, what the client played.

`ReplySpeaker` is a base of `AsyncRealtimeSession` (voicekit/listening/session.py), which owns the state it uses
(`kit`, `items`, `response`, `listener`, `emit`, `_spawn`, ...). A reply speaks in the session's talk mode; every
piece of its audio also becomes the echo canceller's reference; cutting it (barge-in, `cancel()`) aborts its engine
requests at once, and the history keeps what the user heard (the server's estimate, or the client's word).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

import numpy as np

from voicekit.audio import StreamResampler
from voicekit.listening.events import OUTPUT_RATE, SpokenReply, TalkOptions, new_id

log = logging.getLogger("voicekit.realtime")

ECHO_MEMORY_S = 8.0  # a reply's words count as "its own" for echo this long after it was last heard
KEEP_FED_S = 0.1  # a reply's voice falls behind: silence goes out before the client holds less than this
SILENCE_S = 0.04  # ...in pieces this long


class ReplySpeaker:
    """Replies of a realtime session (see the module docstring); mixed into `AsyncRealtimeSession`."""

    kit: Any
    items: list[dict[str, Any]]  # the conversation; assistant items keep their SpokenReply in `_response`
    response: SpokenReply | None
    options: TalkOptions
    listener: Any
    voice: str
    instructions: str
    _spoken: collections.deque[SpokenReply]
    _gate: Any
    _floor: asyncio.Event  # clear while the user is mid-turn (see AsyncRealtimeSession._hush)

    def emit(self, type_: str, audio: np.ndarray | None = None, **data: Any) -> None:
        raise NotImplementedError

    def error(self, code: str, message: str, kind: str = "invalid_request_error", **extra: Any) -> None:
        raise NotImplementedError

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        raise NotImplementedError

    # -- text input and responses ---------------------------------------------------------------------

    def add_message(self, text: str, role: str = "user", interrupted: bool = False) -> str:
        """Add a message to the conversation: a typed user message (answer it with `create_response()`), or an
        assistant's (a conversation restored after a reconnect; `interrupted`: a reply cut short, as its
        `status: "incomplete"` says on the wire); returns its item id."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a message needs some text")
        if role not in ("user", "assistant"):
            raise ValueError(f"a message's role is user or assistant, not {role!r}")
        item_id, cut = new_id("item"), interrupted and role == "assistant"
        self.items.append({"role": role, "content": text.strip(), "id": item_id,
                           **({"interrupted": True} if cut else {})})
        part = "input_text" if role == "user" else "output_text"
        self.emit("conversation.item.added", item={"id": item_id, "type": "message", "role": role,
                                                    "status": "incomplete" if cut else "completed",
                                                    "content": [{"type": part, "text": text.strip()}]})
        return item_id

    def create_response(self) -> str | None:
        """Answer the last user message; None (and an `error` event) when a reply is already running or there is
        nothing to answer."""
        if self.response is not None:
            self.error("conversation_already_has_active_response", f"response {self.response.id} is still running")
            return None
        last = next((item for item in reversed(self.items) if item["role"] in ("user", "assistant")), None)
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
        for item in self.items:
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
        past = self.items[:-1]  # the last item is the user message this reply answers
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
        """Send the reply's audio as it comes. When the voice falls behind (it waits for the chat model), silence
        fills the gap before the client's loudspeaker runs dry: a loudspeaker that runs dry restarts after its jitter
        buffer, which moves the echo's delay at every restart, and AEC3 leaks while it follows (tests/test_echo.py).
        Only while the client streams its microphone and echo cancellation runs: nothing else needs it."""
        reply, resampler, spoken = response.reply, None, -1
        chunks = aiter(reply)
        waiting: asyncio.Future[Any] = asyncio.ensure_future(anext(chunks))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=self._until_dry(response))
                if not done:  # the voice is late (it has spoken: see _until_dry): silence, on the same resampler
                    assert resampler is not None
                    self._send_audio(response, resampler.push(np.zeros(int(SILENCE_S * resampler.from_rate),
                                                                       np.float32)))
                    continue
                try:
                    chunk = waiting.result()
                except StopAsyncIteration:
                    break
                waiting = asyncio.ensure_future(anext(chunks))
                if response.first_audio_at is None:
                    await self._wait_for_the_user()  # the next piece is made meanwhile
                resampler = resampler or StreamResampler(chunk.sample_rate, OUTPUT_RATE)
                samples = resampler.push(chunk.samples)
                if chunk.piece_index != spoken:  # the transcript follows the audio, piece by piece
                    spoken = chunk.piece_index
                    response.piece_ends.append((chunk.piece, response.sent_s))
                    self.emit("response.output_audio_transcript.delta", response_id=response.id,
                              item_id=response.item_id, delta=("" if spoken == 0 else " ") + chunk.piece)
                self._send_audio(response, samples)
        finally:
            waiting.cancel()  # cut (barge-in): the reply's stream is closed by _speak
        if resampler is not None:
            self._send_audio(response, resampler.flush())
        if reply.turn.timed_out:
            raise TimeoutError(f"the reply took longer than {self.options.time_limit_s:.0f} s")

    async def _wait_for_the_user(self) -> None:
        """A reply does not begin to speak while the user is mid-turn; bounded, so that a turn never heard (a missed
        path) cannot silence the session for good."""
        if self._floor.is_set():
            return
        try:
            await asyncio.wait_for(self._floor.wait(), self.options.turn.max_turn_s + 5.0)
        except TimeoutError:
            log.warning("a reply waited %.0f s for the user's turn to end: it speaks now",
                        self.options.turn.max_turn_s + 5.0)

    def _until_dry(self, response: SpokenReply) -> float | None:
        """Seconds to wait for the voice before silence must go out (None: wait as long as it takes)."""
        if response.first_audio_at is None or not response.piece_ends:
            return None  # nothing plays yet: the first audio is what the client waits for
        lead = self.listener.playback_lead_s()
        return None if lead is None else max(0.0, lead - KEEP_FED_S)

    def _send_audio(self, response: SpokenReply, samples: np.ndarray) -> None:
        if not len(samples):
            return
        if response.first_audio_at is None:
            response.first_audio_at = time.perf_counter()
        start = self.listener.play(samples)  # what the microphone will hear of it: the echo canceller's reference
        if response.reference_start is None:
            response.reference_start = start
        response.sent_s += len(samples) / OUTPUT_RATE
        piece, _ = response.piece_ends[-1]
        response.piece_ends[-1] = (piece, response.sent_s)
        self.emit("response.output_audio.delta", audio=samples, response_id=response.id, item_id=response.item_id)

    def _cancel(self, response: SpokenReply, reason: str) -> None:
        if response.status == "in_progress":
            response.status, response.reason = "cancelled", reason
            if response.task is not None:
                response.task.cancel()
            self.listener.reply_stopped(client_dropped=response.first_audio_at is not None)
            self._finish(response)  # at once: the audio stops now, not when the engines have wound down

    def _finish(self, response: SpokenReply) -> None:
        if self.response is not response:
            return  # already finished (cancelled, then its task wound down)
        self.response = None
        self._spoken.append(response)
        reply = response.reply
        interrupted = response.status != "completed"
        text = self._heard(response, response.played_s(time.perf_counter())) if interrupted else reply.text
        self.items.append({"role": "assistant", "content": text, "id": response.item_id,
                             **({"interrupted": True} if interrupted else {}), "_response": response})
        self.emit("response.output_audio.done", response_id=response.id, item_id=response.item_id)
        self.emit("response.output_audio_transcript.done", response_id=response.id, item_id=response.item_id,
                  transcript=text)
        self.emit("response.done", response=self._summary(response))
        if reply is not None:
            reply.chunks.clear()  # sent already; the history keeps the reply's text, not its audio

    def _recent_replies(self) -> list[str]:
        """What the assistant said that the microphone may still hear: the reply speaking now, and those whose audio
        played until a few seconds ago (the client plays after the server has sent)."""
        now = time.perf_counter()
        recent = [self.response] if self.response is not None else []
        for response in self._spoken:
            began = response.heard_from or response.first_audio_at
            if began is not None and now - (began + response.sent_s) < ECHO_MEMORY_S:
                recent.append(response)
        return [" ".join(piece for piece, _ in response.piece_ends) for response in recent]

    # -- what the client says of its playback -----------------------------------------------------------

    def playback_started(self, response_id: str) -> None:
        """The client's word: the first sample of `response_id` became audible now (its player had buffered or
        waited). The echo canceller and the heard-text estimate follow it."""
        response = self._response_by_id(response_id)
        if response is None:
            return  # an old or unknown reply: nothing to correct
        if response.heard_from is None:
            response.heard_from = time.perf_counter()
            if response.reference_start is not None:
                self.listener.playback_started(response.reference_start)

    def playback_stopped(self, response_id: str, audio_end_ms: int | None = None) -> None:
        """The client's word: it stopped playing `response_id` after `audio_end_ms` (all of it, or dropped the rest):
        a cut reply keeps in the history what was heard."""
        response = self._response_by_id(response_id)
        if response is None or audio_end_ms is None:
            return
        dropped = audio_end_ms / 1000 < response.sent_s - 0.05  # it stopped before the end of what it was sent
        latest = self._spoken[-1] if self._spoken else None
        if dropped and response is latest and self.response is None:  # nothing newer plays: the echo canceller
            self.listener.reply_stopped()  # no longer waits for audio that will never be heard
        if response is not self.response and (dropped or response.status != "completed"):
            self.truncate(response.item_id, audio_end_ms)

    def _response_by_id(self, response_id: str) -> SpokenReply | None:
        candidates = [self.response, *reversed(self._spoken)]
        return next((response for response in candidates if response is not None and response.id == response_id),
                    None)

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
