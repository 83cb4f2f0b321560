"""Qwen3-TTS backends without weights: the HTTP client against a real local server, the official wrapper
around a stand-in model object passed through its `model=` parameter."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from stand_in import send_json, serve

from voicekit.errors import ModelUnavailableError, NoAudioError, UnknownVoiceError
from voicekit.tts.base import SpeechBackend
from voicekit.tts.qwen3 import (
    DEFAULT_MODEL,
    INSTALL_HINT,
    MAX_NEW_TOKENS,
    SPEAKERS,
    Qwen3OfficialBackend,
    Qwen3OmniBackend,
    Qwen3ServerError,
    max_new_tokens_for_text,
    omni_serve_command,
    speech_endpoint,
)

# --- stand-in vLLM-Omni server ----------------------------------------------------------------

SAMPLES = (np.sin(np.linspace(0, 40, 2401)) * 30000).astype("<i2")
SAMPLES[:4] = (32767, -32768, 0, -1)
PCM = SAMPLES.tobytes()
CHUNK_SIZES = (1, 3, 2, 7, 4, 5, 1, 1, 64, 33, 1000, 999, 2)  # odd sizes split samples across chunks


class _Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.problems: list[str] = []
        self.disconnected = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, body))
                expected = {"model": DEFAULT_MODEL, "input": body.get("input"), "voice": "aiden",
                            "response_format": "pcm", "stream": True}
                if body.get("input") == "FAIL":
                    return self._json(500, {"error": {"message": "engine crashed: CUDA out of memory"}})
                if self.path != "/v1/audio/speech" or body != expected:
                    owner.problems.append(f"unexpected request {self.path} {body}")
                    return self._json(400, {"detail": f"stand-in server: unexpected request {body}"})
                self.send_response(200)
                self.send_header("Content-Type", "audio/pcm")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                if body["input"] == "long":
                    return self._endless()
                offset = 0
                sizes = iter(CHUNK_SIZES)
                while offset < len(PCM):
                    size = next(sizes, 4097)
                    self._chunk(PCM[offset:offset + size])
                    offset += size
                self._chunk(b"")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(0.002)

            def _endless(self) -> None:
                try:
                    for _ in range(500):
                        self._chunk(b"\x01\x00" * 2400)
                        time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    owner.disconnected.set()

            def _json(self, status: int, payload: dict) -> None:
                send_json(self, status, payload)

        self.httpd, self.url = serve(Handler)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    running = _Server()
    yield running
    running.stop()


async def _collect(backend, text: str, voice: str) -> list[np.ndarray]:
    return [chunk async for chunk in backend.synthesize(text, voice)]


async def test_omni_streams_exact_pcm_across_odd_chunks(server):
    backend = Qwen3OmniBackend(server.url + "/v1/")
    assert isinstance(backend, SpeechBackend) and backend.sample_rate == 24000
    try:
        chunks = await _collect(backend, "Hello there.", "Aiden")
    finally:
        await backend.close()
    assert server.problems == []
    assert server.requests == [("/v1/audio/speech", {"model": DEFAULT_MODEL, "input": "Hello there.",
                                                     "voice": "aiden", "response_format": "pcm", "stream": True})]
    assert len(chunks) > 5 and all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    audio = np.concatenate(chunks)
    assert len(audio) == len(SAMPLES)
    decoded = np.rint(audio.astype(np.float64) * 32767)
    assert np.max(np.abs(decoded - np.maximum(SAMPLES, -32767))) <= 1
    assert audio.min() >= -1.0 and audio.max() <= 1.0


async def test_omni_server_error_is_clear(server):
    backend = Qwen3OmniBackend(server.url, default_voice="aiden")
    with pytest.raises(Qwen3ServerError, match=r"HTTP 500\): engine crashed: CUDA out of memory"):
        await _collect(backend, "FAIL", "")
    await backend.close()


async def test_omni_connection_refused_names_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    backend = Qwen3OmniBackend(url)
    with pytest.raises(Qwen3ServerError, match=f"cannot connect to the Qwen3-TTS server at {url}.*vllm serve"):
        await _collect(backend, "Hi there.", "Ryan")
    await backend.close()


async def test_omni_closing_early_closes_the_connection(server):
    backend = Qwen3OmniBackend(server.url)
    stream = backend.synthesize("long", "AIDEN")
    first = await stream.__anext__()
    assert len(first) > 0
    await stream.aclose()
    await backend.close()
    assert await asyncio.to_thread(server.disconnected.wait, 10), "the server kept streaming to a closed client"


async def test_omni_unknown_voice_and_options():
    backend = Qwen3OmniBackend("http://127.0.0.1:1", language="English", instruct="Calm and warm.")
    with pytest.raises(UnknownVoiceError, match="Vivian, Serena"):
        await _collect(backend, "Hi there.", "tara")
    body = backend.request_body("Hi.", backend.resolve("ono_anna"))
    assert body["voice"] == "ono_anna" and body["language"] == "English" and body["instructions"] == "Calm and warm."
    assert speech_endpoint("http://h:8091/v1") == speech_endpoint("http://h:8091/") == "http://h:8091/v1/audio/speech"


def test_omni_serve_command():
    command = omni_serve_command("Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", 9000)
    assert command[:4] == ["vllm", "serve", "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice", "--omni"]
    assert command[command.index("--port") + 1] == "9000"


# --- official backend around a stand-in model ----------------------------------------------------


class StandInModel:
    """Has the `generate_custom_voice` signature of qwen_tts.Qwen3TTSModel; records every call."""

    def __init__(self, rate: int = 24000, samples_per_char: int = 100, empty: bool = False) -> None:
        self.calls: list[dict] = []
        self.rate = rate
        self.samples_per_char = samples_per_char
        self.empty = empty
        self.active = 0
        self.most_active = 0

    def generate_custom_voice(self, text, speaker, language=None, instruct=None, non_streaming_mode=True,
                              **kwargs):
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        time.sleep(0.02)
        self.calls.append({"text": text, "speaker": speaker, "language": language, "instruct": instruct,
                           "thread": threading.get_ident(), **kwargs})
        self.active -= 1
        if self.empty:
            return [np.zeros(0, dtype=np.float32)], self.rate
        return [np.full(len(text) * self.samples_per_char, 0.25, dtype=np.float32)], self.rate


class NoBudgetModel:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def generate_custom_voice(self, text, speaker, language=None, instruct=None):
        self.calls.append({"text": text, "speaker": speaker})
        return [np.ones(10, dtype=np.float32)], 24000


async def test_official_streams_one_call_per_sentence_off_the_loop():
    model = StandInModel()
    backend = Qwen3OfficialBackend(model=model, instruct="Speak cheerfully.", language="English")
    assert isinstance(backend, SpeechBackend) and backend.voices == list(SPEAKERS)
    text = "Hello there. This is the second and rather longer sentence of the two."
    chunks = await _collect(backend, text, "sohee")
    assert [call["text"] for call in model.calls] == ["Hello there.", text.split(". ", 1)[1]]
    assert len(chunks) == 2 and [len(c) for c in chunks] == [len(call["text"]) * 100 for call in model.calls]
    assert all(c.dtype == np.float32 for c in chunks)
    loop_thread = threading.get_ident()
    for call in model.calls:
        assert call["thread"] != loop_thread
        assert call["speaker"] == "Sohee" and call["instruct"] == "Speak cheerfully."
        assert call["language"] == "English"
        assert call["max_new_tokens"] == max_new_tokens_for_text(call["text"])
    assert model.calls[1]["max_new_tokens"] > model.calls[0]["max_new_tokens"]


def test_max_new_tokens_grows_and_is_bounded():
    budgets = [max_new_tokens_for_text("word " * n) for n in (1, 10, 50, 100_000)]
    assert budgets == sorted(budgets) and budgets[0] < budgets[1] < budgets[2]
    assert budgets[-1] == MAX_NEW_TOKENS and budgets[0] >= 64


async def test_official_defaults_and_calls_are_serialised():
    model = StandInModel()
    backend = Qwen3OfficialBackend(model=model)
    await asyncio.gather(*(_collect(backend, f"Sentence number {i} is here.", "") for i in range(4)))
    assert model.most_active == 1 and len(model.calls) == 4
    assert {call["speaker"] for call in model.calls} == {"Ryan"}
    assert {call["language"] for call in model.calls} == {"Auto"}
    assert "instruct" not in model.calls[0] or model.calls[0]["instruct"] is None


async def test_official_resamples_and_skips_budget_when_not_accepted():
    backend = Qwen3OfficialBackend(model=StandInModel(rate=48000))
    (chunk,) = await _collect(backend, "Resample me.", "Vivian")
    assert abs(len(chunk) - len("Resample me.") * 50) <= 2
    plain = NoBudgetModel()
    await _collect(Qwen3OfficialBackend(model=plain), "No budget here.", "Eric")
    assert plain.calls == [{"text": "No budget here.", "speaker": "Eric"}]


async def test_official_errors():
    backend = Qwen3OfficialBackend(model=StandInModel(empty=True))
    with pytest.raises(NoAudioError, match="no audio"):
        await _collect(backend, "Silent sentence.", "Ryan")
    with pytest.raises(UnknownVoiceError) as caught:
        await _collect(backend, "Hello.", "tara")
    assert caught.value.voices == list(SPEAKERS) and "Uncle_Fu" in str(caught.value)
    with pytest.raises(UnknownVoiceError):
        Qwen3OfficialBackend(model=StandInModel(), default_voice="nobody")


def test_official_without_qwen_tts_is_a_clear_error():
    try:
        import qwen_tts  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("qwen-tts is installed here")
    with pytest.raises(ModelUnavailableError) as caught:
        Qwen3OfficialBackend()
    assert INSTALL_HINT in str(caught.value) and "qwen-tts" in str(caught.value)


def test_module_imports_without_qwen_tts():
    code = ("import sys; sys.modules['qwen_tts'] = None; import voicekit, voicekit.tts.qwen3 as q; "
            "assert q.Qwen3OmniBackend and q.Qwen3OfficialBackend; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_build_qwen3_backend_from_settings():
    from voicekit.build import build_speech
    from voicekit.settings import Settings

    backend = build_speech(Settings(tts="qwen3", tts_url="http://127.0.0.1:8091/v1", voice="serena", extra_voices=()))
    assert isinstance(backend, Qwen3OmniBackend) and backend.default_voice == "Serena"
    assert backend.model == DEFAULT_MODEL and backend.endpoint == "http://127.0.0.1:8091/v1/audio/speech"
    try:
        import qwen_tts  # noqa: F401
    except ImportError:
        with pytest.raises(ModelUnavailableError, match="qwen-tts"):
            build_speech(Settings(tts="qwen3", extra_voices=()))
