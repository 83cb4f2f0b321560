"""voicekit.upgrade against the stand-in hub: exact requests, a progress sequence, a cancelled, a failed and a damaged
download (nothing left behind), offline in one line, `auto` picking laptop from the cache, and a running kit switching
to the laptop preset without losing its conversation.

The stand-in serves Kokoro's voices from tests/fetch_kokoro_voices.sh's folder and, under the Qwen repo's name, a
few MB of filler (the requests and progress tests) or the bundled SmolLM2 GGUF (the switch: the real Qwen GGUF cannot
be downloaded here).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stand_in_hub import StandInHub

from voicekit import upgrade
from voicekit.errors import ModelUnavailableError
from voicekit.progress import DownloadCancelled, Meter, Progress
from voicekit.tts.kokoro import ENGLISH_VOICES, VOICES_REPO

QWEN = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
GGUF = "qwen2.5-0.5b-instruct-q4_k_m.gguf"
OFFER_TEXT = "Get better models: Qwen2.5-0.5B-Instruct (0.4 GB) + Kokoro's 28 English voices (15 MB)"


def bundle_repos(kokoro_voices: Path, gguf: bytes) -> dict[str, dict[str, bytes]]:
    """The two repos as the hub has them (the Qwen repo with one other file, Kokoro's with a non-English voice)."""
    voices = {f"voices/{name}.bin": (kokoro_voices / f"{name}.bin").read_bytes() for name in ENGLISH_VOICES}
    voices["voices/ef_dora.bin"] = (kokoro_voices / "ef_dora.bin").read_bytes()
    return {QWEN: {GGUF: gguf, "README.md": b"# Qwen"}, VOICES_REPO: voices}


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache for one test."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def hub(fresh_cache: Path, kokoro_voices: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    """The stand-in with the bundle (3 MB of filler as the GGUF), as HF_ENDPOINT."""
    stand_in = StandInHub(repos=bundle_repos(kokoro_voices, bytes(range(256)) * 12_288))
    monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
    yield stand_in
    stand_in.close()


def leftovers(cache: Path) -> list[str]:
    """Partial files anywhere in the cache."""
    return [str(path) for path in cache.rglob("*") if path.name.endswith(".incomplete") or ".partial" in path.name]


def test_status_is_read_from_the_cache_without_the_network(hub: StandInHub) -> None:
    found = upgrade.status()
    assert not found.ready and len(found.missing) == 29 and found.problem is None
    assert found.line() == ("better models: Qwen2.5-0.5B-Instruct (0.4 GB) + 28 Kokoro voice(s) (14.6 MB) to "
                            "download once: python -m voicekit upgrade")
    assert upgrade.prefer_laptop("cpu", "no GPU") == ("cpu", "no GPU")
    assert hub.requests == []


def test_download_sends_exact_requests_and_reports_progress(hub: StandInHub, fresh_cache: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    events: list[Progress] = []
    with caplog.at_level(logging.DEBUG):
        found = upgrade.download("hf_secret", on_progress=events.append)
    assert found.ready and upgrade.status().ready
    voices = [f"voices/{name}.bin" for name in ENGLISH_VOICES]
    assert [(r.method, r.path) for r in hub.requests] == [
        ("GET", f"/api/models/{QWEN}/tree/main"),
        ("GET", f"/api/models/{VOICES_REPO}/tree/main/voices"),
        *[(method, f"/{repo}/resolve/main/{name}") for repo, name in [(QWEN, GGUF), *((VOICES_REPO, v) for v in voices)]
          for method in ("HEAD", "GET")]]
    assert {r.authorization for r in hub.requests} == {"Bearer hf_secret"}
    assert "hf_secret" not in caplog.text
    total = 3_145_728 + 28 * 522_240
    stages = [event.stage for event in events]
    assert stages[0] == "listing" and stages[-1] == "checking" and "downloading" in stages
    counted = [event for event in events if event.total_bytes]
    assert all(event.total_bytes == total and event.files_total == 29 for event in counted)
    assert [event.done_bytes for event in counted] == sorted(event.done_bytes for event in counted)
    assert counted[-1].done_bytes == total and counted[-1].files_done == 28  # the last file's check
    assert upgrade.download("hf_secret").ready and len(hub.requests) == 2 + 2 * 29  # nothing fetched twice
    assert leftovers(fresh_cache) == []


def test_progress_line_says_bytes_speed_and_time_left() -> None:
    event = Progress("downloading", 120_500_000, 409_300_000, 12_100_000.0, 23.9, GGUF, 0, 29)
    assert event.line() == (f"downloading {GGUF} (1 of 29): 120.5 of 409.3 MB (29%) · 12.1 MB/s · 24 s left")
    assert Progress("downloading", 0, 100, eta_s=150.0, file="voices/af_heart.bin", files_done=3,
                    files_total=29).line() == "downloading af_heart.bin (4 of 29): 0.0 of 0.0 MB (0%) · 2 min left"
    meter = Meter(lambda event: None, threading.Event(), total=10_000_000, files_total=1)
    meter._samples.extend([(100.0, 0), (101.0, 1_000_000), (102.0, 2_000_000)])
    meter.done = 2_000_000
    assert meter._speed() == (1_000_000.0, 8.0)


def test_cancel_stops_the_download_and_keeps_nothing_half_done(hub: StandInHub, fresh_cache: Path) -> None:
    cancel = threading.Event()

    def on_progress(event: Progress) -> None:
        if event.stage == "downloading":
            cancel.set()  # as the page's Cancel button does, from another thread

    with pytest.raises(DownloadCancelled, match="nothing half-downloaded was kept"):
        upgrade.download(None, on_progress=on_progress, cancel=cancel)
    assert leftovers(fresh_cache) == []
    assert upgrade.status().missing[0].filename == GGUF  # not in the cache, not even in part
    assert not list(fresh_cache.rglob(f"*{GGUF}"))


def test_failed_download_says_why_and_keeps_nothing_half_done(hub: StandInHub, fresh_cache: Path) -> None:
    hub.broken["voices/af_bella.bin"] = 500
    with pytest.raises(ModelUnavailableError) as caught:
        upgrade.download(None)
    message = str(caught.value)
    assert message.startswith(f"model {VOICES_REPO}: the hub answered HTTP 500")
    assert message.endswith("the bundled models keep working meanwhile (file voices/af_bella.bin)")
    assert "\n" not in message and leftovers(fresh_cache) == []
    missing = [item.filename for item in upgrade.status().missing]
    assert "voices/af_bella.bin" in missing and GGUF not in missing  # what finished before stays


def test_damaged_file_is_removed(hub: StandInHub, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = upgrade._hub_sizes

    def wrong_digest(*args: Any) -> dict[Any, tuple[int, str]]:
        return {item: (size, "0" * 64 if item.filename == GGUF else sha) for item, (size, sha) in real(*args).items()}

    monkeypatch.setattr(upgrade, "_hub_sizes", wrong_digest)
    with pytest.raises(ModelUnavailableError, match=f"{GGUF} arrived damaged .*sha256.* and was removed"):
        upgrade.download(None)
    assert upgrade.status().missing[0].filename == GGUF and leftovers(fresh_cache) == []


def test_offline_or_unreachable_is_one_line(hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match=r"^the Hugging Face hub is switched off here \(HF_HUB_OFFLINE=1\)"):
        upgrade.download(None)
    assert hub.requests == []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ModelUnavailableError) as caught:
        upgrade.download(None, endpoint="http://127.0.0.1:9")  # nothing listens on the discard port
    assert str(caught.value) == ("cannot reach the Hugging Face hub (http://127.0.0.1:9): no network here? Connect "
                                 "and try again (python -m voicekit upgrade); the bundled models keep working "
                                 "meanwhile")


def test_progress_events_end_with_the_outcome(hub: StandInHub) -> None:
    hub.broken[GGUF] = 503
    events = list(upgrade.progress_events(None))
    assert events[-1].stage == "failed" and "HTTP 503" in events[-1].line()
    del hub.broken[GGUF]
    events = list(upgrade.progress_events(None))
    assert events[-1].stage == "done" and events[-1].fraction == 1.0


def test_auto_picks_laptop_once_the_bundle_is_cached(hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from voicekit import device
    from voicekit.build import resolve_settings
    from voicekit.placement import preset_and_reason

    monkeypatch.delenv("VOICEKIT_PRESET", raising=False)
    monkeypatch.setattr(device, "torch_facts", lambda: device.TorchFacts("2.13.0+cpu", None, False))  # no GPU
    assert resolve_settings("auto").preset == "cpu"  # an empty cache: the offline-safe default
    upgrade.download(None)
    asked = len(hub.requests)
    assert resolve_settings("auto").preset == "laptop"
    assert preset_and_reason()[1].endswith("the laptop preset's models are in the Hugging Face cache (no download "
                                            "needed)")
    assert len(hub.requests) == asked  # decided from the cache alone
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "kokoro_onnx" else
                        find_spec(name, *rest))
    assert upgrade.status().line().startswith("better models: kokoro-onnx is not installed: "
                                              'pip install "voicekit[kokoro]"')
    assert resolve_settings("auto").preset == "cpu"  # the laptop preset could not load: auto does not pick it


@pytest.mark.slow
def test_running_kit_switches_to_laptop_keeping_the_conversation(fresh_cache: Path, kokoro_voices: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import voicekit
    from voicekit.placement import bundled_chat_model_path

    smollm = bundled_chat_model_path()
    assert smollm is not None
    stand_in = StandInHub(repos=bundle_repos(kokoro_voices, smollm.read_bytes()))
    monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
    kit = voicekit.load("cpu", max_reply_tokens=8, mode="overlap")  # short replies: the plumbing, not prose
    try:
        first = kit.chat("Hello! What is your name?", seed=1)
        first.audio()
        old = kit.pipeline
        kit.upgrade()
        assert len(stand_in.requests) == 2 + 2 * 29  # the download alone: the laptop preset loads from the cache
        assert kit.settings.preset == "laptop" and kit.settings.mode == "overlap"  # a choice beyond the preset stays
        assert kit.settings.max_reply_tokens == 8 and kit.settings.asr_model == ""  # the recognizer too
        assert kit.description["chat"] == f"{GGUF} on llamacpp" and kit.description["tts"].startswith("kokoro")
        second = kit.chat("Nice to meet you.", history=first.history, seed=1)
        assert second.audio().size and second.sample_rate == 24000 and second.voice == "af_heart"
        assert [message["role"] for message in second.history] == ["user", "assistant"] * 2
        assert kit.chat_model is not None and kit.chat_model.engine.model == GGUF
        assert old.running == 0
    finally:
        kit.close()
        stand_in.close()


def test_doctor_offers_the_bundle_and_says_what_the_cores_afford(fresh_cache: Path, repo_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from voicekit import doctor

    monkeypatch.delenv("VOICEKIT_PRESET", raising=False)
    assert doctor._better_line("cpu") == ("Get better models: Qwen2.5-0.5B-Instruct (0.4 GB) + Kokoro's 28 English "
                                          "voices (15 MB): python -m voicekit upgrade")
    measured = json.loads((repo_root / "docs" / "bench" / "llm-shapes-cpu.json").read_text())["models"]
    assert doctor.CHAT_MODELS_1_THREAD["Qwen2.5-1.5B-Instruct"][0] == \
        measured["qwen2.5-1.5b (Q4_K_M, random weights)"]["tokens_per_s"]
    assert doctor.CHAT_MODELS_1_THREAD["Qwen2.5-0.5B-Instruct"][0] == \
        measured["qwen2.5-0.5b (Q4_K_M, random weights)"]["tokens_per_s"]
    line, advice = doctor.cores_line(4)
    assert line == ("4 cores: Qwen2.5-1.5B-Instruct would write faster than speech (~10.8 tokens/s on 2 llama.cpp "
                    "threads, 3.1x speech)")
    assert advice == f"{line}: VOICEKIT_CHAT_MODEL=Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf " \
                     "(downloaded once)"
    line, advice = doctor.cores_line(2)
    assert line.startswith("2 cores: Qwen2.5-0.5B-Instruct, the laptop preset's chat model, writes faster than "
                           "speech (~13.4 tokens/s on 1 llama.cpp thread, 3.8x speech)") and advice is None


def test_cli_upgrade_draws_progress_and_check_needs_no_network(hub: StandInHub,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from voicekit.cli import main

    assert main(["upgrade", "--check"]) == 1 and hub.requests == []
    assert capsys.readouterr().out.startswith("better models: Qwen2.5-0.5B-Instruct (0.4 GB) + 28 Kokoro voice(s)")
    assert main(["upgrade"]) == 0
    shown = capsys.readouterr()
    bars = [line for line in shown.err.splitlines() if line.startswith("[")]
    assert bars and bars[-1].startswith("[##############################] checking") and " MB (100%)" in bars[-1]
    assert shown.out.splitlines()[0].startswith("better models: in the cache")
    assert main(["upgrade", "--check"]) == 0


def test_a_reply_speaking_during_a_switch_ends_on_the_old_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap under the kit's lock, with scripted parts (tests/scripted.py) standing in for the models."""
    import time

    from scripted import ScriptedBackend, ScriptedEngine, kit_over

    from voicekit import build
    from voicekit.pipeline import Pipeline

    old_engine = ScriptedEngine("Old model speaking here.", hold_after=2)
    kit = kit_over(old_engine, ScriptedBackend(), system_prompt="Be brief.")
    new_engine, new_voices = ScriptedEngine("New words."), ScriptedBackend(voices=("cora",), sample_rate=2000)
    monkeypatch.setattr(build, "build_pipeline", lambda settings, loop, chat=True: Pipeline(
        new_voices, build.build_chat(settings, new_engine), settings.max_text_chars))
    try:
        reply = kit.chat("Hi")
        speaking = threading.Thread(target=reply.audio)
        speaking.start()
        while not old_engine.prompts:
            time.sleep(0.01)
        old = kit.pipeline
        kit.switch_preset("laptop")
        assert kit.settings.preset == "laptop" and kit.settings.system_prompt == "Be brief."
        assert old.running == 1 and not old_engine._closed  # still writing its reply
        old_engine.release.set()
        speaking.join(10)
        assert reply.text == "Old model speaking here." and reply.sample_rate == 1000
        deadline = time.monotonic() + 5
        while not old_engine._closed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert old_engine._closed and old.running == 0  # closed once its turn ended
        again = kit.chat("Again", history=reply.history)
        assert again.audio().size and again.text == "New words." and again.sample_rate == 2000
        assert "Old model speaking here." in new_engine.prompts[0]  # the conversation carried on
    finally:
        kit.close()


def test_notebook_widget_downloads_and_switches(hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from scripted import ScriptedBackend, ScriptedEngine, kit_over

    from voicekit import build
    from voicekit.pipeline import Pipeline
    from voicekit.widgets import better_models

    kit = kit_over(ScriptedEngine("Old."), ScriptedBackend())
    monkeypatch.setattr(build, "build_pipeline", lambda settings, loop, chat=True: Pipeline(
        ScriptedBackend(), build.build_chat(settings, ScriptedEngine("New.")), settings.max_text_chars))
    try:
        box = better_models(kit)
        (button, cancel), bar, line = box.children[0].children, box.children[1], box.children[2]
        assert button.description == OFFER_TEXT and not button.disabled and hub.requests == []  # nothing yet
        button.click()
        deadline = time.monotonic() + 60
        while not line.value.startswith("now talking with") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert line.value.startswith("now talking with script on scripted"), line.value
        assert kit.settings.preset == "laptop" and button.disabled and cancel.layout.display == "none"
        reply = kit.chat("Hi")
        assert bar.layout.display == "none" and reply.audio().size and reply.text == "New."
    finally:
        kit.close()


def test_a_turn_dropped_unrun_does_not_hold_switched_out_models() -> None:
    import gc

    from scripted import ScriptedBackend

    from voicekit.pipeline import Pipeline

    pipeline = Pipeline(ScriptedBackend())
    kept, dropped = pipeline.say_turn("Kept."), pipeline.say_turn("Dropped.")
    assert pipeline.running == 2
    del dropped  # e.g. a request turned away as busy before its stream started
    gc.collect()
    assert pipeline.running == 1 and kept.voice == "ada"
