"""Progress of a download of several files: events (bytes, speed, time left), and the meter that counts them.

`Meter` adds up the bytes of every file, sends `Progress` events (at most every EMIT_EVERY_S, and when asked) and
stops the download when its `cancel` event is set; `Meter.bar` is what huggingface_hub takes as its `tqdm_class`
(it only constructs it and calls update()), so its downloads report here instead of drawing a bar.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicekit.errors import VoicekitError

SPEED_WINDOW_S = 3.0  # speed and time left from the last few seconds' bytes, not the whole download's average
EMIT_EVERY_S = 0.2  # progress events at most this often (and at every file's end)


class DownloadCancelled(VoicekitError):
    """The download was cancelled; nothing half-downloaded was kept."""

    def __init__(self) -> None:
        super().__init__("download cancelled: nothing half-downloaded was kept (finished files stay in the cache; "
                         "the next try fetches the rest)")


@dataclass(frozen=True)
class Progress:
    """One progress event. `stage`: listing, downloading, checking, done, cancelled or failed (the last three end
    a download); bytes of the whole bundle; speed and time left once known."""

    stage: str
    done_bytes: int = 0
    total_bytes: int = 0
    speed_bps: float | None = None
    eta_s: float | None = None
    file: str = ""
    files_done: int = 0
    files_total: int = 0
    message: str = ""

    @property
    def finished(self) -> bool:
        """The last event of a download."""
        return self.stage in ("done", "cancelled", "failed")

    @property
    def fraction(self) -> float:
        """0 to 1, for a progress bar."""
        return min(1.0, self.done_bytes / self.total_bytes) if self.total_bytes else float(self.stage == "done")

    def line(self) -> str:
        """"downloading qwen2.5-0.5b-instruct-q4_k_m.gguf (1 of 29): 120.5 of 409.3 MB (29%) · 12.1 MB/s · 24 s
        left", or the event's message."""
        if self.message:
            return self.message
        amount = f"{self.done_bytes / 1e6:.1f} of {self.total_bytes / 1e6:.1f} MB ({self.fraction:.0%})"
        speed = f" · {self.speed_bps / 1e6:.1f} MB/s" if self.speed_bps else ""
        left = f" · {_duration(self.eta_s)} left" if self.eta_s is not None else ""
        name = Path(self.file).name
        return f"{self.stage} {name}{f' ({self.files_done + 1} of {self.files_total})' if name else ''}: " \
               f"{amount}{speed}{left}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@dataclass
class Meter:
    """Counts the bytes of the whole download, reports them (throttled) and stops it when cancelled."""

    emit: Callable[[Progress], None]
    cancel: threading.Event
    total: int
    files_total: int
    done: int = 0
    files_done: int = 0
    file: str = ""
    _samples: deque[tuple[float, int]] = field(default_factory=deque)
    _last_emit: float = 0.0

    def check(self) -> None:
        """Raise DownloadCancelled once `cancel` is set."""
        if self.cancel.is_set():
            raise DownloadCancelled()

    def add(self, count: int) -> None:
        self.check()
        self.done += count
        now = time.monotonic()
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[0][0] > SPEED_WINDOW_S:
            self._samples.popleft()
        if now - self._last_emit >= EMIT_EVERY_S:
            self.report("downloading", now)

    def report(self, stage: str, now: float | None = None) -> None:
        self._last_emit = now or time.monotonic()
        self.emit(Progress(stage, self.done, self.total, *self._speed(), self.file, self.files_done,
                           self.files_total))

    def _speed(self) -> tuple[float | None, float | None]:
        (first, start), (last, end) = (self._samples[0], self._samples[-1]) if self._samples else ((0, 0), (0, 0))
        if last - first < 0.05 or end <= start:
            return None, None
        speed = (end - start) / (last - first)
        return speed, max(0.0, self.total - self.done) / speed

    def bar(self, **_: Any) -> _Bar:
        """A progress bar for huggingface_hub (its `tqdm_class`): it only calls the constructor and update()."""
        return _Bar(self)


class _Bar:
    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def update(self, count: int | float = 1) -> None:
        self.meter.add(int(count))

    def close(self) -> None:
        pass

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
