"""Voice activity: Silero VAD v6 on onnxruntime, the ONNX file that ships inside the faster-whisper wheel.

`SileroVAD` scores 16 kHz audio frame by frame (512 samples, 32 ms), carrying the network's state and the last
64 samples of context between calls, so a live stream is scored exactly as the whole signal would be.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
FRAME = 512  # samples per score: 32 ms at 16 kHz
CONTEXT = 64  # samples of the previous frame the v6 network sees before each frame
FRAME_S = FRAME / SAMPLE_RATE


def bundled_model_path() -> Path:
    """The Silero VAD v6 ONNX file inside the installed faster-whisper package."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or spec.origin is None:
        raise RuntimeError('voice input needs the faster-whisper package (pip install "voicekit[listen]")')
    path = Path(spec.origin).parent / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise RuntimeError(f"faster-whisper has no Silero VAD model at {path}: reinstall faster-whisper==1.2.1")
    return path


@functools.cache
def _inference_session(path: str) -> Any:
    """One onnxruntime session per model file, shared by every stream: the network's state lives in each
    SileroVAD, and `run()` may be called from several threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1  # a few microseconds of work per frame: more threads only contend
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=options)


class SileroVAD:
    """Speech probabilities of 16 kHz float32 mono audio, one per 512-sample frame; one instance per stream
    (cheap: the model is loaded once per process)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._session = _inference_session(str(path or bundled_model_path()))
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next frame starts a new one."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def frame_probability(self, frame: np.ndarray) -> float:
        """Speech probability of one 512-sample frame (continuing the stream)."""
        samples = np.asarray(frame, dtype=np.float32)
        if samples.shape != (FRAME,):
            raise ValueError(f"a VAD frame is {FRAME} samples at {SAMPLE_RATE} Hz, not {samples.shape}")
        batch = np.concatenate([self._context, samples])[None, :]
        output, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = samples[-CONTEXT:].copy()
        return float(np.asarray(output).reshape(-1)[0])

    def push(self, samples: np.ndarray) -> list[float]:
        """Scores of every whole frame completed by `samples` (16 kHz float32); a partial frame waits."""
        self._pending = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).reshape(-1)])
        whole = len(self._pending) // FRAME
        scores = [self.frame_probability(self._pending[i * FRAME:(i + 1) * FRAME]) for i in range(whole)]
        self._pending = self._pending[whole * FRAME:]
        return scores

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Scores of a whole signal from a fresh state (a trailing partial frame is padded with silence)."""
        self.reset()
        signal = np.asarray(samples, dtype=np.float32).reshape(-1)
        padded = np.pad(signal, (0, -len(signal) % FRAME))
        scores = np.array(self.push(padded), dtype=np.float32)
        self.reset()
        return scores
