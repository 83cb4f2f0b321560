"""`python -m voicekit bench llm`: how fast llama.cpp decodes a chat model on this machine (tokens per second).

    python -m voicekit bench llm --gguf model.gguf --json out.json        # a real GGUF
    python -m voicekit bench llm --shape qwen2.5-0.5b --json out.json     # the shape of one, random weights

Decode speed depends on the model's shape and quantisation, not on its weights, so `--shape` measures a model
before downloading it: it writes a GGUF of that shape with random weights (llama architecture, the shape's
sizes and vocabulary; needs the `gguf` package of requirements-dev.txt), quantises it to Q4_K_M with
llama.cpp's own quantiser, and times it like a real one. Only the speed means anything: the text is noise.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicekit.bench.pipeline import machine_info


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only model (a Qwen2.5 is llama-shaped, plus small q/k/v biases)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int


SHAPES: dict[str, Shape] = {
    "smollm2-135m": Shape(576, 30, 9, 3, 1536, 49152),  # the bundled chat model, for comparison
    "qwen2.5-0.5b": Shape(896, 24, 14, 2, 4864, 151936),
    "qwen2.5-1.5b": Shape(1536, 28, 12, 2, 8960, 151936),
}


def shaped_gguf(shape: Shape, folder: Path, seed: int = 0) -> Path:
    """A Q4_K_M GGUF of `shape` with random weights in `folder` (written as f16, then quantised)."""
    import gguf
    import llama_cpp
    import numpy as np

    rng = np.random.default_rng(seed)
    source, target = folder / "shape-f16.gguf", folder / "shape-q4_k_m.gguf"
    writer = gguf.GGUFWriter(str(source), "llama")
    writer.add_name("voicekit-shape")
    writer.add_context_length(4096)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.hidden // shape.heads)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(shape.vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    symbols = [chr(0x100 + i) for i in range(256)]  # any byte-level alphabet does for timing
    writer.add_token_list([*symbols, *(f"[t{i}]" for i in range(256, shape.vocab))])
    writer.add_token_types([1] * shape.vocab)
    writer.add_token_merges([f"{symbols[0]} {symbols[1]}"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)

    def weights(*dims: int) -> Any:
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    kv = shape.kv_heads * (shape.hidden // shape.heads)
    writer.add_tensor("token_embd.weight", weights(shape.vocab, shape.hidden))
    writer.add_tensor("output_norm.weight", np.ones(shape.hidden, dtype=np.float32))
    for layer in range(shape.layers):
        prefix = f"blk.{layer}."
        for name, dims in (("attn_q", (shape.hidden, shape.hidden)), ("attn_k", (kv, shape.hidden)),
                           ("attn_v", (kv, shape.hidden)), ("attn_output", (shape.hidden, shape.hidden)),
                           ("ffn_gate", (shape.ffn, shape.hidden)), ("ffn_up", (shape.ffn, shape.hidden)),
                           ("ffn_down", (shape.hidden, shape.ffn))):
            writer.add_tensor(f"{prefix}{name}.weight", weights(*dims))
        writer.add_tensor(f"{prefix}attn_norm.weight", np.ones(shape.hidden, dtype=np.float32))
        writer.add_tensor(f"{prefix}ffn_norm.weight", np.ones(shape.hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise RuntimeError("llama.cpp could not quantise the shaped model")
    source.unlink()
    return target


def decode_speed(path: Path, tokens: int = 64, repeats: int = 3, threads: int | None = None) -> dict[str, Any]:
    """Tokens per second of llama.cpp decoding `tokens` tokens after a short prompt (median of `repeats`)."""
    from voicekit.engines.llamacpp import LlamaCppEngine, default_threads

    engine = LlamaCppEngine(path, n_ctx=512, n_threads=threads or default_threads())
    llm = engine._llm  # the engine's own Llama: the same build and threads as a kit uses
    prompt = llm.tokenize(b"Hello there, how are you today?", add_bos=True)
    rates, prompt_s = [], []
    for _ in range(repeats):
        llm.reset()
        started = time.perf_counter()
        first = None
        for count, _token in enumerate(llm.generate(prompt, top_k=40, top_p=0.9, temp=0.7), start=1):
            if first is None:
                first = time.perf_counter()
            if count >= tokens:
                break
        done = time.perf_counter()
        prompt_s.append((first or done) - started)
        rates.append((tokens - 1) / (done - (first or done)) if first and done > first else 0.0)
    llm.close()
    return {"tokens_per_s": round(statistics.median(rates), 1), "prompt_s": round(statistics.median(prompt_s), 3),
            "tokens": tokens, "repeats": repeats, "threads": threads or default_threads(),
            "file_mb": round(path.stat().st_size / 1e6, 1)}


def run_llm_bench(gguf: str | None = None, shapes: list[str] | None = None, tokens: int = 64, repeats: int = 3,
                  threads: int | None = None) -> dict[str, Any]:
    """Decode speed of a GGUF and/or of model shapes; JSON-ready."""
    results: dict[str, Any] = {"machine": machine_info(), "models": {}}
    if gguf:
        results["models"][Path(gguf).name] = decode_speed(Path(gguf), tokens, repeats, threads)
    for name in shapes or []:
        if name not in SHAPES:
            raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")
        with tempfile.TemporaryDirectory(prefix="voicekit-shape-") as folder:
            path = shaped_gguf(SHAPES[name], Path(folder))
            results["models"][f"{name} (Q4_K_M, random weights)"] = decode_speed(path, tokens, repeats, threads)
    return results
