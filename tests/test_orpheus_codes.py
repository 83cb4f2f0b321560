"""Orpheus token layout: ids <-> SNAC codes, the streaming parser's rules, prompt ids, token budget."""

from __future__ import annotations

import numpy as np
import pytest

from voicekit.tts import orpheus_codes as oc
from voicekit.tts.orpheus_codes import (
    CodeParser,
    build_prompt_ids,
    codes_to_token_ids,
    frames_to_codes,
    max_tokens_for_text,
)

BASE = 128266


def audio_id(slot: int, code: int) -> int:
    return BASE + slot * 4096 + code


def random_codes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4096, n), rng.integers(0, 4096, 2 * n), rng.integers(0, 4096, 4 * n)


def parse_all(ids: list[int]) -> tuple[list[tuple[int, ...]], oc.ParseStats]:
    parser = CodeParser()
    frames = parser.feed(ids)
    return frames, parser.finish()


def test_constants_match_reference() -> None:
    assert (oc.AUDIO_BASE, oc.CODEBOOK_SIZE, oc.FRAME_TOKENS) == (128266, 4096, 7)
    assert (oc.END_OF_SPEECH_ID, oc.START_OF_SPEECH_ID, oc.BOS_ID, oc.EOT_ID) == (128258, 128257, 128000, 128009)
    assert oc.VOICES == ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
    assert "<laugh>" in oc.EMOTION_TAGS and len(oc.EMOTION_TAGS) == 8


def test_token_ids_follow_slot_table() -> None:
    c0, c1, c2 = [7, 9], [11, 12, 21, 22], [100, 101, 102, 103, 200, 201, 202, 203]
    ids = codes_to_token_ids(c0, c1, c2)
    # slot0 c0[k]; slot1 c1[2k]; slot2 c2[4k]; slot3 c2[4k+1]; slot4 c1[2k+1]; slot5 c2[4k+2]; slot6 c2[4k+3]
    expected = [
        *[audio_id(0, 7), audio_id(1, 11), audio_id(2, 100), audio_id(3, 101)],
        *[audio_id(4, 12), audio_id(5, 102), audio_id(6, 103)],
        *[audio_id(0, 9), audio_id(1, 21), audio_id(2, 200), audio_id(3, 201)],
        *[audio_id(4, 22), audio_id(5, 202), audio_id(6, 203)],
    ]
    assert ids == expected
    assert expected[:3] == [128273, 128266 + 4096 + 11, 128266 + 8192 + 100]
    frames, stats = parse_all(ids)
    assert frames == [(7, 11, 100, 101, 12, 102, 103), (9, 21, 200, 201, 22, 202, 203)]
    got = frames_to_codes(frames)
    for want, have in zip((c0, c1, c2), got, strict=True):
        assert have.tolist() == want
    assert (stats.frames, stats.audio_tokens, stats.rejected_ids) == (2, 14, 0)


def test_random_codes_round_trip() -> None:
    codes = random_codes(20, seed=3)
    frames, _ = parse_all(codes_to_token_ids(*codes))
    for want, have in zip(codes, frames_to_codes(frames), strict=True):
        np.testing.assert_array_equal(have, want)


@pytest.mark.parametrize("code", [0, 4095])
def test_edge_codes_accepted_in_every_slot(code: int) -> None:
    ids = [audio_id(slot, code) for slot in range(7)]
    frames, stats = parse_all(ids)
    assert frames == [(code,) * 7]
    assert stats.rejected_ids == 0


@pytest.mark.parametrize("bad_code", [4096, -1, 5000])
def test_invalid_code_drops_its_frame_without_phase_shift(bad_code: int) -> None:
    codes = random_codes(3, seed=1)
    ids = codes_to_token_ids(*codes)
    ids[7 + 3] = audio_id(3, bad_code)  # frame 1, slot 3: an id out of slot 3's range
    frames, stats = parse_all(ids)
    expected = [tuple(f) for f in oc.codes_to_frames(*codes).tolist()]
    assert frames == [expected[0], expected[2]]  # frame 2 still decodes to the right codes
    assert (stats.rejected_ids, stats.dropped_frames, stats.frames, stats.partial_tokens) == (1, 1, 2, 0)


def test_stray_ids_are_skipped_without_counting() -> None:
    codes = random_codes(3, seed=2)
    clean = codes_to_token_ids(*codes)
    strays = [128257, 128009, 1234, 0, 128256, 128265, 128000]
    noisy: list[int] = []
    for i, token in enumerate(clean):
        noisy.append(token)
        if i % 3 == 0:
            noisy.append(strays[i % len(strays)])
    frames, stats = parse_all(noisy)
    assert frames == parse_all(clean)[0]
    assert stats.ignored_ids == len(noisy) - len(clean)
    assert stats.audio_tokens == len(clean)


