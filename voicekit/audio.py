"""Audio helpers: PCM16 conversion, WAV files and streaming, resampling and loudness.

Conventions used throughout: audio is float32 mono in [-1, 1]; PCM is signed 16-bit little-endian,
where full scale is 32767 in both directions (encode multiplies by 32767, decode divides by 32767),
so a float survives the round trip to within half an LSB.
"""

from __future__ import annotations

import io
import math
import os
import struct
import wave
from collections.abc import Iterable
from typing import Any

import numpy as np
import soxr

PCM16_SCALE = 32767
WAV_HEADER_SIZE = 44
# Size fields of a streaming WAV whose length is not known up front. 0xFFFFFFFF ("as long as the
# stream lasts") is what ffmpeg, browsers and most players accept; 0 would mean "empty" to many.
STREAMING_SIZE = 0xFFFFFFFF
_PCM_FORMAT = 1
_FMT_CHUNK_SIZE = 16

PathOrBytes = str | os.PathLike | bytes | bytearray | memoryview


# --- PCM16 conversion ------------------------------------------------------------------------


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """Encode float audio in [-1, 1] as little-endian int16 bytes.

    Out-of-range values are clipped (never wrapped), values are rounded to nearest, NaN becomes 0.
    Multi-dimensional input is flattened in C order (so a (frames, channels) array interleaves).
    """
    _reject_integer_array(samples)
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = np.where(np.isnan(x), 0.0, x)
    pcm = np.rint(np.clip(x, -1.0, 1.0) * PCM16_SCALE).astype("<i2")
    return pcm.tobytes()


def pcm16_to_float(data: bytes | np.ndarray) -> np.ndarray:
    """Decode little-endian int16 bytes (or an int16 array) to float32 in [-1, 1].

    Divides by 32767, the inverse of `float_to_pcm16`; -32768 (which that never produces) is
    clipped to -1.0 so the output always stays in range.
    """
    if isinstance(data, np.ndarray):
        if data.dtype.kind != "i" or data.dtype.itemsize != 2:
            raise TypeError(f"pcm16_to_float expects int16 samples, got dtype {data.dtype}")
        pcm = data
    else:
        raw = bytes(data)
        if len(raw) % 2:
            raise ValueError(f"PCM16 data must have an even number of bytes, got {len(raw)}")
        pcm = np.frombuffer(raw, dtype="<i2")
    out = pcm.astype(np.float32) / np.float32(PCM16_SCALE)
    return np.maximum(out, np.float32(-1.0))


# --- WAV -------------------------------------------------------------------------------------


def wav_header(sample_rate: int, channels: int = 1, bits: int = 16, num_samples: int | None = None) -> bytes:
    """Build a 44-byte RIFF/WAVE PCM header.

    `num_samples` counts frames (samples per channel). With `num_samples=None` the header is for a
    stream of unknown length: the RIFF and data size fields are 0xFFFFFFFF, which ffmpeg, browsers
    and `read_wav` treat as "read until the data ends".
    """
    _check_rate(sample_rate)
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, got {bits}")
    block_align = channels * bits // 8
    if num_samples is None:
        riff_size = data_size = STREAMING_SIZE
    else:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        data_size = num_samples * block_align
        riff_size = 36 + data_size
        if riff_size >= STREAMING_SIZE:  # the 32-bit size fields cannot describe it
            raise ValueError(f"{num_samples} samples are too many for one WAV file")
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", riff_size, b"WAVE",
        b"fmt ", _FMT_CHUNK_SIZE, _PCM_FORMAT, channels, sample_rate,
        sample_rate * block_align, block_align, bits,
        b"data", data_size,
    )  # fmt: skip


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Return a complete mono 16-bit WAV file (exact sizes in the header) for float samples."""
    x = _mono(samples)
    return wav_header(sample_rate, num_samples=len(x)) + float_to_pcm16(x)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples to `path` as a mono 16-bit WAV file."""
    _check_rate(sample_rate)
    pcm = float_to_pcm16(_mono(samples))
    with open(path, "wb") as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)


