"""The conversation the chat model is sent: strictly alternating roles, as Gemma 2's template demands."""

from __future__ import annotations

import jinja2
import pytest
import tiny_models as tm

from voicekit.chat import ChatModel, alternate_roles, normalize_history
from voicekit.engines.base import ChatMessage, SamplingSettings
from voicekit.engines.vllm_engine import fold_system_message


def render_gemma(messages: list[ChatMessage]) -> str:
    """Gemma 2's rules (no system role, roles alternating from the user) as its template applies them."""
    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    template = jinja2.Environment().from_string(tm.GEMMA_STYLE_CHAT_TEMPLATE)
    dicts = [{"role": m.role, "content": m.content} for m in messages]
    if dicts and dicts[0]["role"] == "system":
        dicts = fold_system_message(dicts)
    return template.render(messages=dicts, bos_token="<bos>", add_generation_prompt=True,
                           raise_exception=raise_exception)


MESSY_HISTORY = [
    {"role": "assistant", "content": "Hi! I'm your voice assistant."},  # a greeting before the user spoke
    {"role": "user", "content": "Tell me a joke."},
    {"role": "assistant", "content": ""},  # the reply failed or was stopped before any text
    {"role": "user", "content": "Hello? A joke, please."},
    {"role": "assistant", "content": "Why did the chicken cross the road?"},
    {"role": "assistant", "content": "To get to the other side."},
    {"role": "user", "content": "Ha."},
]


def test_messy_history_becomes_alternating_turns_that_gemma_accepts() -> None:
    model = ChatModel(engine=None, system_prompt="Be brief.", sampling=SamplingSettings())  # type: ignore[arg-type]
    messages = model.build_messages("Another one!", normalize_history(MESSY_HISTORY))  # as the kit passes it
    assert [m.role for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1].content == "Tell me a joke.\n\nHello? A joke, please."
    assert messages[2].content == "Why did the chicken cross the road?\n\nTo get to the other side."
    assert messages[3].content == "Ha.\n\nAnother one!", "the new message joins a user turn left unanswered"
    assert all(m.content for m in messages), "never an empty turn"
    rendered = render_gemma(messages)
    assert rendered.count("<start_of_turn>user") == 2 and rendered.endswith("<start_of_turn>model\n")


def test_the_same_history_unmerged_is_what_gemma_refuses() -> None:
    raw = [ChatMessage(item["role"], item["content"]) for item in MESSY_HISTORY if item["content"]]
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        render_gemma([*raw, ChatMessage("user", "Another one!")])


def test_alternate_roles_keeps_a_clean_conversation_as_it_is() -> None:
    clean = [ChatMessage("user", "a"), ChatMessage("assistant", "b"), ChatMessage("user", "c")]
    assert alternate_roles(clean) == clean
    assert alternate_roles([ChatMessage("assistant", "only a greeting")]) == []
