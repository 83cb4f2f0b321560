"""Orpheus on llama.cpp: a tiny Orpheus-shaped GGUF (tests/gguf_models.py) on the real engine, real SNAC code.

The tiny model is a bigram built to speak valid audio (7-slot phase, a natural end-of-speech now and then),
so the whole path runs for real: GGUF tokenizer -> prompt ids -> llama.cpp -> every token id parsed ->
SNAC decoding (random weights) -> audio. No network: hub specs are tested offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf_models as gm
import pytest
import tiny_models as tm

from voicekit.device import llama_cpp_offload
from voicekit.engines.base import SamplingSettings, new_request_id
from voicekit.engines.gguf_files import HubFile, parse_gguf_spec, resolve_gguf
from voicekit.engines.llamacpp import LlamaCppEngine
from voicekit.engines.loop import EventLoopThread
from voicekit.errors import ModelUnavailableError
from voicekit.tts.orpheus import OrpheusBackend, OrpheusSampling
from voicekit.tts.orpheus_codes import (
    AUDIO_BASE,
    CODEBOOK_SIZE,
    END_OF_SPEECH_ID,
    MAX_MAX_TOKENS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    VOICES,
)
from voicekit.tts.orpheus_gguf import (
    DEFAULT_ORPHEUS_GGUF,
    LLAMACPP_TOP_K,
    PROMPT_OVERHEAD,
    orpheus_context,
)

ROOT = Path(__file__).resolve().parent.parent
TEXT = "Hello there."


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gm.build_orpheus_gguf(tmp_path_factory.mktemp("gguf") / "tiny-orpheus.gguf")


@pytest.fixture(scope="session")
def snac_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local SNAC folder in the hub's layout (random weights) that SNAC.from_pretrained reads."""
    return tm.save_snac_folder(tmp_path_factory.mktemp("snac"))


@pytest.fixture(scope="module")
def loop() -> Iterator[EventLoopThread]:
    thread = EventLoopThread("gguf-test-loop")
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def engine(tiny_gguf: Path, loop: EventLoopThread) -> Iterator[LlamaCppEngine]:
    built = LlamaCppEngine(tiny_gguf, n_ctx=orpheus_context(2000), n_threads=1)
    yield built
    loop.run(built.close())


@pytest.fixture(scope="module")
def backend(engine: LlamaCppEngine) -> OrpheusBackend:
    """Built as `voicekit.build.build_orpheus` does for llama.cpp, with a random-weight SNAC."""
    from voicekit.tts.snac_decoder import build_snac

    return OrpheusBackend(engine, engine.tokenize, build_snac("cpu", weights=None),
                          sampling=OrpheusSampling(top_k=LLAMACPP_TOP_K))


def _slot_and_code(token_id: int) -> tuple[int, int]:
    return divmod(token_id - AUDIO_BASE, CODEBOOK_SIZE)


def _collect(loop: EventLoopThread, stream: Any) -> list:
    async def run() -> list:
        return [item async for item in stream]

    return loop.run(run(), timeout=120)


# --- prompt ids -----------------------------------------------------------------------------------------


def test_prompt_ids_from_the_gguf_tokenizer_follow_the_orpheus_layout(engine: LlamaCppEngine,
                                                                      backend: OrpheusBackend) -> None:
    assert engine.tokenize("tara: Hello there.") == [128000, *b"tara: Hello there."], "BOS from the GGUF, then bytes"
    ids = backend.prompt_ids(TEXT, "tara")
    assert ids == [128259, 128000, *b"tara: Hello there.", 128009, 128260, 128261, 128257]


def test_special_token_text_in_the_input_stays_text(engine: LlamaCppEngine) -> None:
    ids = engine.tokenize("<|eot_id|> <custom_token_2>")
    assert ids[1:] == list(b"<|eot_id|> <custom_token_2>")


