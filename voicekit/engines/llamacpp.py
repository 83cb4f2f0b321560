"""llama.cpp engine: a local GGUF model through llama-cpp-python, streamed token by token.

llama.cpp is synchronous and one `Llama` holds one KV cache, so requests run one at a time in a worker
thread; deltas cross to the event loop through `call_soon_threadsafe`. Aborting (or closing the
iterator) sets a flag the worker checks after every token, so a cancelled request stops within one token.
On the CPU, `held()` makes the worker wait between tokens while a reply's first speech is made: on two cores Piper
took twice as long beside a writing SmolLM2 (0.10 -> 0.22 s for a short sentence, 0.26 -> 0.56 s for a long one).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from voicekit.engines.base import ChatMessage, Delta, EngineBase, Prompt, SamplingSettings
from voicekit.engines.loop import Channel
from voicekit.errors import ModelUnavailableError, VoicekitError

_PARAMS_LOCK = threading.Lock()
MAX_HOLD_S = 2.0  # a hold that outlasts this (a stuck speech backend) no longer stops generation


def has_amx(system_info: str) -> bool:
    """Whether llama.cpp's system info ("CPU : ... AMX_INT8 = 1 | ...") says it will use AMX weight buffers."""
    return "AMX_INT8 = 1" in system_info


@contextlib.contextmanager
def _safe_weight_buffers() -> Any:
    """Load without llama.cpp's extra weight buffer types (AMX, repacking) on a build that uses AMX.

    On some Sapphire Rapids hosts the AMX buffers crash the first matrix product with a segmentation fault
    (ggml-org/llama.cpp#20824; seen here with llama-cpp-python 0.3.36 built on such a host, for every GGUF).
    `Llama()` has no argument for it, so its model defaults are swapped for the load, under a lock. Other
    builds load as usual.
    """
    import llama_cpp
    import llama_cpp.llama as llama_module

    if not has_amx(llama_cpp.llama_print_system_info().decode("utf-8", "replace")):
        yield
        return
    original = llama_module.llama_cpp.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = original()
        if hasattr(params, "use_extra_bufts"):
            params.use_extra_bufts = False
        return params

    with _PARAMS_LOCK:
        llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = original


