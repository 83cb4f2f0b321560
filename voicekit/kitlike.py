"""What a kit is to the code that uses one, as Protocols (typing only: nothing of voicekit is imported at run time).

`KitLike` is the public surface that a loaded `voicekit.Kit` and a `voicekit.client.RemoteKit` (a server's kit over
HTTP) both offer: voices, say and chat (sync and async), transcribe, realtime. `ServedKit` adds what the server's
faces (voicekit/serve) need of the kit they serve, which only a local kit has: time limits on a turn, health probes,
the recognizer's facts, realtime sessions gated by the server's admission control.

    def greet(kit: KitLike) -> None:
        kit.say("Hello!", voice=kit.default_voice).save("hello.wav")
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from voicekit.chat import ChatModel, HistoryItem
    from voicekit.kit import AsyncReply, Reply
    from voicekit.listening.asr import Transcriber, Transcript
    from voicekit.listening.blocking import RealtimeSession
    from voicekit.listening.session import AsyncRealtimeSession
    from voicekit.settings import Settings
    from voicekit.tts.catalogue import Voice


class NamesPreset(Protocol):
    """Settings that name their preset (a local kit's `Settings`, a remote one's `RemoteSettings`)."""

    @property
    def preset(self) -> str: ...


@runtime_checkable
class KitLike(Protocol):
    """The surface that `Kit` and `RemoteKit` share (`isinstance(kit, KitLike)` checks its names only)."""

    @property
    def settings(self) -> NamesPreset: ...

    @property
    def description(self) -> Mapping[str, Any]: ...

    @property
    def voices(self) -> list[Voice]: ...

    @property
    def default_voice(self) -> str: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def tags(self) -> list[str]: ...

    def resolve_voice(self, voice: str | None) -> str: ...

    def say(self, text: str, voice: str | None = None) -> Reply: ...

    def asay(self, text: str, voice: str | None = None) -> AsyncReply: ...

    def chat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
             mode: str | None = None, **options: Any) -> Reply: ...

    def achat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
              mode: str | None = None, **options: Any) -> AsyncReply: ...

    def transcribe(self, audio: Any, sample_rate: int | None = None, language: str | None = None, *,
                   prompt: str | None = None, temperature: float | None = None) -> Transcript: ...

    async def atranscribe(self, audio: Any, sample_rate: int | None = None, language: str | None = None, *,
                          prompt: str | None = None, temperature: float | None = None) -> Transcript: ...

    def realtime(self, voice: str | None = None, instructions: str | None = None,
                 history: list[dict[str, Any]] | None = None) -> RealtimeSession: ...

    def close(self) -> None: ...


class ServedKit(KitLike, Protocol):
    """What the server needs of the kit it serves: a local `Kit`. (Not runtime-checkable: `transcriber` loads.)"""

    @property
    def settings(self) -> Settings: ...

    @property
    def chat_model(self) -> ChatModel | None: ...

    @property
    def transcriber(self) -> Transcriber: ...

    def asay(self, text: str, voice: str | None = None, *, time_limit_s: float | None = None) -> AsyncReply: ...

    def achat(self, message: str, voice: str | None = None, history: Iterable[HistoryItem] | None = None,
              mode: str | None = None, *, time_limit_s: float | None = None, **options: Any) -> AsyncReply: ...

    async def atranscribe(self, audio: Any, sample_rate: int | None = None, language: str | None = None, *,
                          prompt: str | None = None, temperature: float | None = None,
                          timestamps: bool = True) -> Transcript: ...

    def arealtime(self, voice: str | None = None, instructions: str | None = None,
                  history: list[dict[str, Any]] | None = None, *,
                  gate: Callable[[], AbstractAsyncContextManager[Any]] | None = None) -> AsyncRealtimeSession: ...

    def recognizer_facts(self) -> dict[str, Any]: ...

    def health(self, timeout: float = 15.0) -> str | None: ...

    def warnings(self, timeout: float = 15.0) -> list[str]: ...
