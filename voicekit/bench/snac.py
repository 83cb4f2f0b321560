"""Benchmark: streamed SNAC decoding (`StreamingDecoder`) against one one-shot decode of the same codes.

Random codes and a random-weight SNAC 24 kHz (noise off, seeded), so it needs no download. Frames are
pushed one at a time, as an engine would deliver them. Timings are the best of ``repeats`` runs, one-shot
and stream interleaved so that load from other processes hits both alike.

    python -m voicekit bench snac --frames 48 --json out.json
    python -m voicekit bench snac --streams 4 --json out.json   # also: 4 concurrent streams, batched or not
    python -m voicekit bench snac --upstream-window --json out.json   # also: upstream's 4-frame window decoder
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from voicekit.tts.orpheus_codes import SAMPLES_PER_FRAME


def snr_db(signal: np.ndarray, reference: np.ndarray) -> float:
    """SNR of ``signal`` against ``reference`` in dB (capped at 200 dB for identical arrays)."""
    noise = float(np.sum((signal.astype(np.float64) - reference) ** 2))
    power = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return 200.0
    return min(200.0, 10.0 * np.log10(power / noise))


def _stream(model: Any, frames: np.ndarray, decode_window: Any = None, **options: int) -> tuple[np.ndarray, int | None]:
    """Push ``frames`` one at a time, then flush: (the whole audio, frames in when the first audio left)."""
    from voicekit.tts.snac_decoder import StreamingDecoder

    decoder = StreamingDecoder(model, decode_window=decode_window, **options)
    chunks = [chunk for frame in frames for chunk in decoder.push([frame])]
    chunks.append(decoder.flush())
    return np.concatenate(chunks), decoder.first_audio_frames


def _upstream_window(model: Any, frames: np.ndarray) -> np.ndarray:
    """Upstream's decoder: re-decode the last 4 frames for every new frame, keep the second one."""
    from voicekit.tts.snac_decoder import decode_frames

    parts = [
        decode_frames(model, frames[i - 4 : i])[SAMPLES_PER_FRAME : 2 * SAMPLES_PER_FRAME]
        for i in range(4, len(frames) + 1)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _concurrent_streams(decode: Any, model: Any, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Stream every code array in its own thread, all started together, through one ``decode``."""
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Barrier(len(codes))

    def one(frames: np.ndarray) -> np.ndarray:
        start.wait()
        return _stream(model, frames, decode)[0]

    with ThreadPoolExecutor(len(codes)) as pool:
        return list(pool.map(one, codes))


def run_streams_bench(model: Any, streams: int, frames: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Time ``streams`` concurrent streams through one `SnacBatcher`, with and without batching.

    All streams start together and push one frame at a time as fast as they can, which lines up their
    windows: the best case for batching. Fields: streams, unbatched_s, batched_s, batch_gain
    (unbatched / batched), calls_unbatched, calls_batched, largest_batch, min_snr_db (batched streams vs
    the same streams unbatched).
    """
    from voicekit.tts.snac_batcher import CUDA_BATCH_FRAMES, SnacBatcher

    rng = np.random.default_rng(seed + 1)
    codes = [rng.integers(0, 4096, size=(frames, 7)) for _ in range(streams)]
    best = {"unbatched": float("inf"), "batched": float("inf")}
    outputs: dict[str, list[np.ndarray]] = {}
    batchers: dict[str, SnacBatcher] = {}
    for _ in range(repeats):
        for name, cap in (("unbatched", 0), ("batched", CUDA_BATCH_FRAMES)):
            batcher = batchers[name] = SnacBatcher(model, max_batch_frames=cap)
            t, outputs[name] = _timed(lambda b=batcher: _concurrent_streams(b.decode, model, codes))
            best[name] = min(best[name], t)
    return {
        "streams": streams,
        "unbatched_s": round(best["unbatched"], 4),
        "batched_s": round(best["batched"], 4),
        "batch_gain": round(best["unbatched"] / best["batched"], 3),
        "calls_unbatched": batchers["unbatched"].stats.calls,
        "calls_batched": batchers["batched"].stats.calls,
        "largest_batch": batchers["batched"].stats.largest_batch,
        "min_snr_db": round(min(map(snr_db, outputs["batched"], outputs["unbatched"])), 2),
    }


_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _timed(fn: Any, clock: str = "wall") -> tuple[float, Any]:
    now = _CLOCKS[clock]
    start = now()
    result = fn()
    return now() - start, result


def run_snac_bench(
    frames: int = 48,
    device: str | None = None,
    repeats: int = 3,
    *,
    seed: int = 0,
    upstream_window: bool = False,
    clock: str = "wall",
    streams: int = 1,
    **stream_options: int,
) -> dict[str, Any]:
    """Time one-shot vs streamed decoding of ``frames`` random frames; return the JSON-ready results.

    Fields: frames, oneshot_s, stream_s, ratio (stream / one-shot), max_abs_diff, snr_db (stream vs
    one-shot), samples (== frames * 2048), first_audio_frames, device. ``upstream_window=True`` adds
    upstream_s / upstream_ratio for the 4-frame sliding window decoder upstream uses. ``clock="cpu"``
    times with process CPU time (steadier on a loaded machine) and adds ``"clock": "cpu"``.
    ``stream_options`` go to `StreamingDecoder` (first_chunk, max_chunk, growth, left_context, lookahead).
    ``streams > 1`` adds ``"concurrent"``: that many streams at once, batched and not (`run_streams_bench`).
    """
    import torch

    from voicekit.device import torch_device
    from voicekit.tts.snac_decoder import build_snac, decode_frames

    if frames < 1 or repeats < 1 or clock not in _CLOCKS:
        raise ValueError(f"frames and repeats must be >= 1 and clock one of {sorted(_CLOCKS)}")
    device = device or torch_device()
    torch.manual_seed(seed)
    model = build_snac(device=device, weights=None, noise=False)
    codes = np.random.default_rng(seed).integers(0, 4096, size=(frames, 7))
    decode_frames(model, codes[: min(frames, 4)])  # warm-up: first-call allocations, kernel selection

    oneshot_s = stream_s = upstream_s = float("inf")
    for _ in range(repeats):
        t, oneshot = _timed(lambda: decode_frames(model, codes), clock)
        oneshot_s = min(oneshot_s, t)
        t, (streamed, first_audio) = _timed(lambda: _stream(model, codes, **stream_options), clock)
        stream_s = min(stream_s, t)
        if upstream_window:
            upstream_s = min(upstream_s, _timed(lambda: _upstream_window(model, codes), clock)[0])

    result: dict[str, Any] = {
        "frames": frames,
        "oneshot_s": round(oneshot_s, 4),
        "stream_s": round(stream_s, 4),
        "ratio": round(stream_s / oneshot_s, 3),
        "max_abs_diff": float(np.max(np.abs(streamed - oneshot))),
        "snr_db": round(snr_db(streamed, oneshot), 2),
        "samples": int(streamed.size),
        "first_audio_frames": first_audio,
        "device": str(device),
    }
    if clock != "wall":
        result["clock"] = clock
    if upstream_window:
        result["upstream_s"] = round(upstream_s, 4)
        result["upstream_ratio"] = round(upstream_s / oneshot_s, 3)
    if streams > 1:
        result["concurrent"] = run_streams_bench(model, streams, frames, repeats, seed)
    return result
