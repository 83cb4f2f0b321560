"""Presets, VOICEKIT_* variables and keyword overrides, and their documentation."""

from __future__ import annotations

import pytest

from voicekit import pipeline
from voicekit import settings as schema
from voicekit.build import chat_sampling, load, resolve_settings
from voicekit.builtin import vllm_options
from voicekit.config_doc import configuration_markdown
from voicekit.device import choose_preset, cuda_capability
from voicekit.errors import SettingsError
from voicekit.placement import check_memory_shares, gpu_memory_shares, pick_dtype
from voicekit.registry import ENGINES, VOICE_FAMILIES
from voicekit.settings import Settings


def placed(preset: str, env: dict[str, str] | None = None, **overrides: object) -> Settings:
    """Settings as `load()` checks them before it builds anything: the GPU memory shares must fit."""
    settings = Settings.resolve(preset, env=env or {}, **overrides)
    check_memory_shares(gpu_memory_shares(settings))
    return settings


def test_cpu_preset_defaults() -> None:
    settings = Settings.resolve("cpu", env={})
    assert (settings.chat_engine, settings.tts, settings.mode) == ("llamacpp", "piper", "sequential")


def test_gpu_preset_names_the_product_models() -> None:
    settings = Settings.resolve("gpu", env={})
    assert settings.chat_model == "google/gemma-2-2b-it"
    assert settings.tts_model == "canopylabs/orpheus-3b-0.1-ft"
    assert settings.snac_model == "hubertsiuzdak/snac_24khz"
    assert settings.voice == "", "the speech backend picks its own default voice (Orpheus: tara)"


def test_environment_overrides_preset_and_keywords_override_environment() -> None:
    env = {"VOICEKIT_MODE": "overlap", "VOICEKIT_TEMPERATURE": "0.3", "VOICEKIT_MAX_TEXT_CHARS": "500",
           "VOICEKIT_PIPER_HUB_VOICES": "en_US-lessac-medium, en_GB-alan-low"}
    settings = Settings.resolve("cpu", env=env)
    assert settings.mode == "overlap" and settings.temperature == 0.3 and settings.max_text_chars == 500
    assert settings.piper_hub_voices == ("en_US-lessac-medium", "en_GB-alan-low")
    assert Settings.resolve("cpu", env=env, mode="sequential").mode == "sequential"


def test_preset_from_the_environment() -> None:
    assert Settings.resolve(env={"VOICEKIT_PRESET": "gpu"}).preset == "gpu"


