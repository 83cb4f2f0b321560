"""Orpheus on llama.cpp: Orpheus 3B as a GGUF, for machines without vLLM (CPU-only laptops, Macs, small GPUs).

The wiring (voicekit/build.py) picks this engine when `tts_model` names a GGUF, or when the cpu preset speaks
with Orpheus and names no model (then `DEFAULT_ORPHEUS_GGUF`, the community Q4_K_M GGUF most llama.cpp Orpheus
projects use).
The backend logic is the same as on vLLM: prompt ids from the GGUF's own tokenizer, every token id parsed.
"""

from __future__ import annotations

import math

from voicekit.tts.orpheus_codes import CODEBOOK_SIZE, MAX_MAX_TOKENS

DEFAULT_ORPHEUS_GGUF = "isaiahbjork/orpheus-3b-0.1-ft-Q4_K_M-GGUF/orpheus-3b-0.1-ft-q4_k_m.gguf"

#: Prompt ids besides the text's: 5 control ids around it, BOS, and "voice: " (a few tokens).
PROMPT_OVERHEAD = 16

#: llama.cpp's top-p sorts the whole 156940-id vocabulary on every token when top-k is off. Measured through
#: LlamaCppEngine on the 2-core dev CPU with the test GGUF (same vocabulary): 18 ms per token with top-k off,
#: 4.3-4.9 ms with top-k 4096, 2.9 ms greedy; real time needs 83 tokens/s (12 ms each). A slot has only 4096
#: valid codes, so a top-k of one codebook drops only ids far down the distribution before top-p.
LLAMACPP_TOP_K = CODEBOOK_SIZE


def orpheus_context(max_text_chars: int) -> int:
    """llama.cpp context for Orpheus: the longest accepted text's prompt plus the largest generation budget.

    A sentence is at most `max_text_chars` characters, and byte-level BPE gives at most one token per byte
    (English text: per character). The budget is capped at `MAX_MAX_TOKENS` (~43 s of audio). Rounded up to
    256. The default 2000 characters give 5632 tokens: ~616 MiB of f16 KV cache for the 3B model.
    """
    need = PROMPT_OVERHEAD + max_text_chars + MAX_MAX_TOKENS
    return math.ceil(need / 256) * 256
