"""LLM reply -> sentences -> TTS -> audio chunks, with timings.

Two modes:
- `sequential` (default): the chat model writes the whole reply, then it is spoken sentence by sentence.
  Only one model works at a time, which is what a small GPU (or two engines that must not step together)
  needs.
- `overlap`: the first complete sentence is spoken while the chat model keeps writing; sentences are
  released by `text.SentenceStream` as soon as they are certain.

Timings are wall-clock seconds from the start of the turn; time the consumer spends between chunks
(playing audio, sending it over a network) is not charged to the models.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicekit.chat import ChatModel, HistoryItem
from voicekit.errors import EmptyTextError, TextTooLongError
from voicekit.text import SentenceStream, clean_for_speech, split_sentences
from voicekit.tts.base import SpeechBackend

MODES = ("sequential", "overlap")


@dataclass
class AudioChunk:
    """A piece of speech: float32 mono samples in [-1, 1] and the sentence they belong to."""

    samples: np.ndarray
    sample_rate: int
    sentence_index: int
    sentence: str

    @property
    def duration_s(self) -> float:
        """Length of the chunk in seconds."""
        return len(self.samples) / self.sample_rate


@dataclass
class Timings:
    """What a turn cost. `rtf` is speech-synthesis seconds per second of audio (below 1 is faster than real time)."""

    ttfa_s: float | None = None
    llm_s: float = 0.0
    tts_s: float = 0.0
    audio_s: float = 0.0
    total_s: float = 0.0
    sentences: int = 0

    @property
    def rtf(self) -> float | None:
        """Real-time factor of the speech backend for this turn."""
        return self.tts_s / self.audio_s if self.audio_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict with rounded values, for JSON, logs and the UI."""
        values = {"ttfa_s": self.ttfa_s, "llm_s": self.llm_s, "tts_s": self.tts_s, "audio_s": self.audio_s,
                  "total_s": self.total_s, "rtf": self.rtf, "sentences": self.sentences}
        return {key: (round(value, 4) if isinstance(value, float) else value) for key, value in values.items()}


@dataclass
class TurnState:
    """Live record of one turn, filled in while its audio streams."""

    text: str = ""
    sentences: list[str] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    started: float = field(default_factory=time.perf_counter)
    done: bool = False

    def restart(self) -> None:
        """Start the clock now: a turn's time counts from when its stream is first pulled."""
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the turn started."""
        return time.perf_counter() - self.started


def check_text(text: str, limit: int, what: str = "text") -> str:
    """Return `text` stripped, or raise EmptyTextError / TextTooLongError."""
    if not isinstance(text, str) or not text.strip():
        raise EmptyTextError(what)
    stripped = text.strip()
    if len(stripped) > limit:
        raise TextTooLongError(len(stripped), limit, what)
    return stripped


class Pipeline:
    """Glue between a chat model and a speech backend; one instance serves many turns."""

    def __init__(self, tts: SpeechBackend, chat: ChatModel | None = None, max_text_chars: int = 2000,
                 first_fragment_chars: int = 0) -> None:
        self.tts = tts
        self.chat_model = chat
        self.max_text_chars = max_text_chars
        self.first_fragment_chars = first_fragment_chars or None

    def sentences_for(self, text: str) -> list[str]:
        """Clean `text` for the backend (tags kept only where it honours them) and split it."""
        return split_sentences(clean_for_speech(text, keep_tags=bool(self.tts.tags)))

    def prepare_say(self, text: str) -> list[str]:
        """Validate a text to speak and return its sentences; raises on empty, unspeakable or long text."""
        sentences = self.sentences_for(check_text(text, self.max_text_chars))
        if not sentences:
            raise EmptyTextError("text (after removing emoji, markup and links)")
        return sentences

    async def say(self, sentences: list[str], voice: str, state: TurnState) -> AsyncIterator[AudioChunk]:
        """Speak prepared sentences one after the other."""
        state.restart()
        state.text = " ".join(sentences)
        try:
            for sentence in sentences:
                async for chunk in self._speak(sentence, voice, state):
                    yield chunk
        finally:
            self._finish(state)

    async def converse(self, message: str, voice: str, state: TurnState, *, history: Iterable[HistoryItem] = (),
                       mode: str = "sequential", **chat_options: Any) -> AsyncIterator[AudioChunk]:
        """Have the chat model reply to `message` and speak the reply in `mode`."""
        if self.chat_model is None:
            raise RuntimeError("this kit has no chat model")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        state.restart()
        replies = self.chat_model.stream_reply(message, list(history), **chat_options)
        speak = self._converse_sequential if mode == "sequential" else self._converse_overlap
        try:
            async for chunk in speak(replies, voice, state):
                yield chunk
        finally:
            self._finish(state)

    async def _converse_sequential(self, replies: AsyncIterator[str], voice: str,
                                   state: TurnState) -> AsyncIterator[AudioChunk]:
        async with contextlib.aclosing(replies):  # type: ignore[type-var]
            async for piece in replies:
                state.text += piece
        state.text = state.text.strip()
        state.timings.llm_s = state.elapsed()
        for sentence in self.sentences_for(state.text):
            async for chunk in self._speak(sentence, voice, state):
                yield chunk

    async def _converse_overlap(self, replies: AsyncIterator[str], voice: str,
                                state: TurnState) -> AsyncIterator[AudioChunk]:
        ready: asyncio.Queue[str | None] = asyncio.Queue()
        writer = asyncio.create_task(self._write_sentences(replies, state, ready))
        try:
            while (sentence := await ready.get()) is not None:
                async for chunk in self._speak(sentence, voice, state):
                    yield chunk
            await writer  # re-raises a chat-model error
        finally:
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write_sentences(self, replies: AsyncIterator[str], state: TurnState,
                               ready: asyncio.Queue[str | None]) -> None:
        splitter = SentenceStream(first_fragment_chars=self.first_fragment_chars,
                                  keep_tags=bool(self.tts.tags))
        try:
            async with contextlib.aclosing(replies):  # type: ignore[type-var]
                async for piece in replies:
                    state.text += piece
                    for sentence in splitter.push(piece):
                        ready.put_nowait(sentence)
            for sentence in splitter.flush():
                ready.put_nowait(sentence)
            state.text = state.text.strip()
            state.timings.llm_s = state.elapsed()
        finally:
            ready.put_nowait(None)

    async def _speak(self, sentence: str, voice: str, state: TurnState) -> AsyncIterator[AudioChunk]:
        index = len(state.sentences)
        state.sentences.append(sentence)
        state.timings.sentences = len(state.sentences)
        stream = self.tts.synthesize(sentence, voice)
        try:
            while True:
                began = time.perf_counter()
                try:
                    samples = await anext(stream)
                except StopAsyncIteration:
                    state.timings.tts_s += time.perf_counter() - began
                    return
                state.timings.tts_s += time.perf_counter() - began
                if not len(samples):
                    continue
                if state.timings.ttfa_s is None:
                    state.timings.ttfa_s = state.elapsed()
                state.timings.audio_s += len(samples) / self.tts.sample_rate
                yield AudioChunk(samples, self.tts.sample_rate, index, sentence)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    @staticmethod
    def _finish(state: TurnState) -> None:
        state.timings.total_s = state.elapsed()
        state.done = True
