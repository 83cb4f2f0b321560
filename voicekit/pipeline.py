"""LLM reply -> sentences -> TTS -> audio chunks, with timings.

Two modes:
- `sequential` (default): the chat model writes the whole reply, then it is spoken sentence by sentence.
  Only one model works at a time, which is what a small GPU (or two engines that must not step together)
  needs.
- `overlap`: the first complete sentence is spoken while the chat model keeps writing; sentences are
  released by `text.SentenceStream` as soon as they are certain. While the first piece's audio is made, a chat
  model on the CPU waits (`ChatModel.held`): the user is waiting for that audio, and the two share the cores.

Timings are wall-clock seconds from the start of the turn; time the consumer spends between chunks
(playing audio, sending it over a network) is not charged to the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import numpy as np

from voicekit.chat import ChatModel, HistoryItem, normalize_history
from voicekit.engines.base import ChatMessage
from voicekit.errors import EmptyTextError, TextTooLongError
from voicekit.text import SentenceStream, clean_for_speech, split_sentences
from voicekit.tts.base import SpeechBackend

Mode = Literal["sequential", "overlap"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass
class AudioChunk:
    """Audio of one spoken piece: float32 mono samples in [-1, 1], the piece's number in the turn and its text.

    A piece is what the speech backend was given at once: a sentence, or in overlap mode with the first clause
    early, that clause and then the rest of its sentence (`Turn.pieces`; the reply's sentences are
    `Turn.sentences`). A remote kit's chunks carry the same marks (the server's event stream sends them).
    """

    samples: np.ndarray
    sample_rate: int
    piece_index: int
    piece: str

    @property
    def duration_s(self) -> float:
        """Length of the chunk in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass
class Timings:
    """What a turn cost. `rtf` is speech-synthesis seconds per second of audio (below 1 is faster than real time);
    `sentences` counts the reply's sentences, `pieces` what the speech backend was given (one more than the
    sentences when the first clause was spoken early)."""

    ttfa_s: float | None = None
    llm_s: float = 0.0
    tts_s: float = 0.0
    audio_s: float = 0.0
    total_s: float = 0.0
    sentences: int = 0
    pieces: int = 0

    @property
    def rtf(self) -> float | None:
        """Real-time factor of the speech backend for this turn."""
        return self.tts_s / self.audio_s if self.audio_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict with rounded values, for JSON, logs and the UI."""
        values = {"ttfa_s": self.ttfa_s, "llm_s": self.llm_s, "tts_s": self.tts_s, "audio_s": self.audio_s,
                  "total_s": self.total_s, "rtf": self.rtf, "sentences": self.sentences, "pieces": self.pieces}
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in values.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Timings:
        """Timings from `as_dict()` output (e.g. a server's JSON); unknown keys and `rtf` are ignored."""
        known = {item.name for item in fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in known and value is not None})

    def line(self) -> str:
        """One readable line, as the CLI, the page and the logs show it."""
        rtf = self.rtf
        parts = [f"first audio {_seconds(self.ttfa_s)}"]
        if self.llm_s:
            parts.append(f"LLM {_seconds(self.llm_s)}")
        parts += [f"TTS {_seconds(self.tts_s)}", f"audio {_seconds(self.audio_s)}",
                  f"RTF {'–' if rtf is None else f'{rtf:.2f}'}"]
        return " · ".join(parts)


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