def test_delta_grouping_does_not_matter() -> None:
    ids = [*codes_to_token_ids(*random_codes(5, seed=4)), 128258]
    whole = CodeParser().feed(ids)
    one_by_one = CodeParser()
    singles = [f for token in ids for f in one_by_one.feed([token])]
    rng = np.random.default_rng(0)
    cuts = sorted(rng.choice(np.arange(1, len(ids)), size=9, replace=False).tolist())
    uneven = CodeParser()
    split = [f for part in np.split(np.array(ids), cuts) for f in uneven.feed(part.tolist())]
    assert len(whole) == 5
    assert singles == whole
    assert split == whole


def test_a_frame_split_over_many_deltas_completes_on_its_last_token() -> None:
    ids = codes_to_token_ids(*random_codes(1, seed=5))
    parser = CodeParser()
    assert parser.feed(ids[:2]) == []
    assert parser.feed(ids[2:6]) == []
    assert parser.pending_tokens == 6
    assert len(parser.feed(ids[6:])) == 1


def test_stops_at_end_of_speech() -> None:
    ids = codes_to_token_ids(*random_codes(3, seed=6))
    parser = CodeParser()
    frames = parser.feed([*ids[:7], 128258, *ids[7:]])
    assert len(frames) == 1
    assert parser.stopped
    assert parser.feed(ids) == []
    assert parser.stats.frames == 1


def test_stream_cut_mid_frame_reports_partial() -> None:
    ids = codes_to_token_ids(*random_codes(3, seed=7))[:-3]  # 2 frames + 4 tokens
    parser = CodeParser()
    frames = parser.feed(ids)
    stats = parser.finish()
    assert len(frames) == 2
    assert (stats.frames, stats.partial_tokens, stats.stopped) == (2, 4, False)


def test_codes_to_token_ids_validates() -> None:
    with pytest.raises(ValueError):
        codes_to_token_ids([1], [1], [1, 2, 3, 4])
    with pytest.raises(ValueError):
        codes_to_token_ids([4096], [1, 2], [1, 2, 3, 4])


def test_prompt_ids_exact() -> None:
    text_ids = [128000, 83, 5169, 25, 22691, 0]  # tokenizer("tara: Hello!") shape: BOS first
    assert build_prompt_ids(text_ids) == [128259, *text_ids, 128009, 128260, 128261, 128257]
    assert build_prompt_ids(text_ids[1:]) == build_prompt_ids(text_ids)  # missing BOS is added
    assert oc.prompt_text("tara", "Hello!") == "tara: Hello!"


def test_max_tokens_grows_with_text_and_is_clamped() -> None:
    short = max_tokens_for_text("Hi.")
    sentence = max_tokens_for_text("The quick brown fox jumps over the lazy dog, twice, before breakfast.")
    paragraph = max_tokens_for_text("word " * 60)
    huge = max_tokens_for_text("word " * 5000)
    assert short == oc.MIN_MAX_TOKENS
    assert short <= sentence < paragraph < huge == oc.MAX_MAX_TOKENS
    assert paragraph > 83 * 60 / 2.6  # 60 words at a typical 2.6 words/s must fit: no truncation
    assert max_tokens_for_text("I see <laugh> I see") > max_tokens_for_text("I see I see")
    assert all(n % 7 == 0 for n in (short, sentence, paragraph, huge))
    assert max_tokens_for_text("word " * 5000, cap=700) == 700


# --- a stream stuck in a loop ---


def _random_frames(count: int, seed: int = 0) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(c) for c in row) for row in rng.integers(0, oc.CODEBOOK_SIZE, (count, oc.FRAME_TOKENS))]


def test_loop_guard_never_fires_on_frames_that_do_not_repeat() -> None:
    guard = oc.LoopGuard()
    assert not guard.push(_random_frames(500))
    assert guard.period is None


@pytest.mark.parametrize("period", [1, 3, 8])
def test_loop_guard_fires_when_a_block_repeats_for_min_frames(period: int) -> None:
    speech, block = _random_frames(40, seed=1), _random_frames(period, seed=2)
    looped = block * (oc.LoopGuard().min_frames // period + 1)
    guard = oc.LoopGuard()
    assert not guard.push(speech)
    fired_at = next(i for i in range(1, len(looped) + 1) if oc.LoopGuard().push(speech + looped[:i]))
    assert fired_at == guard.min_frames, "fires exactly when min_frames frames are one repeated block"
    assert guard.push(looped) and guard.period == period


def test_loop_guard_ignores_a_short_repeat_and_a_longer_period() -> None:
    pause = _random_frames(1, seed=3) * 23  # one frame short of min_frames (24)
    assert not oc.LoopGuard().push([*_random_frames(10), *pause, *_random_frames(10, seed=4)])
    assert not oc.LoopGuard().push(_random_frames(9, seed=5) * 4), "a block of 9 frames is past max_period 8"
