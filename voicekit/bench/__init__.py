"""Benchmarks behind `python -m voicekit bench pipeline|snac --json FILE` (one CLI: voicekit/cli.py).

pipeline.py: time to first audio, total time and RTF of a kit by case and mode; snac.py: streamed against
one-shot SNAC decoding, and SNAC batching across concurrent streams. Figures are published with their machine
in docs/BENCHMARKS.md; speed targets are checked here, never by timed unit tests.
"""

from voicekit.bench.pipeline import CHAT_PROMPTS, SAY_TEXTS, machine_info, run_pipeline_bench
from voicekit.bench.snac import run_snac_bench, run_streams_bench, snr_db

__all__ = ["CHAT_PROMPTS", "SAY_TEXTS", "machine_info", "run_pipeline_bench", "run_snac_bench", "run_streams_bench",
           "snr_db"]
