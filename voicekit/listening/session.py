"""A realtime session: feed microphone audio, get events back (speech started/stopped, transcript, reply text and
audio, done), with turn-taking and barge-in.

    session = kit.arealtime(voice="en_US-joe-medium")        # async; kit.realtime() is the sync form
    await session.append_audio(pcm16_bytes)                   # 24 kHz mono pcm16 (or float32 at any rate)
    async for event in session: ...                           # Event(type, data, audio)

Event types and fields are those of the OpenAI Realtime API subset documented in docs/API.md, so the WebSocket
face (voicekit.serve.realtime) only encodes them. A reply starts as soon as the user's turn ends (its speech
transcribed); it speaks in the kit's talk mode (overlap, first clause early). What the session hears passes an
echo canceller first (voicekit/listening/listener.py), so a reply played on a loudspeaker neither interrupts itself
nor comes back as a user turn; a turn that is still mostly the reply's own words is dropped as echo. Speech during a
reply (after `barge_in_grace_s` of its audio) stops it: its engine requests are aborted, and the history keeps what
was played, marked `interrupted`. A client may say when it really played a reply (`playback_started`), which both
the echo canceller and that history use.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from voicekit.listening.echo import ECHO_MIN_WORDS, is_echo, word_count
from voicekit.listening.events import (
    INPUT_RATE,
    OUTPUT_RATE,
    Event,
    SpokenReply,
    TalkOptions,
    new_id,
    restore_history,
    turn_detection,
)
from voicekit.listening.listener import Listener
from voicekit.listening.smart_turn import may_go_on, sounds_unfinished, sounds_whole
from voicekit.listening.speaking import ReplySpeaker
from voicekit.listening.turns import SpeechPaused, SpeechStarted, SpeechStopped, TurnEvent
from voicekit.listening.vad import SAMPLE_RATE as VAD_RATE

log = logging.getLogger("voicekit.realtime")
UNFINISHED_PROBABILITY = 0.1  # a pause whose words cannot end a sentence: the policy waits ~80% of its longest
GOES_ON_PROBABILITY = 0.3  # words that usually go on ("I would like to order"): ~40% of it (1.7 s at medium)
# A whole sentence the model hears as unfinished (its tune trails off): a third of the longest wait (1.5 s at medium),
# still longer than a pause mid-sentence, so a user who does go on is not cut, and one who has finished is not kept
# waiting 3-4 s for an answer
WHOLE_PROBABILITY = 0.33
# ... unless a reply was heard in the room this recently (its delay and reverb tail): a turn then may be the reply's
# echo leaking through the canceller, and a quicker end would answer it
ECHO_TAIL_S = 1.0

__all__ = ["INPUT_RATE", "OUTPUT_RATE", "AsyncRealtimeSession", "Event", "TalkOptions"]


class AsyncRealtimeSession(ReplySpeaker):
    """One conversation spoken in real time (use from one event loop; see the module docstring)."""

    def __init__(self, kit: Any, voice: str | None = None, instructions: str | None = None,
                 history: list[dict[str, Any]] | None = None, options: TalkOptions | None = None,
                 gate: Callable[[], contextlib.AbstractAsyncContextManager[Any]] | None = None) -> None:
        """`history`: a past conversation to pick up (`session.history` of an earlier session; checked by
        `restore_history`: ValueError when it is not user and assistant messages with text). `gate`: entered around
        every reply (a server's admission slot); when entering raises, the reply fails with an `error` event carrying
        the exception's `code` and `retry_after`, if it has them."""
        self.items: list[dict[str, Any]] = restore_history(history)  # first: a bad history opens nothing
        self.kit = kit
        self._gate = gate or contextlib.nullcontext
        self.id = new_id("sess")
        self.voice = kit.resolve_voice(voice)
        self.instructions = instructions or kit.settings.system_prompt
        self.options = options or TalkOptions()
        self.listener = Listener(self.options.turn, INPUT_RATE, OUTPUT_RATE, echo=self.options.echo)  # type: ignore[arg-type]
        self.detector = self.listener.detector
        self.response: SpokenReply | None = None
        self.stats = {"turns": 0, "echo_turns": 0, "self_interruptions": 0, "barge_ins": 0}
        self._spoken: collections.deque[SpokenReply] = collections.deque(maxlen=4)  # recent replies, for echo
        self._interrupting_turn: int | None = None  # the turn whose start last cut a reply
        self._held: dict[int, list[tuple[str, dict[str, Any]]]] = {}  # turns that may be echo: their events wait
        self._hushing: set[int] = set()  # turns begun and not yet heard: a reply not yet speaking waits for them
        self._floor = asyncio.Event()  # set while no such turn is open
        self._floor.set()
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
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
        return {"id": self.id, "object": "realtime.session", "voice": self.voice, "instructions": self.instructions,
                "voices": [{"id": str(v), "family": v.family, "language": v.language, "description": v.description}
                           for v in self.kit.voices],
                "input_audio_format": {"type": "audio/pcm", "rate": self.listener._input_rate},
                "output_audio_format": {"type": "audio/pcm", "rate": OUTPUT_RATE},
                "turn_detection": turn_detection(self.options),
                "echo_cancellation": self.listener.echo.describe(),
                "barge_in_grace_ms": round(self.options.barge_in_grace_s * 1000)}

    def update(self, voice: str | None = None, instructions: str | None = None,
               options: TalkOptions | None = None) -> None:
        """Change the voice (checked: UnknownVoiceError), the instructions (the system prompt) or how turns are
        taken (`options`: turn detection; the echo canceller's mode stays) for what comes next."""
        if voice is not None:
            self.voice = self.kit.resolve_voice(voice)
        if instructions is not None:
            self.instructions = instructions.strip() or self.kit.settings.system_prompt
        if options is not None:
            self.options = options
            self.listener.retune(options.turn)
        self.emit("session.updated", session=self.describe())

    # -- input ----------------------------------------------------------------------------------------

    async def append_audio(self, audio: bytes | np.ndarray, sample_rate: int | None = None) -> None:
        """Feed microphone audio: pcm16 little-endian bytes, or an int16/float32 array, mono at `sample_rate` (default:
        the session's input rate, 24 kHz unless `session.update` said otherwise)."""
        self._dispatch(self.listener.hear(audio, sample_rate or self.listener._input_rate))
        if self._held:
            self._settle()

    def set_input_rate(self, sample_rate: int) -> None:
        """The rate of the pcm16 audio the client sends from now on (8000 to 48000 Hz)."""
        if not 8000 <= sample_rate <= 48000:
            raise ValueError(f"the input audio rate must be between 8000 and 48000 Hz, not {sample_rate}")
        self.listener.hear(np.zeros(0, np.float32), sample_rate)

    def set_echo_cancellation(self, mode: str) -> None:
        """Echo cancellation `auto`, `on` or `off` from now on (see voicekit/listening/echo.py)."""
        self.listener.set_echo(mode)  # type: ignore[arg-type]

    def _dispatch(self, events: list[TurnEvent]) -> None:
        for event in events:
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
        self.listener.clear()
        self._unhush()
        self.emit("input_audio_buffer.cleared")

    def _speech_started(self, event: SpeechStarted) -> None:
        data = {"audio_start_ms": round(event.at_s * 1000), "item_id": self._item_id}
        response, echo = self.response, self.listener.echo
        self._hush(self.detector.turns)
        speaking = response is not None and response.first_audio_at is not None
        early = speaking and time.perf_counter() - response.first_audio_at < self.options.barge_in_grace_s
        if (speaking or echo.timeline.pending_s > 0) and (echo.undecided or early or echo.settling):
            # Over a reply the microphone may hear: it may be the reply itself. Say nothing yet (a client drops its
            # playback on speech_started): the turn is the user's once the echo monitor says the microphone does
            # not hear the reply, or when its words are not the reply's. While the canceller settles (the reply's
            # first second on a loudspeaker) its leftover echo can sound like speech: such a turn is dropped once
            # it has settled, and the detector listens afresh to the cleaned microphone.
            self._held[self.detector.turns] = [("input_audio_buffer.speech_started", data)]
            return
        self.emit("input_audio_buffer.speech_started", **data)
        if speaking:
            self._barge_in(response)

    def _barge_in(self, response: SpokenReply) -> None:
        self._interrupting_turn = self.detector.turns  # if this turn proves to be echo, the reply cut itself
        self.stats["barge_ins"] += 1
        self._cancel(response, "turn_detected")

    def _settle(self) -> None:
        """A held turn goes on; once the echo monitor knows, the canceller has settled and the reply has played past
        its grace, it is settled. The microphone does not hear the reply: the speech is the user's, so say so and stop
        the reply. It does: what began the turn was the reply itself, heard before the canceller was trusted; the turn
        is dropped and the detector listens afresh to the cleaned microphone (a user speaking over the reply starts a
        turn there)."""
        turn, echo, response = self.detector.turns, self.listener.echo, self.response
        if turn not in self._held or not self.detector.in_turn or echo.undecided or echo.settling:
            return
        if response is not None and response.first_audio_at is not None \
                and time.perf_counter() - response.first_audio_at < self.options.barge_in_grace_s:
            return
        if echo.active:
            del self._held[turn]
            self.detector.reset()
            self._unhush(turn)
            self.stats["echo_turns"] += 1
            return
        self._release(turn)
        if response is not None and response.first_audio_at is not None:
            self._barge_in(response)

    def _hush(self, turn: int) -> None:
        """The user began `turn`: a reply that has not begun to speak waits until the turn is heard. Their words
        cancel it (a sentence split by a pause is answered whole: the model sees both halves); noise, a cough or
        the echo let it play (before, it played over the rest of what the user said). Only where the server ends
        turns: a client that commits them decides itself."""
        if not self.options.turn.manual:
            self._hushing.add(turn)
            self._floor.clear()

    def _unhush(self, turn: int | None = None) -> None:
        """`turn` was heard (every open turn, with None): a waiting reply may speak once no turn is open."""
        if turn is None:
            self._hushing.clear()
        else:
            self._hushing.discard(turn)
        if not self._hushing:
            self._floor.set()

    def _release(self, turn: int) -> None:
        for type_, data in self._held.pop(turn, []):
            self.emit(type_, **data)

    def _paused(self, event: SpeechPaused) -> None:
        # Transcribe during the rest of the silence that will end the turn: when it ends with nothing said since, the
        # transcript is (nearly) ready. One at a time: a recognizer still busy with an older pause is left be.
        pause = (event.turn, event.speech_s)
        if self._early is None or (self._early[2].done() and self._early[:2] != pause):
            self._early = (*pause, self._spawn(self._transcribe(event.audio)))
        if event.ask and self.options.turn.semantic:
            transcribing = self._early[2] if self._early[:2] == pause else None
            self._spawn(self._judge(event, transcribing))

    def _reply_audible(self) -> bool:
        """A reply is playing in the room, or ended less than ECHO_TAIL_S ago (as the playback clock models it)."""
        lead = self.listener.playback_lead_s()
        return lead is not None and lead > -ECHO_TAIL_S

    async def _judge(self, event: SpeechPaused, transcribing: asyncio.Task[Any] | None) -> None:
        """Smart Turn's verdict on a pause, weighed with the words heard at that pause (the reply needs them anyway):
        they overrule a "complete" they cannot end ("Please book a table for"), and shorten the wait of an
        "unfinished" that is a whole sentence ("So what I was thinking is we could leave early.")."""
        model = probability = await self.listener.probability(event)
        policy = self.options.turn.end_of_turn
        if transcribing is not None and policy is not None and self.options.language in (None, "en"):
            with contextlib.suppress(Exception):  # a failed transcription is reported where the turn is heard
                heard = (await asyncio.shield(transcribing)).text
                log.debug("turn %d: at the pause, heard %r", event.turn, heard)
                if probability < policy.threshold:
                    if sounds_whole(heard) and not self._reply_audible():
                        probability = max(probability, WHOLE_PROBABILITY)
                elif sounds_unfinished(heard):
                    probability = min(probability, UNFINISHED_PROBABILITY)
                elif may_go_on(heard):
                    probability = min(probability, GOES_ON_PROBABILITY)
        self._dispatch(self.listener.decide(event, probability, heard=model))

    def _speech_stopped(self, event: SpeechStopped) -> None:
        item_id, self._item_id = self._item_id, new_id("item")
        early, self._early = self._early, None
        verdict = self.listener.verdict_for(event.turn)
        held = self._held.get(event.turn)
        say = self.emit if held is None else lambda type_, **data: held.append((type_, data))
        say("input_audio_buffer.speech_stopped", audio_end_ms=round(event.at_s * 1000), item_id=item_id,
            **({"end_of_turn_probability": round(verdict.probability, 3),
                "smart_turn_probability": round(verdict.model, 3)} if verdict else {}))
        if not event.kept:
            self._held.pop(event.turn, None)  # too short to be a turn (a cough, a click): nothing more to say
            self._unhush(event.turn)
            return
        say("input_audio_buffer.committed", item_id=item_id)
        same = early is not None and early[:2] == (event.turn, event.speech_s)  # nothing said since the pause
        self._spawn(self._hear(item_id, event, time.perf_counter(), early[2] if same and early else None))

    async def _transcribe(self, audio: np.ndarray) -> Any:
        return await self.kit.atranscribe(audio, VAD_RATE, language=self.options.language, timestamps=False)

    async def _hear(self, item_id: str, stopped: SpeechStopped, ended_at: float,
                    early: asyncio.Task[Any] | None = None) -> None:
        try:
            await self._heard_turn(item_id, stopped, ended_at, early)
        finally:
            self._unhush(stopped.turn)  # its words have cancelled a reply they held; noise or echo lets it speak

    async def _heard_turn(self, item_id: str, stopped: SpeechStopped, ended_at: float,
                          early: asyncio.Task[Any] | None) -> None:
        try:
            transcript = await early if early is not None else await self._transcribe(stopped.audio)
        except Exception as error:  # reported to the client; the session goes on
            log.exception("transcription failed")
            self._release(stopped.turn)
            self.emit("conversation.item.input_audio_transcription.failed", item_id=item_id,
                      error={"type": "server_error", "code": "transcription_failed", "message": str(error)})
            return
        text = transcript.text.strip()
        held = stopped.turn in self._held  # begun over a reply the microphone may hear: short ones count too
        # the reply's own words come back only where the microphone may hear it: a headset user may repeat them
        echo = bool(text) and (held or self.listener.echo.may_hear_reply) and \
            is_echo(text, self._recent_replies(), min_words=1 if held else ECHO_MIN_WORDS)
        # a word or two, begun over a reply the canceller now takes out of the microphone: its leftover echo, misheard
        echo = echo or (held and bool(text) and self.listener.echo.active and word_count(text) < ECHO_MIN_WORDS)
        if held:
            if echo or not text:  # the reply coming back, never told: the client plays on
                self._held.pop(stopped.turn)
                self.stats["echo_turns"] += bool(text)
                log.info("session %s: the reply's own voice came back as speech %r: ignored", self.id, text)
                return
            self._release(stopped.turn)
        self.emit("conversation.item.input_audio_transcription.completed", item_id=item_id, content_index=0,
                  transcript=text, duration_s=round(transcript.duration_s, 3),
                  asr_s=round(transcript.seconds, 4), **({"echo": True} if echo else {}))
        if not text:
            return  # heard nothing worth answering (noise the VAD let through)
        if echo:  # the assistant's own voice came back: never a user turn, never answered
            self.stats["echo_turns"] += 1
            if self._interrupting_turn == stopped.turn:
                self.stats["self_interruptions"] += 1
            log.info("session %s: dropped an echo of the reply as a turn: %r", self.id, text)
            return
        self.stats["turns"] += 1
        if self.response is not None:
            self._cancel(self.response, "turn_detected")  # the user spoke over a reply that was not yet speaking
        self.items.append({"role": "user", "content": text, "id": item_id})
        self._start_response(text, ended_at)

    # -- lifetime -------------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def conversation(self) -> list[dict[str, Any]]:
        """The history as messages (`role`, `content`, `interrupted` for a cut reply), for `kit.chat(history=...)`."""
        return [{key: value for key, value in item.items() if not key.startswith("_")} for item in self.items]

    @property
    def history(self) -> list[dict[str, Any]]:
        """The conversation so far, JSON-serialisable (a copy of `conversation()`): save it, and pick it up later
        with `kit.realtime(history=...)` (a cut reply keeps what was heard, marked `interrupted`)."""
        return self.conversation()

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