class LlamaCppEngine(EngineBase):
    """Engine over one GGUF file loaded with llama-cpp-python."""

    name = "llamacpp"

    def __init__(self, model_path: str | Path, n_ctx: int = 2048, n_threads: int | None = None,
                 n_gpu_layers: int = 0) -> None:
        """`n_gpu_layers`: layers to offload (-1 all, 0 none; `voicekit.device.llama_cpp_offload` says what the
        build can)."""
        from llama_cpp import Llama  # heavy import, only when the engine is built

        super().__init__()
        path = Path(model_path)
        if not path.is_file():
            raise ModelUnavailableError(f"GGUF model not found: {path}")
        self.model = path.name
        self.n_ctx = n_ctx
        self.n_gpu_layers = n_gpu_layers
        with _safe_weight_buffers():
            # the prompt is read on as many threads as tokens are written: llama-cpp-python's default is every core,
            # which inside a session (microphone, echo canceller, socket on the same cores) was slower, not faster
            threads = n_threads or default_threads()
            self._llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              n_gpu_layers=self.n_gpu_layers, verbose=False)
        self._add_bos = str(self._llm.metadata.get("tokenizer.ggml.add_bos_token", "true")).lower() == "true"
        self._template = self._llm.metadata.get("tokenizer.chat_template")
        self._lock = asyncio.Lock()  # one Llama, one KV cache: requests take turns
        self._decoding = threading.Lock()  # ...and their worker threads too, even when a cancelled one lingers
        self._holds = 0  # callers inside held(); the worker waits between tokens while there are any
        self._free = threading.Event()
        self._free.set()
        self._holds_lock = threading.Lock()

    # -- protocol -----------------------------------------------------------------------------------

    async def render_chat(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Render the conversation with the chat template stored in the GGUF metadata."""
        return self.chat_prompt(messages)

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        """`render_chat` for sync callers: the template runs here, in this process (milliseconds)."""
        if not self._template:
            raise VoicekitError(f"{self.model} has no chat template in its GGUF metadata")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(template=self._template, eos_token=self._token_text(self._llm.token_eos()),
                                        bos_token=self._token_text(self._llm.token_bos()))
        rendered = formatter(messages=[message.as_dict() for message in messages])
        return rendered.prompt

    def tokenize(self, text: str) -> list[int]:
        """Ids of plain `text` (special-token texts stay text), with the BOS the GGUF asks for.

        Orpheus builds its prompt ids from these, exactly as from the Hugging Face tokenizer.
        """
        return self._llm.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=False)

    async def generate(self, prompt: Prompt, sampling: SamplingSettings,
                       request_id: str | None = None) -> AsyncIterator[Delta]:
        """Stream deltas for one prompt; see the module docstring for threading and aborts."""
        prompt_ids = self._prompt_ids(prompt)
        cancel = threading.Event()
        request_id = self._begin(request_id, cancel)
        try:
            # the stream is closed here, not whenever it is collected: its worker ends before the lock lets the next in
            async with self._lock, contextlib.aclosing(self._stream_worker(prompt_ids, sampling, cancel)) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            cancel.set()  # stops the worker when the consumer leaves early
            self._end(request_id)

    async def abort(self, request_id: str) -> None:
        """Stop a running request; unknown or finished ids are ignored."""
        flag = self._running.get(request_id)
        if flag is not None:
            flag.set()

    async def close(self) -> None:
        """Abort everything and free the model."""
        self._closed = True
        for flag in self._running.values():
            flag.set()
        async with self._lock:
            with contextlib.suppress(Exception):
                self._llm.close()

    @contextlib.contextmanager
    def held(self) -> Any:
        """Generation waits between tokens while this is entered (see the module docstring), at most `MAX_HOLD_S`
        at a time; a model offloaded to a GPU does not wait."""
        if self.n_gpu_layers != 0:
            yield
            return
        with self._holds_lock:
            self._holds += 1
            self._free.clear()
        try:
            yield
        finally:
            with self._holds_lock:
                self._holds -= 1
                if not self._holds:
                    self._free.set()

    # -- internals ----------------------------------------------------------------------------------

    def _token_text(self, token_id: int) -> str:
        return self._llm.detokenize([token_id], special=True).decode("utf-8", errors="ignore")

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self._llm.tokenize(prompt.encode("utf-8"), add_bos=self._add_bos, special=True)
        else:
            ids = list(prompt)
        if not ids:
            raise VoicekitError("empty prompt")
        if len(ids) >= self.n_ctx:
            raise VoicekitError(f"prompt is {len(ids)} tokens; the context holds {self.n_ctx}")
        return ids

    async def _stream_worker(self, prompt_ids: list[int], sampling: SamplingSettings,
                             cancel: threading.Event) -> AsyncIterator[Delta]:
        channel: Channel[Delta] = Channel()
        worker = channel.loop.run_in_executor(None, self._run_generation, prompt_ids, sampling, cancel, channel)
        try:
            async for delta in channel:
                yield delta
        finally:
            cancel.set()
            # Wait for the worker so the next request never shares the Llama object with this one.
            await asyncio.shield(worker)

    def _run_generation(self, prompt_ids: list[int], sampling: SamplingSettings, cancel: threading.Event,
                        channel: Channel[Delta]) -> None:
        try:
            with self._decoding:  # two threads decoding on one Llama crash the process (a segmentation fault)
                self._generate_sync(prompt_ids, sampling, cancel, channel.put)
        except BaseException as error:  # delivered to the async side
            channel.fail(error)
        finally:
            channel.end()

    def _generate_sync(self, prompt_ids: list[int], sampling: SamplingSettings, cancel: threading.Event,
                       post: Any) -> None:
        llm = self._llm
        if sampling.seed is not None:
            # Reusing a cached prompt prefix changes the logits slightly (different batch shapes), so a
            # seeded request evaluates its whole prompt: same prompt + same seed = same reply.
            llm.reset()
            llm.set_seed(sampling.seed)
        stop_ids = {llm.token_eos(), *sampling.stop_token_ids}
        budget = min(sampling.max_tokens, self.n_ctx - len(prompt_ids))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        text_so_far = ""
        tokens = llm.generate(prompt_ids, top_k=sampling.top_k, top_p=sampling.top_p,
                              temp=sampling.temperature, repeat_penalty=sampling.repetition_penalty)
        for generated, token in enumerate(tokens, start=1):
            if cancel.is_set():
                post(Delta(finished=True, finish_reason="abort"))
                return
            if token in stop_ids:
                post(Delta(token_ids=[token], finished=True, finish_reason="stop"))
                return
            piece = decoder.decode(llm.detokenize([token]))
            text_so_far += piece
            stop_hit = _find_stop(text_so_far, sampling.stop)
            if stop_hit is not None:
                keep = len(piece) - (len(text_so_far) - stop_hit)
                post(Delta(text=piece[:max(keep, 0)], token_ids=[token], finished=True, finish_reason="stop"))
                return
            if generated >= budget:
                post(Delta(text=piece + decoder.decode(b"", final=True), token_ids=[token], finished=True,
                           finish_reason="length"))
                return
            post(Delta(text=piece, token_ids=[token]))
            self._wait_while_held(cancel)
        post(Delta(finished=True, finish_reason="stop"))

    def _wait_while_held(self, cancel: threading.Event) -> None:
        """Before the next token: wait while `held()` is entered (not past an abort, nor `MAX_HOLD_S`)."""
        deadline = time.monotonic() + MAX_HOLD_S
        while not self._free.wait(0.01) and not cancel.is_set() and time.monotonic() < deadline:
            pass


def default_threads() -> int:
    """Half the cores, 1 to 4: small models are memory-bound, and the speech backend needs cores too.

    Measured on 2 cores with SmolLM2-135M: 1 thread wrote replies ~30% faster than 2, in both modes.
    """
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def _find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    hits = [text.find(stop) for stop in stops if stop and stop in text]
    return min(hits) if hits else None
