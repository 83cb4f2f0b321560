"""Keep a long-running ONNX voice's memory flat.

onnxruntime's CPU arena grows to fit every new input shape and never gives the memory back, so a server that
speaks sentences of every length grows by tens of MB at a time (measured: Piper joe, 600 sentences of 3-40 words,
580 -> 853 MB RSS, still rising; with arena shrinkage after each run it stays at ~650 MB, docs/BENCHMARKS.md).
onnxruntime's own remedy is a run option that shrinks the arena back after each run; the libraries that own the
sessions (piper-tts, kokoro-onnx) call `session.run` without run options, so the session is wrapped.
"""

from __future__ import annotations

from typing import Any

SHRINK_CPU_ARENA = ("memory.enable_memory_arena_shrinkage", "cpu:0")


class ShrinkingSession:
    """An `onnxruntime.InferenceSession` whose `run` gives the CPU arena's growth back after every call."""

    def __init__(self, session: Any) -> None:
        import onnxruntime

        self._session = session
        self._run_options = onnxruntime.RunOptions()
        self._run_options.add_run_config_entry(*SHRINK_CPU_ARENA)

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self._run_options)

    def __getattr__(self, name: str) -> Any:  # get_inputs(), get_providers(), ... of the wrapped session
        return getattr(self._session, name)
