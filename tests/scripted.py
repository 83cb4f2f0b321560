"""A scripted engine and speech backend on the shared bases: fast, exact tests of the pipeline's schedules.

They are real implementations of the `Engine` and `SpeechBackend` protocols (what a user would pass to
`voicekit.load(engine=..., backend=...)`), not mocks of voicekit's own models: the engine writes a fixed reply
word by word and can be held after a number of words; the backend speaks a fixed number of samples per
character. Both write down what happened, in order, in one shared `events` list.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from voicekit.engines.base import ChatMessage, Delta, EngineBase, Prompt, SamplingSettings
from voicekit.tts.base import BackendBase

SAMPLES_PER_CHAR = 10


class ScriptedEngine(EngineBase):
    """Writes `reply` one word per delta; with `hold_after=N` it waits after N words until `release` is set."""

    name = "scripted"

    def __init__(self, reply: str, events: list[str] | None = None, hold_after: int | None = None) -> None:
        super().__init__()
        self.model = "script"
        self.reply, self.hold_after = reply, hold_after
        self.events = events if events is not None else []
        self.release = threading.Event()
        self.prompts: list[Prompt] = []
        self.aborted: list[str] = []

    async def render_chat(self, messages: Sequence[ChatMessage]) -> Prompt:
        return "\n".join(f"{message.role}: {message.content}" for message in messages)

    async def generate(self, prompt: Prompt, sampling: SamplingSettings,
                       request_id: str | None = None) -> AsyncIterator[Delta]:
        request_id = self._begin(request_id)
        self.prompts.append(prompt)
        words = self.reply.split(" ")
        finished = False
        try:
            for index, word in enumerate(words):
                while self.hold_after is not None and index >= self.hold_after and not self.release.is_set():
                    await asyncio.sleep(0.002)  # cancellable: closing the stream ends the wait
                finished = index == len(words) - 1
                self.events.append(f"wrote {word}")
                yield Delta(text=word if finished else f"{word} ", token_ids=[index], finished=finished,
                            finish_reason="stop" if finished else None)
        finally:
            if not finished:
                self.aborted.append(request_id)
            self._end(request_id)

    async def abort(self, request_id: str) -> None:
        self.release.set()

    async def close(self) -> None:
        self._closed = True


class ScriptedBackend(BackendBase):
    """Speaks `SAMPLES_PER_CHAR` samples per character of the text, in two chunks, at 1000 Hz."""

    name = "scripted"
    sample_rate = 1000

    def __init__(self, events: list[str] | None = None, voices: Sequence[str] = ("ada", "bob"), *,
                 name: str = "scripted", sample_rate: int = 1000) -> None:
        self.name, self.sample_rate = name, sample_rate
        self._set_voices(voices, None, voices[0], aliases={"robert": "bob"})
        self.events = events if events is not None else []

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        self.events.append(f"spoke {text}")
        samples = np.full(len(text) * SAMPLES_PER_CHAR, 0.25 if voice == "ada" else -0.25, dtype=np.float32)
        half = len(samples) // 2
        for part in (samples[:half], samples[half:]):
            await asyncio.sleep(0)
            yield part


def first_index(events: list[str], prefix: str) -> int:
    """Where the first event starting with `prefix` is (a large number when there is none)."""
    return next((i for i, event in enumerate(events) if event.startswith(prefix)), 10**9)


def kit_over(engine: Any, backend: Any, **settings: Any) -> Any:
    """`voicekit.load()` with the scripted parts: nothing else is loaded."""
    import voicekit

    return voicekit.load("cpu", engine=engine, backend=backend, **settings)
