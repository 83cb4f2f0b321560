"""The built-in parts, registered once (voicekit/registry.py): engines (llama.cpp, vLLM in this process, `vllm serve`
over HTTP) and voice families (Piper, Kokoro, Orpheus, Qwen3).

Each builder reads its own settings and hands plain arguments to the part below it. Importing this module registers
them; voicekit/build.py imports it before it looks anything up.
"""

from __future__ import annotations

import logging
from typing import Any

from voicekit import device
from voicekit.engines.base import Engine
from voicekit.placement import EngineChoice, orpheus_engine_choice, pick_dtype
from voicekit.registry import ENGINES, VOICE_FAMILIES, EngineKind, VoiceFamily
from voicekit.settings import Settings
from voicekit.tts.base import SpeechBackend

log = logging.getLogger("voicekit")


# -- engines: build(choice, settings, n_ctx) ------------------------------------------------------------------


def build_engine(choice: EngineChoice, settings: Settings, *, n_ctx: int | None = None) -> Engine:
    """The engine `choice` names, for the chat model or for Orpheus (`n_ctx`: llama.cpp's context)."""
    return ENGINES[choice.kind].build(choice, settings, n_ctx)


def _llamacpp(choice: EngineChoice, settings: Settings, n_ctx: int | None) -> Engine:
    from voicekit.engines.gguf_files import resolve_gguf
    from voicekit.engines.llamacpp import LlamaCppEngine

    path = resolve_gguf(choice.model, token=settings.token)
    return LlamaCppEngine(path, n_ctx=n_ctx or settings.n_ctx, n_threads=settings.n_threads or None,
                          n_gpu_layers=device.llama_cpp_offload(settings.n_gpu_layers))


def _vllm(choice: EngineChoice, settings: Settings, n_ctx: int | None) -> Engine:
    from voicekit.engines.vllm_engine import VLLMEngine

    return VLLMEngine(choice.model, hf_token=settings.token, **vllm_options(settings, choice.memory_share))


def _http(choice: EngineChoice, settings: Settings, n_ctx: int | None) -> Engine:
    from voicekit.engines.http_engine import HTTPEngine

    return HTTPEngine(choice.url, choice.model, tokenizer=choice.tokenizer)


def vllm_options(settings: Settings, memory_share: float) -> dict[str, Any]:
    """`VLLMEngine` keyword arguments for one engine of these settings."""
    options: dict[str, Any] = {"gpu_memory_utilization": memory_share, "max_model_len": settings.max_model_len,
                               "dtype": pick_dtype(settings.dtype, device.cuda_capability()),
                               "enforce_eager": settings.enforce_eager}
    if settings.kv_cache_bytes > 0:
        options["kv_cache_memory_bytes"] = settings.kv_cache_bytes
    return options


ENGINES.register(EngineKind("llamacpp", "llama.cpp on a GGUF file (CPU, or layers offloaded to a GPU)", _llamacpp,
                            ("n_ctx", "n_threads", "n_gpu_layers")))
ENGINES.register(EngineKind("vllm", "vLLM in this process (GPU)", _vllm,
                            ("chat_memory_share", "tts_memory_share", "max_model_len", "dtype", "enforce_eager",
                             "kv_cache_bytes")))
ENGINES.register(EngineKind("http", "a `vllm serve` (or vllm-router) at a URL", _http, ("chat_url", "tts_url")))


# -- voice families: build(settings, voice, extra) ------------------------------------------------------------


def _piper(settings: Settings, voice: str | None, extra: bool) -> SpeechBackend:
    from voicekit.tts.piper import PiperBackend

    backend = PiperBackend(voices_dir=settings.piper_voices_dir or None, hub_voices=settings.piper_hub_voices,
                           default_voice=voice, hf_token=settings.token)
    backend.preload()
    return backend


def _kokoro(settings: Settings, voice: str | None, extra: bool) -> Any:
    """Kokoro with the voices of `kokoro_voices` and the English ones of the hub (`extra`: only those already in
    the cache; then None when there are none)."""
    from voicekit.tts.kokoro import ENGLISH_VOICES, KokoroBackend, voices_for

    files = voices_for(ENGLISH_VOICES, settings.kokoro_voices or None, settings.token, download=not extra)
    if not files:
        log.info("Kokoro voices: none on this machine (set VOICEKIT_KOKORO_VOICES, or run "
                 "`python -m voicekit voices --fetch kokoro` once)")
        return None
    return KokoroBackend(files, default_voice=voice, speed=settings.kokoro_speed)


