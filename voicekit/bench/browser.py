"""Time to first sound in a real browser: the Gradio Chat tab's streamed `gr.Audio` against the Talk page's
AudioWorklet player, and a spoken turn through Chromium's fake microphone (`python -m voicekit bench talk`).

Both drive a headless Chromium with Playwright (a dev dependency, imported when called: without it, or without a
Chromium to launch, they raise ImportError / RuntimeError saying what to install, and `bench talk --browser` keeps
its socket figures and records why the browser's were skipped). First sound is measured in the page, in
performance.now() time, from the Enter key (or, for speech, from the `speech_stopped` event) to:
the `<audio>` element's first `playing` event with `currentTime > 0` (Gradio), and the first non-silent sample the
worklet outputs (Talk: `rendered`, when it leaves the worklet, and `audible`, that time plus the output latency
the AudioContext reports). Gaps: the element's `waiting` events after it started; the worklet's underruns.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from voicekit.audio import read_wav, write_wav
from voicekit.errors import first_line

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]

# Watches the Gradio page's <audio> elements (media events do not bubble: listen in the capture phase).
_AUDIO_PROBE = """
window.__vk = {t0: null, log: []};
document.addEventListener('keydown', (e) => { if (e.key === 'Enter') window.__vk.t0 = performance.now(); }, true);
for (const kind of ['playing', 'waiting', 'timeupdate', 'ended', 'pause']) {
  document.addEventListener(kind, (e) => {
    if (e.target.tagName !== 'AUDIO' || window.__vk.t0 === null) return;
    if (kind === 'timeupdate' && (e.target.currentTime <= 0 || window.__vk.log.some((x) => x.kind === kind))) return;
    window.__vk.log.push({kind, t: performance.now(), ct: e.target.currentTime});
  }, true);
}
"""


def _require_playwright() -> Any:
    try:
        from playwright import sync_api
    except ImportError as error:
        raise ImportError('the browser benchmark needs the `playwright` package (pip install "voicekit[dev]", or '
                          "pip install playwright) and Chromium") from error
    return sync_api


@contextmanager
def _chromium(extra_args: tuple[str, ...] = (), credentials: tuple[str, str] | None = None) -> Iterator[Any]:
    """A headless Chromium context (Debian's /usr/bin/chromium when present, else Playwright's own)."""
    sync_api = _require_playwright()
    with tempfile.TemporaryDirectory() as profile, sync_api.sync_playwright() as playwright:
        options: dict[str, Any] = {"args": [*CHROMIUM_ARGS, *extra_args], "headless": True,
                                   "permissions": ["microphone"], "viewport": {"width": 1000, "height": 900}}
        if Path(CHROMIUM).exists():
            options["executable_path"] = CHROMIUM
        if credentials:
            options["http_credentials"] = {"username": credentials[0], "password": credentials[1]}
        try:
            context = playwright.chromium.launch_persistent_context(profile, **options)
        except sync_api.Error as error:
            raise RuntimeError(f"the browser benchmark could not start Chromium ({first_line(error)}): install "
                               f"Debian's chromium ({CHROMIUM}) or Playwright's (python -m playwright install "
                               "chromium)") from None
        try:
            yield context
        finally:
            context.close()


def _figures(values: list[float | None]) -> dict[str, Any]:
    present = [value for value in values if value is not None]
    return {"median": round(statistics.median(present), 3) if present else None,
            "all": [None if value is None else round(value, 3) for value in values]}


# -- the Gradio Chat tab --------------------------------------------------------------------------------------


def _gradio_login(context: Any, url: str, credentials: tuple[str, str] | None) -> None:
    if credentials:
        answer = context.request.post(f"{url}/login", form={"username": credentials[0], "password": credentials[1]})
        if not answer.ok:
            raise RuntimeError(f"the Gradio page refused the credentials ({answer.status})")


def _gradio_run(page: Any, url: str, message: str, voice: str | None, turn: int, timeout_s: float) -> dict[str, Any]:
    """One message on the Chat tab (turn `turn` of the page's conversation); first sound and stalls."""
    box = page.locator("#vk-message textarea")
    if turn == 1:
        page.goto(url + "/", wait_until="domcontentloaded", timeout=90_000)
        page.get_by_role("tab", name="Chat").click(timeout=90_000)  # the page opens on the Talk tab
        box.wait_for(timeout=90_000)
        if voice:
            field = page.locator("#vk-voice input")
            field.click()
            field.fill(voice)
            field.press("Enter")
    page.evaluate("() => { window.__vk.t0 = null; window.__vk.log = []; }")
    box.fill(message)
    box.press("Enter")
    page.wait_for_function("(turn) => document.querySelectorAll('#vk-timings table tbody tr').length >= turn",
                           arg=turn, timeout=timeout_s * 1000)
    # Let the element play the rest of the reply out: ended, or no progress for 3 s.
    page.wait_for_function("""() => { const a = document.querySelector('#vk-audio audio');
        if (!a || a.ended) return true;
        const w = window.__vkWatch || (window.__vkWatch = {ct: -1, since: performance.now()});
        if (a.currentTime !== w.ct) { w.ct = a.currentTime; w.since = performance.now(); }
        return performance.now() - w.since > 3000; }""", timeout=timeout_s * 1000, polling=250)
    page.evaluate("() => { window.__vkWatch = null; }")
    probe = page.evaluate("window.__vk")
    t0, log = probe["t0"], probe["log"]
    started = next((item["t"] for item in log if item["kind"] == "playing"), None)
    progressed = next((item["t"] for item in log if item["kind"] == "timeupdate"), None)
    stalls, stall_ms, waiting_at = 0, 0.0, None
    for item in log:
        if started is None or item["t"] < started:
            continue
        if item["kind"] == "waiting" and waiting_at is None:
            stalls, waiting_at = stalls + 1, item["t"]
        elif item["kind"] == "playing" and waiting_at is not None:
            stall_ms, waiting_at = stall_ms + item["t"] - waiting_at, None
    def since_enter(at: float | None) -> float | None:
        return None if at is None or t0 is None else (at - t0) / 1000

    return {"first_sound_s": since_enter(started), "first_progress_s": since_enter(progressed),
            "stalls": stalls, "stall_s": round(stall_ms / 1000, 3)}


# -- the Talk page --------------------------------------------------------------------------------------------


def _open_talk(context: Any, url: str, voice: str | None) -> Any:
    page = context.new_page()
    page.goto(url + "/talk", wait_until="domcontentloaded", timeout=90_000)
    page.wait_for_function("() => window.voicekitTalk && window.voicekitTalk.ready", timeout=90_000)
    if voice:
        page.evaluate("(voice) => window.voicekitTalk.setVoice(voice)", voice)
        page.wait_for_function("(voice) => window.voicekitTalk.session.voice === voice", arg=voice, timeout=30_000)
    return page


def _wait_turn(page: Any, count: int, timeout_s: float) -> dict[str, Any]:
    """The page's `count`-th reply, once it has played out (or ended without sound)."""
    page.wait_for_function(
        """(count) => { const t = window.voicekitTalk.turns[count - 1];
                        return t && t.done && (t.finished || t.interrupted || !t.receivedMs); }""",
        arg=count, timeout=timeout_s * 1000, polling=100)
    return page.evaluate("(count) => window.voicekitTalk.turns[count - 1]", count)


def _turn_figures(turn: dict[str, Any]) -> dict[str, Any]:
    def seconds(key: str) -> float | None:
        return None if turn.get(key) is None else turn[key] / 1000

    return {"first_sound_s": seconds("firstSoundMs"), "first_render_s": seconds("firstRenderMs"),
            "first_audio_s": seconds("firstAudioMs"), "underruns": turn.get("underruns"),
            "output_glitches": turn.get("outputGlitches"),
            "played_s": seconds("playedMs"), "status": turn.get("status"), "server": turn.get("timings")}


def _talk_run(page: Any, message: str, turn: int, timeout_s: float) -> dict[str, Any]:
    page.fill("#vk-text", message)
    page.press("#vk-text", "Enter")
    return _turn_figures(_wait_turn(page, turn, timeout_s))


def browser_first_sound(url: str, *, message: str, voice: str | None = None,
                        credentials: tuple[str, str] | None = None, runs: int = 3, warmup: int = 1,
                        timeout_s: float = 180.0) -> dict[str, Any]:
    """First sound of the same typed message, `runs` times, on the Gradio Chat tab and on the Talk page
    (alternating, so both see the same machine load), after `warmup` turns that are not counted (the first turn
    of a fresh server also loads models). Each run is one more turn of one conversation per page.
    `credentials`: (user, password) when the server has a password."""
    from voicekit.bench.pipeline import machine_info

    url = url.rstrip("/")
    gradio: list[dict[str, Any]] = []
    talk: list[dict[str, Any]] = []
    with _chromium(credentials=credentials) as context:
        _gradio_login(context, url, credentials)
        context.add_init_script(_AUDIO_PROBE)
        chat_page = context.new_page()
        talk_page = _open_talk(context, url, voice)
        for turn in range(1, warmup + runs + 1):
            chat_figures = _gradio_run(chat_page, url, message, voice, turn, timeout_s)
            talk_figures = _talk_run(talk_page, message, turn, timeout_s)
            if turn > warmup:
                gradio.append(chat_figures)
                talk.append(talk_figures)
        sample_rate = talk_page.evaluate("window.voicekitTalk.sampleRate")
    return {
        "url": url, "message": message, "voice": voice, "runs": runs, "warmup": warmup, "machine": machine_info(),
        "gradio_audio": {"first_sound_s": _figures([run["first_sound_s"] for run in gradio]),
                         "first_progress_s": _figures([run["first_progress_s"] for run in gradio]),
                         "stalls": [run["stalls"] for run in gradio], "stall_s": [run["stall_s"] for run in gradio],
                         "measured": "Enter -> the <audio> element's playing event (first_progress_s: its first "
                                     "timeupdate with currentTime > 0); stalls: waiting events after it started"},
        "talk_worklet": {"first_sound_s": _figures([run["first_sound_s"] for run in talk]),
                         "first_render_s": _figures([run["first_render_s"] for run in talk]),
                         "first_audio_s": _figures([run["first_audio_s"] for run in talk]),
                         "underruns": [run["underruns"] for run in talk],
                         "output_glitches": [run["output_glitches"] for run in talk], "context_rate": sample_rate,
                         "samples": talk,
                         "measured": "Enter -> first non-silent sample out of the worklet (render) plus the "
                                     "context's output latency (first_sound_s); first_audio_s: first delta "
                                     "received; underruns: the player ran dry mid-reply (audio arrived late); "
                                     "output_glitches: the device ran dry (Chromium's playbackStats)"},
    }


# -- speaking into the Talk page ----------------------------------------------------------------------------


def fake_microphone_wav(samples: np.ndarray, sample_rate: int, path: str | Path, *, lead_s: float = 0.5,
                        tail_s: float = 1.5) -> Path:
    """Speech for Chromium's fake microphone (`--use-file-for-fake-audio-capture=FILE%noloop`): a 16-bit PCM mono
    WAV at `sample_rate`, with `lead_s` of silence before (the file starts playing as the page opens the microphone)
    and `tail_s` after (the server's VAD needs silence to end the turn; after the file, the device is silent).
    Chromium resamples the file itself: 22050 Hz int16 and 24 kHz float32 files were both heard right."""
    speech = np.asarray(samples, dtype=np.float32)
    padded = np.concatenate([np.zeros(round(lead_s * sample_rate), np.float32), speech,
                             np.zeros(round(tail_s * sample_rate), np.float32)])
    write_wav(path, padded, sample_rate)
    return Path(path)


def browser_talk(url: str, wav_path: str | Path, *, voice: str | None = None,
                 credentials: tuple[str, str] | None = None, timeout_s: float = 180.0) -> dict[str, Any]:
    """Speak the WAV at `wav_path` into the Talk page through Chromium's fake microphone; the transcript the page
    shows, the reply text, and the first sound after the end of speech (the `speech_stopped` event's arrival)."""
    with tempfile.TemporaryDirectory() as folder:
        samples, rate = read_wav(wav_path)
        wav = fake_microphone_wav(samples, rate, Path(folder) / "speech.wav")
        flags = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}%noloop")
        with _chromium(flags, credentials) as context:
            page = _open_talk(context, url.rstrip("/"), voice)
            page.click("#vk-mic")
            turn = _wait_turn(page, 1, timeout_s)
            shown = page.evaluate("""() => ({transcript: window.voicekitTalk.lastTranscript,
                reply: window.voicekitTalk.lastReply,
                userText: [...document.querySelectorAll('.vk-user p')].map((p) => p.innerText).join(' | '),
                replyText: [...document.querySelectorAll('.vk-assistant p')].map((p) => p.innerText).join(' | '),
                errors: window.voicekitTalk.errors})""")
    figures = _turn_figures(turn)
    return {"transcript": shown["transcript"], "reply": shown["reply"], "shown_transcript": shown["userText"],
            "shown_reply": shown["replyText"], "errors": shown["errors"], "speech_s": round(len(samples) / rate, 3),
            "first_sound_after_speech_s": figures.pop("first_sound_s"),
            "first_render_after_speech_s": figures.pop("first_render_s"), **figures}
