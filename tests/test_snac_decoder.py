"""SNAC decoding with a random-weight 24 kHz model (no download): sizes, seams, latency, round trip."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import tiny_models as tm

from voicekit.bench import snr_db
from voicekit.errors import ModelUnavailableError
from voicekit.tts.orpheus_codes import CodeParser, codes_to_token_ids, frames_to_codes
from voicekit.tts.snac_decoder import (
    SNAC_24KHZ_CONFIG,
    StreamingDecoder,
    build_snac,
    decode_frames,
    disable_noise,
)

torch = pytest.importorskip("torch")
SNAC = pytest.importorskip("snac").SNAC
NoiseBlock = pytest.importorskip("snac.layers").NoiseBlock

MIN_SNR_DB = 60.0  # streamed vs one-shot; the defaults measure ~80-90 dB with random weights


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def model(random_snac: Any) -> Any:
    return random_snac


def random_frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(n, 7))


def stream(model: Any, frames: np.ndarray, **options: int) -> tuple[list[np.ndarray], StreamingDecoder]:
    decoder = StreamingDecoder(model, **options)
    chunks = [chunk for frame in frames for chunk in decoder.push([frame])]
    chunks.append(decoder.flush())
    return chunks, decoder


def test_random_model_is_the_24khz_network(model: Any) -> None:
    assert SNAC_24KHZ_CONFIG["vq_strides"] == [4, 2, 1] and SNAC_24KHZ_CONFIG["decoder_dim"] == 1024
    assert model.hop_length == 512 and model.sampling_rate == 24000
    assert not any(isinstance(m, NoiseBlock) for m in model.modules())
    assert not model.training


def test_one_frame_is_2048_samples(model: Any) -> None:
    audio = decode_frames(model, random_frames(1))
    assert audio.dtype == np.float32 and audio.shape == (2048,)
    assert np.abs(audio).max() > 0


def test_stream_matches_one_shot(model: Any) -> None:
    frames = random_frames(13, seed=1)
    chunks, decoder = stream(model, frames)
    streamed = np.concatenate(chunks)
    oneshot = decode_frames(model, frames)
    assert streamed.dtype == np.float32
    assert streamed.size == oneshot.size == 13 * 2048
    assert all(c.size % 2048 == 0 for c in chunks)
    assert snr_db(streamed, oneshot) >= MIN_SNR_DB
    # The first frame and the tail (flush) are neither lost nor shifted: each matches its own span.
    assert chunks[0].size == 2048 and snr_db(chunks[0], oneshot[:2048]) >= MIN_SNR_DB
    assert snr_db(chunks[-1], oneshot[-chunks[-1].size :]) >= MIN_SNR_DB
    assert decoder.first_audio_frames == 3
    assert decoder.samples_emitted == 13 * 2048


def test_first_audio_after_three_frames(model: Any) -> None:
    decoder = StreamingDecoder(model)
    frames = random_frames(3, seed=2)
    assert decoder.push(frames[:1]) == []
    assert decoder.push(frames[1:2]) == []
    chunks = decoder.push(frames[2:])
    assert [c.size for c in chunks] == [2048]


def test_seams_need_context(model: Any) -> None:
    # Guards the tolerance: without context the seams are audible and the SNR check fails.
    frames = random_frames(8, seed=3)
    chunks, _ = stream(model, frames, left_context=0, lookahead=0)
    assert snr_db(np.concatenate(chunks), decode_frames(model, frames)) < 40.0


def test_long_stream_equivalence_and_work(model: Any) -> None:
    frames = random_frames(48, seed=4)
    chunks, decoder = stream(model, frames)
    streamed = np.concatenate(chunks)
    assert streamed.size == 48 * 2048
    assert snr_db(streamed, decode_frames(model, frames)) >= MIN_SNR_DB
    # Work stays near one-shot: few SNAC calls, little re-decoded context (upstream does 48 x 4 frames).
    assert decoder.decode_calls <= 7
    assert decoder.decoded_frames <= 1.5 * 48


def test_batch_push_equals_frame_by_frame(model: Any) -> None:
    frames = random_frames(9, seed=5)
    by_frame = np.concatenate(stream(model, frames)[0])
    decoder = StreamingDecoder(model)
    at_once = np.concatenate([*decoder.push(frames), decoder.flush()])
    assert at_once.size == by_frame.size == 9 * 2048
    assert snr_db(at_once, by_frame) >= MIN_SNR_DB


def test_short_stream_comes_out_on_flush(model: Any) -> None:
    frames = random_frames(2, seed=6)
    decoder = StreamingDecoder(model)
    assert decoder.push(frames) == []
    tail = decoder.flush()
    np.testing.assert_allclose(tail, decode_frames(model, frames), atol=1e-5)
    with pytest.raises(RuntimeError):
        decoder.push(frames)
    assert StreamingDecoder(model).flush().size == 0


def test_bad_options_and_codes_rejected(model: Any) -> None:
    with pytest.raises(ValueError):
        StreamingDecoder(model, first_chunk=0)
    with pytest.raises(ValueError):
        StreamingDecoder(model).push([[0, 0, 0, 0, 0, 0, 4096]])


def test_round_trip_audio_to_tokens_to_codes(model: Any) -> None:
    audio = torch.randn(1, 1, 5 * 2048, generator=torch.Generator().manual_seed(7)) * 0.1
    with torch.inference_mode():
        codes = [c[0].numpy() for c in model.encode(audio)]
    assert [c.size for c in codes] == [5, 10, 20]
    parser = CodeParser()
    ids = codes_to_token_ids(*codes)
    frames = [f for i in range(0, len(ids), 3) for f in parser.feed(ids[i : i + 3])]  # uneven deltas
    for want, have in zip(codes, frames_to_codes(frames), strict=True):
        np.testing.assert_array_equal(have, want)


def test_noise_disabled_is_deterministic(model: Any) -> None:
    frames = random_frames(2, seed=8)
    np.testing.assert_array_equal(decode_frames(model, frames), decode_frames(model, frames))
    torch.manual_seed(0)
    noisy = build_snac(weights=None, noise=True)
    assert any(isinstance(m, NoiseBlock) for m in noisy.modules())
    assert not np.array_equal(decode_frames(noisy, frames), decode_frames(noisy, frames))
    assert disable_noise(noisy) == 4  # one NoiseBlock per decoder block
    np.testing.assert_array_equal(decode_frames(noisy, frames), decode_frames(noisy, frames))


def test_build_snac_loads_a_local_folder(tmp_path, model: Any) -> None:
    torch.manual_seed(9)
    original = SNAC(**SNAC_24KHZ_CONFIG)
    assert sum(p.numel() for p in original.parameters()) == pytest.approx(19.8e6, rel=0.01)
    tm.save_snac_folder(tmp_path, original)
    loaded = build_snac(weights=str(tmp_path))
    disable_noise(original)
    frames = random_frames(2, seed=9)
    codes = [torch.as_tensor(c).reshape(1, -1) for c in frames_to_codes(frames)]
    with torch.inference_mode():
        expected = original.eval().decode(codes).reshape(-1).numpy()
    np.testing.assert_allclose(decode_frames(loaded, frames), expected, atol=1e-5)


def test_build_snac_missing_weights_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelUnavailableError, match="could not load SNAC weights"):
        build_snac(weights=str(tmp_path))


def test_bench_reports_the_documented_fields() -> None:
    from voicekit.bench import run_snac_bench

    result = run_snac_bench(frames=6, device="cpu", repeats=1)
    assert list(result) == [
        *["frames", "oneshot_s", "stream_s", "ratio", "max_abs_diff", "snr_db", "samples"],
        *["first_audio_frames", "device"],
    ]
    assert result["samples"] == 6 * 2048 and result["first_audio_frames"] == 3
    assert result["snr_db"] >= MIN_SNR_DB and result["device"] == "cpu"
    json.dumps(result)
