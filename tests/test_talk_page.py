"""The Talk page (`/talk`): its credentials, and a real Chromium talking to a real server over `/v1/realtime`:
a typed message, the fake microphone speaking a Piper WAV, and Stop flushing the player; in each, the page tells the
server when it started and stopped playing the reply (`output_audio_buffer.started` / `.stopped`).

The browser tests need Debian's chromium at /usr/bin/chromium (tests/install_browser.sh) and the `playwright`
package; they are skipped, saying why, when either is missing.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from voicekit.bench.talk_room import word_accuracy
from voicekit.serve import BackgroundServer, compose, realtime
from voicekit.serve.auth import check_page_token, header_authorized
from voicekit.serve.talk import render_page, static_version

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "tester:s3cret-talk"
API_KEY = "sk-talk-key"
QUESTION = "What is the capital of France?"


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- without a browser -------------------------------------------------------------------------------------


def test_header_credentials() -> None:
    assert header_authorized(_basic("tester", "s3cret-talk"), None, PASSWORD)
    assert not header_authorized(_basic("someone", "s3cret-talk"), None, PASSWORD)  # the password names a user
    assert not header_authorized(_basic("tester", "nope"), None, PASSWORD)
    assert header_authorized("Bearer s3cret-talk", None, PASSWORD)
    assert header_authorized("Bearer sk-talk-key", API_KEY, PASSWORD)
    assert header_authorized(_basic("anyone", API_KEY), API_KEY, None)  # a browser, when only a key is set
    assert not header_authorized("Basic !!notbase64", API_KEY, PASSWORD)
    assert not header_authorized("Token s3cret-talk", API_KEY, PASSWORD)


def test_page_is_rendered_with_its_token_and_relative_urls() -> None:
    page = render_page("123.abc", static_version())
    assert 'content="123.abc"' in page and "__VOICEKIT" not in page
    assert 'src="talk/static/talk.js?v=' in page  # relative: works under a path prefix
    assert 'content=""' in render_page(None, "v1")


@pytest.fixture(scope="module")
def protected(kit: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(compose(kit, password=PASSWORD, api_key=API_KEY)) as running:
        yield running


@pytest.mark.slow
def test_talk_page_asks_for_credentials_and_holds_no_secret(protected: BackgroundServer) -> None:
    url = protected.url
    refused = httpx.get(f"{url}/talk")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Basic realm="voicekit"'
    assert httpx.get(f"{url}/talk", auth=("tester", "wrong")).status_code == 401
    for answer in (httpx.get(f"{url}/talk", auth=("tester", "s3cret-talk")),
                   httpx.get(f"{url}/talk", headers={"Authorization": f"Bearer {API_KEY}"})):
        assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
        page = answer.text
        assert "s3cret" not in page and API_KEY not in page
        token = page.split('name="voicekit-token" content="', 1)[1].split('"', 1)[0]
        assert check_page_token(token, "s3cret-talk")  # signed with the password's secret
    script = httpx.get(f"{url}/talk/static/talk.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "no-cache"  # revalidated: the page and its modules stay one version
    assert httpx.get(f"{url}/talk/static/player-worklet.js").status_code == 200
    assert httpx.get(f"{url}/talk/", follow_redirects=False).headers["location"] == "../talk"
    # The Gradio page's login cookie opens the Talk tab's frame too.
    with httpx.Client(base_url=url) as browser_like:
        assert browser_like.post("/login", data={"username": "tester", "password": "s3cret-talk"}).status_code == 200
        assert browser_like.get("/talk").status_code == 200


# -- a real browser -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def talk_server(kit: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(compose(kit)) as running:
        yield running


@pytest.fixture
def short_replies(kit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter replies keep the tests quick: they check the plumbing, not the prose."""
    sampling = dataclasses.replace(kit.chat_model.sampling, max_tokens=48)
    monkeypatch.setattr(kit.chat_model, "sampling", sampling)


def _browser_or_skip() -> Any:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (run tests/install_browser.sh)")
    return pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")


