"""Orpheus on llama.cpp: Orpheus 3B as a GGUF, for machines without vLLM (CPU-only laptops, Macs, small GPUs).

`build_orpheus_backend` (orpheus.py) picks this engine when `tts_model` names a GGUF, or when the cpu preset
speaks with Orpheus and names no model (then the community Q4_K_M GGUF most llama.cpp Orpheus projects use).
The backend logic is the same as on vLLM: prompt ids from the GGUF's own tokenizer, every token id parsed.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from voicekit.engines.gguf_files import is_gguf_spec
from voicekit.tts.orpheus_codes import CODEBOOK_SIZE, MAX_MAX_TOKENS

log = logging.getLogger("voicekit.orpheus")

DEFAULT_ORPHEUS_GGUF = "isaiahbjork/orpheus-3b-0.1-ft-Q4_K_M-GGUF/orpheus-3b-0.1-ft-q4_k_m.gguf"

#: Prompt ids besides the text's: 5 control ids around it, BOS, and "voice: " (a few tokens).
PROMPT_OVERHEAD = 16

#: llama.cpp's top-p sorts the whole 156940-id vocabulary on every token when top-k is off. Measured through
#: LlamaCppEngine on the 2-core dev CPU with the test GGUF (same vocabulary): 18 ms per token with top-k off,
#: 4.3-4.9 ms with top-k 4096, 2.9 ms greedy; real time needs 83 tokens/s (12 ms each). A slot has only 4096
#: valid codes, so a top-k of one codebook drops only ids far down the distribution before top-p.
LLAMACPP_TOP_K = CODEBOOK_SIZE


def orpheus_gguf_spec(settings: Any) -> str | None:
    """The GGUF the settings ask Orpheus to run on llama.cpp, or None (vLLM or `vllm serve`)."""
    if settings.tts_url:
        return None
    if is_gguf_spec(settings.tts_model):
        return settings.tts_model.strip()
    if not settings.tts_model and settings.preset == "cpu":
        return DEFAULT_ORPHEUS_GGUF
    return None


def orpheus_context(max_text_chars: int) -> int:
    """llama.cpp context for Orpheus: the longest accepted text's prompt plus the largest generation budget.

    A sentence is at most `max_text_chars` characters, and byte-level BPE gives at most one token per byte
    (English text: per character). The budget is capped at `MAX_MAX_TOKENS` (~43 s of audio). Rounded up to
    256. The default 2000 characters give 5632 tokens: ~616 MiB of f16 KV cache for the 3B model.
    """
    need = PROMPT_OVERHEAD + max_text_chars + MAX_MAX_TOKENS
    return math.ceil(need / 256) * 256


def build_llamacpp_engine(settings: Any, spec: str) -> Any:
    """A `LlamaCppEngine` over the Orpheus GGUF `spec` (a local file, or downloaded from the hub)."""
    from voicekit.engines.gguf_files import resolve_gguf
    from voicekit.engines.llamacpp import LlamaCppEngine

    path = resolve_gguf(spec, token=settings.hf_token or None)
    engine = LlamaCppEngine(path, n_ctx=orpheus_context(settings.max_text_chars),
                            n_threads=settings.n_threads or None, n_gpu_layers=settings.n_gpu_layers)
    log.info("Orpheus on llama.cpp: %s (n_ctx %d, %s GPU layers)", path, engine.n_ctx,
             "all" if engine.n_gpu_layers == -1 else engine.n_gpu_layers)
    return engine
