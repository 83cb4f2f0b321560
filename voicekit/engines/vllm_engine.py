"""In-process vLLM engine: one `AsyncLLM` (V1) per model, streaming token deltas.

Each `VLLMEngine` owns one vLLM `AsyncLLM`, whose engine core runs in its own child process, so a chat
model and the Orpheus speech model can live side by side in one Python process (two engine cores, two
child processes, no shared forward context). Facts this module relies on (vLLM's docs and code):

* Requests stream with `RequestOutputKind.DELTA`; one output may carry several new token ids, and every
  one of them is forwarded in `Delta.token_ids` (Orpheus needs all of them, not the last).
* Id prompts go in as `TokensPrompt(prompt_token_ids=...)` and are never decoded and re-tokenised.
* Every request gets a unique id; `abort()` calls `AsyncLLM.abort`, and closing the `generate()` iterator
  (break, cancellation, garbage collection) aborts the request as well.
* The AsyncLLM binds to the event loop that first generates with it: drive all requests of one engine
  from one long-lived loop (`voicekit.engines.loop.EventLoopThread`), never `asyncio.run()` per request.
* `gpu_memory_utilization` is a per-engine share of the device memory (of RAM on the CPU build); two
  engines on one GPU need explicit shares that add up to what is free, started one after the other. The
  CPU build accepts `kv_cache_memory_bytes=` (through `**engine_kwargs`) for a fixed small KV cache.
* vLLM starts its engine core with multiprocessing: a script that creates engines needs an
  `if __name__ == "__main__":` guard.
* Once started, the engine's `vllm_config.cache_config` holds the KV cache the core allocated: `num_gpu_blocks`
  blocks of `block_size` tokens, and (vLLM 0.32) `kv_cache_size_tokens`, the tokens it holds counted per KV-cache
  group (hybrid models such as Gemma 2's sliding-window layers); `memory_report()` reads them.

vLLM is imported lazily, so this module imports without vLLM installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from voicekit.engines.base import ChatMessage, Delta, EngineBase, Prompt, SamplingSettings
from voicekit.errors import ModelUnavailableError, first_line
from voicekit.hub import fetch_model

logger = logging.getLogger(__name__)

_FINISH_REASONS = {"stop": "stop", "length": "length", "abort": "abort"}


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ModelUnavailableError(
            "the vLLM engine needs the `vllm` package (on a GPU machine `pip install vllm`; for CPU tests "
            "run scripts/vllm_env.sh and use .venv-vllm/bin/python)"
        ) from error
    return vllm


def sampling_params_from_settings(sampling: SamplingSettings, extra: Mapping[str, Any] | None = None) -> Any:
    """Map voicekit's `SamplingSettings` to a DELTA-streaming vLLM `SamplingParams`.

    `top_k <= 0` disables top-k; `extra` adds any other `SamplingParams` field (for example
    `ignore_eos=True` in benchmarks and tests).
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": int(sampling.top_k) if sampling.top_k and sampling.top_k > 0 else 0,
        "repetition_penalty": float(sampling.repetition_penalty),
        "max_tokens": int(sampling.max_tokens),
        "stop_token_ids": list(sampling.stop_token_ids),
        "stop": list(sampling.stop),
        "seed": sampling.seed,
        "output_kind": RequestOutputKind.DELTA,
    }
    if extra:
        kwargs.update(extra)
    return SamplingParams(**kwargs)


