"""SnacBatcher with a random-weight SNAC 24 kHz: batched results equal lone decodes, windows that wait
together share one call, lengths and the frame cap split calls, errors reach the right streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from voicekit.bench import snr_db
from voicekit.tts.snac_batcher import CUDA_BATCH_FRAMES, SnacBatcher, decode_batch, default_batch_frames
from voicekit.tts.snac_decoder import StreamingDecoder, decode_frames

torch = pytest.importorskip("torch")
pytest.importorskip("snac")

EXACT_DB = 100.0  # batched vs lone decode: float rounding only (measured ~140 dB)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def model(random_snac: Any) -> Any:
    return random_snac


def random_frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=(n, 7))


class GatedModel:
    """The real SNAC model whose first decode waits for `gate`, so a test can queue windows behind it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.gate = threading.Event()
        self.calls: list[int] = []  # batch size of every decode call

    def parameters(self) -> Any:
        return self.model.parameters()

    def decode(self, codes: list[Any]) -> Any:
        if not self.calls:
            assert self.gate.wait(60), "the test never opened the gate"
        self.calls.append(int(codes[0].shape[0]))
        return self.model.decode(codes)


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def queue_behind_a_busy_model(batcher: SnacBatcher, gated: GatedModel, windows: list[np.ndarray]) -> list[Any]:
    """Decode a first window that holds the model busy, queue `windows` behind it, then let it run."""
    with ThreadPoolExecutor(len(windows) + 1) as pool:
        first = pool.submit(batcher.decode, random_frames(3, seed=99))
        wait_for(lambda: batcher._busy)
        futures = [pool.submit(batcher.decode, window) for window in windows]
        wait_for(lambda: len(batcher._queue) == len(windows))
        gated.gate.set()
        first.result(timeout=60)
        return [future.exception(timeout=60) or future.result() for future in futures]


def test_batched_decode_equals_lone_decodes(model: Any) -> None:
    windows = [random_frames(5, seed) for seed in range(3)]
    batched = decode_batch(model, windows)
    for window, audio in zip(windows, batched, strict=True):
        alone = decode_frames(model, window)
        assert audio.dtype == np.float32 and audio.shape == (5 * 2048,)
        assert snr_db(audio, alone) >= EXACT_DB


def test_decode_batch_refuses_mixed_lengths(model: Any) -> None:
    with pytest.raises(ValueError, match="one length"):
        decode_batch(model, [random_frames(3, 0), random_frames(4, 1)])


def test_windows_that_wait_together_share_one_call(model: Any) -> None:
    gated = GatedModel(model)
    batcher = SnacBatcher(gated, max_batch_frames=64)  # type: ignore[arg-type]
    windows = [random_frames(4, seed) for seed in range(3)]
    results = queue_behind_a_busy_model(batcher, gated, windows)
    assert gated.calls == [1, 3], "the three queued windows must be decoded in one call"
    assert batcher.stats.calls == 2 and batcher.stats.windows == 4 and batcher.stats.largest_batch == 3
    for window, audio in zip(windows, results, strict=True):
        assert snr_db(audio, decode_frames(model, window)) >= EXACT_DB


def test_lengths_and_the_frame_cap_split_calls(model: Any) -> None:
    gated = GatedModel(model)
    batcher = SnacBatcher(gated, max_batch_frames=8)  # type: ignore[arg-type]
    windows = [random_frames(4, 0), random_frames(3, 1), random_frames(4, 2), random_frames(4, 3)]
    results = queue_behind_a_busy_model(batcher, gated, windows)
    # 4-frame windows: 8 // 4 = 2 per call, so [2, 1]; the 3-frame window alone.
    assert sorted(gated.calls[1:]) == [1, 1, 2]
    assert [len(audio) for audio in results] == [4 * 2048, 3 * 2048, 4 * 2048, 4 * 2048]


def test_no_batching_decodes_one_window_per_call(model: Any) -> None:
    gated = GatedModel(model)
    batcher = SnacBatcher(gated, max_batch_frames=0)  # type: ignore[arg-type]
    queue_behind_a_busy_model(batcher, gated, [random_frames(4, seed) for seed in range(3)])
    assert gated.calls == [1, 1, 1, 1]


def test_a_failed_call_fails_its_own_windows_and_the_batcher_goes_on(model: Any) -> None:
    gated = GatedModel(model)
    batcher = SnacBatcher(gated, max_batch_frames=64)  # type: ignore[arg-type]
    bad = np.full((5, 7), 5000)  # codes past the codebook: SNAC's embedding lookup raises
    good = random_frames(4, 1)
    results = queue_behind_a_busy_model(batcher, gated, [bad, good])
    assert isinstance(results[0], (IndexError, RuntimeError))
    assert snr_db(results[1], decode_frames(model, good)) >= EXACT_DB
    assert len(batcher.decode(random_frames(2, 3))) == 2 * 2048, "the batcher must not stay busy after an error"


def test_concurrent_streams_through_one_batcher_match_lone_streams(model: Any) -> None:
    batcher = SnacBatcher(model, max_batch_frames=CUDA_BATCH_FRAMES)
    codes = [random_frames(20, seed) for seed in range(3)]
    start = threading.Barrier(len(codes))

    def stream(frames: np.ndarray, decode: Any) -> tuple[np.ndarray, StreamingDecoder]:
        decoder = StreamingDecoder(model, decode_window=decode)
        if decode is not None:
            start.wait(30)
        chunks = [chunk for frame in frames for chunk in decoder.push([frame])]
        return np.concatenate([*chunks, decoder.flush()]), decoder

    with ThreadPoolExecutor(len(codes)) as pool:
        together = list(pool.map(lambda frames: stream(frames, batcher.decode), codes))
    for frames, (audio, _decoder) in zip(codes, together, strict=True):
        alone, lone_decoder = stream(frames, None)
        assert audio.shape == (20 * 2048,)
        assert snr_db(audio, alone) >= EXACT_DB
    # Every window of every stream went through the batcher (same schedule as a lone stream).
    assert batcher.stats.windows == 3 * lone_decoder.decode_calls
    assert batcher.stats.frames == 3 * lone_decoder.decoded_frames


def test_default_is_no_batching_on_cpu(model: Any) -> None:
    assert default_batch_frames(model) == 0
    assert SnacBatcher(model).max_batch_frames == 0


def test_bench_cli_times_concurrent_streams(tmp_path, repo_root) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "snac.json"
    command = [sys.executable, "-m", "voicekit", "bench", "snac", "--frames", "6", "--repeats", "1",
               "--streams", "2", "--device", "cpu", "--json", str(out)]
    done = subprocess.run(command, cwd=repo_root, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["frames"] == 6 and result["samples"] == 6 * 2048 and result["device"] == "cpu"
    concurrent = result["concurrent"]
    assert list(concurrent) == ["streams", "unbatched_s", "batched_s", "batch_gain", "calls_unbatched",
                                "calls_batched", "largest_batch", "min_snr_db"]
    assert concurrent["streams"] == 2 and concurrent["min_snr_db"] >= EXACT_DB
    assert concurrent["calls_batched"] <= concurrent["calls_unbatched"]
