"""Tests for voicekit.audio: PCM16 encoding, WAV files and streams, resampling, loudness."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from voicekit.audio import (
    WavStreamWriter,
    concat,
    duration_s,
    float_to_pcm16,
    is_silent,
    pcm16_to_float,
    read_wav,
    resample,
    rms_db,
    wav_bytes,
    wav_header,
    write_wav,
)

LSB = 1.0 / 32767


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def parse_header(data: bytes) -> dict[str, object]:
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", data[:44])
    names = "riff riff_size wave fmt fmt_size format channels rate byte_rate block_align bits data data_size"
    return dict(zip(names.split(), fields, strict=True))


def ffmpeg_exe() -> str | None:
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # the package is there but its binary is not
        return None


# --- WAV header --------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "channels"), [(22050, 1), (24000, 1), (16000, 2)])
def test_wav_header_fields(rate: int, channels: int) -> None:
    h = parse_header(wav_header(rate, channels=channels, num_samples=1000))
    assert (h["riff"], h["wave"], h["fmt"], h["data"]) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert (h["fmt_size"], h["format"], h["channels"], h["bits"]) == (16, 1, channels, 16)
    assert h["rate"] == rate
    assert h["byte_rate"] == rate * channels * 2
    assert h["block_align"] == channels * 2
    assert h["data_size"] == 2 * 1000 * channels
    assert h["riff_size"] == 36 + h["data_size"]


def test_wav_header_is_44_bytes_and_streaming_sizes_are_max() -> None:
    assert len(wav_header(24000)) == 44
    h = parse_header(wav_header(24000))
    assert h["riff_size"] == 0xFFFFFFFF
    assert h["data_size"] == 0xFFFFFFFF


@pytest.mark.parametrize("bad", [{"sample_rate": 0}, {"sample_rate": 24000, "channels": 0}])
def test_wav_header_rejects_bad_arguments(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        wav_header(**bad)


# --- WAV files ---------------------------------------------------------------------------------


def test_wav_bytes_has_exact_sizes() -> None:
    samples = tone(440, 22050, seconds=0.25)
    data = wav_bytes(samples, 22050)
    h = parse_header(data)
    assert len(data) == 44 + 2 * len(samples)
    assert h["data_size"] == 2 * len(samples)
    assert h["riff_size"] == len(data) - 8


@pytest.mark.parametrize("rate", [22050, 24000])
def test_stdlib_wave_reads_wav_bytes(rate: int) -> None:
    samples = tone(440, rate, seconds=0.3)
    with wave.open(io.BytesIO(wav_bytes(samples, rate))) as w:
        assert w.getnframes() == len(samples)
        assert w.getframerate() == rate
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        assert w.readframes(w.getnframes()) == float_to_pcm16(samples)


def test_write_wav_matches_wav_bytes_and_reads_back(tmp_path: Path) -> None:
    samples = tone(300, 24000, seconds=0.2)
    path = tmp_path / "out.wav"
    write_wav(path, samples, 24000)
    assert path.read_bytes() == wav_bytes(samples, 24000)
    for source in (path, str(path), path.read_bytes()):
        back, rate = read_wav(source)
        assert rate == 24000
        assert back.dtype == np.float32
        assert len(back) == len(samples)
        assert np.max(np.abs(back - samples)) <= LSB


def test_read_wav_mixes_stereo_down_to_mono() -> None:
    left, right = np.full(100, 0.5), np.full(100, -0.25)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(float_to_pcm16(np.stack([left, right], axis=1)))
    samples, rate = read_wav(buf.getvalue())
    assert rate == 16000
    assert len(samples) == 100
    np.testing.assert_allclose(samples, 0.125, atol=LSB)


def test_wav_bytes_rejects_multichannel_array() -> None:
    with pytest.raises(ValueError, match="mono"):
        wav_bytes(np.zeros((10, 2), dtype=np.float32), 24000)


# --- Streaming ---------------------------------------------------------------------------------


def streamed_wav(chunks: list[np.ndarray], rate: int) -> tuple[bytes, WavStreamWriter]:
    writer = WavStreamWriter(rate)
    return writer.header() + b"".join(writer.encode(c) for c in chunks), writer


def test_stream_of_chunks_is_readable_with_all_samples() -> None:
    chunks = [tone(440, 22050, seconds=s) for s in (0.1, 0.25, 0.05)] + [np.zeros(0, np.float32)]
    data, writer = streamed_wav(chunks, 22050)
    expected = concat(chunks)
    assert writer.samples_written == len(expected)
    assert writer.duration_s == pytest.approx(len(expected) / 22050)
    assert parse_header(data)["data_size"] == 0xFFFFFFFF
    samples, rate = read_wav(data)
    assert rate == 22050
    assert len(samples) == len(expected)
    assert np.max(np.abs(samples - expected)) <= LSB


def test_stream_cut_mid_sample_reads_whole_samples() -> None:
    data, _ = streamed_wav([tone(440, 24000, seconds=0.01)], 24000)
    samples, _ = read_wav(data[:-1])  # a connection dropped after half of the last sample
    assert len(samples) == 240 - 1


def test_stream_is_decodable_by_ffmpeg() -> None:
    exe = ffmpeg_exe()
    if exe is None:
        pytest.skip("no ffmpeg binary (PATH or imageio_ffmpeg)")
    chunks = [tone(440, 24000, seconds=0.2), tone(880, 24000, seconds=0.3)]
    data, _ = streamed_wav(chunks, 24000)
    cmd = [exe, "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "pipe:1"]
    done = subprocess.run(cmd, input=data, capture_output=True, timeout=60, check=True)
    assert done.stdout == float_to_pcm16(concat(chunks))


# --- PCM16 -------------------------------------------------------------------------------------


def test_pcm16_is_little_endian_and_scaled_by_32767() -> None:
    assert float_to_pcm16(np.array([1.0, -1.0, 0.0], dtype=np.float32)) == struct.pack(
        "<3h", 32767, -32767, 0
    )


def test_out_of_range_values_clip_instead_of_wrapping() -> None:
    loud = np.array([1.5, -1.5, 2.0, -8.0, np.inf, -np.inf], dtype=np.float32)
    pcm = np.frombuffer(float_to_pcm16(loud), dtype="<i2")
    assert pcm.tolist() == [32767, -32767, 32767, -32767, 32767, -32767]


def test_rounds_to_nearest() -> None:
    x = np.array([100.4, 100.6, -100.4, -100.6]) * LSB
    assert np.frombuffer(float_to_pcm16(x), dtype="<i2").tolist() == [100, 101, -100, -101]


def test_nan_becomes_zero_without_touching_neighbours() -> None:
    x = np.array([0.5, np.nan, -0.5], dtype=np.float32)
    assert np.frombuffer(float_to_pcm16(x), dtype="<i2").tolist() == [16384, 0, -16384]


def test_round_trip_within_one_lsb() -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 20000).astype(np.float32)
    back = pcm16_to_float(float_to_pcm16(x))
    assert back.dtype == np.float32
    assert np.max(np.abs(back - x)) <= LSB


def test_pcm16_to_float_accepts_arrays_and_stays_in_range() -> None:
    out = pcm16_to_float(np.array([32767, -32768, 0], dtype=np.int16))
    assert out.tolist() == [1.0, -1.0, 0.0]
    with pytest.raises(ValueError):
        pcm16_to_float(b"\x00\x01\x02")


def test_integer_pcm_array_is_not_mistaken_for_float_audio() -> None:
    with pytest.raises(TypeError):
        float_to_pcm16(np.array([1000, -1000], dtype=np.int16))


# --- Duration, concat, loudness ------------------------------------------------------------------


@pytest.mark.parametrize("rate", [22050, 24000])
def test_duration(rate: int) -> None:
    assert duration_s(rate, rate) == 1.0
    assert duration_s(np.zeros(rate // 2, dtype=np.float32), rate) == pytest.approx(0.5)
    assert duration_s(0, rate) == 0.0


def test_concat_keeps_order_and_handles_empty() -> None:
    out = concat(iter([np.array([1.0, 2.0]), np.zeros(0), np.array([3.0])]))
    assert out.dtype == np.float32
    assert out.tolist() == [1.0, 2.0, 3.0]
    empty = concat([])
    assert empty.shape == (0,)
    assert empty.dtype == np.float32


def test_silence_detection() -> None:
    assert is_silent(np.zeros(24000, dtype=np.float32))
    assert is_silent(np.zeros(0, dtype=np.float32))
    assert not is_silent(tone(440, 24000))
    assert is_silent(tone(440, 24000, amp=0.001))  # about -63 dBFS
    assert not is_silent(tone(440, 24000, amp=0.001), threshold_db=-70.0)


def test_rms_db_of_full_scale_sine_is_minus_3() -> None:
    assert rms_db(tone(1000, 24000, amp=1.0)) == pytest.approx(-3.01, abs=0.01)
    assert rms_db(np.zeros(10)) == -np.inf


# --- Resampling (soxr) ------------------------------------------------------------------------------


@pytest.fixture
def backend() -> str:
    return "soxr"  # the one resampler (a required dependency); the tests below name it


@pytest.mark.parametrize(
    ("n", "src", "dst"),
    [(22050, 22050, 24000), (1001, 24000, 16000), (7, 22050, 24000), (12345, 24000, 22050)],
)
def test_resample_length(backend: str, n: int, src: int, dst: int) -> None:
    out = resample(np.zeros(n, dtype=np.float32), src, dst)
    assert out.dtype == np.float32
    assert len(out) == round(n * dst / src)


def test_resample_same_rate_is_identity() -> None:
    x = tone(440, 24000, seconds=0.1)
    np.testing.assert_array_equal(resample(x, 24000, 24000), x)


@pytest.mark.parametrize(("src", "dst"), [(22050, 24000), (24000, 16000)])
@pytest.mark.parametrize("freq", [440.0, 3000.0])
def test_resample_preserves_tone_frequency_and_level(backend: str, src: int, dst: int, freq: float) -> None:
    x = tone(freq, src)
    y = resample(x, src, dst)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * dst / len(y)
    assert abs(peak_hz - freq) <= dst / len(y)  # within one FFT bin
    middle = y[len(y) // 10 : -len(y) // 10]  # skip the filter's edge ramp
    assert rms_db(middle) == pytest.approx(rms_db(x), abs=0.2)


def test_downsampling_removes_tones_above_new_nyquist(backend: str) -> None:
    # A 10 kHz tone cannot exist at 16 kHz; it must be filtered out, not folded down to 6 kHz.
    y = resample(tone(10000, 24000), 24000, 16000)
    assert rms_db(y) < rms_db(tone(10000, 24000)) - 40
