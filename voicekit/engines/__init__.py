"""Token generators behind one protocol: llama.cpp (local GGUF), vLLM in-process, OpenAI-compatible HTTP.

Engines are imported lazily by name so that voicekit runs without vLLM or httpx installed.
"""

from voicekit.engines.base import ChatMessage, Delta, Engine, Prompt, SamplingSettings, new_request_id
from voicekit.engines.loop import EventLoopThread

__all__ = [
    "ChatMessage",
    "Delta",
    "Engine",
    "EventLoopThread",
    "Prompt",
    "SamplingSettings",
    "new_request_id",
]
