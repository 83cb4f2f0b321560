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


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return ROOT
