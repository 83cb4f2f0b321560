"""The realtime session for synchronous code (notebooks, scripts): `kit.realtime()` returns one.

It drives an `AsyncRealtimeSession` on the kit's own event loop; every method blocks until that loop has done it.

    with kit.realtime() as session:
        session.append_audio(pcm16_bytes)            # 24 kHz mono pcm16, or a float32 array and its rate
        for event in session.events(timeout=5):      # until 5 s pass without an event
            print(event.type)
        saved = json.dumps(session.history)          # later: kit.realtime(history=json.loads(saved))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from voicekit.listening.session import INPUT_RATE, AsyncRealtimeSession, Event

T = TypeVar("T")


class RealtimeSession:
    """A realtime session driven from synchronous code; see `AsyncRealtimeSession` for what each method does."""

    def __init__(self, kit: Any, **session_args: Any) -> None:
        self._loop = kit.loop

        async def make() -> AsyncRealtimeSession:
            return AsyncRealtimeSession(kit, **session_args)

        self.session = self._loop.run(make())

    def _call(self, method: Callable[[], T]) -> T:
        async def on_loop() -> T:
            return method()

        return self._loop.run(on_loop())

    @property
    def history(self) -> list[dict[str, Any]]:
        """The conversation as messages (a cut reply marked `interrupted`), JSON-serialisable: save it and pick the
        conversation up later with `kit.realtime(history=...)`."""
        return self._call(self.session.conversation)

    def append_audio(self, audio: bytes | np.ndarray, sample_rate: int = INPUT_RATE) -> None:
        """Feed microphone audio (pcm16 bytes, or an int16/float32 array at `sample_rate`)."""
        self._loop.run(self.session.append_audio(audio, sample_rate))

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event; None once closed; TimeoutError after `timeout` seconds without one."""
        return self._loop.run(self.session.next_event(timeout))

    def events(self, timeout: float = 5.0) -> Iterator[Event]:
        """Events until `timeout` seconds pass without one (or the session closes)."""
        while True:
            try:
                event = self.next_event(timeout)
            except TimeoutError:
                return
            if event is None:
                return
            yield event

    def ask(self, text: str) -> str | None:
        """Typed input: add `text` and answer it; returns the response id."""
        return self._loop.run(self.session.ask(text))

    def commit(self) -> None:
        """End the user's turn now."""
        self._call(self.session.commit)

    def clear(self) -> None:
        """Drop the audio heard since the last turn."""
        self._call(self.session.clear)

    def cancel(self) -> bool:
        """Stop the running reply; False when none runs."""
        return self._call(self.session.cancel)

    def update(self, voice: str | None = None, instructions: str | None = None) -> None:
        """Change the voice or the instructions for later replies."""
        self._call(lambda: self.session.update(voice, instructions))

    def set_echo_cancellation(self, mode: str) -> None:
        """Echo cancellation `auto` (default), `on` or `off` from now on."""
        self._call(lambda: self.session.set_echo_cancellation(mode))

    def close(self) -> None:
        """Stop the running reply and end the session."""
        self._loop.run(self.session.aclose())

    def __enter__(self) -> RealtimeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