def _open_talk(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url + "/talk", wait_until="domcontentloaded", timeout=60_000)
    page.wait_for_function("() => window.voicekitTalk && window.voicekitTalk.ready", timeout=60_000)
    return page


def _launch(playwright: Any, profile: str, extra_args: tuple[str, ...] = ()) -> Any:
    from voicekit.bench.browser import CHROMIUM_ARGS

    return playwright.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args], headless=True,
        permissions=["microphone"], viewport={"width": 900, "height": 800})


def _last_turn(page: Any) -> dict[str, Any]:
    return page.evaluate("() => { const t = window.voicekitTalk.turns; return t[t.length - 1] || null; }")


PLAYBACK_EVENTS = ("output_audio_buffer.started", "output_audio_buffer.stopped")


@pytest.fixture
def playback_reports(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the server made of the page's playback events, one entry each: the response id, whether the session
    knew that response (and, for `started`, took its start), and the `error` events the event was answered with
    (raised by its handler, or emitted by the session while handling it)."""
    seen: list[dict[str, Any]] = []
    handle = realtime.handle_event

    async def recording(session: Any, text: str) -> None:
        event = json.loads(text)
        if event.get("type") not in PLAYBACK_EVENTS:
            return await handle(session, text)
        errors: list[str] = []
        cls = type(session)
        session.error = lambda code, *args, **extra: (errors.append(code), cls.error(session, code, *args, **extra))
        try:
            await handle(session, text)
        finally:
            del session.error
        response = session._response_by_id(event["response_id"])
        seen.append({"type": event["type"], "response_id": event["response_id"],
                     "audio_end_ms": event.get("audio_end_ms"), "known": response is not None,
                     "heard_from": None if response is None else response.heard_from, "errors": errors})

    monkeypatch.setattr(realtime, "handle_event", recording)
    return seen


def _check_playback_reported(page: Any, turn: dict[str, Any], server_side: list[dict[str, Any]]) -> None:
    """The page sent `output_audio_buffer.started`, then `.stopped` with what it played, once each and only for
    `turn` (the reply it played, under the server's response id); the server knew that response and answered
    neither with an `error`."""
    events = page.evaluate("window.voicekitTalk.events")
    sent = [event for event in events if event["type"].removeprefix("sent:") in PLAYBACK_EVENTS]
    expected = [("sent:" + name, turn["id"]) for name in PLAYBACK_EVENTS]
    assert [(event["type"], event.get("response_id")) for event in sent] == expected, sent
    assert sent[1]["audio_end_ms"] == turn["playedMs"] and turn["playback"] == "stopped"
    deadline = time.monotonic() + 10
    while len(server_side) < len(sent) and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert [(entry["type"], entry["response_id"]) for entry in server_side] == [(name, turn["id"])
                                                                               for name in PLAYBACK_EVENTS]
    assert all(entry["known"] and entry["errors"] == [] for entry in server_side), server_side
    assert server_side[0]["heard_from"] is not None and server_side[1]["audio_end_ms"] == turn["playedMs"]


@pytest.mark.slow
def test_typed_message_is_answered_and_played(talk_server: BackgroundServer, short_replies: None,
                                              playback_reports: list[dict[str, Any]]) -> None:
    sync_api = _browser_or_skip()
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as playwright:
        context = _launch(playwright, profile)
        try:
            page = _open_talk(context, talk_server.url)
            assert page.evaluate("window.voicekitTalk.voices.length") >= 1
            page.fill("#vk-text", "Hello! Who are you?")
            page.press("#vk-text", "Enter")
            page.wait_for_function("() => { const t = window.voicekitTalk.turns.at(-1); "
                                   "return t && t.finished; }", timeout=150_000)
            turn = _last_turn(page)
            talk = page.evaluate("() => ({reply: window.voicekitTalk.lastReply, rate: window.voicekitTalk.sampleRate,"
                                 " errors: window.voicekitTalk.errors})")
            assert talk["errors"] == []
            assert turn["status"] == "completed" and talk["reply"].strip()
            assert page.locator(".vk-assistant").last.inner_text().strip()
            assert turn["firstSoundMs"] is not None and 0 < turn["firstRenderMs"] < 60_000
            assert turn["playedMs"] >= turn["receivedMs"] - 1 > 300  # all of it played, to the end
            # Underruns are the stream's: in overlap mode the first clause ("Hello!", ~0.5 s) often runs out
            # before the next sentence is made on this CPU (one gap); more than that would be the player's fault.
            assert turn["underruns"] <= 2, turn
            assert (turn.get("outputGlitches") or 0) <= 2, turn  # the browser's own audio thread kept up
            _check_playback_reported(page, turn, playback_reports)
            print(f"\ntalk page: first sound {turn['firstSoundMs']} ms after Enter (rendered "
                  f"{turn['firstRenderMs']} ms, first audio {turn['firstAudioMs']} ms), "
                  f"{turn['underruns']} underruns, {turn.get('outputGlitches')} output glitches, played "
                  f"{turn['playedMs']} ms at {talk['rate']} Hz")
        finally:
            context.close()


@contextlib.contextmanager
def _asking(kit: Any, url: str) -> Iterator[Any]:
    """The Talk page with its microphone on, in a Chromium whose fake microphone says QUESTION once (a Piper WAV)."""
    from voicekit.bench.browser import fake_microphone_wav

    sync_api = _browser_or_skip()
    with tempfile.TemporaryDirectory() as folder, sync_api.sync_playwright() as playwright:
        wav = fake_microphone_wav(kit.say(QUESTION).audio(), kit.sample_rate, Path(folder) / "question.wav")
        context = _launch(playwright, str(Path(folder) / "profile"),
                          ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                           f"--use-file-for-fake-audio-capture={wav}%noloop"))
        try:
            page = _open_talk(context, url)
            page.click("#vk-mic")
            yield page
        finally:
            context.close()


@pytest.mark.slow
def test_fake_microphone_question_is_heard_and_answered(talk_server: BackgroundServer, kit: Any, short_replies: None,
                                                         playback_reports: list[dict[str, Any]]) -> None:
    with _asking(kit, talk_server.url) as page:
        page.wait_for_function("() => { const t = window.voicekitTalk.turns.at(-1); "
                               "return t && t.finished; }", timeout=150_000)
        transcript = page.evaluate("window.voicekitTalk.lastTranscript").lower()
        # The question, a word at most misheard: through Chromium's noise suppression and gain control tiny.en
        # sometimes hears "...the capital of friends?" (CI, 1 run in several); the recognizer's own accuracy is
        # test_asr's, this checks that the microphone's speech reached it whole.
        assert word_accuracy(QUESTION, transcript) >= 0.8, transcript
        assert transcript in page.locator(".vk-user").last.inner_text().lower()
        turn = _last_turn(page)
        assert turn["kind"] == "speech" and turn["status"] == "completed" and turn["text"].strip()
        assert turn["firstSoundMs"] is not None and turn["playedMs"] > 300
        _check_playback_reported(page, turn, playback_reports)
        print(f"\ntalk page, fake microphone: heard {transcript!r}; first sound {turn['firstSoundMs']} ms after "
              f"the end of speech was detected, {turn['underruns']} underruns")


@pytest.mark.slow
def test_echo_turn_is_neither_shown_nor_answered(talk_server: BackgroundServer, kit: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A turn the server takes for the reply's own voice coming back (`"echo": true`) is dropped: the page shows no
    bubble for it, waits for no answer, and goes on listening."""
    from voicekit.listening import session

    monkeypatch.setattr(session, "is_echo", lambda *args, **kwargs: True)  # whatever the microphone says
    with _asking(kit, talk_server.url) as page:
        page.wait_for_function("() => window.voicekitTalk.events.some((event) => event.type === 'page.echo')",
                               timeout=120_000)
        page.wait_for_timeout(500)
        talk = page.evaluate("() => ({turns: window.voicekitTalk.turns.length, state: window.voicekitTalk.state,"
                             " transcript: window.voicekitTalk.lastTranscript})")
        assert talk == {"turns": 0, "state": "listening", "transcript": ""}
        assert page.locator(".vk-user").count() == 0


@pytest.mark.slow
def test_stop_flushes_the_player(talk_server: BackgroundServer, kit: Any, monkeypatch: pytest.MonkeyPatch,
                                 playback_reports: list[dict[str, Any]]) -> None:
    sync_api = _browser_or_skip()
    monkeypatch.setattr(kit.chat_model, "sampling", dataclasses.replace(kit.chat_model.sampling, max_tokens=160))
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as playwright:
        context = _launch(playwright, profile)
        try:
            page = _open_talk(context, talk_server.url)
            page.fill("#vk-text", "Tell me a long story about a dragon who learns to bake bread.")
            page.press("#vk-text", "Enter")
            page.wait_for_function("() => { const t = window.voicekitTalk.turns.at(-1); "
                                   "return t && t.firstRenderAt && performance.now() - t.firstRenderAt > 600; }",
                                   timeout=150_000)
            stopped_at = page.evaluate("() => { document.getElementById('vk-stop').click(); "
                                       "return performance.now(); }")
            page.wait_for_timeout(1500)
            after = page.evaluate("() => ({turn: window.voicekitTalk.turns.at(-1), "
                                  "lastSoundAt: window.voicekitTalk.lastSoundAt, "
                                  "player: window.voicekitTalk.player, events: window.voicekitTalk.events})")
            turn = after["turn"]
            assert turn["interrupted"] and after["player"]["state"] == "idle"
            # No sound after Stop (a few ms of fade, plus the output latency of the render quantum).
            assert after["lastSoundAt"] < stopped_at + 150, (after["lastSoundAt"], stopped_at)
            assert 300 < turn["playedMs"] < turn["receivedMs"] or not turn["done"]
            sent = [event["type"] for event in after["events"] if event["type"].startswith("sent:")]
            assert "sent:conversation.item.truncate" in sent
            truncate = next(event for event in after["events"] if event["type"] == "sent:conversation.item.truncate")
            assert truncate["audio_end_ms"] == turn["playedMs"]  # the flush still truncates to what was heard
            _check_playback_reported(page, turn, playback_reports)
            if "sent:response.cancel" in sent:
                page.wait_for_function("() => window.voicekitTalk.turns.at(-1).status === 'cancelled'",
                                       timeout=30_000)
            assert page.evaluate("window.voicekitTalk.errors") == []
            print(f"\nStop: played {turn['playedMs']} ms of {round(turn['receivedMs'])} ms received; last sound "
                  f"{round(after['lastSoundAt'] - stopped_at)} ms after the click; sent {sent}")
        finally:
            context.close()


@pytest.mark.slow
def test_gradio_talk_tab_frames_the_talk_page(talk_server: BackgroundServer) -> None:
    sync_api = _browser_or_skip()
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as playwright:
        context = _launch(playwright, profile)
        try:
            page = context.new_page()
            page.goto(talk_server.url + "/", wait_until="domcontentloaded", timeout=90_000)
            page.get_by_role("tab", name="Talk").wait_for(timeout=90_000)  # the tab the page opens on
            frame = page.frame_locator("#vk-talk-frame iframe")
            frame.locator("#vk-mic").wait_for(timeout=60_000)
            assert page.locator("#vk-talk-frame iframe").get_attribute("allow") == "microphone; autoplay"
            talk = next(f for f in page.frames if f.url.endswith("/talk"))
            talk.wait_for_function("() => window.voicekitTalk && window.voicekitTalk.ready", timeout=60_000)
            page.get_by_role("tab", name="Chat").click()
            page.get_by_role("tab", name="Talk").click()
            assert next(f for f in page.frames if f.url.endswith("/talk")) is talk  # kept: the conversation goes on
            assert talk.evaluate("window.voicekitTalk.ready")
        finally:
            context.close()