def read_wav(path_or_bytes: PathOrBytes) -> tuple[np.ndarray, int]:
    """Read an integer-PCM WAV file (path or bytes) as (float32 mono samples, sample rate).

    Multi-channel audio is averaged to mono. A streaming WAV (size fields 0xFFFFFFFF, as `WavStreamWriter`
    writes) is read up to the end of the data actually present, whole frames only (a stream cut mid-sample
    loses that sample): the standard library's `wave` reads such files as they are.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        source: Any = io.BytesIO(bytes(path_or_bytes))
    else:
        source = os.fspath(path_or_bytes)
    with wave.open(source, "rb") as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        pcm = w.readframes(w.getnframes())
    pcm = pcm[: len(pcm) // (channels * width) * (channels * width)]
    samples = _pcm_to_float(pcm, width)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32, copy=False), rate


def _pcm_to_float(pcm: bytes, width: int) -> np.ndarray:
    """Decode little-endian integer PCM of `width` bytes per sample to float32."""
    if width == 2:
        return pcm16_to_float(pcm)
    if width == 1:  # 8-bit WAV is unsigned with 128 as silence
        return (np.frombuffer(pcm, dtype=np.uint8).astype(np.float32) - 128.0) / 127.0
    if width == 3:
        b = np.frombuffer(pcm, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        return (ints / float((1 << 23) - 1)).astype(np.float32)
    if width == 4:
        return (np.frombuffer(pcm, dtype="<i4") / float((1 << 31) - 1)).astype(np.float32)
    raise ValueError(f"unsupported WAV sample width: {width} bytes")


class WavStreamWriter:
    """Encode audio for an HTTP response: send `header()` once, then `encode(chunk)` per chunk."""

    def __init__(self, sample_rate: int) -> None:
        _check_rate(sample_rate)
        self.sample_rate = sample_rate
        self.samples_written = 0

    def header(self) -> bytes:
        """Return the streaming WAV header (mono, 16-bit, unknown length)."""
        return wav_header(self.sample_rate)

    def encode(self, chunk: np.ndarray) -> bytes:
        """Return PCM16 bytes for one float chunk and count its samples."""
        x = _mono(chunk)
        self.samples_written += len(x)
        return float_to_pcm16(x)

    @property
    def duration_s(self) -> float:
        """Seconds of audio encoded so far."""
        return duration_s(self.samples_written, self.sample_rate)


# --- Resampling ------------------------------------------------------------------------------


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a whole mono signal with soxr; the result has round(n * to_rate / from_rate) samples.

    Returns the input (as float32) when the rates are equal. Meant for whole signals: resampling a stream
    chunk by chunk leaves small discontinuities at the chunk edges.
    """
    _check_rate(from_rate)
    _check_rate(to_rate)
    x = _mono(samples)
    if from_rate == to_rate:
        return x
    n_out = round(len(x) * to_rate / from_rate)
    if len(x) == 0 or n_out == 0:
        return np.zeros(n_out, dtype=np.float32)
    return _fit_length(np.asarray(soxr.resample(x, from_rate, to_rate), dtype=np.float32), n_out)


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    # soxr's length can differ from round(n * ratio) by a sample; the API promises the latter.
    if len(y) >= n:
        return y[:n]
    return np.concatenate([y, np.zeros(n - len(y), dtype=np.float32)])


def duration_s(samples_or_count: np.ndarray | int, sample_rate: int) -> float:
    """Duration in seconds of a sample array (its length) or of a sample count."""
    _check_rate(sample_rate)
    count = int(samples_or_count) if isinstance(samples_or_count, (int, np.integer)) else len(samples_or_count)
    return count / sample_rate


def concat(chunks: Iterable[np.ndarray]) -> np.ndarray:
    """Join mono chunks into one float32 array (zero-length when there are none)."""
    parts = [_mono(c) for c in chunks]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts)


def rms_db(samples: np.ndarray) -> float:
    """RMS level in dBFS (a full-scale square wave is 0 dB); -inf for empty or all-zero audio."""
    x = np.asarray(samples, dtype=np.float64).ravel()
    if x.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.nan_to_num(x, nan=0.0) ** 2)))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def is_silent(samples: np.ndarray, threshold_db: float = -50.0) -> bool:
    """True when the RMS level (dBFS) is below `threshold_db`; empty audio is silent."""
    return rms_db(samples) < threshold_db


def _reject_integer_array(samples: object) -> None:
    # An int16 PCM array mistaken for float audio would silently saturate to +/-1: refuse it.
    if isinstance(samples, np.ndarray) and samples.dtype.kind in "iu":
        raise TypeError(f"expected float samples in [-1, 1], got a {samples.dtype} array")


def _mono(samples: np.ndarray) -> np.ndarray:
    _reject_integer_array(samples)
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 0:
        x = x.reshape(1)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio (a 1-D array), got shape {x.shape}")
    return x


def _check_rate(sample_rate: int) -> None:
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {sample_rate!r}")


class StreamResampler:
    """Resample a live mono stream chunk by chunk without edge clicks (soxr's streaming resampler).

    `push()` returns what each chunk makes (soxr holds back a few ms for its filter); `flush()` the rest.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        _check_rate(from_rate)
        _check_rate(to_rate)
        self.from_rate, self.to_rate = from_rate, to_rate
        self._stream = None if from_rate == to_rate else soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32")

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Resampled audio for the next chunk of the stream."""
        x = _mono(samples)
        return x if self._stream is None else np.asarray(self._stream.resample_chunk(x), dtype=np.float32)

    def flush(self) -> np.ndarray:
        """The audio still held back: call once, at the end of the stream."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True), dtype=np.float32)
