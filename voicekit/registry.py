"""Parts registered once: each voice family and each engine kind is one record, looked up by name.

    from voicekit.registry import VOICE_FAMILIES, VoiceFamily

    VOICE_FAMILIES.register(VoiceFamily(
        "foo", "my voices (voicekit/tts/foo.py)",
        build=lambda settings, voice, extra: FooBackend(default_voice=voice)))
    kit = voicekit.load(tts="foo")

The wiring (voicekit/build.py) builds the part a setting names from its record; the settings' documented choices
(docs/CONFIGURATION.md), `python -m voicekit doctor` and the cli's `voices --fetch` list what is registered here; an
unknown name is one `SettingsError` that lists the known ones. The built-in families are registered by
voicekit/families.py, the engines by voicekit/build.py (docs/ENGINES.md, "Add a voice family").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from voicekit.errors import SettingsError


@dataclass(frozen=True)
class VoiceFamily:
    """One family of voices.

    `build(settings, voice, extra)` returns its `SpeechBackend` (`voice`: the default voice, None for the family's
    own; `extra`: offered beside the kit's main family, so None when it has no voices on this machine and must not
    download any). `settings` names the Settings fields it reads (for the docs). `extra_ok`: it may be named in
    `extra_voices`. `fetch(settings)` downloads its voices (`voices --fetch NAME`) and returns how many it has;
    `probe(settings)` says in one line what this machine has of it (`doctor`).
    """

    name: str
    summary: str
    build: Callable[[Any, str | None, bool], Any]
    settings: tuple[str, ...] = ()
    extra_ok: bool = False
    fetch: Callable[[Any], int] | None = None
    probe: Callable[[Any], str] | None = None


@dataclass(frozen=True)
class EngineKind:
    """One kind of token generator: `build(model, settings, n_ctx, memory_share, url)` returns an `Engine`."""

    name: str
    summary: str
    build: Callable[..., Any]
    settings: tuple[str, ...] = ()


class _Named(Protocol):
    name: str


Record = TypeVar("Record", bound=_Named)


class Registry(Generic[Record]):
    """Records by name, in the order they were registered."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._records: dict[str, Record] = {}

    def register(self, record: Record, *, replace: bool = False) -> Record:
        """Add `record`; a name taken already is an error unless `replace`."""
        if record.name in self._records and not replace:
            raise ValueError(f"a {self.what} named {record.name!r} is registered already")
        self._records[record.name] = record
        return record

    def __getitem__(self, name: str) -> Record:
        record = self._records.get(name.strip().lower())
        if record is None:
            raise SettingsError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
        return record

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._records

    def __iter__(self) -> Iterator[Record]:
        return iter(list(self._records.values()))

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._records)


VOICE_FAMILIES: Registry[VoiceFamily] = Registry("voice family")
ENGINES: Registry[EngineKind] = Registry("engine")
