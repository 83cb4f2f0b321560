"""Listening: hearing the user and taking turns.

vad.py (Silero VAD v6 on onnxruntime), turns.py (when a turn starts and ends), asr.py (Whisper on faster-whisper),
session.py (the realtime session: turns -> transcript -> spoken reply, with barge-in; its events in events.py),
blocking.py (its sync form).
"""

from voicekit.listening.asr import (
    MAX_TRANSCRIBE_S,
    Segment,
    Transcriber,
    Transcript,
    Word,
    decode_audio,
    load_transcriber,
)
from voicekit.listening.blocking import RealtimeSession
from voicekit.listening.session import AsyncRealtimeSession, Event, TalkOptions
from voicekit.listening.turns import SpeechStarted, SpeechStopped, TurnDetector, TurnOptions
from voicekit.listening.vad import SileroVAD

__all__ = ["MAX_TRANSCRIBE_S", "AsyncRealtimeSession", "Event", "RealtimeSession", "Segment", "SileroVAD",
           "SpeechStarted", "SpeechStopped", "TalkOptions", "Transcriber", "Transcript", "TurnDetector", "TurnOptions",
           "Word", "decode_audio", "load_transcriber"]