# --- the tiny model really speaks -----------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_the_tiny_gguf_writes_audio_in_the_seven_slot_phase(loop: EventLoopThread, engine: LlamaCppEngine,
                                                            backend: OrpheusBackend, temperature: float) -> None:
    sampling = replace(backend.sampling_for(TEXT), temperature=temperature, seed=5)
    deltas = _collect(loop, engine.generate(backend.prompt_ids(TEXT, "tara"), sampling))
    ids = [token for delta in deltas for token in delta.token_ids]
    audio = ids[:-1] if ids[-1] == END_OF_SPEECH_ID else ids
    assert audio and all(_slot_and_code(token)[0] == i % 7 for i, token in enumerate(audio)), ids[:20]
    assert len(audio) % 7 == 0
    assert deltas[-1].finish_reason == ("stop" if ids[-1] == END_OF_SPEECH_ID else "length")
    if ids[-1] == END_OF_SPEECH_ID:
        assert gm.stops_after(_slot_and_code(audio[-1])[1]), "end-of-speech follows a 'stop' code of slot 6"


def test_the_model_ends_speech_by_itself_but_the_engine_stops_only_where_asked(
        loop: EventLoopThread, engine: LlamaCppEngine, backend: OrpheusBackend) -> None:
    sampling = SamplingSettings(temperature=0.6, top_k=LLAMACPP_TOP_K, repetition_penalty=1.1, max_tokens=300, seed=3)
    deltas = _collect(loop, engine.generate(backend.prompt_ids(TEXT, "tara"), sampling))
    assert len(deltas) == 300 and deltas[-1].finish_reason == "length"
    assert END_OF_SPEECH_ID in [t for d in deltas for t in d.token_ids], "the model ends sentences by itself"


# --- the backend --------------------------------------------------------------------------------------


