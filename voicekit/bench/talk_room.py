"""`python -m voicekit bench talk --room speaker|pauses|headset`: talking in a room, through the real socket.

- `speaker`: replies play on a simulated loudspeaker (voicekit/bench/room.py; gain 0.3-1.0, delay 40-300 ms, a
  reverberation tail, noise) and the microphone streams what the room hears, at real time. Counted: replies that
  interrupted themselves, echo turns answered or dropped; then a user (a voice the project does not ship) speaks
  over the echo and the time from their first word to the reply stopping is measured.
- `pauses`: sentences with a 0.3-1.0 s pause in the middle ("Please book a table for ... four people at eight
  tonight.") and one-word answers ("Yes."), in several voices: kept as one turn? answered?
- `headset`: questions in several voices, no echo: from the last word (the VAD's last speech frame) to the first
  reply audio, and the share of the words the recognizer heard.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voicekit.audio import float_to_pcm16, pcm16_to_float, resample
from voicekit.bench.room import Loudspeaker, Room
from voicekit.listening.vad import SileroVAD

RATE = 24000
CHUNK = 960  # the microphone's 40 ms
ROOMS = [Room(gain, delay) for gain in (0.3, 0.5, 0.7, 1.0) for delay in (0.04, 0.12, 0.2, 0.3)]
TOPICS = ("lighthouses", "honey bees", "the moon", "volcanoes", "old trains", "octopuses", "the desert", "glaciers",
          "owls", "bridges")
INTERRUPTION = "Wait, stop please. What time is it in Tokyo right now?"
PAUSED = ("Please book a table for, four people at eight tonight.", "I would like to order, a large pizza with olives.",
          "Can you tell me about the, history of the Roman empire?", "So what I was thinking is, we could leave early.",
          "My flight leaves on Monday and, I need a hotel near the airport.")
QUESTIONS = ("What is the capital of France?", "Please book a table for four people at eight tonight.",
             "How far away is the moon?", "Set a timer for ten minutes.", "What do cats like to eat?")
STORY_INSTRUCTIONS = "You are a friendly guide. Answer in three or four sentences."
SHORT_INSTRUCTIONS = "Answer in one short sentence."
DEFAULT_INSTRUCTIONS = ""  # the kit's own system prompt (one to three short sentences): what a user gets


@dataclass
class Trial:
    """One socket conversation: the events with their arrival times, and marks the client set (perf_counter)."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    cuts: list[float] = field(default_factory=list)  # when the loudspeaker dropped reply audio it was playing

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, event) for at, event in self.events if event["type"] == kind]

    def responses(self) -> list[dict[str, Any]]:
        return [event["response"] for _, event in self.of("response.done")]

    def transcripts(self) -> list[dict[str, Any]]:
        return [event for _, event in self.of("conversation.item.input_audio_transcription.completed")]


def speech_span(audio: np.ndarray, rate: int = RATE) -> tuple[float, float]:
    """(first, last) second of speech in `audio`, by Silero VAD (where a listener hears the first and last word)."""
    scores = SileroVAD().probabilities(resample(audio, rate, 16000)) >= 0.5
    frames = np.flatnonzero(scores)
    frame_s = 512 / 16000
    return (float(frames[0] * frame_s), float((frames[-1] + 1) * frame_s)) if len(frames) else (0.0, 0.0)


