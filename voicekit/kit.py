"""The public kit: `voicekit.load()` builds one from settings; `kit.say()` and `kit.chat()` speak.

Each call comes in a sync form (notebooks, scripts) returning a `Reply` to iterate, and an async form
(`asay`, `achat`, for servers running their own event loop) returning an `AsyncReply`. Both stream
`AudioChunk`s and expose the reply text, sentences and timings as they fill in. Input is checked when
the call is made, so a bad text or voice raises before any audio is promised.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from voicekit.audio import concat, wav_bytes, write_wav
from voicekit.chat import ChatModel, HistoryItem, normalize_history
from voicekit.engines.base import SamplingSettings
from voicekit.engines.loop import EventLoopThread
from voicekit.pipeline import AudioChunk, Pipeline, Timings, TurnState, check_text
from voicekit.settings import Settings
from voicekit.tts.base import SpeechBackend, speech_failure

log = logging.getLogger("voicekit")


class _ReplyBase:
    """What sync and async replies share: live text, sentences, timings, and the collected audio."""

    def __init__(self, state: TurnState, sample_rate: int, message: str | None,
                 history: list[dict[str, str]] | None) -> None:
        self._state = state
        self.sample_rate = sample_rate
        self.message = message
        self._history = history
        self.chunks: list[AudioChunk] = []

    @property
    def text(self) -> str:
        """The reply (chat) or the cleaned text (say), as far as it is written."""
        return self._state.text

    @property
    def sentences(self) -> list[str]:
        """Sentences sent to the speech backend so far."""
        return list(self._state.sentences)

    @property
    def timings(self) -> Timings:
        """Timings of this turn (complete once the audio is exhausted)."""
        return self._state.timings

    @property
    def done(self) -> bool:
        """True once all audio has been produced."""
        return self._state.done

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation including this turn, in messages format, to pass to the next `chat()`."""
        past = list(self._history or [])
        if self.message is None:
            return past
        return [*past, {"role": "user", "content": self.message}, {"role": "assistant", "content": self.text}]

    def _collected(self) -> np.ndarray:
        return concat(chunk.samples for chunk in self.chunks)


class Reply(_ReplyBase):
    """A streaming reply for synchronous code: iterate it for `AudioChunk`s."""

    def __init__(self, stream: Iterator[AudioChunk], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stream = stream

    def __iter__(self) -> Iterator[AudioChunk]:
        for chunk in self._stream:
            self.chunks.append(chunk)
            yield chunk

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


class AsyncReply(_ReplyBase):
    """A streaming reply for async code: `async for chunk in reply`."""

    def __init__(self, stream: AsyncIterator[AudioChunk], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[AudioChunk]:
        async for chunk in self._stream:
            self.chunks.append(chunk)
            yield chunk

    async def audio(self) -> np.ndarray:
        """All samples (float32 mono), consuming whatever has not been streamed yet."""
        async for _ in self:
            pass
        return self._collected()

    async def aclose(self) -> None:
        """Stop generating (aborts the engine requests behind this reply)."""
        await self._stream.aclose()  # type: ignore[attr-defined]


class Kit:
    """A loaded chat model + speech backend + pipeline, driven on one long-lived event loop."""

    def __init__(self, settings: Settings, tts: SpeechBackend, chat: ChatModel | None,
                 loop: EventLoopThread, describe: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.tts = tts
        self.chat_model = chat
        self.loop = loop
        self.pipeline = Pipeline(tts, chat, settings.max_text_chars, settings.first_fragment_chars)
        self.description = describe or {}

    @property
    def voices(self) -> list[str]:
        """Voices of the active speech backend."""
        return self.tts.voices

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

    # -- say --------------------------------------------------------------------------------------------

    def say(self, text: str, voice: str | None = None) -> Reply:
        """Speak `text` in `voice`; iterate the reply for audio chunks (sync)."""
        make, state = self._say_stream(text, voice)
        return Reply(self.loop.iterate(make), **self._reply_fields(state))

    def asay(self, text: str, voice: str | None = None) -> AsyncReply:
        """Speak `text` in `voice`; `async for` the reply for audio chunks."""
        make, state = self._say_stream(text, voice)
        return AsyncReply(self.loop.aiterate(make), **self._reply_fields(state))

    # -- chat -------------------------------------------------------------------------------------------

    def chat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
             mode: str | None = None, **options: Any) -> Reply:
        """Reply to `message` with the chat model and speak it (sync). Options: system_prompt, temperature."""
        make, state, past = self._chat_stream(message, voice, history, mode, options)
        return Reply(self.loop.iterate(make), **self._reply_fields(state, message.strip(), past))

    def achat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
              mode: str | None = None, **options: Any) -> AsyncReply:
        """Reply to `message` and speak it; `async for` the reply for audio chunks."""
        make, state, past = self._chat_stream(message, voice, history, mode, options)
        return AsyncReply(self.loop.aiterate(make), **self._reply_fields(state, message.strip(), past))

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

    def close(self) -> None:
        """Free the models and stop the event loop."""
        async def shutdown() -> None:
            if self.chat_model is not None:
                await self.chat_model.engine.close()
            await self.tts.close()

        self.loop.run(shutdown())
        self.loop.close()

    def __enter__(self) -> Kit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------

    def _say_stream(self, text: str, voice: str | None) -> tuple[Callable[[], AsyncIterator[AudioChunk]],
                                                                 TurnState]:
        sentences = self.pipeline.prepare_say(text)
        name = self.resolve_voice(voice)
        state = TurnState()
        return (lambda: self.pipeline.say(sentences, name, state)), state

    def _chat_stream(self, message: str, voice: str | None, history: Iterable[HistoryItem] | None,
                     mode: str | None, options: dict[str, Any]) -> tuple[Any, TurnState, list[dict[str, str]]]:
        if self.chat_model is None:
            raise RuntimeError("this kit was loaded without a chat model")
        message = check_text(message, self.settings.max_text_chars, "message")
        name = self.resolve_voice(voice)
        chosen_mode = mode or self.settings.mode
        if chosen_mode not in ("sequential", "overlap"):
            raise ValueError(f"mode must be sequential or overlap, not {chosen_mode!r}")
        past = [{"role": m.role, "content": m.content} for m in normalize_history(history)]
        state = TurnState()

        def make() -> AsyncIterator[AudioChunk]:
            return self.pipeline.converse(message, name, state, history=past, mode=chosen_mode, **options)

        return make, state, past

    def _reply_fields(self, state: TurnState, message: str | None = None,
                      history: list[dict[str, str]] | None = None) -> dict[str, Any]:
        return {"state": state, "sample_rate": self.sample_rate, "message": message, "history": history}


def build_sampling(settings: Settings) -> SamplingSettings:
    """Chat sampling settings from the kit settings (none of them shared with the speech model's)."""
    return SamplingSettings(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                            repetition_penalty=settings.repetition_penalty, max_tokens=settings.max_reply_tokens)
