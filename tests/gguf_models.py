"""A tiny Orpheus-shaped GGUF for testing Orpheus on llama.cpp without downloads.

The file has the Orpheus 3B layout that matters to voicekit: architecture "llama", a 156940-id vocabulary
with the Llama-3 control tokens at 128000.. (128000 `<|begin_of_text|>` BOS, 128009 `<|eot_id|>` EOS) and
`<custom_token_N>` at 128256 + N (speech markers 128257.., audio codes from 128266). The tokenizer is GPT-2
byte-level BPE: ids 0..255 are the 256 byte symbols (id == byte value), so any text tokenizes and its ids
are exactly its UTF-8 bytes. llama.cpp refuses a BPE vocabulary without merges, so there is one that real
text never triggers (two NUL bytes -> id 256). Ids 257..127999 hold unique placeholders that no text can
produce (BPE only yields single symbols and the results of merges).

The weights make a bigram model that speaks valid Orpheus audio. The attention output and the FFN down
projection are zero, so the residual stream is just the embedding of the last token. Each embedding is a
large one-hot "next slot" direction plus small noise: an audio token of slot j points to slot (j + 1) % 7,
everything else (start-of-speech included) to slot 0. Output rows of the audio ids of slot k weigh direction
k heavily (plus noise, so sampling picks varied codes), so generation after start-of-speech is audio in the
right 7-slot phase. A quarter of the slot-6 codes (code % 4 == 0) point to an eighth "stop" direction that
only end-of-speech 128258 answers: a stream ends after a whole frame with probability ~1/4 per frame, or
runs into max_tokens.

Hidden size 64, one layer, one head of dimension 64, float16 matrices: about 40 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOCAB_SIZE = 156940
BOS, END_OF_TEXT, START_HEADER, END_HEADER, EOT = 128000, 128001, 128006, 128007, 128009
CUSTOM_TOKEN_BASE = 128256
START_OF_SPEECH, END_OF_SPEECH = 128257, 128258
AUDIO_BASE, CODEBOOK_SIZE, FRAME_TOKENS = 128266, 4096, 7

HIDDEN = 64
FFN = 64
STOP_DIRECTION = FRAME_TOKENS  # directions 0..6 are "next slot"; 7 means "end of speech next"
EMBED_SCALE = 10.0
OUTPUT_SCALE = 4.0
OUTPUT_NOISE = 0.1

# The stuck model's frame; its slot-6 code (% 4 != 0) leads back to slot 0, never to end-of-speech.
STUCK_FRAME = (11, 222, 333, 444, 555, 666, 777)
STUCK_BOOST = 4.0  # doubles those rows' logits: sampling at any usual temperature always picks them

# GGUF token types (gguf.TokenType)
NORMAL, CONTROL = 1, 3


def byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: the printable symbol standing for each byte value 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


NUL_MERGE = f"{chr(256)} {chr(256)}"  # byte 0's symbol is U+0100; merged it is token 256


def stops_after(code: int) -> bool:
    """Whether slot-6 code `code` leads to end-of-speech in the tiny model."""
    return code % 4 == 0


def vocabulary() -> tuple[list[str], list[int]]:
    """Token texts and types, index = id."""
    tokens = [*byte_symbols(), NUL_MERGE.replace(" ", ""), *(f"[unused{i}]" for i in range(257, BOS))]
    named = {BOS: "<|begin_of_text|>", END_OF_TEXT: "<|end_of_text|>", START_HEADER: "<|start_header_id|>",
             END_HEADER: "<|end_header_id|>", EOT: "<|eot_id|>"}
    tokens += [named.get(i, f"<|reserved_special_token_{i - BOS}|>") for i in range(BOS, CUSTOM_TOKEN_BASE)]
    tokens += [f"<custom_token_{n}>" for n in range(VOCAB_SIZE - CUSTOM_TOKEN_BASE)]
    types = [NORMAL] * BOS + [CONTROL] * (VOCAB_SIZE - BOS)
    return tokens, types


def next_direction() -> np.ndarray:
    """For every id, the direction its embedding points to (which slot comes next, or stop)."""
    direction = np.zeros(VOCAB_SIZE, dtype=np.int64)
    audio = np.arange(AUDIO_BASE, VOCAB_SIZE)
    offset = audio - AUDIO_BASE
    slot, code = offset // CODEBOOK_SIZE, offset % CODEBOOK_SIZE
    in_frame = slot < FRAME_TOKENS  # ids past 7 * 4096 are never valid audio: leave them at 0
    direction[audio[in_frame]] = (slot[in_frame] + 1) % FRAME_TOKENS
    last_slot = in_frame & (slot == FRAME_TOKENS - 1) & np.vectorize(stops_after)(code)
    direction[audio[last_slot]] = STOP_DIRECTION
    return direction


def weights(seed: int = 0, stuck: bool = False) -> dict[str, np.ndarray]:
    """The tensors of the bigram model, named as llama.cpp's llama architecture expects.

    `stuck`: one code per slot (`STUCK_FRAME`) outweighs all others by far, so the model speaks that one frame
    over and over and never ends speech (its slot-6 code does not lead to a stop): Orpheus's looping failure.
    """
    rng = np.random.default_rng(seed)
    embed = rng.normal(0.0, 0.01, (VOCAB_SIZE, HIDDEN)).astype(np.float32)
    embed[np.arange(VOCAB_SIZE), next_direction()] += EMBED_SCALE
    output = rng.normal(0.0, 0.01, (VOCAB_SIZE, HIDDEN)).astype(np.float32)
    for slot in range(FRAME_TOKENS):
        rows = slice(AUDIO_BASE + slot * CODEBOOK_SIZE, AUDIO_BASE + (slot + 1) * CODEBOOK_SIZE)
        output[rows] = rng.normal(0.0, OUTPUT_NOISE, (CODEBOOK_SIZE, HIDDEN))
        output[rows, slot] += OUTPUT_SCALE
    output[END_OF_SPEECH, STOP_DIRECTION] += OUTPUT_SCALE
    if stuck:
        for slot, code in enumerate(STUCK_FRAME):
            output[AUDIO_BASE + slot * CODEBOOK_SIZE + code, slot] += STUCK_BOOST
    small = lambda *shape: rng.normal(0.0, 0.02, shape).astype(np.float16)  # noqa: E731
    return {
        "token_embd.weight": embed.astype(np.float16),
        "output_norm.weight": np.ones(HIDDEN, dtype=np.float32),
        "output.weight": output.astype(np.float16),
        "blk.0.attn_norm.weight": np.ones(HIDDEN, dtype=np.float32),
        "blk.0.attn_q.weight": small(HIDDEN, HIDDEN),
        "blk.0.attn_k.weight": small(HIDDEN, HIDDEN),
        "blk.0.attn_v.weight": small(HIDDEN, HIDDEN),
        "blk.0.attn_output.weight": np.zeros((HIDDEN, HIDDEN), dtype=np.float16),  # no attention contribution
        "blk.0.ffn_norm.weight": np.ones(HIDDEN, dtype=np.float32),
        "blk.0.ffn_gate.weight": small(FFN, HIDDEN),
        "blk.0.ffn_up.weight": small(FFN, HIDDEN),
        "blk.0.ffn_down.weight": np.zeros((HIDDEN, FFN), dtype=np.float16),  # no FFN contribution
    }


def build_orpheus_gguf(path: str | Path, *, seed: int = 0, stuck: bool = False) -> Path:
    """Write the tiny Orpheus-shaped GGUF to `path` (kept when it already exists); `stuck`: see `weights`."""
    import gguf

    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name("tiny-orpheus-test")
    writer.add_context_length(131072)  # Llama 3.2's; the KV cache follows the engine's n_ctx, not this
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(1)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(1)
    writer.add_head_count_kv(1)
    writer.add_rope_dimension_count(HIDDEN)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB_SIZE)
    tokens, types = vocabulary()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")  # GPT-2's split regex; "llama-bpe" would look up whole words first
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([NUL_MERGE])
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOT)
    writer.add_add_bos_token(True)
    for name, tensor in weights(seed, stuck).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)  # a crash mid-write never leaves a half file that the next run would reuse
    return path