@pytest.mark.parametrize("env, message", [
    ({"VOICEKIT_TEMPERATURE": "hot"}, "VOICEKIT_TEMPERATURE='hot' is not a valid float"),
    ({"VOICEKIT_MODE": "parallel"}, "mode must be one of sequential, overlap"),
    ({"VOICEKIT_CHAT_ENGINE": "http"}, "needs chat_url"),
])
def test_bad_values_are_clear_errors(env: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Settings.resolve("cpu", env=env)


def test_unknown_keyword_is_an_error() -> None:
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.resolve("cpu", env={}, colour="blue")


def test_hf_token_is_read_but_never_shown() -> None:
    settings = Settings.resolve("cpu", env={"HF_TOKEN": "hf_secret123"})
    assert settings.hf_token.get_secret_value() == settings.token == "hf_secret123"
    assert Settings.resolve("cpu", env={"VOICEKIT_HF_TOKEN": "hf_mine", "HF_TOKEN": "hf_other"}).token == "hf_mine"
    assert Settings.resolve("cpu", env={}).token is None
    assert "hf_secret123" not in repr(settings)
    assert settings.public_dict()["hf_token"] == "***"


def test_auto_rule() -> None:
    assert choose_preset(None, False, False)[0] == "cpu"
    assert choose_preset("2.13.0+cpu", False, False) == ("cpu", "torch 2.13.0+cpu sees no CUDA device")
    assert choose_preset("2.9.1", True, False)[0] == "cpu"
    assert choose_preset("2.9.1", True, True)[0] == "gpu"


def test_auto_picks_cpu_on_this_machine() -> None:
    assert resolve_settings("auto", env={}).preset == "cpu"
    assert resolve_settings(env={}).preset == "cpu"


def test_settings_alone_do_not_probe_the_machine() -> None:
    with pytest.raises(SettingsError, match=r"`auto` depends on this machine.*resolve_settings"):
        Settings.resolve("auto", env={})
    assert Settings.resolve("auto", env={}, auto=lambda: "laptop").preset == "laptop"
    assert schema.MODES == pipeline.MODES, "the settings' modes are the pipeline's"


def test_an_unknown_part_is_one_clear_error_listing_the_known_ones() -> None:
    assert Settings.resolve("cpu", env={"VOICEKIT_TTS": " Kokoro"}).tts == "kokoro"
    with pytest.raises(SettingsError, match="unknown voice family 'kokoroo'; known: piper, kokoro, orpheus, qwen3"):
        load("cpu", tts="kokoroo")
    with pytest.raises(SettingsError, match="unknown engine 'llama'; known: llamacpp, vllm, http"):
        load("cpu", chat_engine="llama")
    with pytest.raises(SettingsError, match="extra_voices may name piper, kokoro, not orpheus"):
        load("cpu", extra_voices="orpheus")
    assert set(VOICE_FAMILIES.names()) == {"piper", "kokoro", "orpheus", "qwen3"}
    assert ENGINES.names() == ("llamacpp", "vllm", "http")


def test_every_setting_is_documented(repo_root) -> None:
    doc = (repo_root / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"VOICEKIT_{name.upper()}" in doc, f"{name} is missing from docs/CONFIGURATION.md"
    assert doc == configuration_markdown(), (
        "docs/CONFIGURATION.md is stale: python -m voicekit config --markdown > docs/CONFIGURATION.md")


def test_the_docs_follow_the_field_descriptions() -> None:
    doc = configuration_markdown()
    assert "| `VOICEKIT_TOP_K` | `top_k` | `40` | `0` |  | chat top-k;" in doc, "each preset's value in its column"
    assert "| `VOICEKIT_PORT` | `--port` | `7860` |" in doc and "VOICEKIT_API_KEY" in doc


@pytest.mark.parametrize(("requested", "capability", "expected"), [
    ("auto", (9, 0), "bfloat16"),  # H100
    ("auto", (8, 6), "bfloat16"),  # RTX 3090 / A5000
    ("auto", (8, 0), "bfloat16"),  # A100: the first with bf16
    ("auto", (7, 5), "auto"),  # T4: no bf16, and vLLM refuses float16 for Gemma 2: vLLM picks
    ("auto", (7, 0), "auto"),  # V100
    ("auto", None, "auto"),  # no GPU: vLLM's CPU build decides
    ("float16", (9, 0), "float16"),  # an explicit choice is kept
    ("float32", None, "float32"),
])
def test_dtype_by_gpu_capability(requested: str, capability: tuple[int, int] | None, expected: str) -> None:
    assert pick_dtype(requested, capability) == expected


def test_vllm_options_without_a_gpu_leave_auto_to_vllm() -> None:
    if cuda_capability() is not None:
        pytest.skip("this machine has a GPU")
    settings = Settings.resolve("gpu", env={}, kv_cache_bytes=64 << 20)
    options = vllm_options(settings, 0.25)
    assert options == {"gpu_memory_utilization": 0.25, "max_model_len": 4096, "dtype": "auto",
                       "enforce_eager": False, "kv_cache_memory_bytes": 64 << 20}


def test_n_gpu_layers_defaults_to_all_and_rejects_nonsense() -> None:
    assert Settings.resolve("cpu", env={}).n_gpu_layers == -1
    assert Settings.resolve("cpu", env={"VOICEKIT_N_GPU_LAYERS": "0"}).n_gpu_layers == 0
    with pytest.raises(SettingsError, match="n_gpu_layers must be -1"):
        Settings.resolve("cpu", env={}, n_gpu_layers=-2)


def test_vllm_memory_shares_together_stay_under_0_9() -> None:
    # Whisper large-v3-turbo runs on the GPU too (~0.05 of a card whose size the settings do not know)
    assert placed("gpu", chat_memory_share=0.4, tts_memory_share=0.44).tts_memory_share == 0.44
    assert placed("gpu", chat_memory_share=0.4, tts_memory_share=0.49, asr_device="cpu")
    with pytest.raises(SettingsError, match=r"add up to 0.95 \(chat_memory_share 0.4 \+ tts_memory_share 0.5 \+ "
                                            r"Whisper large-v3-turbo on the GPU ~0.05\).*under 0.9.*"
                                            "VOICEKIT_CHAT_MEMORY_SHARE.*VOICEKIT_ASR_DEVICE=cpu"):
        placed("gpu", {"VOICEKIT_TTS_MEMORY_SHARE": "0.5"}, chat_memory_share=0.4)
    with pytest.raises(SettingsError, match="tts_memory_share: input should be less than 1"):
        Settings.resolve("gpu", env={}, tts_memory_share=1.2)
    with pytest.raises(SettingsError, match="add up to"):
        load("gpu", chat_memory_share=0.5, tts_memory_share=0.5)  # checked before anything loads


def test_memory_shares_count_only_vllm_engines_in_this_process() -> None:
    # Orpheus behind `vllm serve` or on llama.cpp takes no share of this process: only the chat engine's counts.
    assert placed("gpu", tts_url="http://127.0.0.1:8001", tts_memory_share=0.8).tts_memory_share
    assert placed("gpu", tts_model="/models/orpheus.gguf", tts_memory_share=0.8)
    assert placed("cpu", tts="orpheus", chat_memory_share=0.6, tts_memory_share=0.6)
    with pytest.raises(SettingsError, match="add up to"):
        placed("cpu", chat_engine="vllm", chat_model="m", tts="orpheus", tts_model="o",
               chat_memory_share=0.6, tts_memory_share=0.6)


def test_chat_sampling_is_the_chat_settings_not_orpheus() -> None:
    from voicekit.tts.orpheus import OrpheusSampling

    gpu = chat_sampling(Settings.resolve("gpu", env={}))
    assert (gpu.top_k, gpu.repetition_penalty) == (0, 1.0), "Gemma 2 samples with neither"
    assert OrpheusSampling().repetition_penalty == 1.1, "Orpheus keeps the penalty it needs"
    cpu = chat_sampling(Settings.resolve("cpu", env={"VOICEKIT_REPETITION_PENALTY": "1.0"}))
    assert (cpu.top_k, cpu.repetition_penalty, cpu.temperature, cpu.max_tokens) == (40, 1.0, 0.7, 200)
    with pytest.raises(SettingsError, match="top_k: input should be greater than or equal to 0"):
        Settings.resolve("cpu", env={}, top_k=-1)


def test_a_new_voice_family_is_one_registration(monkeypatch: pytest.MonkeyPatch) -> None:
    from scripted import SAMPLES_PER_CHAR, ScriptedBackend

    from voicekit.config_doc import configuration_markdown as docs
    from voicekit.registry import Registry, VoiceFamily

    families = Registry[VoiceFamily]("voice family")
    for family in VOICE_FAMILIES:
        families.register(family)
    monkeypatch.setattr("voicekit.build.VOICE_FAMILIES", families)
    monkeypatch.setattr("voicekit.config_doc.VOICE_FAMILIES", families)
    families.register(VoiceFamily("foo", "scripted voices", lambda settings, voice, extra: ScriptedBackend(
        voices=("ada", "bob"), name="foo"), extra_ok=True))
    with load("cpu", tts="foo", chat=False) as kit:
        assert [voice.family for voice in kit.voices] == ["foo", "foo"] and kit.default_voice == "ada"
        assert len(kit.say("Hello there.", voice="bob").audio()) == len("Hello there.") * SAMPLES_PER_CHAR
    with load("cpu", extra_voices="foo", chat=False) as kit:
        assert {voice.family for voice in kit.voices} == {"piper", "foo"}, "offered beside the kit's own family"
    assert "Registered: `piper`, `kokoro`, `orpheus`, `qwen3`, `foo`" in docs()
    with pytest.raises(ValueError, match="a voice family named 'foo' is registered already"):
        families.register(VoiceFamily("foo", "again", lambda settings, voice, extra: None))
