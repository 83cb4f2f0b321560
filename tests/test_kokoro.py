"""Kokoro-82M for real: the joined int8 ONNX from the PyPI parts, the voices of the npm package kokoro-js (the same
files as the hub's), espeak-ng through phonemizer, and Whisper tiny.en listening to what it says.

The hub itself cannot be reached here: its loading code is tested against the local stand-in hub, which serves
the same voice files and records every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from asr import heard, word_accuracy
from stand_in_hub import StandInHub

from voicekit.errors import ModelUnavailableError, UnknownVoiceError
from voicekit.tts import kokoro
from voicekit.tts.kokoro import (
    ENGLISH_VOICES,
    MODEL_SHA256,
    MODEL_SIZE,
    KokoroBackend,
    parse_blend,
    split_clauses,
    split_first_phrase,
    voices_for,
)

pytestmark = pytest.mark.slow

FOX = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def backend(kokoro_voices: Path) -> KokoroBackend:
    return KokoroBackend(voices_for(ENGLISH_VOICES, kokoro_voices, None, download=False))


def speak(backend: KokoroBackend, text: str, voice: str) -> list[np.ndarray]:
    async def run() -> list[np.ndarray]:
        return [chunk async for chunk in backend.synthesize(text, voice)]

    return asyncio.run(run())


# -- the model ------------------------------------------------------------------------------------------------


def test_the_joined_model_is_upstreams_file(tmp_path: Path) -> None:
    path = kokoro.model_path(tmp_path)
    assert path.parent == tmp_path and path.stat().st_size == MODEL_SIZE == 92_361_271
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == MODEL_SHA256 and digest.startswith("6e742170")
    assert kokoro.model_path(tmp_path) == path, "joined once, then reused"
    assert not any(part.parent == path.parent for part in kokoro.model_parts()), "never in the package folder"


def test_a_damaged_part_is_refused_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = kokoro.model_parts()
    broken = tmp_path / "part.bin"
    broken.write_bytes(parts[2].read_bytes()[:-1000])
    monkeypatch.setattr(kokoro, "model_parts", lambda: [*parts[:2], broken, parts[3]])
    with pytest.raises(ModelUnavailableError, match=r"the joined Kokoro model is damaged .*reinstall the parts"):
        kokoro.model_path(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


# -- speech -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", ["af_heart", "am_adam", "bf_emma", "bm_george"])
def test_english_voices_say_the_words(backend: KokoroBackend, whisper: Any, voice: str) -> None:
    samples = np.concatenate(speak(backend, FOX, voice))
    assert backend.sample_rate == 24000 and samples.dtype == np.float32
    assert np.sqrt(np.mean(samples**2)) > 0.02, "not silent"
    assert 1.5 < len(samples) / 24000 < 6.0
    assert word_accuracy(FOX, heard(whisper, samples, 24000)) >= 0.8


def test_longer_text_gives_longer_audio(backend: KokoroBackend) -> None:
    lengths = [sum(len(chunk) for chunk in speak(backend, text, "af_sky"))
               for text in ("Hello.", "Hello there, my friend.", "Hello there, my friend. How is the weather today?")]
    assert lengths[0] < lengths[1] < lengths[2]


def test_a_long_sentence_streams_clause_by_clause(backend: KokoroBackend, whisper: Any) -> None:
    sentence = ("When the morning train finally arrived at the station, the passengers, tired and cold, "
                "climbed aboard without a word.")
    assert split_clauses(sentence) == ["When the morning train finally arrived at the station,",
                                       "the passengers, tired and cold,", "climbed aboard without a word."]
    assert split_clauses("Short, and sweet.") == ["Short, and sweet."], "clauses under 24 characters stay joined"
    chunks = speak(backend, sentence, "am_michael")
    assert len(chunks) == 3, "each clause is audio before the next one is synthesized"
    assert word_accuracy(sentence, heard(whisper, np.concatenate(chunks), 24000)) >= 0.8


def test_a_long_first_clause_is_cut_once_before_a_joining_word() -> None:
    assert split_first_phrase("The quick brown fox jumps over the lazy dog near the quiet river.") == [
        "The quick brown fox jumps", "over the lazy dog near the quiet river."]
    assert split_first_phrase("Voice assistants feel natural when they answer quickly.") == [
        "Voice assistants feel natural", "when they answer quickly."]
    assert split_first_phrase("Hello there.") == ["Hello there."], "short: whole"
    assert split_first_phrase("Long replies test whether a speech pipeline can keep up with itself.") == [
        "Long replies test whether a speech pipeline can keep up with itself."], "no joining word early: whole"


def test_the_first_audio_of_a_long_sentence_is_its_first_phrase(backend: KokoroBackend) -> None:
    chunks = speak(backend, "The quick brown fox jumps over the lazy dog near the quiet river.", "af_heart")
    assert len(chunks) == 2 and len(chunks[0]) < len(chunks[1]), "the short first phrase comes first"


def test_voice_blends_are_weighted_sums(backend: KokoroBackend) -> None:
    assert parse_blend("af_heart:3+am_adam:1") == [("af_heart", 0.75), ("am_adam", 0.25)]
    assert backend.resolve("AF_Heart:0.6+am_adam:0.4") == "af_heart:0.6+am_adam:0.4"
    style = backend.style("af_heart:0.6+am_adam:0.4")
    assert np.allclose(style, 0.6 * backend.style("af_heart") + 0.4 * backend.style("am_adam"))
    assert sum(len(c) for c in speak(backend, "A blended voice.", "af_heart:0.6+am_adam:0.4")) > 12000
    with pytest.raises(UnknownVoiceError, match="af_nobody"):
        backend.resolve("af_heart:0.5+af_nobody:0.5")
    with pytest.raises(ValueError, match="bad weight"):
        parse_blend("af_heart:loud")


def test_languages_come_from_the_voice_prefix(backend: KokoroBackend) -> None:
    assert backend.language("af_heart") == "en-us" and backend.language("bm_lewis") == "en-gb"
    assert backend.about("bf_isabella") == ("en-gb", "UK English, female")
    assert backend.language("ef_dora") == "es" and backend.language("ff_siwis") == "fr-fr"
    # the folder (kokoro-js's 54 voices): every voice espeak-ng can speak, Japanese and Mandarin left out
    assert set(ENGLISH_VOICES) < set(backend.voices) and len(ENGLISH_VOICES) == 28 and len(backend.voices) == 41
    assert not any(name[0] in "jz" for name in backend.voices) and backend.default_voice == "af_heart"


# -- voices from a folder and from the hub -----------------------------------------------------------------


@pytest.fixture
def hub(kokoro_voices: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    files = {f"voices/{name}.bin": (kokoro_voices / f"{name}.bin").read_bytes() for name in ("af_heart", "am_adam")}
    stand_in = StandInHub(repos={kokoro.VOICES_REPO: files})
    yield stand_in
    stand_in.close()


def test_voices_come_from_the_folder_first_then_the_hub(hub: StandInHub, kokoro_voices: Path,
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(kokoro_voices / "bf_emma.bin", folder)
    found = voices_for(["bf_emma", "af_heart"], folder, "hf_token_x", download=True, endpoint=hub.url)
    assert found["bf_emma"] == folder / "bf_emma.bin"
    assert found["af_heart"].read_bytes() == (kokoro_voices / "af_heart.bin").read_bytes()
    fetched = [path for path in hub.paths() if "voices/" in path]
    assert fetched and all(path.endswith("/voices/af_heart.bin") for path in fetched), hub.paths()
    assert {request.authorization for request in hub.requests} == {"Bearer hf_token_x"}
    hub.requests.clear()
    again = voices_for(["af_heart"], None, None, download=False)  # from the cache: no request at all
    assert again["af_heart"] == found["af_heart"] and hub.requests == []


def test_a_voice_neither_in_the_folder_nor_on_the_hub_is_a_clear_error(hub: StandInHub, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"Kokoro voice 'af_nobody' is not in VOICEKIT_KOKORO_VOICES "
                                                    r"and .*voices/af_nobody.bin"):
        voices_for(["af_nobody"], tmp_path, None, download=True, endpoint=hub.url)
    assert voices_for(["am_adam"], None, None, download=False) == {}, "not fetched: only the cache is looked at"


def test_a_missing_folder_or_a_file_that_is_no_voice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        kokoro.folder_voices(tmp_path / "nowhere")
    (tmp_path / "af_bad.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ModelUnavailableError, match="is not a Kokoro voice: 100 bytes"):
        kokoro.load_voice(tmp_path / "af_bad.bin")
