"""The chat model: a voice-friendly system prompt, multi-turn history, sampling, streamed reply text."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from voicekit.engines.base import ChatMessage, Engine, SamplingSettings, new_request_id

HistoryItem = ChatMessage | Mapping[str, Any]


def normalize_history(history: Iterable[HistoryItem] | None) -> list[ChatMessage]:
    """Turn Gradio/OpenAI-style dicts ({"role", "content"}) or ChatMessages into ChatMessages.

    System messages and empty or non-text contents are dropped: the kit's own system prompt rules.
    """
    messages: list[ChatMessage] = []
    for item in history or ():
        role, content = (item.role, item.content) if isinstance(item, ChatMessage) else (
            item.get("role"), item.get("content"))
        if role in ("user", "assistant") and isinstance(content, str) and content.strip():
            messages.append(ChatMessage(role, content.strip()))
    return messages


def alternate_roles(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """User and assistant turns strictly alternating, starting with the user, as Gemma's template demands.

    Consecutive turns of one role (a user who sent twice while a reply failed or was stopped) are merged,
    blank lines between them; assistant turns before the first user turn are dropped (a history cut
    mid-exchange). Empty turns were already dropped by `normalize_history`.
    """
    merged: list[ChatMessage] = []
    for item in messages:
        if not merged and item.role != "user":
            continue
        if merged and merged[-1].role == item.role:
            merged[-1] = ChatMessage(item.role, f"{merged[-1].content}\n\n{item.content}")
        else:
            merged.append(item)
    return merged


class ChatModel:
    """Writes replies with an engine; knows nothing about speech."""

    def __init__(self, engine: Engine, system_prompt: str, sampling: SamplingSettings,
                 history_turns: int = 8) -> None:
        self.engine = engine
        self.system_prompt = system_prompt
        self.sampling = sampling
        self.history_turns = history_turns

    def build_messages(self, message: str, past: Sequence[ChatMessage] = (),
                       system_prompt: str | None = None) -> list[ChatMessage]:
        """System prompt, the last `history_turns` exchanges of `past`, then the new user message, roles
        alternating. `past` is already normalised (`normalize_history`, at the kit's boundary)."""
        past = list(past)
        if self.history_turns >= 0:
            past = past[-2 * self.history_turns:] if self.history_turns else []
        system = self.system_prompt if system_prompt is None else system_prompt
        head = [ChatMessage("system", system)] if system.strip() else []
        return [*head, *alternate_roles([*past, ChatMessage("user", message.strip())])]

    async def stream_reply(self, message: str, past: Sequence[ChatMessage] = (), *,
                           system_prompt: str | None = None, temperature: float | None = None,
                           max_tokens: int | None = None, seed: int | None = None) -> AsyncIterator[str]:
        """Stream the reply text, delta by delta; closing the iterator aborts the engine request."""
        prompt = await self.engine.render_chat(self.build_messages(message, past, system_prompt))
        sampling = self._sampling(temperature=temperature, max_tokens=max_tokens, seed=seed)
        stream = self.engine.generate(prompt, sampling, new_request_id("chat"))
        try:
            async for delta in stream:
                if delta.text:
                    yield delta.text
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    def held(self) -> contextlib.AbstractContextManager[Any]:
        """The engine waits between tokens while this is entered, if it computes on the CPU cores (see
        `EngineBase.held`); engines without `held` go on."""
        held = getattr(self.engine, "held", None)
        return held() if held is not None else contextlib.nullcontext()

    async def reply(self, message: str, past: Sequence[ChatMessage] = (), **options: Any) -> str:
        """The whole reply text, stripped."""
        parts = [piece async for piece in self.stream_reply(message, past, **options)]
        return "".join(parts).strip()

    def _sampling(self, **changes: Any) -> SamplingSettings:
        given = {name: value for name, value in changes.items() if value is not None}
        return replace(self.sampling, **given) if given else self.sampling