class VLLMEngine(EngineBase):
    """A voicekit `Engine` backed by an in-process vLLM `AsyncLLM`.

    Construction starts the engine core process and loads the model (tens of seconds; the call blocks):
    from a running loop use `await VLLMEngine.start(...)`, which builds it in a worker thread.

    `model` is a hub id or a local folder; a hub id is fetched first through `voicekit.hub` (progress bars, one
    clear error for a gated or unknown model), with `hf_token` when given.
    `sampling_overrides` is merged into every request's `SamplingParams` (e.g. `{"ignore_eos": True}`);
    other keyword arguments go to `AsyncEngineArgs` (e.g. `kv_cache_memory_bytes`, `seed`,
    `max_num_seqs`).
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        gpu_memory_utilization: float,
        max_model_len: int,
        dtype: str = "auto",
        tokenizer: str | None = None,
        enforce_eager: bool = False,
        sampling_overrides: Mapping[str, Any] | None = None,
        hf_token: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        super().__init__()
        source = fetch_model(model, hf_token)  # first: a gated or unknown model is the error a user must see
        _import_vllm()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        self.model = model
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.kv_cache_memory_bytes = engine_kwargs.get("kv_cache_memory_bytes")
        self._sampling_overrides = dict(sampling_overrides or {})
        engine_kwargs.setdefault("disable_log_stats", True)
        args = AsyncEngineArgs(
            model=source,
            tokenizer=tokenizer,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            **engine_kwargs,
        )
        started = time.monotonic()
        self._llm = AsyncLLM.from_engine_args(args)
        self.start_seconds = time.monotonic() - started
        self._memory = kv_cache_facts(self._llm.vllm_config.cache_config)
        logger.info("vLLM engine for %s started in %.1f s (KV cache: %s tokens)", model, self.start_seconds,
                    self._memory.get("kv_cache_tokens"))
        self._hf_tokenizer: Any = None

    @classmethod
    async def start(cls, model: str, **kwargs: Any) -> VLLMEngine:
        """Build the engine in a worker thread so the calling loop keeps running meanwhile."""
        return await asyncio.to_thread(lambda: cls(model, **kwargs))

    # -- Engine protocol -------------------------------------------------------------------------------

    async def generate(
        self, prompt: Prompt, sampling: SamplingSettings, request_id: str | None = None
    ) -> AsyncIterator[Delta]:
        """Stream the deltas of one request; closing this iterator aborts the request."""
        from vllm.inputs import TextPrompt, TokensPrompt

        if isinstance(prompt, str):
            engine_prompt: Any = TextPrompt(prompt=prompt)
        else:
            engine_prompt = TokensPrompt(prompt_token_ids=[int(t) for t in prompt])
        params = sampling_params_from_settings(sampling, self._sampling_overrides)

        request_id = self._begin(request_id)
        llm = self._llm
        stream = llm.generate(engine_prompt, params, request_id)
        finished = False
        try:
            async for output in stream:
                completion = output.outputs[0]
                finished = bool(output.finished)
                reason = None
                if finished:
                    raw = completion.finish_reason
                    reason = _FINISH_REASONS.get(str(raw), str(raw)) if raw is not None else "stop"
                yield Delta(
                    text=completion.text,
                    token_ids=list(completion.token_ids),
                    finished=finished,
                    finish_reason=reason,
                )
                if finished:
                    break
        finally:
            self._end(request_id)
            # Closing vLLM's generator aborts an unfinished request (its GeneratorExit path); abort by id
            # as well so the engine core drops it even if that generator never started.
            with contextlib.suppress(Exception):
                await stream.aclose()
            if not finished and not self._closed and not llm.errored:
                with contextlib.suppress(Exception):
                    await llm.abort(request_id)

    async def abort(self, request_id: str) -> None:
        """Stop a running request; its stream ends with a `finish_reason="abort"` delta."""
        if self._closed:
            return
        await self._llm.abort(request_id)

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (as vLLM loaded it)."""
        if self._hf_tokenizer is None:
            if self._closed:
                raise RuntimeError("the vLLM engine is closed")
            self._hf_tokenizer = self._llm.get_tokenizer()
        return self._hf_tokenizer

    def tokenize(self, text: str) -> list[int]:
        """Ids of `text` from the model's tokenizer, as vLLM loaded it."""
        return list(self.tokenizer(text).input_ids)

    async def render_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Apply the model's chat template and return the prompt as token ids.

        Ids, not text: a templated text starts with the BOS token and would get a second BOS when the
        engine tokenised it again. A system message is folded into the first user turn when the template
        refuses the system role (Gemma-2 does).
        """
        return render_chat_ids(self.tokenizer, messages)

    async def failure(self) -> str | None:
        """Closed, or vLLM's engine core died (`AsyncLLM.errored`: the core process failed or exited)."""
        if self._closed:
            return f"the vLLM engine for {self.model} is closed"
        if self._llm.errored:
            return (f"the vLLM engine core for {self.model} died ({first_line(self._llm.dead_error)}); "
                    "the log names the cause; restart voicekit")
        return None

    async def close(self) -> None:
        """Abort what is running and shut the engine core process down."""
        if self._closed:
            return
        active = list(self._running)
        if active and not self._llm.errored:
            with contextlib.suppress(Exception):
                await self._llm.abort(active)
        self._closed = True
        llm, self._llm = self._llm, None
        await asyncio.to_thread(llm.shutdown)
        # Drop the last reference now: AsyncLLM.__del__ calls shutdown() again, which fails noisily when
        # it only runs at interpreter exit.
        del llm

    # -- extras ------------------------------------------------------------------------------------------

    def memory_report(self) -> dict[str, Any]:
        """The engine's memory: its `gpu_memory_utilization` share (of the GPU; of RAM on vLLM's CPU build), a fixed
        `kv_cache_memory_bytes` when given, and the KV cache it got (tokens, blocks, block size), as vLLM reported
        it after start."""
        return {"engine": self.name, "model": self.model, "gpu_memory_utilization": self.gpu_memory_utilization,
                "kv_cache_memory_bytes": self.kv_cache_memory_bytes, "max_model_len": self.max_model_len,
                **self._memory}

    def num_unfinished_requests(self) -> int:
        """Requests vLLM itself still tracks (0 after every stream ended or was aborted)."""
        return 0 if self._closed else int(self._llm.get_num_unfinished_requests())


