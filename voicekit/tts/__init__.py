"""Speech backends behind one protocol (`SpeechBackend`): Piper now, Orpheus (+ SNAC) and Qwen3-TTS beside it.

Backends are imported lazily by name so that voicekit runs without torch, snac or vLLM installed.
"""

from voicekit.tts.base import SpeechBackend, resolve_voice

__all__ = ["SpeechBackend", "resolve_voice"]
