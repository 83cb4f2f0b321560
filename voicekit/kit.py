"""The public kit: `voicekit.load()` builds one (voicekit/build.py); `kit.say()` and `kit.chat()` speak.

Each call comes in a sync form (notebooks, scripts) returning a `Reply` to iterate, and an async form
(`asay`, `achat`, for servers running their own event loop) returning an `AsyncReply`. Both stream
`AudioChunk`s and expose the reply text, sentences and timings as they fill in. Input is checked when
the call is made, so a bad text or voice raises before any audio is promised.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voicekit.audio import concat, wav_bytes, write_wav
from voicekit.chat import ChatModel, HistoryItem
from voicekit.engines.loop import EventLoopThread
from voicekit.errors import ModelUnavailableError, VoicekitError
from voicekit.listening.blocking import RealtimeSession
from voicekit.listening.events import with_turn_detection
from voicekit.listening.session import AsyncRealtimeSession, TalkOptions
from voicekit.listening.turns import TurnOptions
from voicekit.pipeline import AudioChunk, Pipeline, Timings, Turn
from voicekit.settings import Settings
from voicekit.tts.base import SpeechBackend, speech_failure
from voicekit.tts.catalogue import Voice, voice_facts

if TYPE_CHECKING:
    from voicekit.listening.asr import AudioSource, Transcriber, Transcript

#: (settings, preset, overrides, with a chat model) -> the settings, pipeline and description switched to
Switcher = Callable[[Settings, str, dict[str, Any], bool], tuple[Settings, Pipeline, dict[str, str]]]

log = logging.getLogger("voicekit")


class _ReplyBase:
    """What sync and async replies share: the turn (text, sentences, timings, history) and the collected audio."""

    def __init__(self, turn: Turn, sample_rate: int) -> None:
        self.turn = turn
        self.sample_rate = sample_rate
        self.chunks: list[AudioChunk] = []

    @property
    def text(self) -> str:
        """The reply (chat) or the cleaned text (say), as far as it is written."""
        return self.turn.text

    @property
    def sentences(self) -> list[str]:
        """The sentences of the text: a say's script; a chat reply's once it is written (the same in every mode)."""
        return list(self.turn.sentences)

    @property
    def pieces(self) -> list[str]:
        """What the speech backend was given so far, in order: the sentences, except that overlap mode may speak
        the first clause early as a piece of its own (`AudioChunk.piece_index` counts these)."""
        return list(self.turn.pieces)

    @property
    def timings(self) -> Timings:
        """Timings of this turn (complete once the audio is exhausted)."""
        return self.turn.timings

    @property
    def done(self) -> bool:
        """True once all audio has been produced."""
        return self.turn.done

    @property
    def voice(self) -> str:
        """The voice speaking (resolved: the default when none was asked for)."""
        return self.turn.voice

    @property
    def message(self) -> str | None:
        """The user's message (chat), or None (say)."""
        return self.turn.message

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation including this turn, in messages format, to pass to the next `chat()`."""
        return self.turn.history

    def _collected(self) -> np.ndarray:
        return concat(chunk.samples for chunk in self.chunks)


class Reply(_ReplyBase, Iterator[AudioChunk]):
    """A streaming reply for synchronous code: iterate it for `AudioChunk`s; `close()` stops it."""

    def __init__(self, turn: Turn, stream: Iterator[AudioChunk], sample_rate: int) -> None:
        super().__init__(turn, sample_rate)
        self._stream = stream

    def __iter__(self) -> Reply:
        return self

    def __next__(self) -> AudioChunk:
        chunk = next(self._stream)
        self.chunks.append(chunk)
        return chunk

    def audio(self) -> np.ndarray:
        """All samples (float32 mono), consuming whatever has not been streamed yet."""
        for _ in self:
            pass
        return self._collected()

    def wav(self) -> bytes:
        """The whole reply as WAV file bytes."""
        return wav_bytes(self.audio(), self.sample_rate)

    def save(self, path: str | Path) -> Path:
        """Write the whole reply to a WAV file and return its path."""
        write_wav(path, self.audio(), self.sample_rate)
        return Path(path)

    def close(self) -> None:
        """Stop generating (aborts the engine requests behind this reply)."""
        close = getattr(self._stream, "close", None)
        if close:
            close()


class AsyncReply(_ReplyBase, AsyncIterator[AudioChunk]):
    """A streaming reply for async code: `async for chunk in reply`; `await reply.aclose()` stops it."""

    def __init__(self, turn: Turn, stream: AsyncIterator[AudioChunk], sample_rate: int) -> None:
        super().__init__(turn, sample_rate)
        self._stream = stream

    def __aiter__(self) -> AsyncReply:
        return self

    async def __anext__(self) -> AudioChunk:
        chunk = await anext(self._stream)
        self.chunks.append(chunk)
        return chunk

    async def audio(self) -> np.ndarray:
        """All samples (float32 mono), consuming whatever has not been streamed yet."""
        async for _ in self:
            pass
        return self._collected()

    async def aclose(self) -> None:
        """Stop generating (aborts the engine requests behind this reply). Safe to call more than once."""
        await self._stream.aclose()  # type: ignore[attr-defined]


class Kit:
    """A loaded chat model + speech backend + pipeline, driven on one long-lived event loop."""

    def __init__(self, settings: Settings, pipeline: Pipeline, loop: EventLoopThread,
                 description: dict[str, str] | None = None, *, recognizer: Callable[[], Transcriber] | None = None,
                 recognizer_plan: dict[str, Any] | None = None, switcher: Switcher | None = None) -> None:
        """Built by `voicekit.build` (or `voicekit.load()`): the pipeline's models run on `loop`. `recognizer` loads
        the speech recognizer on first use; `recognizer_plan` says what it will load (model, device) until then;
        `switcher` builds what `switch_preset` puts in place (voicekit.build.switch_parts)."""
        self.settings = settings
        self.pipeline = pipeline
        self.tts: SpeechBackend = pipeline.tts
        self.chat_model: ChatModel | None = pipeline.chat_model
        self.loop = loop
        self.description = description or {}
        self._load_recognizer = recognizer
        self._recognizer_plan = recognizer_plan or {}
        self._switcher = switcher
        self._switch_lock = threading.Lock()
        self._retiring: list[Pipeline] = []  # pipelines switched out, closed once their turns end
        self._retirements: list[concurrent.futures.Future[None]] = []

    @property
    def voices(self) -> list[Voice]:
        """Every voice of the kit, by family (the default voice's first). A `Voice` is its id (a str) with its
        `family`, `language` and `description`."""
        return [voice_facts(self.tts, name) for name in self.tts.voices]

    @property
    def default_voice(self) -> str:
        """The voice used when none is given."""
        return self.tts.default_voice

    @property
    def sample_rate(self) -> int:
        """Sample rate of every chunk this kit yields."""
        return self.tts.sample_rate

    @property
    def tags(self) -> list[str]:
        """Inline emotion tags the speech model honours (empty for Piper)."""
        return list(self.tts.tags)

    def resolve_voice(self, voice: str | None) -> str:
        """Canonical voice name (None: the default); raises UnknownVoiceError listing the voices."""
        return self.tts.resolve(voice)

    # -- say and chat ---------------------------------------------------------------------------------

    def say(self, text: str, voice: str | None = None, *, time_limit_s: float | None = None) -> Reply:
        """Speak `text` in `voice`; iterate the reply for audio chunks (sync). `time_limit_s` stops the turn
        once it has taken that long (`reply.turn.timed_out`)."""
        pipeline = self.pipeline  # the turn runs on the parts that made it, even across a switch
        turn = self._limited(pipeline.say_turn(text, voice), time_limit_s)
        return Reply(turn, self.loop.iterate(lambda: pipeline.run(turn)), pipeline.tts.sample_rate)

    def asay(self, text: str, voice: str | None = None, *, time_limit_s: float | None = None) -> AsyncReply:
        """Speak `text` in `voice`; `async for` the reply for audio chunks."""
        pipeline = self.pipeline
        turn = self._limited(pipeline.say_turn(text, voice), time_limit_s)
        return AsyncReply(turn, self.loop.aiterate(lambda: pipeline.run(turn)), pipeline.tts.sample_rate)

    def chat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
             mode: str | None = None, *, time_limit_s: float | None = None, first_fragment_chars: int | None = None,
             **options: Any) -> Reply:
        """Reply to `message` with the chat model and speak it (sync). Options: system_prompt, temperature,
        max_tokens, seed. `first_fragment_chars` (overlap mode) overrides the kit's early first piece."""
        pipeline = self.pipeline
        turn = self._limited(pipeline.chat_turn(message, voice, history, mode, **options), time_limit_s)
        turn.first_fragment_chars = first_fragment_chars
        return Reply(turn, self.loop.iterate(lambda: pipeline.run(turn)), pipeline.tts.sample_rate)

    def achat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
              mode: str | None = None, *, time_limit_s: float | None = None, first_fragment_chars: int | None = None,
              **options: Any) -> AsyncReply:
        """Reply to `message` and speak it; `async for` the reply for audio chunks."""
        pipeline = self.pipeline
        turn = self._limited(pipeline.chat_turn(message, voice, history, mode, **options), time_limit_s)
        turn.first_fragment_chars = first_fragment_chars
        return AsyncReply(turn, self.loop.aiterate(lambda: pipeline.run(turn)), pipeline.tts.sample_rate)

    @staticmethod
    def _limited(turn: Turn, time_limit_s: float | None) -> Turn:
        turn.time_limit_s = time_limit_s
        return turn

    # -- listening: speech to text ------------------------------------------------------------------

    _transcriber: Transcriber | None = None  # loaded on first use: a kit that only speaks does not pay for it
    _transcriber_lock = threading.Lock()

    @property
    def transcriber(self) -> Transcriber:
        """The speech recognizer (settings `asr_*`; Whisper on faster-whisper), loaded once on first use."""
        if self._transcriber is None:
            with self._transcriber_lock:
                if self._transcriber is None:
                    if self._load_recognizer is None:
                        raise ModelUnavailableError("this kit was built without a speech recognizer")
                    self._transcriber = self._load_recognizer()
        return self._transcriber

    def recognizer_facts(self) -> dict[str, Any]:
        """The recognizer: what runs once loaded (model, device, compute type, `fallback_reason` when it runs on the
        CPU instead of the GPU), or before its first use what will load (`loaded` False). Loads nothing."""
        if self._transcriber is not None:
            return self._transcriber.facts()
        return dict(self._recognizer_plan)

    def transcribe(self, audio: AudioSource, sample_rate: int | None = None, language: str | None = None, *,
                   prompt: str | None = None, temperature: float | None = None,
                   timestamps: bool = True, words: bool = False) -> Transcript:
        """The words spoken in `audio`: float or int16 samples (give `sample_rate`), an audio file's path or its
        bytes (WAV, MP3, Ogg/Opus, WebM, FLAC, ...). `language` None: `asr_language` ("" detects it).
        `timestamps` False: one segment, sooner (a spoken turn). `words` True: each word's start and end too
        (`Transcript.words`).

        Raises AudioDecodeError for what is not audio, AudioTooLongError past MAX_TRANSCRIBE_S (600 s)."""
        from voicekit.listening.asr import read_audio

        samples, rate = read_audio(audio, sample_rate)
        wanted = self.settings.asr_language if language is None else language
        return self.transcriber.transcribe(samples, rate, wanted or None, prompt=prompt, temperature=temperature,
                                           timestamps=timestamps, words=words)

    async def atranscribe(self, audio: AudioSource, sample_rate: int | None = None, language: str | None = None,
                          *, prompt: str | None = None, temperature: float | None = None,
                          timestamps: bool = True, words: bool = False) -> Transcript:
        """`transcribe` in a worker thread, so the event loop keeps serving meanwhile."""
        return await asyncio.to_thread(self.transcribe, audio, sample_rate, language, prompt=prompt,
                                       temperature=temperature, timestamps=timestamps, words=words)

    # -- talking out loud (voicekit.listening) ----------------------------------------------------------

    def talk_options(self) -> TalkOptions:
        """How realtime sessions listen and answer, from the settings (turn_*, vad_threshold, talk_mode, asr_*)."""
        settings = self.settings
        turn = TurnOptions(threshold=settings.vad_threshold, silence_s=settings.turn_silence_s,
                           min_speech_s=settings.turn_min_speech_s)
        options = TalkOptions(turn=turn, echo=settings.echo_cancellation, barge_in_grace_s=settings.barge_in_grace_s,
                              mode=settings.talk_mode, first_fragment_chars=settings.first_fragment_chars,
                              language=settings.asr_language or None)
        return with_turn_detection(options, {"type": settings.turn_detection, "eagerness": settings.turn_eagerness})

    def realtime(self, voice: str | None = None, instructions: str | None = None,
                 history: list[dict[str, Any]] | None = None) -> RealtimeSession:
        """A spoken conversation for sync code: feed microphone audio, read events (voicekit/listening/blocking.py).
        `history`: pick up a saved conversation (an earlier session's `session.history`, e.g. loaded from JSON);
        InvalidHistoryError (a ValueError) when it is not user and assistant messages with text."""
        return RealtimeSession(self, voice=voice, instructions=instructions, history=history,
                               options=self.talk_options())

    def arealtime(self, voice: str | None = None, instructions: str | None = None,
                  history: list[dict[str, Any]] | None = None, *,
                  gate: Callable[[], AbstractAsyncContextManager[Any]] | None = None) -> AsyncRealtimeSession:
        """A spoken conversation for async code (make it on the loop that uses it; voicekit/listening/session.py).
        `history` restores a saved conversation, as for `realtime()`; `gate` is entered around every reply (a server
        passes its admission slot)."""
        return AsyncRealtimeSession(self, voice=voice, instructions=instructions, history=history,
                                    options=self.talk_options(), gate=gate)

    def health(self, timeout: float = 15.0) -> str | None:
        """Why this kit cannot serve now (an engine died, a model server is gone), or None when it can.

        Asks each engine its `failure()` on the kit's loop: no generation, but an engine behind a server
        makes one `GET /health` to it. Call it from any thread but the kit's loop (servers: in a worker thread).
        """
        if self.loop.loop.is_closed():
            return "the kit is closed"
        try:
            return self.loop.run(self._failure(), timeout)
        except TimeoutError:
            return f"the engines did not answer a health check within {timeout:.0f} s"

    async def _failure(self) -> str | None:
        chat = await self.chat_model.engine.failure() if self.chat_model is not None else None
        speech = await speech_failure(self.tts)
        reasons = [f"chat model: {chat}"] if chat else []
        reasons += [f"speech model: {speech}"] if speech else []
        return "; ".join(reasons) or None

    def warnings(self, timeout: float = 15.0) -> list[str]:
        """What still serves, but less than it should (a replica down behind a router); [] when all is well."""
        if self.loop.loop.is_closed():
            return []
        try:
            return self.loop.run(self._warnings(), timeout)
        except TimeoutError:
            return [f"the engines did not answer a health check within {timeout:.0f} s"]

    async def _warnings(self) -> list[str]:
        engines = [("chat model", getattr(self.chat_model, "engine", None)),
                   ("speech model", getattr(self.tts, "engine", None))]
        found: list[str] = []
        for label, engine in engines:
            check = getattr(engine, "warnings", None)  # engines of one's own need not have it
            found += [f"{label}: {warning}" for warning in await check()] if check is not None else []
        return found

    # -- switching models while running ------------------------------------------------------------------

    def switch_preset(self, preset: str = "laptop", **overrides: Any) -> None:
        """Load `preset`'s chat model and voices and put them in place of the running ones: no restart, and
        conversations carry on (their history comes with each call). What you chose beyond the old preset's
        defaults is kept, and so is the speech recognizer; turns already speaking finish on the old models,
        which are closed then. A failure to load leaves the kit as it was."""
        if self._switcher is None:
            raise VoicekitError("this kit was put together by hand: it cannot switch presets (voicekit.load() "
                                "builds kits that can)")
        with self._switch_lock:
            settings, pipeline, description = self._switcher(self.settings, preset, overrides,
                                                             self.chat_model is not None)
            old = self.pipeline
            self.settings, self.pipeline, self.description = settings, pipeline, description
            self.tts, self.chat_model = pipeline.tts, pipeline.chat_model
            self._retiring.append(old)
        self._retirements.append(asyncio.run_coroutine_threadsafe(self._retire(old), self.loop.loop))
        log.info("voicekit switched to preset %s: chat %s, voices %s", settings.preset, self.description["chat"],
                 self.description["tts"])

    def upgrade(self, token: str | None = None, *, progress: Callable[[Any], None] | None = None,
                cancel: threading.Event | None = None) -> None:
        """Download the laptop preset's models when they are missing (voicekit.upgrade: Qwen2.5-0.5B-Instruct and
        Kokoro's English voices, with `progress` events; `cancel` stops it) and switch this kit to them."""
        from voicekit import upgrade

        upgrade.download(token or self.settings.token, on_progress=progress, cancel=cancel)
        self.switch_preset("laptop")

    async def _retire(self, old: Pipeline, wait_s: float = 300.0) -> None:
        """Close a switched-out pipeline's models once its running turns end (at most `wait_s` later)."""
        deadline = self.loop.loop.time() + wait_s
        while old.running and self.loop.loop.time() < deadline:
            await asyncio.sleep(0.1)
        if old in self._retiring:
            self._retiring.remove(old)
            await _close_parts(old)

    def close(self) -> None:
        """Free the models and stop the event loop."""
        async def shutdown() -> None:
            for old in [*self._retiring, self.pipeline]:
                await _close_parts(old)
            self._retiring.clear()

        for waiting in self._retirements:
            waiting.cancel()
        self.loop.run(shutdown())
        self.loop.close()
        if self._transcriber is not None:
            self._transcriber.close()

    def __enter__(self) -> Kit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _close_parts(pipeline: Pipeline) -> None:
    if pipeline.chat_model is not None:
        await pipeline.chat_model.engine.close()
    await pipeline.tts.close()
