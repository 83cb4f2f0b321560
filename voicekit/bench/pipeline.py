"""`python -m voicekit bench pipeline --json FILE`: time to first audio, total time and RTF by case and mode.

Cases follow the Qwen3-TTS benchmark's word counts (2, 12, 32, 74) for `say`, plus three chat prompts
(one short, one factual, one asking for a reply of several sentences) in both pipeline modes. Each case
runs `repeats` times after one warm-up turn; the JSON holds the median of each figure and its spread, and
`resources`: each vLLM engine's memory share and KV-cache tokens, the GPU's memory in use, the recognizer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from voicekit.device import machine_facts
from voicekit.pipeline import MODES

SAY_TEXTS: dict[int, str] = {
    2: "Hello there.",
    12: "The quick brown fox jumps over the lazy dog near the quiet river.",
    32: ("Voice assistants feel natural when they answer quickly. The first words should arrive in well under "
         "a second, and the rest of the reply should keep flowing without gaps or clicks."),
    74: ("Long replies test whether a speech pipeline can keep up with itself. Each sentence is cleaned, split "
         "and spoken in turn, and the listener should never hear a pause between them. A good kit measures "
         "the time to the first sound, the total time, and the real-time factor, then publishes the numbers "
         "with the machine they came from. That way anyone can check the claims, compare settings, and see "
         "which mode suits their hardware best."),
}

CHAT_PROMPTS: dict[str, str] = {
    "chat-hello": "Hello",
    "chat-fact": "What is the capital of France?",
    "chat-story": "Tell me a short story about a cat in four sentences.",
}

FIGURES = ("ttfa_s", "total_s", "audio_s", "rtf")


def machine_info() -> dict[str, Any]:
    """Where the numbers came from."""
    return dict(machine_facts())


def summarize(name: str, mode: str, words: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One JSON record: medians of each figure, their min/max spread, and the raw runs."""
    record: dict[str, Any] = {"name": name, "mode": mode, "words": words, "runs": len(runs)}
    for figure in FIGURES:
        values = [run[figure] for run in runs if run.get(figure) is not None]
        record[figure] = round(statistics.median(values), 4) if values else None
        record[f"{figure}_min"] = round(min(values), 4) if values else None
        record[f"{figure}_max"] = round(max(values), 4) if values else None
    record["sentences"] = statistics.median(run["sentences"] for run in runs) if runs else 0
    record["samples"] = runs
    return record


def _timed(turn: Callable[[], Any]) -> dict[str, Any]:
    reply = turn()
    reply.audio()  # drain the stream: the timings are complete afterwards
    figures = reply.timings.as_dict()
    figures["reply_words"] = len(reply.text.split())
    return figures


def run_pipeline_bench(preset: str | None = None, repeats: int = 3, quick: bool = False,
                       kit: Any = None) -> dict[str, Any]:
    """Run every case and return {"machine", "preset", "cases": [...]}."""
    import voicekit

    owned = kit is None
    kit = kit or voicekit.load(preset)
    try:
        started = time.perf_counter()
        _timed(lambda: kit.say("Warming up the voice."))
        _timed(lambda: kit.chat("Hi", seed=0))
        cases = _say_cases(kit, repeats, quick) + _chat_cases(kit, repeats, quick)
        return {"machine": machine_info(), "preset": kit.settings.preset, "description": kit.description,
                "repeats": repeats, "seconds": round(time.perf_counter() - started, 1), "cases": cases,
                "resources": _resources(kit)}
    finally:
        if owned:
            kit.close()


def _resources(kit: Any) -> dict[str, Any] | None:
    """The kit's vLLM engines (share, KV-cache tokens), the GPU's memory and the recognizer (voicekit.build);
    None for a kit behind a server (its /health has them)."""
    if not hasattr(kit, "pipeline"):
        return None
    from voicekit.build import resources

    return resources(kit)


def family_voices(kit: Any) -> dict[str, str]:
    """One voice per voice family of the kit: each family's own default voice (the kit's for its family)."""
    families = getattr(getattr(kit, "tts", None), "families", None)
    if families:
        return {family.name: family.default_voice if index else kit.default_voice
                for index, family in enumerate(families)}
    voices: dict[str, str] = {}  # a kit behind a server: its catalogue says only which family each voice is
    for voice in kit.voices:
        family = getattr(voice, "family", "")
        if family not in voices or voice == kit.default_voice:
            voices[family] = str(voice)
    return voices


def _say_cases(kit: Any, repeats: int, quick: bool) -> list[dict[str, Any]]:
    """The say cases in every voice family of the kit (the default family's cases keep their plain names)."""
    counts = (2, 12) if quick else tuple(SAY_TEXTS)
    families = family_voices(kit)
    records = []
    for family, voice in families.items():
        if voice != kit.default_voice:
            _timed(lambda voice=voice: kit.say("Warming up the voice.", voice=voice))
        prefix = "say" if voice == kit.default_voice else f"say-{family}"
        for words in counts:
            runs = [_timed(lambda text=SAY_TEXTS[words], voice=voice: kit.say(text, voice=voice))
                    for _ in range(repeats)]
            record = summarize(f"{prefix}-{words}w", "sequential", words, runs)
            records.append({**record, "voice": voice, "family": family})
    return records


def _chat_cases(kit: Any, repeats: int, quick: bool) -> list[dict[str, Any]]:
    names = ("chat-hello",) if quick else tuple(CHAT_PROMPTS)
    records = []
    for name in names:
        for mode in MODES:
            # The same seeds in both modes give the same replies, so the modes are compared on equal text.
            runs = [_timed(lambda seed=seed, mode=mode, name=name: kit.chat(CHAT_PROMPTS[name], mode=mode, seed=seed))
                    for seed in range(repeats)]
            words = round(statistics.median(run["reply_words"] for run in runs))
            records.append(summarize(name, mode, words, runs))
    return records