def _kokoro_fetch(settings: Settings) -> int:
    from voicekit.tts.kokoro import ENGLISH_VOICES, hub_voices

    found = hub_voices(ENGLISH_VOICES, settings.token, download=True)
    print(f"{len(found)} Kokoro voices in the Hugging Face cache ({next(iter(found.values())).parent})")
    return len(found)


def _kokoro_probe(settings: Settings) -> str:
    from voicekit.errors import VoicekitError
    from voicekit.tts.kokoro import ENGLISH_VOICES, voices_for

    try:
        count = len(voices_for(ENGLISH_VOICES, settings.kokoro_voices or None, None, download=False))
    except VoicekitError as error:
        return f"kokoro ({error})"
    if count:
        return f"kokoro: {count} voices here"
    if settings.tts == "kokoro":
        return "kokoro: fetched on first load"
    return "kokoro: none here (VOICEKIT_KOKORO_VOICES, or python -m voicekit voices --fetch kokoro)"


def _orpheus(settings: Settings, voice: str | None, extra: bool) -> SpeechBackend:
    """Orpheus on the engine `orpheus_engine_choice` picks (its prompts tokenized by that engine), with SNAC (on the
    GPU when there is one)."""
    from voicekit.tts.orpheus import OrpheusBackend, OrpheusSampling, hub_tokenizer
    from voicekit.tts.orpheus_gguf import LLAMACPP_TOP_K, orpheus_context
    from voicekit.tts.snac_decoder import build_snac

    choice = orpheus_engine_choice(settings)
    sampling = None
    if choice.kind == "llamacpp":
        engine: Any = build_engine(choice, settings, n_ctx=orpheus_context(settings.max_text_chars))
        sampling = OrpheusSampling(top_k=LLAMACPP_TOP_K)
        log.info("Orpheus on llama.cpp: %s (n_ctx %d, %s GPU layers)", choice.model, engine.n_ctx,
                 "all" if engine.n_gpu_layers == -1 else engine.n_gpu_layers)
    elif choice.kind == "http":  # the served model's tokenizer comes from the hub
        engine = build_engine(choice.with_tokenizer(hub_tokenizer(settings.tts_model, settings.token)), settings)
    else:
        engine = build_engine(choice, settings)
    snac = build_snac(device=device.torch_device(), weights=settings.snac_model, token=settings.token)
    return OrpheusBackend(engine, engine.tokenize, snac, default_voice=voice, sampling=sampling)


def _qwen3(settings: Settings, voice: str | None, extra: bool) -> SpeechBackend:
    """Qwen3-TTS: the vLLM-Omni server at `tts_url`, else the official qwen-tts package."""
    from voicekit.tts.qwen3 import DEFAULT_MODEL, Qwen3OfficialBackend, Qwen3OmniBackend

    model = settings.tts_model or DEFAULT_MODEL
    options = {"default_voice": voice, "language": settings.qwen3_language, "instruct": settings.qwen3_instruct}
    if settings.tts_url:
        return Qwen3OmniBackend(settings.tts_url, model, **options)
    return Qwen3OfficialBackend(model, hf_token=settings.token, cuda=device.cuda_available(), **options)


VOICE_FAMILIES.register(VoiceFamily("piper", "Piper voices (onnxruntime; joe is bundled)", _piper,
                                    ("piper_voices_dir", "piper_hub_voices"), extra_ok=True))
VOICE_FAMILIES.register(VoiceFamily("kokoro", "Kokoro 82M: 28 English voices (onnxruntime, [VOICES.md](VOICES.md))",
                                    _kokoro, ("kokoro_voices", "kokoro_speed"), extra_ok=True, fetch=_kokoro_fetch,
                                    probe=_kokoro_probe))
VOICE_FAMILIES.register(VoiceFamily("orpheus", "Orpheus 3B + SNAC (vLLM on a GPU, or a GGUF on llama.cpp)", _orpheus,
                                    ("tts_model", "tts_url", "snac_model", "tts_memory_share")))
VOICE_FAMILIES.register(VoiceFamily("qwen3", "Qwen3-TTS (vLLM-Omni at `tts_url`, or qwen-tts; [QWEN3.md](QWEN3.md))",
                                    _qwen3, ("tts_model", "tts_url", "qwen3_language", "qwen3_instruct")))