class RecordingEngine:
    """The real engine, with every id it streams written down (to check the backend parsed all of them)."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine, self.ids = engine, []
        self.name, self.model = engine.name, engine.model

    async def generate(self, prompt: Any, sampling: SamplingSettings, request_id: str | None = None) -> AsyncIterator:
        async for delta in self.engine.generate(prompt, sampling, request_id):
            self.ids.extend(delta.token_ids)
            yield delta

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


@pytest.mark.parametrize("voice", ["tara", "zoe"])
def test_backend_audio_is_every_parsed_frame(loop: EventLoopThread, engine: LlamaCppEngine,
                                             backend: OrpheusBackend, voice: str) -> None:
    recording = RecordingEngine(engine)
    speaker = OrpheusBackend(recording, engine.tokenize, backend.snac, sampling=backend.sampling)
    chunks = _collect(loop, speaker.synthesize(TEXT, voice))
    stats = speaker.last_stats
    spoken = recording.ids[:recording.ids.index(END_OF_SPEECH_ID)] if stats.stopped else recording.ids
    assert stats.audio_tokens == len(spoken) > 0, "every id of every delta reaches the parser"
    assert stats.frames == stats.audio_tokens // 7 and stats.rejected_ids == stats.partial_tokens == 0
    assert sum(len(chunk) for chunk in chunks) == stats.frames * SAMPLES_PER_FRAME
    assert engine.active_requests() == set()


@pytest.fixture(scope="module")
def stuck_engine(tmp_path_factory: pytest.TempPathFactory, loop: EventLoopThread) -> Iterator[LlamaCppEngine]:
    """The tiny model made to repeat one frame forever (gguf_models.weights(stuck=True))."""
    path = gm.build_orpheus_gguf(tmp_path_factory.mktemp("stuck") / "stuck-orpheus.gguf", stuck=True)
    built = LlamaCppEngine(path, n_ctx=orpheus_context(2000), n_threads=1)
    yield built
    loop.run(built.close())


def test_a_stream_stuck_in_a_loop_stops_with_a_log_line(loop: EventLoopThread, stuck_engine: LlamaCppEngine,
                                                        backend: OrpheusBackend,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    text = "This sentence is long enough to get a budget of many seconds of speech, far more than two. " * 3
    recording = RecordingEngine(stuck_engine)
    speaker = OrpheusBackend(recording, stuck_engine.tokenize, backend.snac, sampling=backend.sampling)
    budget_frames = speaker.sampling_for(text).max_tokens // 7
    with caplog.at_level("WARNING", logger="voicekit.orpheus"):
        chunks = _collect(loop, speaker.synthesize(text, "tara"))
    frames = speaker.last_stats.frames
    assert budget_frames > 100 and frames == 24, "stops after 24 repeated frames (~2 s), not at the budget"
    assert len(recording.ids) < 26 * 7, "generation stopped too (no token generated for nothing)"
    assert sum(len(chunk) for chunk in chunks) == frames * SAMPLES_PER_FRAME, "the audio before the stop is kept"
    assert any("stuck in a loop" in record.getMessage() and "block of 1 frame" in record.getMessage()
               for record in caplog.records)
    assert stuck_engine.active_requests() == set()


def test_llamacpp_sampling_caps_top_k_at_one_codebook() -> None:
    assert LLAMACPP_TOP_K == CODEBOOK_SIZE == 4096


# --- aborts -------------------------------------------------------------------------------------------


def _endless(backend: OrpheusBackend) -> SamplingSettings:
    # No end-of-speech stop: the tiny model would go on for all 3000 tokens.
    return SamplingSettings(temperature=0.6, top_k=LLAMACPP_TOP_K, repetition_penalty=1.1, max_tokens=3000)


def test_closing_the_stream_leaves_no_request(loop: EventLoopThread, engine: LlamaCppEngine,
                                              backend: OrpheusBackend) -> None:
    prompt = backend.prompt_ids(TEXT, "leo")
    stream = loop.iterate(lambda: engine.generate(prompt, _endless(backend)))
    next(stream)
    next(stream)
    stream.close()
    assert engine.active_requests() == set()


def test_abort_by_id_stops_within_a_token(loop: EventLoopThread, engine: LlamaCppEngine,
                                          backend: OrpheusBackend) -> None:
    request_id = new_request_id("test")

    async def run() -> list:
        deltas = []
        async for delta in engine.generate(backend.prompt_ids(TEXT, "leo"), _endless(backend), request_id):
            deltas.append(delta)
            if len(deltas) == 3:
                assert request_id in engine.active_requests()
                await engine.abort(request_id)
        return deltas

    deltas = loop.run(run(), timeout=120)
    assert deltas[-1].finish_reason == "abort" and len(deltas) < 10
    assert engine.active_requests() == set()


# --- engine choice, specs, context ----------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("isaiahbjork/orpheus-3b-0.1-ft-Q4_K_M-GGUF/orpheus-3b-0.1-ft-q4_k_m.gguf",
     HubFile("isaiahbjork/orpheus-3b-0.1-ft-Q4_K_M-GGUF", "orpheus-3b-0.1-ft-q4_k_m.gguf")),
    ("owner/repo/sub/dir/model.GGUF", HubFile("owner/repo", "sub/dir/model.GGUF")),
    ("model.gguf", Path("model.gguf")),
    ("models/orpheus.gguf", Path("models/orpheus.gguf")),
    ("./a/b/c.gguf", Path("./a/b/c.gguf")),
    ("/abs/a/b/c.gguf", Path("/abs/a/b/c.gguf")),
    ("owner//c.gguf", Path("owner//c.gguf")),
    ("models/x/../c.gguf", Path("models/x/../c.gguf")),
    ("canopylabs/orpheus-3b-0.1-ft", None),
    ("isaiahbjork/orpheus-3b-0.1-ft-Q4_K_M-GGUF", None),
    ("", None),
])
def test_gguf_spec_parser(spec: str, expected: Any) -> None:
    assert parse_gguf_spec(spec) == expected


def test_an_existing_local_file_wins_over_the_hub_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "owner" / "repo").mkdir(parents=True)
    (tmp_path / "owner" / "repo" / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.chdir(tmp_path)
    assert parse_gguf_spec("owner/repo/model.gguf") == Path("owner/repo/model.gguf")
    assert resolve_gguf("owner/repo/model.gguf") == Path("owner/repo/model.gguf")


def test_default_gguf_is_the_community_q4_k_m() -> None:
    assert parse_gguf_spec(DEFAULT_ORPHEUS_GGUF) == HubFile("isaiahbjork/orpheus-3b-0.1-ft-Q4_K_M-GGUF",
                                                            "orpheus-3b-0.1-ft-q4_k_m.gguf")


@pytest.mark.parametrize("preset, tts_model, tts_url, expected", [
    ("cpu", "", "", DEFAULT_ORPHEUS_GGUF),
    ("cpu", "/models/orpheus.gguf", "", "/models/orpheus.gguf"),
    ("gpu", "me/repo/orpheus.gguf", "", "me/repo/orpheus.gguf"),
    ("gpu", "canopylabs/orpheus-3b-0.1-ft", "", None),
    ("cpu", "canopylabs/orpheus-3b-0.1-ft", "", None),
    ("gpu", "", "", None),
    ("cpu", "me/repo/orpheus.gguf", "http://localhost:8000", None),
])
def test_engine_choice(preset: str, tts_model: str, tts_url: str, expected: str | None) -> None:
    from voicekit.placement import orpheus_engine_choice
    from voicekit.settings import Settings

    settings = Settings.resolve(preset, env={}, tts="orpheus", tts_model=tts_model, tts_url=tts_url)
    choice = orpheus_engine_choice(settings)
    assert (choice.model if choice.kind == "llamacpp" else None) == expected


def test_context_fits_the_longest_prompt_and_budget() -> None:
    assert orpheus_context(2000) == 5632
    for chars in (1, 500, 2000, 7777):
        assert orpheus_context(chars) >= PROMPT_OVERHEAD + chars + MAX_MAX_TOKENS
        assert orpheus_context(chars) % 256 == 0


def test_gpu_layers_follow_what_the_build_can_do() -> None:
    import llama_cpp

    can = llama_cpp.llama_supports_gpu_offload()
    assert llama_cpp_offload(-1) == (-1 if can else 0)
    assert llama_cpp_offload(0) == 0


# --- loading and errors -------------------------------------------------------------------------------


def test_cpu_preset_kit_speaks_with_the_gguf(tiny_gguf: Path, snac_dir: Path) -> None:
    import voicekit

    with voicekit.load("cpu", tts="orpheus", tts_model=str(tiny_gguf), chat=False, snac_model=str(snac_dir),
                       n_threads=1) as kit:
        assert kit.voices == list(VOICES) and kit.default_voice == "tara" and kit.sample_rate == SAMPLE_RATE
        assert kit.tts.engine.name == "llamacpp" and kit.tts.sampling.top_k == LLAMACPP_TOP_K
        audio = kit.say(TEXT, voice="leo").audio()
    assert len(audio) > 0 and len(audio) % SAMPLES_PER_FRAME == 0


def test_missing_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    import voicekit

    missing = tmp_path / "nowhere" / "orpheus.gguf"
    with pytest.raises(ModelUnavailableError, match=r"GGUF model not found: .*nowhere/orpheus\.gguf"):
        voicekit.load("cpu", tts="orpheus", tts_model=str(missing), chat=False)


def test_hub_spec_offline_with_an_empty_cache_is_a_clear_error(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError) as caught:
        resolve_gguf("nobody/no-such-repo/orpheus.gguf", cache_dir=str(tmp_path))
    message = str(caught.value)
    assert "nobody/no-such-repo/orpheus.gguf" in message and "HF_HUB_OFFLINE" in message
    assert "\n" not in message


# --- the command line, as a user runs it ----------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "VOICEKIT_PRESET": "cpu", "VOICEKIT_TTS": "orpheus",
                   "VOICEKIT_N_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "voicekit", *args], env=environment, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_say_with_the_gguf_writes_a_wav(tiny_gguf: Path, snac_dir: Path, tmp_path: Path) -> None:
    done = _cli(["say", "Hi there.", "--voice", "dan", "-o", "hi.wav"],
                {"VOICEKIT_TTS_MODEL": str(tiny_gguf), "VOICEKIT_SNAC_MODEL": str(snac_dir)}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote hi.wav" in done.stdout
    with wave.open(str(tmp_path / "hi.wav")) as wav:
        assert wav.getframerate() == SAMPLE_RATE and wav.getnchannels() == 1
        assert wav.getnframes() > 0 and wav.getnframes() % SAMPLES_PER_FRAME == 0


def test_cli_hub_spec_offline_prints_one_error_line(tmp_path: Path) -> None:
    done = _cli(["say", "Hi there."], {"VOICEKIT_TTS_MODEL": "nobody/no-such-repo/orpheus.gguf",
                                       "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: model nobody/no-such-repo is not in the Hugging Face cache and the hub "
                                  "cannot be reached")
    assert done.stderr.rstrip().endswith("'nobody/no-such-repo/orpheus.gguf' is not a local file either")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr and not (tmp_path / "say.wav").exists()
