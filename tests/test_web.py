"""The web page: helpers, gradio_client chat and speak turns, a real Chromium, and password protection.

The browser test needs Debian's chromium at /usr/bin/chromium (tests/install_browser.sh installs it) and
the `playwright` Python package; it is skipped, saying why, when either is missing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from voicekit.audio import read_wav
from voicekit.errors import SettingsError
from voicekit.serve import BackgroundServer, compose, serve_settings
from voicekit.serve.audio import ensure_ffmpeg
from voicekit.serve.page import ChunkGrouper, build_blocks, format_timings, insert_tag, plain_history, turns_table
from voicekit.settings import ServeSettings

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # raised inside gradio's queue
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]


# -- helpers (no server) ----------------------------------------------------------------------------


def test_chunk_grouper_releases_blocks_of_at_least_a_second() -> None:
    grouper = ChunkGrouper(1000, min_seconds=1.0)
    assert grouper.add(np.full(400, 0.5, dtype=np.float32)) is None
    assert grouper.add(np.zeros(0, dtype=np.float32)) is None
    block = grouper.add(np.full(700, -0.25, dtype=np.float32))
    assert block is not None and block.dtype == np.int16 and len(block) == 1100
    assert block[0] == round(0.5 * 32767) and block[-1] == round(-0.25 * 32767)  # not peak-normalised
    assert grouper.flush() is None
    grouper.add(np.full(10, 0.1, dtype=np.float32))
    tail = grouper.flush()
    assert tail is not None and len(tail) == 10


def test_plain_history_reads_gradio_content_blocks() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}], "metadata": None},
        {"role": "assistant", "content": "Hello!"},
        {"role": "assistant", "content": [{"type": "file", "file": {"path": "x.wav"}}]},
        {"role": "system", "content": "ignored"},
        "not a message",
    ]
    assert plain_history(messages) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert plain_history(None) == []


def test_timing_readouts() -> None:
    line = format_timings({"ttfa_s": 0.4213, "llm_s": 1.2, "tts_s": 0.3, "audio_s": 2.5, "rtf": 0.12})
    assert line == "first audio 0.42 s · LLM 1.20 s · TTS 0.30 s · audio 2.50 s · RTF 0.12"
    assert "LLM" not in format_timings({"ttfa_s": None, "tts_s": 0.1, "audio_s": 1.0, "rtf": 0.1})
    table = turns_table([{"turn": 1, "ttfa_s": 0.5, "llm_s": 1.0, "tts_s": 0.2, "audio_s": 2.0, "rtf": 0.1},
                         {"turn": 2, "ttfa_s": 0.6, "llm_s": 1.1, "tts_s": 0.3, "audio_s": 3.0, "rtf": 0.1}])
    assert table.splitlines()[2].startswith("| 2 |")  # newest first


def test_tag_buttons_for_a_speech_model_with_emotion_tags(kit: Any) -> None:
    assert insert_tag("That is funny", "<laugh>") == "That is funny <laugh>"
    assert insert_tag("", "<sigh>") == "<sigh>"
    tagged = SimpleNamespace(voices=["tara", "leo"], default_voice="tara", sample_rate=24000,
                             tags=["<laugh>", "<sigh>"], settings=kit.settings,
                             description={"preset": "gpu", "chat": "x", "tts": "y"},
                             recognizer_facts=kit.recognizer_facts)
    def buttons(blocks: Any) -> set[str]:
        return {block.value for block in blocks.blocks.values() if type(block).__name__ == "Button"}

    assert {"<laugh>", "<sigh>"} <= buttons(build_blocks(tagged))
    assert "<laugh>" not in buttons(build_blocks(kit))


def test_flags_env_and_defaults() -> None:
    assert serve_settings(env={}).host == "127.0.0.1"
    assert serve_settings(env={"RUNPOD_POD_ID": "abc"}).host == "0.0.0.0"
    config = serve_settings(env={"VOICEKIT_HOST": "0.0.0.0", "VOICEKIT_PORT": "8000", "VOICEKIT_CONCURRENCY": "2",
                                 "VOICEKIT_PASSWORD": "me:hunter2", "VOICEKIT_API_KEY": "sk-secret"},
                            port=9000, concurrency=3, host=None)  # flags win; None: not given
    assert (config.host, config.port, config.concurrency) == ("0.0.0.0", 9000, 3)
    assert config.secret("password") == "me:hunter2" and config.secret("api_key") == "sk-secret"
    assert "hunter2" not in repr(config) and "sk-secret" not in repr(config)
    assert serve_settings(env={"VOICEKIT_PORT": "8000"}).port == 8000
    assert isinstance(serve_settings(env={}), ServeSettings)
    with pytest.raises(SettingsError, match="VOICEKIT_PORT='eighty' is not a valid int"):
        serve_settings(env={"VOICEKIT_PORT": "eighty"})
    with pytest.raises(SettingsError, match="concurrency"):
        serve_settings(env={}, concurrency=0)


def test_fallback_reason_is_one_line_on_top_of_the_page(kit: Any) -> None:
    reason = "gpu preset unavailable: torch 2.13.0+cu130 cannot use the GPU (driver too old); running the cpu preset"
    assert serve_settings(env={"VOICEKIT_FALLBACK_REASON": reason}).fallback_reason == reason
    assert serve_settings(env={}).fallback_reason == ""

    def notices(blocks: Any) -> list[str]:
        return [block.value for block in blocks.blocks.values() if getattr(block, "elem_id", None) == "vk-notice"]

    assert notices(build_blocks(kit, notice=reason)) == [f"**Note:** {reason}"]
    assert notices(build_blocks(kit)) == []


def test_bundled_ffmpeg_works_without_a_system_one(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = os.pathsep.join(p for p in ("/usr/bin", "/bin") if not shutil.which("ffmpeg", path=p))
    monkeypatch.setenv("PATH", bare)
    assert shutil.which("ffmpeg") is None
    found = ensure_ffmpeg()
    assert found is not None and shutil.which("ffmpeg") == found
    assert ensure_ffmpeg() == found  # idempotent
    assert os.environ["PATH"].count(str(Path(found).parent)) == 1
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("ffmpeg version")


# -- the page over HTTP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_server(kit: Any) -> Iterator[BackgroundServer]:
    ensure_ffmpeg()
    with BackgroundServer(compose(kit)) as running:
        yield running


def _playlist_seconds(url: str) -> tuple[float, list[str]]:
    playlist = httpx.get(url, timeout=30).text
    seconds = sum(float(value) for value in re.findall(r"#EXTINF:([0-9.]+)", playlist))
    segments = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    return seconds, segments


def cap_reply_tokens(kit: Any, monkeypatch: pytest.MonkeyPatch, tokens: int) -> None:
    """Shorter replies keep the test quick: these tests check the plumbing, not the prose."""
    monkeypatch.setattr(kit.chat_model, "sampling", dataclasses.replace(kit.chat_model.sampling, max_tokens=tokens))


@pytest.mark.slow
def test_gradio_client_speak_and_chat(page_server: BackgroundServer, kit: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio_client import Client

    cap_reply_tokens(kit, monkeypatch, 32)
    client = Client(page_server.url + "/", verbose=False, download_files=False)
    try:
        assert {"/chat", "/speak"} <= set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        audio, timings = client.predict("Hello there. Nice to meet you.", kit.default_voice, api_name="/speak")
        samples, rate = read_wav(httpx.get(audio["url"], timeout=30).content)
        assert rate == kit.sample_rate and 1.0 < len(samples) / rate < 8.0
        assert timings.startswith("first audio")

        job = client.submit("Hello!", api_name="/chat")
        updates = list(job)
        message, history, stream, reply, table = job.result()
        assert message == "" and reply.strip()
        assert [turn["role"] for turn in history] == ["user", "assistant"]
        assert "| 1 |" in table
        assert len(updates) >= 2  # the user's message first, then the reply as it streams
        assert stream["is_stream"] and stream["url"].endswith(".m3u8")
        seconds, segments = _playlist_seconds(stream["url"])
        assert seconds > 0.5 and segments
        segment = httpx.get(stream["url"].rsplit("/", 1)[0] + "/" + segments[-1], timeout=30).content
        assert segment[:2] == b"\xff\xf1"  # ADTS (AAC) frames, as re-encoded by the bundled ffmpeg
    finally:
        client.close()


@pytest.mark.slow
def test_browser_sends_a_message_and_hears_the_reply(page_server: BackgroundServer, kit: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (run tests/install_browser.sh)")
    cap_reply_tokens(kit, monkeypatch, 80)  # room for a complete reply in the README screenshot
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1100, "height": 1250})
        try:
            page = browser.new_page()
            page.goto(page_server.url + "/", wait_until="domcontentloaded", timeout=90_000)
            page.get_by_role("tab", name="Chat").click(timeout=90_000)  # the page opens on the Talk tab
            box = page.locator("#vk-message textarea")
            box.wait_for(timeout=90_000)
            box.fill("Hello! Who are you?")
            box.press("Enter")
            # The streamed reply reaches the page's <audio> element: data is buffered and it is playing.
            page.wait_for_function(
                """() => { const a = document.querySelector('#vk-audio audio');
                           return a && a.buffered.length > 0 && a.buffered.end(0) > 0.5 && a.readyState >= 2; }""",
                timeout=150_000)
            page.wait_for_function(
                """() => document.querySelector('#vk-timings') &&
                         document.querySelector('#vk-timings').innerText.includes('RTF') &&
                         document.querySelector('#vk-reply textarea').value.trim().length > 0""",
                timeout=150_000)
            assert page.locator("#vk-chatbot").inner_text().count("Hello! Who are you?") == 1
            page.screenshot(path=str(ROOT / "docs" / "screenshot.png"), full_page=True)  # the README's
        finally:
            browser.close()


@pytest.mark.slow
def test_password_protects_page_and_api(kit: Any) -> None:
    from gradio_client import Client

    with BackgroundServer(compose(kit, password="tester:s3cret")) as protected:
        url = protected.url
        assert httpx.get(f"{url}/config").status_code == 401
        assert httpx.post(f"{url}/login", data={"username": "tester", "password": "nope"}).status_code >= 400
        with httpx.Client(base_url=url) as browser_like:
            assert browser_like.post("/login", data={"username": "tester", "password": "s3cret"}).status_code == 200
            assert browser_like.get("/config").status_code == 200
        with pytest.raises(Exception):  # noqa: B017 - gradio_client raises several types for a refused login
            Client(url + "/", verbose=False, auth=("tester", "wrong"))
        client = Client(url + "/", verbose=False, auth=("tester", "s3cret"))
        client.close()

        speech = {"input": "Hi.", "response_format": "wav"}
        refused = httpx.post(f"{url}/v1/audio/speech", json=speech)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(f"{url}/v1/audio/speech", json=speech, auth=("tester", "wrong")).status_code == 401
        assert httpx.post(f"{url}/v1/audio/speech", json=speech, auth=("tester", "s3cret")).status_code == 200
        bearer = httpx.post(f"{url}/v1/audio/speech", json=speech, headers={"Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200 and read_wav(bearer.content)[0].size > 0
        assert httpx.post(f"{url}/chat", json={"message": "Hi"}).status_code == 401
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
