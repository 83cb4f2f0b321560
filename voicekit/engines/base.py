"""The token-generator protocol every engine implements (llama.cpp, vLLM in-process, OpenAI-compatible HTTP).

An engine streams `Delta`s for one prompt. A prompt is either text (already templated) or a list of token
ids (Orpheus prompts are built as ids and must never be decoded and re-tokenised). Every request has a
unique id; `abort(request_id)` stops it, and so does closing the `generate()` iterator (for example when
the consumer is cancelled), so no generation outlives its consumer.

All coroutines of one engine must run on one long-lived event loop (see `voicekit.engines.loop`): vLLM's
AsyncLLM binds itself to the loop that first uses it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Prompt = str | list[int]


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling parameters shared by all engines (an engine ignores what it cannot honour).

    The defaults are neutral (no top-k, no repetition penalty): a caller that wants them, like Orpheus, asks.
    """

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1.0: off
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Delta:
    """New output of one request since the previous delta.

    `token_ids` holds every token generated since the last delta (an engine may coalesce several);
    `text` is their decoded text. The last delta of a request has `finished=True` and a `finish_reason`
    ("stop", "length" or "abort").
    """

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation: role is "system", "user" or "assistant"."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        """OpenAI's message form (`{"role", "content"}`), as chat templates and servers take it."""
        return {"role": self.role, "content": self.content}


_request_counter = itertools.count()
_process_tag = f"{os.getpid():x}-{uuid.uuid4().hex[:6]}"


def new_request_id(prefix: str = "req") -> str:
    """Return a request id unique within this process and across processes (never a shared constant)."""
    return f"{prefix}-{_process_tag}-{next(_request_counter)}"


class EngineBase:
    """What every engine does the same way: unique request ids, the requests running, refusing work once closed.

    `_begin(request_id, handle)` registers a request (its `handle`: whatever the engine needs to stop it) and
    returns its id; `_end(request_id)` forgets it. Subclasses set `name` and `model` and implement the rest
    of `Engine`.
    """

    name = "engine"
    model = ""

    def __init__(self) -> None:
        self._running: dict[str, Any] = {}
        self._closed = False

    def _begin(self, request_id: str | None, handle: Any = None) -> str:
        if self._closed:
            raise RuntimeError(f"the {self.name} engine for {self.model} is closed")
        request_id = request_id or new_request_id(self.name)
        if request_id in self._running:
            raise ValueError(f"request id {request_id!r} is already running")
        self._running[request_id] = handle
        return request_id

    def _end(self, request_id: str) -> None:
        self._running.pop(request_id, None)

    def active_requests(self) -> set[str]:
        """Ids of requests still generating (used to prove nothing leaked)."""
        return set(self._running)

    async def failure(self) -> str | None:
        """Why this engine can no longer generate; here: only when it was closed."""
        return f"the {self.name} engine for {self.model} is closed" if self._closed else None

    def held(self) -> contextlib.AbstractContextManager[None]:
        """While this is entered, an engine that computes on the machine's CPU cores waits between tokens, so what
        the caller runs meanwhile has them (the first piece of a reply's speech: its user is waiting for it). Engines
        on a GPU or another machine go on: here, nothing to hold."""
        return contextlib.nullcontext()

    def tokenize(self, text: str) -> list[int]:
        """Ids of plain `text` in the model's vocabulary (Orpheus builds its prompts from them). Engines that can
        say so override this; the others cannot."""
        raise NotImplementedError(f"the {self.name} engine for {self.model} cannot tokenize text")


@runtime_checkable
class Engine(Protocol):
    """A token generator. Implementations live beside this module, one per file."""

    name: str
    model: str

    def generate(
        self, prompt: Prompt, sampling: SamplingSettings, request_id: str | None = None
    ) -> AsyncIterator[Delta]:
        """Stream the deltas of one request; closing the iterator aborts the request."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a running request; a finished or unknown id is ignored."""
        ...

    def active_requests(self) -> set[str]:
        """Ids of requests still generating (used to prove nothing leaked)."""
        ...

    async def render_chat(self, messages: Sequence[ChatMessage]) -> Prompt:
        """Apply the model's chat template to a conversation, ready to generate the assistant turn.

        Async because an engine behind a server asks the server (a blocking call would stall the loop)."""
        ...

    async def failure(self) -> str | None:
        """Why this engine can no longer generate (closed, engine process dead, server gone), or None.

        Cheap enough for every health check: no generation; an engine behind a server asks its `/health`.
        """
        ...

    async def close(self) -> None:
        """Release the model and any worker threads or processes."""
        ...