_NUMBERS = dict(enumerate([
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]))


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped, numbers up to twenty spelled out ("10" is "ten")."""
    found = re.findall(r"[a-z']+|\d+", text.lower())
    return [_NUMBERS.get(int(word), word) if word.isdigit() else word for word in found]


def word_accuracy(expected: str, heard: str) -> float:
    """Share of the expected words heard, in order (a longest common subsequence of words)."""
    want, have = words(expected), words(heard)
    table = [[0] * (len(have) + 1) for _ in range(len(want) + 1)]
    for i, word in enumerate(want):
        for j, other in enumerate(have):
            table[i + 1][j + 1] = table[i][j] + 1 if word == other else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1] / max(1, len(want))


async def converse(url: str, *, mic: Any, speaker: Loudspeaker | None = None, session: dict[str, Any] | None = None,
                   ask: str | None = None, until: Any, timeout: float = 90.0) -> Trial:
    """One session: optional `session.update` and typed question, then the microphone streams at real time
    (`mic(trial, position)` gives the user's next chunk) while reply audio plays on `speaker`; stops when
    `until(trial, position)` is true (position: microphone samples sent)."""
    from websockets.asyncio.client import connect

    trial = Trial()
    async with connect(url, max_size=None) as ws:
        trial.events.append((time.perf_counter(), json.loads(await ws.recv())))
        if session:
            await ws.send(json.dumps({"type": "session.update", "session": session}))
        if ask:
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": ask}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
        receiver = asyncio.create_task(_receive(ws, trial, speaker))
        try:
            async with asyncio.timeout(timeout):
                await _stream_microphone(ws, trial, mic, speaker, until)
        finally:
            receiver.cancel()
    return trial


async def _receive(ws: Any, trial: Trial, speaker: Loudspeaker | None) -> None:
    async for message in ws:
        event = json.loads(message)
        trial.events.append((time.perf_counter(), event))
        if event["type"] == "response.output_audio.delta" and speaker is not None:
            speaker.receive(pcm16_to_float(base64.b64decode(event["delta"])))
        elif event["type"] == "input_audio_buffer.speech_started" and speaker is not None:
            if speaker.playing:  # the reply stops for the listener here, whether or not the server still made it
                trial.cuts.append(trial.events[-1][0])
            speaker.flush()  # as a client does: the user spoke, what the old reply had queued is dropped


async def _stream_microphone(ws: Any, trial: Trial, mic: Any, speaker: Loudspeaker | None, until: Any) -> None:
    started, position = time.perf_counter(), 0
    while not until(trial, position):
        user = mic(trial, position)
        heard = speaker.microphone(user) if speaker is not None else user
        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": base64.b64encode(float_to_pcm16(heard)).decode()}))
        position += CHUNK
        await asyncio.sleep(max(0.0, started + position / RATE - time.perf_counter()))


def silence(_trial: Trial, _position: int) -> np.ndarray:
    """A microphone with nobody speaking."""
    return np.zeros(CHUNK, np.float32)


def speaking(audio: np.ndarray, start: int, trial: Trial, mark: str = "speech_sent") -> Any:
    """A microphone on which the user says `audio` from sample `start` on (marks when it begins)."""
    def chunk(current: Trial, position: int) -> np.ndarray:
        offset = position - start
        if offset < 0 or offset >= len(audio):
            return np.zeros(CHUNK, np.float32)
        if offset < CHUNK:
            current.marks.setdefault(mark, time.perf_counter())
        piece = audio[offset:offset + CHUNK]
        return np.pad(piece, (0, CHUNK - len(piece)))
    return chunk


def median(values: list[float]) -> float | None:
    """The median of the values there are (None for none), rounded."""
    values = [value for value in values if value is not None]
    return round(statistics.median(values), 4) if values else None


# -- the speech a bench user speaks -------------------------------------------------------------------------------


def spoken(kit: Any, text: str, voice: str) -> np.ndarray:
    """`text` in `voice`, at the socket's 24 kHz."""
    reply = kit.say(text, voice=voice)
    audio = reply.audio()
    rate = reply.chunks[0].sample_rate if reply.chunks else kit.sample_rate
    return resample(audio, rate, RATE)


def user_voices(kit: Any) -> list[str]:
    """Voices to speak as users: Kokoro's English ones when the kit has them (voices it does not answer in, and the
    project does not ship), else its default voice."""
    kokoro = [voice for voice in ("af_heart", "am_michael", "bf_emma", "bm_george") if voice in kit.voices]
    return kokoro or [str(kit.default_voice)]


def runs_of(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in the boolean `mask`."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def stretch_pause(kit: Any, audio: np.ndarray, text: str, pause_s: float) -> tuple[np.ndarray, float]:
    """`audio` (`text` spoken, 24 kHz) with the pause at its comma made `pause_s` long; returns the audio and where
    the pause begins (seconds). The voice read the whole sentence, so the words before the pause sound unfinished.

    The recognizer finds the comma: of the quiet stretches near the start of the word after it (below -35 dB of the
    loudest 10 ms; else the quietest 10 ms), nearest first, the first one with the comma's words before it and no
    more. That stretch becomes the pause, so no sound is cut. (The VAD's longest silence alone is not the comma:
    in some voices it falls between "Monday" and "and", or after "pizza", and its edges clip a quiet word.)"""
    words_before = len(text.split(",")[0].split())
    heard = kit.transcribe(audio, RATE, "en", words=True).words
    near_s = heard[words_before].start_s if "," in text and len(heard) > words_before else len(audio) / 2 / RATE
    candidates = _quiet_stretches(audio, near_s)
    begin, end = next((stretch for stretch in candidates[:6]
                       if len(kit.transcribe(audio[:stretch[0]], RATE, "en").text.split()) == words_before),
                      candidates[0])
    return np.concatenate([audio[:begin], np.zeros(int(pause_s * RATE), np.float32), audio[end:]]), begin / RATE


def _quiet_stretches(audio: np.ndarray, near_s: float, reach_s: float = 0.4) -> list[tuple[int, int]]:
    """Where a pause could go within `reach_s` of `near_s`, nearest first: the quiet stretches (samples [begin,
    end)), then the ten quietest 10 ms frames (empty stretches at their middle)."""
    frame = RATE // 100
    level = 20 * np.log10(np.sqrt(np.mean(audio[: len(audio) // frame * frame].reshape(-1, frame) ** 2, axis=1))
                          + 1e-9)
    quiet = level < level.max() - 35
    spoken = np.flatnonzero(~quiet)
    runs = [(first, stop) for first, stop in runs_of(quiet) if stop - first >= 2 and spoken[0] < first
            and stop <= spoken[-1]]
    target = near_s * 100

    def distance(run: tuple[int, int]) -> float:
        return max(run[0] - target, target - run[1], 0.0)

    runs = sorted((run for run in runs if distance(run) <= reach_s * 100), key=distance)
    low, high = max(int(target - reach_s * 100), spoken[0]), min(int(target + reach_s * 100), spoken[-1])
    dips = [index for index in np.argsort(level[low:high]) + low if not quiet[index]][:10]
    return ([(first * frame, last * frame) for first, last in runs]
            + [(index * frame + frame // 2,) * 2 for index in sorted(dips, key=lambda index: abs(index - target))])


# -- speaker: echo, self-interruptions, a real interruption over the echo ---------------------------------------


async def reply_on_a_speaker(url: str, room: Room, topic: str) -> dict[str, Any]:
    """A story plays on the loudspeaker; the microphone hears only the room. Did it interrupt or answer itself?"""
    speaker = Loudspeaker(room)

    def finished(trial: Trial, position: int) -> bool:
        if not trial.responses() or speaker.playing:
            return False
        quiet = trial.marks.setdefault("quiet", position)
        return position - quiet >= int(1.5 * RATE)  # the echo's tail and a turn it might start have had their time

    trial = await converse(url, mic=silence, speaker=speaker, session={"instructions": STORY_INSTRUCTIONS},
                           ask=f"Tell me about {topic}.", until=finished)
    first = trial.responses()[0]
    heard = trial.transcripts()
    # cut by a turn: on the server (still making it) or on the loudspeaker (the server had sent it all)
    cancelled = first["status"] == "cancelled" and first.get("status_details", {}).get("reason") == "turn_detected"
    return {"room": room.label(), "status": first["status"], "self_interrupted": cancelled or bool(trial.cuts),
            "echo_dropped": sum(1 for event in heard if event.get("echo")),
            "echo_turns": [event["transcript"] for event in heard if not event.get("echo") and event["transcript"]],
            "answered_itself": len(trial.responses()) > 1, "played_s": round(speaker.played_samples / RATE, 2)}


async def interruption_over_echo(url: str, room: Room, topic: str, user: np.ndarray) -> dict[str, Any]:
    """1.5 s into a story on the loudspeaker, the user speaks over its echo: how soon does the story stop? Then the
    answer plays on the same loudspeaker: does it cut or answer itself?"""
    speaker = Loudspeaker(room)
    onset = int(speech_span(user)[0] * RATE)
    plan: dict[str, int] = {}

    def mic(trial: Trial, position: int) -> np.ndarray:
        story_over = bool(trial.responses()) and not speaker.playing  # cut (or ended) before 1.5 s: speak anyway
        if "start" not in plan and (speaker.played_samples >= int(1.5 * RATE) or story_over):
            plan["start"] = position
        if "start" not in plan:
            return np.zeros(CHUNK, np.float32)
        offset = position - plan["start"]
        if offset <= onset < offset + CHUNK:
            trial.marks.setdefault("first_word", time.perf_counter())
        if offset >= len(user):
            trial.marks.setdefault("user_done", time.perf_counter())  # the user's last sample has been sent
        piece = user[offset:offset + CHUNK] if 0 <= offset < len(user) else np.zeros(0, np.float32)
        return np.pad(piece, (0, CHUNK - len(piece)))

    def finished(trial: Trial, position: int) -> bool:
        if "start" not in plan:
            return False
        if position - plan["start"] > len(user) + 40 * RATE:
            return True  # never answered (or an answer that never ends): counted as such
        replying = len(trial.of("response.created")) > len(trial.responses())
        if "user_done" not in trial.marks or len(trial.responses()) < 2 or replying or speaker.playing:
            trial.marks.pop("answer_quiet", None)
            return False
        # the answer has played out on the loudspeaker: its echo's tail and a turn it might start have had their time
        quiet = trial.marks.setdefault("answer_quiet", position)
        return position - quiet >= int(1.5 * RATE)

    trial = await converse(url, mic=mic, speaker=speaker, session={"instructions": STORY_INSTRUCTIONS},
                           ask=f"Tell me about {topic}.", until=finished)
    first_word = trial.marks.get("first_word")
    # the story stops for the user when the loudspeaker drops it (the server says speech started); cut before the
    # first word, it interrupted itself
    stop = trial.cuts[0] if trial.cuts else None
    stopped = stop is not None and first_word is not None and stop >= first_word
    heard = [event["transcript"] for event in trial.transcripts()]
    # after the user's last word only the answer's echo reaches the microphone: a cut then, or a turn that began
    # then and was answered, is the answer cutting or answering itself
    user_done = trial.marks.get("user_done", float("inf"))
    user_end_ms = (plan.get("start", 0) + len(user)) / RATE * 1000
    late = {event["item_id"] for _, event in trial.of("input_audio_buffer.speech_started")
            if event["audio_start_ms"] >= user_end_ms}
    answered_itself = any(event["item_id"] in late and event["transcript"].strip() and not event.get("echo")
                          for event in trial.transcripts())
    return {"room": room.label(), "stopped": stopped, "self_interrupted": stop is not None and not stopped,
            "answer_cut_itself": any(cut > user_done for cut in trial.cuts), "answered_itself": answered_itself,
            "stop_after_first_word_s": round(stop - first_word, 3) if stopped and first_word and stop else None,
            "heard": heard, "heard_accuracy": round(max((word_accuracy(INTERRUPTION, text) for text in heard),
                                                         default=0.0), 3),
            "answered": len(trial.responses()) >= 2}


# -- pauses: one turn or two? ----------------------------------------------------------------------------------


async def paused_turn(url: str, audio: np.ndarray, text: str,
                      instructions: str = SHORT_INSTRUCTIONS) -> dict[str, Any]:
    """Speak `audio` (a sentence with a pause inside, or a short answer); count the turns the server took and say
    whether a reply spoke before the last word (what a user notices: the kit answered half a sentence)."""
    lead = int(0.3 * RATE)
    spoken_audio = np.concatenate([np.zeros(lead, np.float32), audio])
    last_word = lead + int(speech_span(audio)[1] * RATE)
    marks: dict[str, float] = {}

    def mic(trial: Trial, position: int) -> np.ndarray:
        if position <= last_word < position + CHUNK:
            marks.setdefault("last_word", time.perf_counter())
        piece = spoken_audio[position:position + CHUNK]
        return np.pad(piece, (0, CHUNK - len(piece)))

    def finished(trial: Trial, position: int) -> bool:
        # a reply to the first part, dropped when the user went on, is not the answer: wait for one that completes
        answered = any(response.get("status") != "cancelled" for response in trial.responses())
        return answered or position > len(spoken_audio) + 6 * RATE

    trial = await converse(url, mic=mic, session={"instructions": instructions}, until=finished)
    committed = trial.of("input_audio_buffer.committed")
    first_audio = next((at for at, _ in trial.of("response.output_audio.delta")), None)
    heard = [event["transcript"] for event in trial.transcripts()]
    last = marks.get("last_word")
    stages: dict[str, Any] = {}
    if last is not None and committed:  # where the time went: the turn's end, the recognizer, then the reply
        stopped_at, stopped = trial.of("input_audio_buffer.speech_stopped")[-1]
        stages["turn_end_s"] = round(stopped_at - last, 3)
        stages["smart_turn_probability"] = stopped.get("smart_turn_probability")
        stages["asr_s"] = trial.transcripts()[-1].get("asr_s") if trial.transcripts() else None
        done = [response for response in trial.responses() if response.get("status") == "completed"]
        if done:
            stages["reply_first_audio_s"] = done[0].get("timings", {}).get("ttfa_s")
            # what the voice waited for: the chat model wrote this much before the first audio could be made
            pieces = trial.of("response.output_audio_transcript.delta")
            stages["first_piece"] = next((event["delta"] for _, event in pieces
                                          if event.get("response_id") == done[0]["id"]), None)
            stages["reply_audio_s"], stages["reply_gap_s"] = playback_gap(trial, done[0]["id"])
    # the turn ended (committed) before the last word was said: the detector split the sentence. The reply to its
    # first part waits while the user goes on and is dropped once their words are heard, so the user notices only a
    # reply that spoke before the last word (None: before it was even said).
    ended_early = bool(committed) and (last is None or committed[0][0] < last)
    # answered: a reply that was not dropped spoke (a long one may still be speaking when the trial stops)
    dropped = {response["id"] for response in trial.responses() if response.get("status") == "cancelled"}
    spoken = {event["response_id"] for _, event in trial.of("response.output_audio.delta")}
    spoke_early = first_audio is not None and (last is None or first_audio < last)
    return {"text": text, "turns": len(committed), "ended_before_last_word": ended_early,
            "replied_before_last_word": spoke_early, "heard": heard,
            "heard_accuracy": round(word_accuracy(text, " ".join(heard)), 3),
            "answered": bool(spoken - dropped),
            "last_word_to_first_audio_s": round(first_audio - last, 3) if first_audio and last else None, **stages}


def playback_gap(trial: Trial, response_id: str) -> tuple[float, float]:
    """The reply's audio (seconds), and the longest silence a player of it would have had to insert: it starts
    playing at the first audio delta and plays each one on arrival or when the audio before it ends, whichever is
    later (0: never starved)."""
    playing_until, gap, audio_s = None, 0.0, 0.0
    for at, event in trial.of("response.output_audio.delta"):
        if event.get("response_id") != response_id:
            continue
        seconds = len(base64.b64decode(event["delta"])) / 2 / RATE
        audio_s += seconds
        if playing_until is not None and at > playing_until:
            gap = max(gap, at - playing_until)
        playing_until = max(playing_until or at, at) + seconds
    return round(audio_s, 3), round(gap, 3)


# -- headset: from the last word to the first reply audio; what the recognizer heard -----------------------------


async def question_on_a_headset(url: str, audio: np.ndarray, text: str) -> dict[str, Any]:
    """Ask `text` with no echo at all: latency from the last word, and the words heard."""
    result = await paused_turn(url, np.concatenate([audio, np.zeros(RATE, np.float32)]), text,
                               instructions=DEFAULT_INSTRUCTIONS)
    result.pop("turns")
    return result


def run_trial(coroutine: Any, **labels: Any) -> dict[str, Any]:
    """Run one trial; one that hangs past its conversation's timeout is a result saying so, not the end of the bench.
    Each result is logged as it comes (a 20-minute run shows its progress)."""
    try:
        result = {**asyncio.run(coroutine), **labels}
    except TimeoutError:
        result = {**labels, "timed_out": True}
    print(f"bench talk: {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def run_rooms(url: str, kit: Any, room: str, repeats: int) -> dict[str, Any]:
    """The `room` bench against the server at `url` (a /v1/realtime socket), `repeats` trials of each kind."""
    voices = user_voices(kit)
    results: dict[str, Any] = {"room": room, "user_voices": voices}
    if room == "speaker":
        places = [(ROOMS[i % len(ROOMS)], TOPICS[i % len(TOPICS)], voices[i % len(voices)]) for i in range(repeats)]
        replies = [run_trial(reply_on_a_speaker(url, place, topic), room=place.label()) for place, topic, _ in places]
        user = {voice: spoken(kit, INTERRUPTION, voice) for voice in voices}
        interruptions = [run_trial(interruption_over_echo(url, place, topic, user[voice]), room=place.label())
                         for place, topic, voice in places]
        stops = [run.get("stop_after_first_word_s") for run in interruptions]
        results.update(
            replies=replies, interruptions=interruptions,
            timed_out=sum(run.get("timed_out", False) for run in replies + interruptions),
            self_interruptions=sum(run.get("self_interrupted", False) for run in replies),
            self_interruptions_before_the_user_spoke=sum(run.get("self_interrupted", False) for run in interruptions),
            answers_that_cut_themselves=sum(run.get("answer_cut_itself", False) for run in interruptions),
            answers_that_answered_themselves=sum(run.get("answered_itself", False) for run in interruptions),
            echo_turns_answered=sum(len(run.get("echo_turns", ())) for run in replies),
            echo_turns_dropped=sum(run.get("echo_dropped", 0) for run in replies),
            answered_itself=sum(run.get("answered_itself", False) for run in replies),
            interruptions_stopped_within_0_5_s=sum(1 for stop in stops if stop is not None and stop <= 0.5),
            interruption_stop_median_s=median(stops))
    elif room == "pauses":
        runs = []
        for i in range(repeats):
            text = PAUSED[i % len(PAUSED)]
            pause = (0.3, 0.5, 0.7, 1.0)[(i // len(PAUSED)) % 4]
            audio, _ = stretch_pause(kit, spoken(kit, text, voices[i % len(voices)]), text, pause)
            runs.append(run_trial(paused_turn(url, audio, text), pause_s=pause, voice=voices[i % len(voices)]))
        yes = [run_trial(paused_turn(url, spoken(kit, "Yes.", voice), "Yes."), voice=voice) for voice in voices]
        # one turn, as the user hears it: no reply before the last word, and one answer to the whole sentence's words
        # (a split the reply waited out counts; split_by_the_detector says how often the detector itself split)
        whole = [run.get("answered") and not run.get("replied_before_last_word") and run.get("heard_accuracy", 0) >= 0.7
                 for run in runs]
        for run, kept in zip(runs, whole, strict=True):
            run["one_turn"] = kept
        results.update(paused=runs, one_turn=sum(whole), of=len(runs), yes=yes,
                       split_by_the_detector=sum(bool(run.get("ended_before_last_word")) for run in runs),
                       yes_answered=sum(run.get("answered", False) for run in yes),
                       yes_last_word_to_first_audio_s=median([run.get("last_word_to_first_audio_s") for run in yes]))
    else:
        runs = []
        for i in range(repeats):
            text, voice = QUESTIONS[i % len(QUESTIONS)], voices[i % len(voices)]
            runs.append(run_trial(question_on_a_headset(url, spoken(kit, text, voice), text), voice=voice))
        results.update(questions=runs,
                       last_word_to_first_audio_s=median([run.get("last_word_to_first_audio_s") for run in runs]),
                       # the reply's audio starving its player: a gap a listener hears mid-reply
                       replies_with_a_gap_over_0_2_s=sum(run.get("reply_gap_s", 0) > 0.2 for run in runs),
                       longest_reply_gap_s=max((run.get("reply_gap_s", 0) for run in runs), default=0),
                       word_accuracy=round(statistics.mean(run.get("heard_accuracy", 0.0) for run in runs), 3))
    return results
