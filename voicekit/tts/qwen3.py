"""Qwen3-TTS speech backends: the official `qwen-tts` package in-process, or a vLLM-Omni server over HTTP.

- `Qwen3OfficialBackend` wraps `qwen_tts.Qwen3TTSModel` (imported lazily: voicekit imports without it).
  The package has no real streaming, so the backend streams by sentence: one blocking
  `generate_custom_voice` call per sentence, run off the event loop and serialised by a lock.
- `Qwen3OmniBackend` is a client of `vllm serve Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice --omni`: it POSTs to
  `/v1/audio/speech` with `stream: true, response_format: "pcm"` and decodes the 16-bit 24 kHz mono PCM as
  it arrives (an odd byte at a chunk boundary is carried to the next chunk).

docs/QWEN3.md explains installation (qwen-tts needs its own environment), the server and the settings.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from voicekit.audio import pcm16_to_float, resample
from voicekit.errors import ModelUnavailableError, NoAudioError, VoicekitError, first_line
from voicekit.text import split_sentences
from voicekit.tts.base import BackendBase

log = logging.getLogger("voicekit.qwen3")

SAMPLE_RATE = 24000
DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"
SMALL_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
#: The built-in speakers of the CustomVoice models, as `generate_custom_voice` spells them.
SPEAKERS: tuple[str, ...] = ("Vivian", "Serena", "Uncle_Fu", "Dylan", "Eric", "Ryan", "Aiden", "Ono_Anna", "Sohee")
DEFAULT_SPEAKER = "Ryan"  # an English speaker; voicekit's chat replies are English by default
DEFAULT_LANGUAGE = "Auto"  # qwen-tts detects the language; set e.g. "English" when it is known
INSTALL_HINT = "pip install qwen-tts in its own environment: it pins transformers 4.57.3, which conflicts with vLLM"
DEFAULT_PORT = 8091

# The codec runs at 12.5 frames a second; one spoken character needs well under 3 frames even for
# Chinese, so 3 tokens per character plus a floor never cuts speech short, and the ceiling (about
# 160 s) stops a run-away generation that never emits end-of-speech.
TOKENS_PER_CHAR = 3
MIN_NEW_TOKENS = 96
MAX_NEW_TOKENS = 2048


def max_new_tokens_for_text(text: str) -> int:
    """Generation budget for one text: grows with its length, bounded by [MIN_NEW_TOKENS, MAX_NEW_TOKENS]."""
    return min(MAX_NEW_TOKENS, MIN_NEW_TOKENS + TOKENS_PER_CHAR * len(text.strip()))


# --- official package ------------------------------------------------------------------------


def load_qwen3_model(model_id: str = DEFAULT_MODEL, *, hf_token: str | None = None, device_map: str | None = None,
                     cuda: bool = False, **load_kwargs: Any) -> Any:
    """Load `Qwen3TTSModel.from_pretrained(model_id)`; ModelUnavailableError when qwen-tts or the weights are missing.

    `device_map` defaults to "cuda:0" with bfloat16 when `cuda` (the wiring passes `voicekit.device`'s answer),
    else "cpu". The token is passed as `token=` (from_pretrained forwards keyword arguments to transformers)
    only when one is set.
    """
    try:
        from qwen_tts import Qwen3TTSModel
    except ImportError as error:
        raise ModelUnavailableError(f"the Qwen3-TTS official backend needs the qwen-tts package "
                                    f"({first_line(error)}): {INSTALL_HINT}") from None
    options = dict(load_kwargs)
    try:
        import torch

        options.setdefault("dtype", torch.bfloat16 if cuda else torch.float32)
    except ImportError:  # qwen-tts depends on torch; only a broken install gets here
        cuda = False
    options["device_map"] = device_map or ("cuda:0" if cuda else "cpu")
    if hf_token:
        options["token"] = hf_token
    try:
        return Qwen3TTSModel.from_pretrained(model_id, **options)
    except Exception as error:  # hub and transformers raise many types (offline, 404, auth, bad files)
        raise ModelUnavailableError(
            f"could not load Qwen3-TTS model {model_id!r}: {type(error).__name__}: {first_line(error)}. "
            f"Check the hub id or local path, the network and HF_TOKEN; models: {DEFAULT_MODEL}, {SMALL_MODEL}"
        ) from None


def _accepts_keyword(function: Any, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins and some C callables have no signature: do not guess
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class Qwen3OfficialBackend(BackendBase):
    """Speech backend over the official `qwen-tts` package (CustomVoice models, streamed by sentence)."""

    name = "qwen3"
    sample_rate = SAMPLE_RATE
    tags: tuple[str, ...] = ()

    def __init__(self, model_id: str = DEFAULT_MODEL, *, model: Any = None, default_voice: str | None = None,
                 language: str = "", instruct: str = "", speakers: Sequence[str] = SPEAKERS,
                 hf_token: str | None = None, **load_kwargs: Any) -> None:
        """`model` is an already-loaded object with `generate_custom_voice`; None loads `model_id`."""
        self.model_id = model_id or DEFAULT_MODEL
        self._set_voices(speakers, default_voice, DEFAULT_SPEAKER)
        self.language = language or DEFAULT_LANGUAGE
        self.instruct = instruct
        self.model = model if model is not None else load_qwen3_model(self.model_id, hf_token=hf_token,
                                                                      **load_kwargs)
        # A threading lock, taken inside the worker thread: a cancelled synthesize cannot stop a running
        # generate call, and the next call must still wait for it to finish (torch modules are not re-entrant).
        self._lock = threading.Lock()
        self._pass_budget = _accepts_keyword(self.model.generate_custom_voice, "max_new_tokens")
        if not self._pass_budget:
            log.warning("generate_custom_voice takes no max_new_tokens: generation length is not capped")

    def generate_kwargs(self, sentence: str, speaker: str) -> dict[str, Any]:
        """Keyword arguments of the `generate_custom_voice` call for one sentence."""
        kwargs: dict[str, Any] = {"text": sentence, "speaker": speaker, "language": self.language}
        if self.instruct:
            kwargs["instruct"] = self.instruct
        if self._pass_budget:
            kwargs["max_new_tokens"] = max_new_tokens_for_text(sentence)
        return kwargs

    def about(self, voice: str) -> tuple[str, str]:
        """A Qwen3-TTS CustomVoice speaker (it speaks several languages)."""
        return "", f"Qwen3-TTS speaker {voice}"

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        """Stream 24 kHz float32 audio of `text` in `voice`, one chunk per sentence."""
        speaker = self.resolve(voice)
        sentences = split_sentences(text) or ([text.strip()] if text.strip() else [])
        if not sentences:
            raise NoAudioError(f"Qwen3-TTS has nothing to speak in {text[:60]!r}")
        for sentence in sentences:
            audio = await asyncio.to_thread(self._generate, sentence, speaker)
            if not len(audio):
                raise NoAudioError(f"Qwen3-TTS produced no audio for {sentence[:60]!r} (voice {speaker})")
            yield audio

    def _generate(self, sentence: str, speaker: str) -> np.ndarray:
        with self._lock:
            result = self.model.generate_custom_voice(**self.generate_kwargs(sentence, speaker))
        wavs, rate = result
        parts = [np.asarray(wav, dtype=np.float32).reshape(-1) for wav in (wavs or [])]
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        if len(audio) and int(rate) != SAMPLE_RATE:
            audio = resample(audio, int(rate), SAMPLE_RATE)
        return np.clip(np.nan_to_num(audio), -1.0, 1.0).astype(np.float32, copy=False)

    async def close(self) -> None:
        """Drop the model so its memory can be freed."""
        self.model = None


# --- vLLM-Omni server ------------------------------------------------------------------------


class Qwen3ServerError(VoicekitError, RuntimeError):
    """The Qwen3-TTS speech server is unreachable or answered with an error."""


def omni_serve_command(model: str = DEFAULT_MODEL, port: int = DEFAULT_PORT, *, host: str = "0.0.0.0",
                       extra: Sequence[str] = ()) -> list[str]:
    """The command that starts a vLLM-Omni server for `model` (run it in vllm-omni's environment)."""
    return ["vllm", "serve", model, "--omni", "--host", host, "--port", str(port), "--trust-remote-code",
            *extra]


def speech_endpoint(url: str) -> str:
    """`/v1/audio/speech` under a base URL given with or without `/v1`."""
    base = url.strip().rstrip("/")
    base = base.removesuffix("/v1/audio/speech").removesuffix("/v1")
    return f"{base}/v1/audio/speech"


def _server_message(status: int, body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or f"HTTP {status}"
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or value
            if value:
                return str(value)[:300]
    return text[:300]


class Qwen3OmniBackend(BackendBase):
    """Speech backend over a vLLM-Omni server (`vllm serve <Qwen3-TTS CustomVoice model> --omni`)."""

    name = "qwen3"
    sample_rate = SAMPLE_RATE
    tags: tuple[str, ...] = ()

    def __init__(self, url: str, model: str = DEFAULT_MODEL, *, default_voice: str | None = None,
                 language: str = "", instruct: str = "", speakers: Sequence[str] = SPEAKERS,
                 timeout: float = 120.0, client: Any = None) -> None:
        """`language` and `instruct`, when set, are sent as the request's `language` and `instructions`."""
        self.url = url
        self.endpoint = speech_endpoint(url)
        self.model = model or DEFAULT_MODEL
        self._set_voices(speakers, default_voice, DEFAULT_SPEAKER)
        self.language = language
        self.instruct = instruct
        self.timeout = timeout
        self._client = client
        self._own_client = client is None

    def request_body(self, text: str, speaker: str) -> dict[str, Any]:
        """JSON body of the speech request; the server expects lowercase speaker names."""
        body: dict[str, Any] = {"model": self.model, "input": text, "voice": speaker.lower(),
                                "response_format": "pcm", "stream": True}
        if self.language:
            body["language"] = self.language
        if self.instruct:
            body["instructions"] = self.instruct
        return body

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=10.0))
        return self._client

    def about(self, voice: str) -> tuple[str, str]:
        """A Qwen3-TTS CustomVoice speaker (it speaks several languages)."""
        return "", f"Qwen3-TTS speaker {voice}"

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        """Stream 24 kHz float32 chunks of `text` in `voice` as the server sends PCM."""
        import httpx

        speaker = self.resolve(voice)
        samples = 0
        leftover = b""
        try:
            async with self._http().stream("POST", self.endpoint, json=self.request_body(text, speaker)) as response:
                if response.status_code >= 400:
                    message = _server_message(response.status_code, await response.aread())
                    raise Qwen3ServerError(f"the Qwen3-TTS server at {self.url} refused the request "
                                           f"(HTTP {response.status_code}): {message}")
                async for data in response.aiter_bytes():
                    if leftover:
                        data, leftover = leftover + data, b""
                    even = len(data) - len(data) % 2
                    leftover = data[even:]
                    if even:
                        samples += even // 2
                        yield pcm16_to_float(data[:even])
        except httpx.ConnectError as error:
            raise Qwen3ServerError(f"cannot connect to the Qwen3-TTS server at {self.url} ({first_line(error)}); "
                                   f"start it with: {' '.join(omni_serve_command(self.model))}") from None
        except httpx.TimeoutException as error:
            raise Qwen3ServerError(f"the Qwen3-TTS server at {self.url} timed out "
                                   f"({type(error).__name__})") from None
        except httpx.HTTPError as error:
            raise Qwen3ServerError(f"the Qwen3-TTS server at {self.url} failed: "
                                   f"{type(error).__name__}: {first_line(error)}") from None
        if leftover:
            log.warning("qwen3 server sent an odd number of PCM bytes; dropped the last byte")
        if samples == 0:
            raise NoAudioError(f"the Qwen3-TTS server produced no audio for {text[:60]!r} (voice {speaker})")

    async def close(self) -> None:
        """Close the HTTP client (only one this backend created)."""
        if self._client is not None and self._own_client:
            await self._client.aclose()
        self._client = None
