"""The page's "Get better models" in chromium, against the stand-in hub: the Talk tab's hint, a click, progress
(bytes, speed, time left), Cancel (nothing kept), a second click that downloads, checks and switches the running kit,
and the next reply written by the new chat model (the stand-in serves the bundled SmolLM2 GGUF as Qwen's file).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stand_in_hub import StandInHub
from test_upgrade import GGUF, bundle_repos, leftovers

from voicekit.progress import Progress
from voicekit.serve.page_upgrade import HINT, button_label, hint, progress_html
from voicekit.upgrade import OFFER

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # raised inside gradio's queue
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

CHROMIUM = "/usr/bin/chromium"
WATCH_PROGRESS = """() => {
    window.vkSeen = [];
    const shown = document.querySelector('#vk-upgrade-progress');
    new MutationObserver(() => window.vkSeen.push(shown.innerText.trim())).observe(
        shown, {subtree: true, childList: true, characterData: true});
}"""


def test_page_helpers() -> None:
    assert button_label(False) == OFFER and button_label(True).startswith("Use better models (already downloaded)")
    bar = progress_html(Progress("downloading", 50, 200, 10.0, 15.0, GGUF, 0, 29))
    assert bar.startswith('<progress value="250" max="1000"') and "(1 of 29): 0.0 of 0.0 MB (25%)" in bar
    assert "<progress" not in progress_html(Progress("failed", message="no network <here>"))
    assert "no network &lt;here&gt;" in progress_html(Progress("failed", message="no network <here>"))


@pytest.fixture
def slow_hub(tmp_path: Path, kokoro_voices: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    """The bundle on a 25 MB/s line (time to see the progress and press Cancel), in a fresh cache."""
    import huggingface_hub.constants as constants

    from voicekit.placement import bundled_chat_model_path

    smollm = bundled_chat_model_path()
    assert smollm is not None
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    stand_in = StandInHub(repos=bundle_repos(kokoro_voices, smollm.read_bytes()), bytes_per_s=25e6)
    monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
    yield stand_in
    stand_in.close()


@pytest.mark.slow
def test_click_downloads_switches_and_the_next_reply_comes_from_the_new_model(
        slow_hub: StandInHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (run tests/install_browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    import voicekit
    from voicekit.bench.browser import CHROMIUM_ARGS
    from voicekit.serve import BackgroundServer, compose
    from voicekit.serve.audio import ensure_ffmpeg

    ensure_ffmpeg()
    kit = voicekit.load("cpu", max_reply_tokens=8)  # short replies: the plumbing, not the prose
    assert hint(kit) == HINT
    try:
        with BackgroundServer(compose(kit)) as server, tempfile.TemporaryDirectory() as profile, \
                sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                viewport={"width": 1000, "height": 1000})
            try:
                _get_better_models(browser.new_page(), server.url, slow_hub, tmp_path, kit, monkeypatch)
            finally:
                browser.close()
    finally:
        kit.close()


def _get_better_models(page: Any, url: str, hub: StandInHub, tmp_path: Path, kit: Any,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    page.goto(url + "/", wait_until="domcontentloaded", timeout=90_000)
    page.locator("#vk-upgrade-hint").get_by_text("SmolLM2-135M").wait_for(timeout=90_000)  # on the Talk tab
    page.get_by_role("tab", name="Settings").click()
    button = page.locator("#vk-upgrade-button")
    assert button.inner_text() == OFFER
    page.evaluate(WATCH_PROGRESS)

    button.click()  # the first try is cancelled while the GGUF streams
    page.locator("#vk-upgrade-progress progress").wait_for(timeout=60_000)
    page.locator("#vk-upgrade-cancel").click()
    _shows(page, "download cancelled", 60)
    assert leftovers(tmp_path) == [] and not list(tmp_path.rglob(GGUF))

    button.click()  # the second one goes through: download, check, switch
    _shows(page, "now talking with", 180)
    seen = page.evaluate("() => window.vkSeen")
    assert any(line.startswith(f"downloading {GGUF} (1 of 29): ") and " MB/s · " in line and line.endswith(" left")
               for line in seen), seen
    assert any(line.startswith("switching") or "loading Qwen2.5-0.5B-Instruct" in line for line in seen), seen
    status = page.locator("#vk-status").inner_text()
    assert "preset laptop" in status and f"chat {GGUF} on llamacpp" in status, status
    assert not button.is_visible()
    page.get_by_role("tab", name="Talk").click()
    assert page.locator("#vk-upgrade-hint").inner_text().strip() == ""

    engine, asked = kit.chat_model.engine, []
    generate = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *args, **options: asked.append(args) or generate(*args, **options))
    page.get_by_role("tab", name="Chat").click()
    assert "af_heart" in page.locator("#vk-voice input").input_value()  # Kokoro's voices in the menu now
    box = page.locator("#vk-message textarea")
    box.fill("Hello again!")
    box.press("Enter")
    page.wait_for_function("() => document.querySelector('#vk-reply textarea').value.trim().length > 0",
                           timeout=120_000)
    assert len(asked) == 1 and engine.model == GGUF  # the reply was written by the model switched to


def _shows(page: Any, text: str, timeout_s: float) -> None:
    """Wait until the progress display shows `text`; fail with what it showed."""
    try:
        page.locator("#vk-upgrade-progress").get_by_text(text).wait_for(timeout=timeout_s * 1000)
    except Exception as error:
        seen = page.evaluate("() => window.vkSeen")
        raise AssertionError(f"the page never showed {text!r}; it showed {seen[-5:]}") from error