def kv_cache_facts(cache_config: Any) -> dict[str, Any]:
    """KV-cache size from a started engine's `cache_config`: `kv_cache_tokens` is vLLM's own count
    (`kv_cache_size_tokens`) when it has one, else blocks x block size; None where vLLM reported nothing."""
    blocks = getattr(cache_config, "num_gpu_blocks", None)
    block_size = getattr(cache_config, "block_size", None)
    tokens = getattr(cache_config, "kv_cache_size_tokens", None)
    if tokens is None and blocks is not None and block_size is not None:
        tokens = int(blocks) * int(block_size)
    concurrency = getattr(cache_config, "kv_cache_max_concurrency", None)
    return {"kv_cache_tokens": None if tokens is None else int(tokens),
            "kv_cache_blocks": None if blocks is None else int(blocks),
            "block_size": None if block_size is None else int(block_size),
            "max_concurrency": None if concurrency is None else round(float(concurrency), 2)}


def render_chat_ids(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    """`tokenizer.apply_chat_template(..., add_generation_prompt=True)` as a list of ids.

    If the template raises on a leading system message, the system text is prepended to the first user
    message and the template applied again.
    """
    dicts = [message.as_dict() for message in messages]
    try:
        return _apply_template(tokenizer, dicts)
    except Exception as error:
        if not dicts or dicts[0]["role"] != "system" or "system" not in str(error).lower():
            raise
    return _apply_template(tokenizer, fold_system_message(dicts))


def fold_system_message(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Merge a leading system message into the first user message (for templates without a system role)."""
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    else:
        rest.insert(0, {"role": "user", "content": system})
    return rest


def _apply_template(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    result = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(result, Mapping) or hasattr(result, "input_ids"):  # transformers 5 returns a BatchEncoding
        result = result["input_ids"]
    ids = list(result)
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(t) for t in ids]
