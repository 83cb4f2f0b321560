"""A realtime conversation saved and picked up later: `session.history` is plain JSON, `kit.realtime(history=...)`
restores it (the next reply is made with it), and a history that is not user and assistant messages with text is
refused with a clear error before any session opens. The real cpu kit (SmolLM2 + Piper)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

from voicekit.errors import InvalidHistoryError
from voicekit.listening.events import restore_history

SHORT = "Answer in one short sentence."


@pytest.fixture
def short_replies(kit: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(kit.chat_model, "sampling", dataclasses.replace(kit.chat_model.sampling, max_tokens=32))
    yield


def _answer(session: Any, text: str) -> dict[str, Any]:
    """Ask `text` and wait for its response.done; the response summary."""
    session.ask(text)
    for event in session.events(timeout=60):
        if event.type == "response.done":
            return event.data["response"]
    raise AssertionError(f"no reply to {text!r}")


def test_a_saved_conversation_is_picked_up_by_a_new_session(kit: Any, short_replies: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    with kit.realtime(instructions=SHORT) as first:
        assert _answer(first, "My name is Ada.")["status"] == "completed"
        saved = json.dumps(first.history)  # what an app keeps between visits
    past = json.loads(saved)
    assert [item["role"] for item in past] == ["user", "assistant"] and past[1]["content"]

    seen: list[list[dict[str, Any]]] = []
    achat = kit.achat
    monkeypatch.setattr(kit, "achat", lambda message, **options: (seen.append(list(options["history"])),
                                                                  achat(message, **options))[1])
    with kit.realtime(instructions=SHORT, history=past) as second:
        assert [(item["role"], item["content"]) for item in second.history] == [
            (item["role"], item["content"]) for item in past]
        assert {item["id"] for item in second.history}.isdisjoint(item["id"] for item in past)  # new items
        assert _answer(second, "What is my name?")["status"] == "completed"
        history = second.history
    assert [(item["role"], item["content"]) for item in seen[0]] == [(item["role"], item["content"]) for item in past]
    assert [item["role"] for item in history] == ["user", "assistant", "user", "assistant"]
    print(f"\nresumed: {history[2]['content']!r} -> {history[3]['content']!r}")


async def test_the_async_session_restores_and_exports_the_same_way(kit: Any) -> None:
    past = [{"role": "user", "content": " Hello "}, {"role": "assistant", "content": "Hi th…", "interrupted": True},
            {"role": "assistant", "content": "", "interrupted": True}]  # cut before a word was heard: nothing kept
    session = kit.arealtime(history=past)
    try:
        assert [(item["role"], item["content"], item.get("interrupted", False)) for item in session.history] == [
            ("user", "Hello", False), ("assistant", "Hi th…", True)]
        json.dumps(session.history)
        await asyncio.sleep(0)
    finally:
        await session.aclose()


@pytest.mark.parametrize(("history", "message"), [
    ({"role": "user", "content": "hi"}, "history is a list of messages"),
    ("hello", "history is a list of messages"),
    (["hello"], r"history\[0\] is not a message"),
    ([{"role": "system", "content": "Be brief."}], r"history\[0\]: the role is 'user' or 'assistant', not 'system'"),
    ([{"role": "user", "content": "hi"}, {"content": "hi"}], r"history\[1\]: the role is .* not None"),
    ([{"role": "user", "content": ["hi"]}], r"history\[0\]: `content` is the message's text \(a string\), not list"),
    ([{"role": "user", "content": "  "}], r"history\[0\]: the user message has no text"),
    ([{"role": "assistant", "content": ""}], r"history\[0\]: the assistant message has no text"),
])
def test_a_bad_history_is_refused_clearly(kit: Any, history: Any, message: str) -> None:
    with pytest.raises(InvalidHistoryError, match=message) as refused:
        restore_history(history)
    assert isinstance(refused.value, ValueError)
    with pytest.raises(ValueError, match=message):
        kit.realtime(history=history)


async def test_a_conversation_restored_over_the_socket_keeps_cut_replies_cut(kit: Any) -> None:
    """What the Talk page and RemoteKit.realtime(history=...) send after a reconnect: conversation.item.create for
    each message, a cut reply with `status: "incomplete"` (OpenAI's mark for it); no reply is made for them."""
    from voicekit.serve.realtime import handle_event

    session = kit.arealtime()
    try:
        for role, part, text, status in (("user", "input_text", "Tell me a story.", None),
                                         ("assistant", "output_text", "Once upon a…", "incomplete")):
            item = {"type": "message", "role": role, "content": [{"type": part, "text": text}]}
            await handle_event(session, json.dumps({"type": "conversation.item.create",
                                                    "item": {**item, **({"status": status} if status else {})}}))
        assert [(m["role"], m["content"], m.get("interrupted", False)) for m in session.history] == [
            ("user", "Tell me a story.", False), ("assistant", "Once upon a…", True)]
        events = [await session.next_event(1) for _ in range(3)]
        assert [event.type for event in events] == ["session.created", *["conversation.item.added"] * 2]
        assert [event.data["item"]["status"] for event in events[1:]] == ["completed", "incomplete"]
        assert session.response is None  # nothing is answered by itself
    finally:
        await session.aclose()
