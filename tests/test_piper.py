"""The Piper backend with the bundled en_US-joe-medium voice, local voice folders and hub downloads."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from voicekit.audio import concat, rms_db
from voicekit.errors import ModelUnavailableError, UnknownVoiceError
from voicekit.tts.piper import (
    BUNDLED_VOICE,
    PiperBackend,
    bundled_voice_path,
    download_voice,
    hub_voice_files,
)


@pytest.fixture(scope="module")
def piper(kit):
    return kit.tts


def speak(kit, backend, text: str, voice: str = BUNDLED_VOICE) -> np.ndarray:
    return concat(kit.loop.iterate(lambda: backend.synthesize(text, voice)))


def test_bundled_voice_is_found_and_speaks_at_22050_hz(piper) -> None:
    assert bundled_voice_path() is not None
    assert BUNDLED_VOICE in piper.voices
    assert piper.default_voice == BUNDLED_VOICE
    assert piper.sample_rate == 22050
    assert piper.tags == ()


def test_speech_is_audible_float32_and_grows_with_the_text(kit, piper) -> None:
    short = speak(kit, piper, "Hello.")
    long = speak(kit, piper, "Hello. This sentence is quite a lot longer than the first one was.")
    assert short.dtype == np.float32 and long.dtype == np.float32
    assert rms_db(short) > -35 and rms_db(long) > -35
    assert np.abs(long).max() <= 1.0
    assert 0.3 < len(short) / 22050 < 2.0
    assert len(long) > 2.5 * len(short)


def test_the_voice_session_gives_arena_memory_back_after_each_sentence(kit, piper) -> None:
    # Without it a server's memory climbs with every new sentence length (docs/BENCHMARKS.md, "Many listeners").
    speak(kit, piper, "Load it first.")
    session = piper._voice(BUNDLED_VOICE).session
    options = session._run_options
    assert options.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    assert [i.name for i in session.get_inputs()][:1] == ["input"], "the rest of the session shows through"


def test_short_speaker_name_is_an_alias(kit, piper) -> None:
    assert piper.resolve("joe") == BUNDLED_VOICE
    assert piper.resolve("JOE") == BUNDLED_VOICE
    assert piper.resolve(None) == BUNDLED_VOICE


def test_unknown_voice_lists_the_voices(piper) -> None:
    with pytest.raises(UnknownVoiceError) as caught:
        piper.resolve("nobody")
    assert "nobody" in str(caught.value) and BUNDLED_VOICE in str(caught.value)


def test_voices_from_a_local_folder(tmp_path: Path, kit) -> None:
    bundled = bundled_voice_path()
    for suffix in (".onnx", ".onnx.json"):
        source = bundled.with_name(bundled.name.removesuffix(".onnx") + suffix)
        shutil.copy(source, tmp_path / f"en_GB-copy-medium{suffix}")
    (tmp_path / "en_US-halfvoice-low.onnx").write_bytes(b"no config beside it: ignored")
    backend = PiperBackend(voices_dir=tmp_path, default_voice="copy")
    assert backend.voices == [BUNDLED_VOICE, "en_GB-copy-medium"]
    assert backend.default_voice == "en_GB-copy-medium"
    audio = speak(kit, backend, "A copied voice.", "en_GB-copy-medium")
    assert rms_db(audio) > -35


def test_hub_paths_follow_the_piper_voices_layout() -> None:
    assert hub_voice_files("en_US-lessac-medium") == (
        "en/en_US/lessac/medium/en_US-lessac-medium.onnx",
        "en/en_US/lessac/medium/en_US-lessac-medium.onnx.json",
    )
    with pytest.raises(ModelUnavailableError, match="language-name-quality"):
        hub_voice_files("lessac")


def test_offline_download_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    # Offline for sure, even on a machine with internet access (the constant is read at import time).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelUnavailableError) as caught:
        download_voice("en_US-lessac-medium", tmp_path / "voices")
    message = str(caught.value)
    assert "en_US-lessac-medium" in message and "rhasspy/piper-voices" in message
    assert "VOICEKIT_PIPER_VOICES_DIR" in message
