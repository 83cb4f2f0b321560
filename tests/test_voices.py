"""One voice catalogue across families: the cpu preset's Piper voice beside Kokoro's, routed by voice.

Real Piper and real Kokoro (voices from the npm package kokoro-js, tests/fetch_kokoro_voices.sh) with Whisper
listening; the routing rules themselves also on two scripted families (tests/scripted.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from asr import heard, word_accuracy
from scripted import ScriptedBackend

import voicekit
from voicekit.errors import UnknownVoiceError
from voicekit.kit import Kit
from voicekit.serve import BackgroundServer
from voicekit.serve.api import create_app
from voicekit.text import strip_tags
from voicekit.tts.catalogue import Voice, VoiceCatalogue
from voicekit.tts.piper import PiperBackend

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

SENTENCE = "A warm cup of tea on a rainy afternoon."


@pytest.fixture(scope="module")
def kit(kokoro_voices: Path) -> Iterator[Kit]:
    loaded = voicekit.load("cpu", chat=False, kokoro_voices=str(kokoro_voices))
    yield loaded
    loaded.close()


def test_the_cpu_preset_offers_piper_then_kokoro(kit: Kit) -> None:
    voices = kit.voices
    assert isinstance(kit.tts, VoiceCatalogue) and all(isinstance(voice, Voice) for voice in voices)
    assert voices[0] == "en_US-joe-medium" and voices[0].family == "piper" and voices[0].language == "en-us"
    kokoro = [voice for voice in voices if voice.family == "kokoro"]
    assert len(kokoro) == 41 and "af_heart" in kokoro
    heart = next(voice for voice in kokoro if voice == "af_heart")
    assert (heart.language, heart.description) == ("en-us", "US English, female")
    assert kit.default_voice == "en_US-joe-medium", "the fastest voice that needs no download stays the default"
    assert kit.sample_rate == 22050 and kit.description["tts"].startswith("piper + kokoro")


@pytest.mark.parametrize("voice", ["af_heart", "bm_george", "kokoro:am_adam", "en_US-joe-medium"])
def test_each_voice_speaks_through_its_own_family(kit: Kit, whisper: Any, voice: str) -> None:
    reply = kit.say(SENTENCE, voice=voice)
    samples = reply.audio()
    assert {chunk.sample_rate for chunk in reply.chunks} == {22050}, "Kokoro's 24 kHz is resampled to the kit's"
    assert reply.voice == voice.removeprefix("kokoro:")
    assert kit.tts.family_of(voice) == ("piper" if voice.startswith("en_US") else "kokoro")
    assert word_accuracy(SENTENCE, heard(whisper, samples, 22050)) >= 0.8


def test_openai_voice_names_map_to_kokoro_voices(kit: Kit) -> None:
    assert [kit.resolve_voice(name) for name in ("alloy", "echo", "fable", "onyx", "nova", "shimmer")] == [
        "af_alloy", "am_echo", "bm_fable", "am_onyx", "af_nova", "af_bella"]
    with pytest.raises(UnknownVoiceError) as unknown:
        kit.say("Hi.", voice="nobody")
    assert "en_US-joe-medium" in str(unknown.value) and "af_heart" in str(unknown.value)


def test_the_api_lists_every_voice_with_its_family(kit: Kit) -> None:
    with BackgroundServer(create_app(kit)) as server:
        listed = httpx.get(f"{server.url}/v1/audio/voices").json()
        spoken = httpx.post(f"{server.url}/v1/audio/speech", json={"input": "Hello.", "voice": "nova",
                                                                   "response_format": "wav"}, timeout=60)
    assert listed["default"] == "en_US-joe-medium" and listed["sample_rate"] == 22050
    assert listed["data"][0] == {"id": "en_US-joe-medium", "family": "piper", "language": "en-us",
                                 "description": "en_US, joe, medium quality", "object": "voice"}
    assert {"id": "af_nova", "family": "kokoro", "language": "en-us", "description": "US English, female",
            "object": "voice"} in listed["data"]
    assert spoken.status_code == 200 and spoken.headers["x-voice"] == "af_nova" and len(spoken.content) > 10000


def test_without_kokoro_voices_on_the_machine_the_preset_is_piper_alone(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached: and nothing is fetched
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    kit = voicekit.load("cpu", chat=False)
    try:
        assert isinstance(kit.tts, PiperBackend) and [voice.family for voice in kit.voices] == ["piper"]
    finally:
        kit.close()


# -- the routing rules, on scripted families ------------------------------------------------------------------


def two_families() -> VoiceCatalogue:
    first = ScriptedBackend(voices=("ada", "bob"), name="first", sample_rate=1000)
    second = ScriptedBackend(voices=("bob", "cy"), name="second", sample_rate=2000)
    return VoiceCatalogue([first, second])


def test_a_shared_name_goes_to_the_earlier_family_unless_named() -> None:
    catalogue = two_families()
    assert [(voice, voice.family) for voice in catalogue.voices] == [("ada", "first"), ("bob", "first"),
                                                                      ("bob", "second"), ("cy", "second")]
    assert catalogue.family_of("bob") == "first" and catalogue.family_of("second:bob") == "second"
    assert catalogue.family_of("Robert") == "first", "aliases work too"
    assert VoiceCatalogue(catalogue.families, default_voice="cy").default_voice == "cy"


def test_other_rates_are_resampled_and_tags_kept_only_where_honoured() -> None:
    catalogue = two_families()

    async def spoken(voice: str) -> np.ndarray:
        return np.concatenate([chunk async for chunk in catalogue.synthesize("abcdefghij", voice)])

    assert catalogue.sample_rate == 1000
    assert len(asyncio.run(spoken("ada"))) == 100
    # 100 samples at 2000 Hz are 50 ms: 50 samples at the catalogue's 1000 Hz (soxr, streaming)
    assert abs(len(asyncio.run(spoken("cy"))) - 50) <= 1
    assert strip_tags("Oh <laugh> that is  funny <sigh>") == "Oh that is funny"


# -- the laptop preset ------------------------------------------------------------------------------------------


def test_the_laptop_preset_speaks_kokoro_first_and_keeps_piper(kokoro_voices: Path, whisper: Any) -> None:
    laptop = voicekit.load("laptop", chat=False, kokoro_voices=str(kokoro_voices))
    try:
        assert laptop.default_voice == "af_heart" and laptop.sample_rate == 24000
        assert laptop.voices[0].family == "kokoro" and "en_US-joe-medium" in laptop.voices
        piper = laptop.say(SENTENCE, voice="joe")  # Piper's 22050 Hz, resampled up to the kit's 24 kHz
        samples = piper.audio()
        assert {chunk.sample_rate for chunk in piper.chunks} == {24000} and piper.voice == "en_US-joe-medium"
        assert word_accuracy(SENTENCE, heard(whisper, samples, 24000)) >= 0.8
    finally:
        laptop.close()


def test_the_laptop_chat_model_offline_is_one_clear_error(kokoro_voices: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    from voicekit.build import resolve_settings
    from voicekit.errors import ModelUnavailableError
    from voicekit.settings import LAPTOP_CHAT_MODEL

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelUnavailableError, match=r"Qwen/Qwen2\.5-0\.5B-Instruct-GGUF is not in the Hugging Face "
                                                    r"cache and the hub cannot be reached"):
        voicekit.load("laptop", kokoro_voices=str(kokoro_voices))
    assert LAPTOP_CHAT_MODEL.endswith("q4_k_m.gguf")
    assert resolve_settings("auto", env={}).preset == "cpu", "auto never downloads: it is never laptop"


def test_the_page_groups_voices_by_family_and_previews_one(kit: Kit) -> None:
    from gradio_client import Client

    from voicekit.audio import read_wav
    from voicekit.serve import compose
    from voicekit.serve.page import voice_choices

    choices = voice_choices(kit)
    assert choices[0] == ("piper · en_US-joe-medium — en_US, joe, medium quality", "en_US-joe-medium")
    assert ("kokoro · af_heart — US English, female", "af_heart") in choices
    assert [value for _, value in choices] == list(kit.voices), "in the kit's order: grouped by family"
    with BackgroundServer(compose(kit)) as server:
        client = Client(server.url + "/", verbose=False, download_files=False)
        try:
            audio, timings = client.predict("bf_emma", api_name="/preview")
            samples, rate = read_wav(httpx.get(audio["url"], timeout=30).content)
        finally:
            client.close()
    assert rate == kit.sample_rate and 1.5 < len(samples) / rate < 8.0 and timings.startswith("first audio")
