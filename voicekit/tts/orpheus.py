"""Orpheus speech backend: Orpheus 3B on an engine (vLLM in-process or `vllm serve`) + streaming SNAC decoding.

For each sentence: prompt ids built from the tokenizer's ids of "voice: text" (never decoded and
re-tokenised), generation stopped at end-of-speech with `max_tokens` sized from the text, every token id
of every delta parsed into 7-code frames, frames decoded by `StreamingDecoder` as they arrive (first audio
after 3 frames, the tail flushed at the end). A stream stuck repeating the same frames is stopped
(`LoopGuard`, with a log line). A sentence that yields no frame is a `NoAudioError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from voicekit.engines.base import Engine, SamplingSettings, new_request_id
from voicekit.errors import ModelUnavailableError, NoAudioError
from voicekit.hub import explain
from voicekit.tts.base import BackendBase
from voicekit.tts.orpheus_codes import (
    DEFAULT_VOICE,
    EMOTION_TAGS,
    END_OF_SPEECH_ID,
    SAMPLE_RATE,
    VOICES,
    CodeParser,
    LoopGuard,
    build_prompt_ids,
    max_tokens_for_text,
    prompt_text,
)
from voicekit.tts.snac_batcher import SnacBatcher

log = logging.getLogger("voicekit.orpheus")

Tokenize = Callable[[str], Sequence[int]]


@dataclass(frozen=True)
class OrpheusSampling:
    """Sampling defaults from upstream Orpheus code (repetition_penalty >= 1.1 is required for stable speech)."""

    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0  # 0: no top-k cut
    repetition_penalty: float = 1.1


class OrpheusBackend(BackendBase):
    """Speech backend over an engine running an Orpheus model and a SNAC model."""

    name = "orpheus"
    sample_rate = SAMPLE_RATE
    tags: tuple[str, ...] = EMOTION_TAGS

    def __init__(self, engine: Engine, tokenize: Tokenize, snac: Any, *, voices: Sequence[str] = VOICES,
                 default_voice: str | None = None, sampling: OrpheusSampling | None = None,
                 decoder_options: dict[str, Any] | None = None, snac_batch_frames: int | None = None) -> None:
        self.engine = engine
        self._tokenize = tokenize
        self.snac = snac
        self._set_voices(voices, default_voice, DEFAULT_VOICE)
        self.sampling = sampling or OrpheusSampling()
        self._decoder_options = decoder_options or {}
        # One SNAC model serves every stream: the batcher runs one call at a time (torch modules are not
        # safe to run from two threads at once) and batches windows of concurrent streams on a GPU.
        self.snac_batcher = SnacBatcher(snac, snac_batch_frames)
        self.last_stats: Any = None  # ParseStats of the latest finished sentence (for logs and tests)

    def about(self, voice: str) -> tuple[str, str]:
        """Orpheus 3B's English voices (emotion tags work with every one)."""
        return "en", f"English, {voice}, with emotion tags"

    def prompt_ids(self, text: str, voice: str) -> list[int]:
        """Token ids of the Orpheus prompt for `text` spoken by `voice`."""
        return build_prompt_ids(list(self._tokenize(prompt_text(voice, text))))

    def sampling_for(self, text: str) -> SamplingSettings:
        """Engine sampling for one text: stop at end-of-speech, budget sized from the text."""
        return SamplingSettings(temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                                top_k=self.sampling.top_k, repetition_penalty=self.sampling.repetition_penalty,
                                max_tokens=max_tokens_for_text(text), stop_token_ids=(END_OF_SPEECH_ID,))

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        """Stream 24 kHz float32 chunks of `text` in `voice`."""
        from voicekit.tts.snac_decoder import StreamingDecoder

        name = self.resolve(voice)
        parser, guard = CodeParser(), LoopGuard()
        decoder = StreamingDecoder(self.snac, decode_window=self.snac_batcher.decode, **self._decoder_options)
        stream = self.engine.generate(self.prompt_ids(text, name), self.sampling_for(text), new_request_id("orpheus"))
        try:
            async for delta in stream:
                frames = parser.feed(delta.token_ids)  # every id of the delta, never only the last
                if frames:
                    for chunk in await asyncio.to_thread(decoder.push, frames):
                        yield chunk
                if parser.stopped:
                    break
                if guard.push(frames):
                    log.warning("orpheus stream for voice %s stopped after %d frames: the last %d frames repeat a "
                                "block of %d frame(s), so the model is stuck in a loop (text %r)", name,
                                decoder.frames_received, guard.min_frames, guard.period, text[:60])
                    break
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
        stats = self.last_stats = parser.finish()
        tail = await asyncio.to_thread(decoder.flush)
        if len(tail):
            yield tail
        if decoder.frames_received == 0:
            raise NoAudioError(f"Orpheus produced no audio for {text[:60]!r} (voice {name}): {stats}")
        if stats.rejected_ids or stats.partial_tokens:
            log.warning("orpheus stream for voice %s: %s", name, stats)

    async def failure(self) -> str | None:
        """Why the engine behind this backend can no longer generate (`Engine.failure`), or None."""
        return await self.engine.failure()

    async def close(self) -> None:
        """Close the engine behind this backend."""
        await self.engine.close()


def hub_tokenizer(model: str, token: str | None) -> Tokenize:
    """The hub tokenizer of `model` as a function of text (Orpheus behind `vllm serve` builds its ids with it)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, token=token or None)
    except Exception as error:  # gated, missing or offline: say which model and what to do
        raise ModelUnavailableError(f"tokenizer of {explain(model, error)}") from error
    return lambda text: tokenizer(text).input_ids