@dataclass
class Turn:
    """One `say` or `chat` call: what was asked (checked once, voice resolved once) and what it became.

    The pipeline fills in `text`, `sentences`, `pieces` and `timings` while the audio streams; `done` once it ends.
    `sentences` are the sentences of the text (a say turn's script; a chat reply's split once it is written, in
    every mode); `pieces` are what the speech backend was given, in order (the sentences, except that overlap mode
    may speak the first clause of the first sentence early, as a piece of its own).
    A say turn has `script` (the sentences to speak) and no `message`; a chat turn has the user's `message`,
    the conversation before it (`past`, one form from the kit down: ChatMessages), its `mode` and `options`
    for the chat model.
    """

    voice: str
    message: str | None = None
    script: list[str] = field(default_factory=list)
    past: list[ChatMessage] = field(default_factory=list)
    mode: Mode = "sequential"
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    sentences: list[str] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    started: float = field(default_factory=time.perf_counter)
    done: bool = False
    time_limit_s: float | None = None  # the turn stops when it has taken this long (a server's request limit)
    timed_out: bool = False  # it did
    first_fragment_chars: int | None = None  # overlap: this turn's early first piece (None: the pipeline's)

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation including this turn, in messages format, to pass to the next `chat()`."""
        past = [message.as_dict() for message in self.past]
        if self.message is None:
            return past
        return [*past, {"role": "user", "content": self.message}, {"role": "assistant", "content": self.text}]

    def restart(self) -> None:
        """Start the clock now: a turn's time counts from when its stream is first pulled."""
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the turn started."""
        return time.perf_counter() - self.started

    def finish(self) -> None:
        """The audio has ended (or was stopped)."""
        self.timings.total_s = self.elapsed()
        self.timings.sentences, self.timings.pieces = len(self.sentences), len(self.pieces)
        self.done = True


def check_text(text: str, limit: int, what: str = "text") -> str:
    """Return `text` stripped, or raise EmptyTextError / TextTooLongError."""
    if not isinstance(text, str) or not text.strip():
        raise EmptyTextError(what)
    stripped = text.strip()
    if len(stripped) > limit:
        raise TextTooLongError(len(stripped), limit, what)
    return stripped


class Pipeline:
    """Glue between a chat model and a speech backend; one instance serves many turns.

    `say_turn` / `chat_turn` check the input and resolve the voice (once, before any audio is promised);
    `run(turn)` streams the turn's audio and fills the turn in.
    """

    def __init__(self, tts: SpeechBackend, chat: ChatModel | None = None, max_text_chars: int = 2000,
                 first_fragment_chars: int = 0, default_mode: Mode = "sequential") -> None:
        self.tts = tts
        self.chat_model = chat
        self.max_text_chars = max_text_chars
        self.first_fragment_chars = first_fragment_chars or None
        self.default_mode = default_mode
        self._open: set[int] = set()  # turns made here and not finished (ids): see `running`

    # -- turns ----------------------------------------------------------------------------------------

    def say_turn(self, text: str, voice: str | None = None) -> Turn:
        """A turn that speaks `text`; raises on empty, unspeakable or too long text and on an unknown voice."""
        script = self.sentences_for(check_text(text, self.max_text_chars))
        if not script:
            raise EmptyTextError("text (after removing emoji, markup and links)")
        return self._opened(Turn(voice=self.tts.resolve(voice), script=script, text=" ".join(script),
                                 sentences=list(script)))

    def chat_turn(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
                  mode: str | None = None, **options: Any) -> Turn:
        """A turn in which the chat model replies to `message` (options: system_prompt, temperature,
        max_tokens, seed); raises on bad input, an unknown voice or mode, or a kit without a chat model."""
        if self.chat_model is None:
            raise RuntimeError("this kit was loaded without a chat model")
        checked = check_text(message, self.max_text_chars, "message")
        chosen = mode or self.default_mode
        if chosen not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {chosen!r}")
        return self._opened(Turn(voice=self.tts.resolve(voice), message=checked, past=normalize_history(history),
                                 mode=chosen, options=dict(options)))  # type: ignore[arg-type]

    def _opened(self, turn: Turn) -> Turn:
        self._open.add(id(turn))
        weakref.finalize(turn, self._open.discard, id(turn))  # a turn dropped before it ran holds nothing
        return turn

    @property
    def running(self) -> int:
        """Turns made here that have not finished (made, waiting or streaming): a kit that switched to other models
        closes these parts once it is 0 (a turn made and dropped unrun stops counting once it is collected)."""
        return len(self._open)

    def sentences_for(self, text: str) -> list[str]:
        """Clean `text` for the backend (tags kept only where it honours them) and split it."""
        return split_sentences(clean_for_speech(text, keep_tags=bool(self.tts.tags)))

    async def run(self, turn: Turn) -> AsyncIterator[AudioChunk]:
        """Stream the turn's audio (say: its script; chat: the chat model's reply, in the turn's mode).

        With `turn.time_limit_s` the turn ends there (`turn.timed_out`), its model requests aborted. The limit is
        enforced here, on the kit's own loop, where one task drives the whole stream: a deadline held by the
        consumer (another loop, a server's cancel scopes) could not stop a stream that is inside a model call."""
        turn.restart()
        try:
            async with asyncio.timeout(turn.time_limit_s):
                async for chunk in self._turn_audio(turn):
                    yield chunk
        except TimeoutError:
            turn.timed_out = True
        finally:
            self._open.discard(id(turn))
            if turn.message is not None:  # a reply cut short has the sentences of what was written
                self._written(turn)
            turn.finish()

    def _written(self, turn: Turn) -> None:
        """The chat reply is written (or cut short): its text is final, and so are its sentences."""
        turn.text = turn.text.strip()
        turn.sentences = self.sentences_for(turn.text)

    async def _turn_audio(self, turn: Turn) -> AsyncIterator[AudioChunk]:
        if turn.message is None:
            for sentence in turn.script:
                async for chunk in self._speak(sentence, turn):
                    yield chunk
            return
        assert self.chat_model is not None  # chat_turn() checked it
        replies = self.chat_model.stream_reply(turn.message, turn.past, **turn.options)
        speak = self._converse_sequential if turn.mode == "sequential" else self._converse_overlap
        async with contextlib.aclosing(speak(replies, turn)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk

    # -- the two schedules ----------------------------------------------------------------------------

    async def _converse_sequential(self, replies: AsyncIterator[str], turn: Turn) -> AsyncIterator[AudioChunk]:
        async with contextlib.aclosing(replies):  # type: ignore[type-var]
            async for delta in replies:
                turn.text += delta
        self._written(turn)
        turn.timings.llm_s = turn.elapsed()
        for sentence in turn.sentences:
            async for chunk in self._speak(sentence, turn):
                yield chunk

    async def _converse_overlap(self, replies: AsyncIterator[str], turn: Turn) -> AsyncIterator[AudioChunk]:
        ready: asyncio.Queue[str | None] = asyncio.Queue()  # pieces to speak, None after the last
        writer = asyncio.create_task(self._write_pieces(replies, turn, ready))
        try:
            while (piece := await ready.get()) is not None:
                async with contextlib.aclosing(self._speak(piece, turn)) as chunks:  # type: ignore[type-var]
                    if turn.timings.ttfa_s is None:  # the first audio: the chat model leaves it the cores
                        assert self.chat_model is not None
                        with self.chat_model.held():
                            first = await anext(chunks, None)
                        if first is not None:
                            yield first
                    async for chunk in chunks:
                        yield chunk
            await writer  # re-raises a chat-model error
        finally:
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write_pieces(self, replies: AsyncIterator[str], turn: Turn,
                               ready: asyncio.Queue[str | None]) -> None:
        early = self.first_fragment_chars if turn.first_fragment_chars is None else turn.first_fragment_chars or None
        splitter = SentenceStream(first_fragment_chars=early,
                                  keep_tags=bool(self.tts.tags))
        try:
            async with contextlib.aclosing(replies):  # type: ignore[type-var]
                async for delta in replies:
                    turn.text += delta
                    for piece in splitter.push(delta):
                        ready.put_nowait(piece)
            for piece in splitter.flush():
                ready.put_nowait(piece)
            self._written(turn)
            turn.timings.llm_s = turn.elapsed()
        finally:
            ready.put_nowait(None)

    async def _speak(self, piece: str, turn: Turn) -> AsyncIterator[AudioChunk]:
        index = len(turn.pieces)
        turn.pieces.append(piece)
        turn.timings.pieces = len(turn.pieces)
        stream = self.tts.synthesize(piece, turn.voice)
        try:
            while True:
                began = time.perf_counter()
                try:
                    samples = await anext(stream)
                except StopAsyncIteration:
                    turn.timings.tts_s += time.perf_counter() - began
                    return
                turn.timings.tts_s += time.perf_counter() - began
                if not len(samples):
                    continue
                if turn.timings.ttfa_s is None:
                    turn.timings.ttfa_s = turn.elapsed()
                turn.timings.audio_s += len(samples) / self.tts.sample_rate
                yield AudioChunk(samples, self.tts.sample_rate, index, piece)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
