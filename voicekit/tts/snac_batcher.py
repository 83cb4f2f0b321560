"""One SNAC model shared by concurrent Orpheus streams: decodes run one at a time, and windows that wait
together are decoded in one batched call.

Each stream's `StreamingDecoder` hands its windows (frames with their context) to `SnacBatcher.decode`
from a worker thread. The first caller that finds the model idle decodes everything queued so far and
the rest wait for their results, so batching never adds a delay: a window waits only while the model is
busy, exactly as it would behind a lock. Only windows of the same length share a call (SNAC's
convolutions see a batch row exactly as they see a lone window, so results match an unbatched decode to
float rounding), and a call holds at most ``max_batch_frames`` frames.

Whether batching pays depends on the device. On a CPU one call is compute-bound: measured on 2 cores, one
call of 4 windows ran 0.5x-1.4x as fast as 4 separate calls (long windows slower), and 4 concurrent streams
took 1.2x-1.4x as long batched, so the CPU default is no batching. On a GPU a small SNAC call is bound by kernel
launches, which a batch shares; the CUDA default allows 4 of the longest streaming windows per call
(docs/BENCHMARKS.md says what has and has not been measured).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from voicekit.tts.orpheus_codes import frames_to_codes
from voicekit.tts.snac_decoder import decode_code_rows, model_device

if TYPE_CHECKING:
    from snac import SNAC

#: Frames one call may hold on CUDA: 4 of the longest streaming windows (32 new + 2 + 2 context frames).
CUDA_BATCH_FRAMES = 4 * 36


def default_batch_frames(model: Any) -> int:
    """``CUDA_BATCH_FRAMES`` for a model on a GPU, 0 (no batching) on a CPU, where it does not pay."""
    return CUDA_BATCH_FRAMES if model_device(model).type == "cuda" else 0


def decode_batch(model: SNAC, windows: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Decode windows of equal frame count in one SNAC call; return one float32 array per window."""
    if len({len(window) for window in windows}) != 1:
        raise ValueError("a batch needs windows of one length")
    per_window = [frames_to_codes(window) for window in windows]
    return list(decode_code_rows(model, *(np.stack([codes[level] for codes in per_window]) for level in range(3))))


@dataclass
class _Job:
    frames: np.ndarray
    audio: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass
class BatchStats:
    """What the batcher did: SNAC calls made, windows and frames decoded, the largest batch."""

    calls: int = 0
    windows: int = 0
    frames: int = 0
    largest_batch: int = 0


class SnacBatcher:
    """Thread-safe SNAC decoding for many streams (see the module docstring)."""

    def __init__(self, model: SNAC, max_batch_frames: int | None = None) -> None:
        self.model = model
        self.max_batch_frames = default_batch_frames(model) if max_batch_frames is None else max_batch_frames
        self.stats = BatchStats()
        self._changed = threading.Condition()
        self._queue: list[_Job] = []
        self._busy = False

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """Decode one window of frames (n x 7 codes) to n * 2048 float32 samples; blocks until done."""
        job = _Job(np.asarray(frames, dtype=np.int64))
        with self._changed:
            self._queue.append(job)
            while self._busy and not job.done:
                self._changed.wait()
            if not job.done:  # the model is idle: this thread decodes everything queued, its own job included
                self._busy = True
                batch, self._queue = self._queue, []
        if not job.done:
            try:
                self._run(batch)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()
        if job.error is not None:
            raise job.error
        assert job.audio is not None
        return job.audio

    def _run(self, jobs: list[_Job]) -> None:
        for group in self._groups(jobs):
            try:
                results = decode_batch(self.model, [job.frames for job in group])
            except BaseException as error:  # each waiting stream gets the error of its own call
                results = [None] * len(group)
                for job in group:
                    job.error = error
            for job, audio in zip(group, results, strict=True):
                job.audio = audio
            self._count(group)
            for job in group:
                job.done = True  # last: a waiter may return as soon as it sees this

    def _groups(self, jobs: list[_Job]) -> list[list[_Job]]:
        """Split jobs into calls: equal lengths only, at most ``max_batch_frames`` frames (or one window)."""
        by_length: dict[int, list[_Job]] = {}
        for job in jobs:
            by_length.setdefault(len(job.frames), []).append(job)
        groups: list[list[_Job]] = []
        for length, same in by_length.items():
            per_call = max(1, self.max_batch_frames // max(length, 1))
            groups.extend(same[i : i + per_call] for i in range(0, len(same), per_call))
        return groups

    def _count(self, group: list[_Job]) -> None:
        stats = self.stats
        stats.calls += 1
        stats.windows += len(group)
        stats.frames += sum(len(job.frames) for job in group)
        stats.largest_batch = max(stats.largest_batch, len(group))
