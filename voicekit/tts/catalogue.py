"""One voice catalogue across voice families (Piper, Kokoro, Orpheus, Qwen3) in one speech backend.

`VoiceCatalogue` is itself a `SpeechBackend`, so the pipeline, the kit and the server see one backend that
routes each voice to its family. Rules (also in docs/VOICES.md):

* The first family is the default one: its default voice is the kit's default, and its sample rate is the
  kit's; other families' audio is resampled to it (soxr, streaming, one resampler per sentence).
* Every voice is a `Voice`: a `str` (its id, as before) with `family`, `language` and `description`.
* A name resolves in the families' order, so when two families share a name the earlier family wins;
  `"family:name"` (e.g. `"kokoro:af_heart"`) picks one explicitly. OpenAI's voice names (alloy, echo, fable,
  onyx, nova, shimmer) map to the Kokoro voices of the same name when Kokoro is there (else they are unknown).
* Emotion tags are the tags of the families that honour them; a voice of a family without tags gets the
  text with its tags removed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from voicekit.errors import UnknownVoiceError
from voicekit.text import strip_tags
from voicekit.tts.base import BackendBase

#: OpenAI's voice names -> the Kokoro voice that fits them (Kokoro v1.0 has most of them under the same name).
OPENAI_VOICES: dict[str, str] = {"alloy": "af_alloy", "echo": "am_echo", "fable": "bm_fable", "onyx": "am_onyx",
                                 "nova": "af_nova", "shimmer": "af_bella"}


class Voice(str):
    """A voice id (it is the string) with its family, language and a short description."""

    family: str
    language: str
    description: str

    def __new__(cls, name: str, family: str, language: str = "", description: str = "") -> Voice:
        voice = super().__new__(cls, name)
        voice.family, voice.language, voice.description = family, language, description
        return voice

    def as_dict(self) -> dict[str, str]:
        """For `/v1/audio/voices` and the page."""
        return {"id": str(self), "family": self.family, "language": self.language, "description": self.description}


def voice_facts(backend: Any, name: str) -> Voice:
    """The `Voice` a backend says `name` is (`about(name) -> (language, description)`, see BackendBase)."""
    if isinstance(name, Voice):
        return name
    about = getattr(backend, "about", None)
    language, description = about(name) if about else ("", "")
    return Voice(name, backend.name, language, description)


class VoiceCatalogue(BackendBase):
    """Several speech backends as one: the voices of all, each routed to its own."""

    name = "catalogue"

    def __init__(self, families: Sequence[Any], default_voice: str | None = None) -> None:
        """`default_voice`: any voice of the catalogue (None: the first family's default)."""
        if not families:
            raise ValueError("a voice catalogue needs at least one speech backend")
        self.families = list(families)
        first = self.families[0]
        self.sample_rate = first.sample_rate
        self.tags = tuple(dict.fromkeys(tag for family in self.families for tag in family.tags))
        self._catalogue = [voice_facts(family, name) for family in self.families for name in family.voices]
        self._openai = {alias: target for alias, target in OPENAI_VOICES.items() if self._family_of(target)}
        self.default_voice = first.default_voice
        if default_voice:
            self.default_voice = self.resolve(default_voice)

    @property
    def voices(self) -> list[Voice]:  # type: ignore[override]
        """Every voice of every family, the default family first."""
        return list(self._catalogue)

    def resolve(self, voice: str | None) -> str:
        """Canonical `voice` (None: the default), `family:name`, or an OpenAI name; UnknownVoiceError otherwise."""
        family, name = self._route(voice)
        return family.resolve(name)

    def about(self, voice: str) -> tuple[str, str]:
        family, name = self._route(voice)
        entry = voice_facts(family, family.resolve(name))
        return entry.language, entry.description

    def family_of(self, voice: str) -> str:
        """The name of the family that speaks `voice`."""
        return str(self._route(voice)[0].name)

    async def synthesize(self, text: str, voice: str) -> AsyncIterator[np.ndarray]:
        family, name = self._route(voice)
        spoken = text if family.tags else strip_tags(text)
        if family.sample_rate == self.sample_rate:
            async for chunk in family.synthesize(spoken, family.resolve(name)):
                yield chunk
            return
        import soxr

        resampler = soxr.ResampleStream(family.sample_rate, self.sample_rate, 1, dtype="float32")
        async for chunk in family.synthesize(spoken, family.resolve(name)):
            out = resampler.resample_chunk(np.asarray(chunk, dtype=np.float32))
            if len(out):
                yield out
        tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        if len(tail):
            yield tail

    async def failure(self) -> str | None:
        for family in self.families:
            check = getattr(family, "failure", None)
            reason = await check() if check else None
            if reason:
                return f"{family.name}: {reason}"
        return None

    async def close(self) -> None:
        for family in self.families:
            await family.close()

    # -- routing --------------------------------------------------------------------------------------

    def _family_of(self, name: str) -> Any:
        for family in self.families:
            try:
                family.resolve(name)
            except (UnknownVoiceError, ValueError):
                continue
            return family
        return None

    def _route(self, voice: str | None) -> tuple[Any, str | None]:
        if voice is None or not voice.strip():
            return self.families[0], None
        wanted = voice.strip()
        prefix, _, rest = wanted.partition(":")
        for family in self.families:
            if rest and prefix.lower() == family.name:
                return family, rest
        family = self._family_of(wanted)
        if family is not None:
            return family, wanted
        alias = self._openai.get(wanted.lower())
        if alias is not None:
            return self._family_of(alias), alias
        raise UnknownVoiceError(wanted, list(self._catalogue))
