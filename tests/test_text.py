"""Cleaning and sentence splitting for speech (voicekit.text)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicekit.text import EMOTION_TAGS, SentenceStream, clean_for_speech, split_sentences, word_count


def speak(text: str) -> list[str]:
    return split_sentences(clean_for_speech(text))


def stream(text: str, sizes: list[int], **options: Any) -> list[str]:
    """Push `text` in chunks of the given sizes (the rest in one go), then flush."""
    splitter = SentenceStream(**options)
    out: list[str] = []
    position = 0
    for size in sizes:
        out += splitter.push(text[position : position + size])
        position += size
    return out + splitter.push(text[position:]) + splitter.flush()


# ---- clean_for_speech -------------------------------------------------------------------------------


def test_emoji_reply_becomes_two_sentences() -> None:
    assert speak("Hello! 👋 How can I help you today? 😊") == ["Hello!", "How can I help you today?"]


@pytest.mark.parametrize(
    "text", ["😊👋🎉", "👍🏽 ❤️ 🇺🇸 👨‍👩‍👧", "  \n\n ", "```\ncode()\n```", "https://example.com", "!!! ..."]
)
def test_nothing_speakable(text: str) -> None:
    assert clean_for_speech(text) == ""
    assert split_sentences(clean_for_speech(text)) == []
    assert stream(text, [1] * len(text)) == []


def test_emoji_modifiers_flags_and_joiners_leave_no_residue() -> None:
    assert clean_for_speech("Family 👨‍👩‍👧 time 👍🏽 in the 🇫🇷 sun ☀️ ✅ done") == "Family time in the sun done"


def test_markdown_is_stripped_and_lines_become_sentences() -> None:
    reply = (
        "## Quick answer\n"
        "Here is **what** you need:\n"
        "- mix the _flour_\n"
        "* bake `at 200` degrees\n"
        "> Enjoy ~~it~~ [the recipe](https://x.com/r?a=1) ![photo](p.png)\n"
        "```python\nprint('never spoken')\n```\n"
        "That's all."
    )
    assert clean_for_speech(reply) == (
        "Quick answer. Here is what you need: Mix the flour. Bake at 200 degrees. Enjoy it the recipe. That's all."
    )
    assert speak(reply) == [
        "Quick answer.",
        "Here is what you need: Mix the flour.",
        "Bake at 200 degrees.",
        "Enjoy it the recipe.",
        "That's all.",
    ]


def test_unclosed_code_fence_drops_the_rest() -> None:
    assert clean_for_speech("Run this:\n```bash\nrm -rf build\nmake") == "Run this:"


def test_tables_read_as_lists() -> None:
    table = "| Name | Age |\n|------|-----|\n| Anna | 31 |"
    assert clean_for_speech(table) == "Name, Age. Anna, 31"


def test_urls_and_emails_are_dropped_but_the_sentence_stays() -> None:
    text = "See https://docs.example.com/a_b?x=1. Or mail help@example.co.uk, or www.example.org (today)."
    assert clean_for_speech(text) == "See. Or mail, or (today)."
    assert clean_for_speech("Docs at <https://x.com> are good.") == "Docs at are good."


def test_emotion_tags_kept_or_removed_and_html_stripped() -> None:
    text = "That is <b>funny</b> <LAUGH> really <sigh> ok <br/> <custom>tag"
    assert clean_for_speech(text) == "That is funny <laugh> really <sigh> ok tag"
    assert clean_for_speech(text, keep_tags=False) == "That is funny really ok tag"
    assert EMOTION_TAGS == ("<laugh>", "<chuckle>", "<sigh>", "<cough>", "<sniffle>", "<groan>", "<yawn>", "<gasp>")
    assert all(clean_for_speech(f"Well {tag} yes") == f"Well {tag} yes" for tag in EMOTION_TAGS)


def test_line_without_punctuation_does_not_run_into_the_next() -> None:
    assert speak("First point\nsecond point\nThird one") == ["First point.", "Second point.", "Third one"]
    assert clean_for_speech("Ends with comma,\nnext") == "Ends with comma, Next"


def test_whitespace_is_collapsed() -> None:
    assert clean_for_speech("  Lots \t of   space  \r\n\r\n here  ") == "Lots of space. Here"


# ---- split_sentences -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith met Dr. Who. They talked.", ["Mr. Smith met Dr. Who.", "They talked."]),
        ("Fruit, e.g. Apples, i.e. Red ones. Fine.", ["Fruit, e.g. Apples, i.e. Red ones.", "Fine."]),
        ("She moved to the U.S. In May she left. Ok then.", ["She moved to the U.S. In May she left.", "Ok then."]),
        ("We met at 9 a.m. Then we ate. Good.", ["We met at 9 a.m. Then we ate.", "Good."]),
        ("Ask Prof. Lee vs. St. James etc. Now go.", ["Ask Prof. Lee vs. St. James etc. Now go."]),
        ("J. R. R. Tolkien wrote it. Read it.", ["J. R. R. Tolkien wrote it.", "Read it."]),
        ("It costs $100.00 today. Pi is 3.14. Yes.", ["It costs $100.00 today.", "Pi is 3.14.", "Yes."]),
        ("It costs $5. Then we left.", ["It costs $5.", "Then we left."]),
        (
            "Update to v1.2.3 now. Mail bob@x.com. Visit www.x.org today.",
            ["Update to v1.2.3 now.", "Mail bob@x.com.", "Visit www.x.org today."],
        ),
        (
            "See Fig. 3 and No. 5 here. The answer is no. Stop.",
            ["See Fig. 3 and No. 5 here.", "The answer is no.", "Stop."],
        ),
    ],
)
def test_abbreviations_initials_and_numbers(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_ellipses_and_runs() -> None:
    assert split_sentences("Wait... What?! No way!! I think... maybe not. Oh… Right.") == [
        "Wait...",
        "What?!",
        "No way!!",
        "I think... maybe not.",
        "Oh… Right.",
    ]


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert split_sentences('He said "Hi." Then left.') == ['He said "Hi."', "Then left."]
    assert split_sentences("(It worked.) “Really?” she asked. 'No.' Good.") == [
        "(It worked.)",
        "“Really?” she asked.",
        "'No.' Good.",
    ]
    assert split_sentences('It is "fine." but not great.') == ['It is "fine." but not great.']


def test_numbered_lists_do_not_split_after_the_list_number() -> None:
    assert split_sentences("1. First item. 2. Second item.") == ["1. First item.", "2. Second item."]
    assert speak("Steps:\n1. Mix it\n2. Bake it") == ["Steps: 1. Mix it.", "2. Bake it"]
    assert split_sentences("I was born in 1990. 2000 came.") == ["I was born in 1990.", "2000 came."]


def test_fragments_without_letters_are_dropped() -> None:
    assert split_sentences("Hello there. ... !!! It works.") == ["Hello there. ... !!!", "It works."]
    assert split_sentences("... Done now. Yes sir.") == ["Done now.", "Yes sir."]
    assert split_sentences("?! ... (-)") == []


def test_short_fragments_merge_forward_and_a_short_last_one_stays() -> None:
    assert split_sentences("Hi. How are you? A. B. Fine thanks. Ok.") == [
        "Hi. How are you?",
        "A. B. Fine thanks.",
        "Ok.",
    ]
    assert split_sentences("Hello! Yes.") == ["Hello!", "Yes."]  # 5 and 3 letters: both speak well alone
    assert split_sentences("Hello! Yes.", min_chars=6) == ["Hello! Yes."]
    assert split_sentences("Hi.") == ["Hi."]


def test_emotion_tags_stay_with_their_sentence() -> None:
    assert split_sentences("That is funny! <laugh> Anyway, we go. I agree <sigh>") == [
        "That is funny!",
        "<laugh> Anyway, we go.",
        "I agree <sigh>",
    ]
    assert split_sentences("That is funny! <laugh>") == ["That is funny! <laugh>"]


def test_long_multi_paragraph_text() -> None:
    paragraph = "Dr. Ada Byron wrote notes in 1843. They ran to 3.5 pages, e.g. on loops! Was it code? Yes."
    text = "\n\n".join([paragraph] * 20)
    sentences = speak(text)
    assert len(sentences) == 80
    assert sentences[:4] == [
        "Dr. Ada Byron wrote notes in 1843.",
        "They ran to 3.5 pages, e.g. on loops!",
        "Was it code?",
        "Yes.",
    ]
    assert " ".join(sentences) == clean_for_speech(text)


def test_word_count() -> None:
    assert word_count("Don't stop <laugh> now, 3 times! 😊") == 5
    assert word_count("") == 0


# ---- SentenceStream ------------------------------------------------------------------------------------


def test_stream_releases_a_sentence_on_the_push_that_starts_the_next() -> None:
    splitter = SentenceStream()
    assert splitter.push("Hello there.") == []
    assert splitter.push(" ") == []
    assert splitter.push("H") == ["Hello there."]
    assert splitter.push("ow are you") == []
    assert splitter.flush() == ["How are you"]


def test_stream_waits_on_abbreviations_and_decimals() -> None:
    splitter = SentenceStream()
    assert splitter.push("Mr.") == []
    assert splitter.push(" Smith") == []
    assert splitter.push(" paid 3.") == []
    assert splitter.push("50 today. ") == []
    assert splitter.push("Then") == ["Mr. Smith paid 3.50 today."]
    assert splitter.push(" he left. it") == []  # lowercase after ". ": same sentence
    assert splitter.flush() == ["Then he left. it"]


def test_stream_cleans_markdown_split_across_deltas() -> None:
    chunks = ["**bo", "ld** wo", "rd [li", "nk](https://x.", "com) ok. 😊", "\n- ne", "xt _it", "em_"]
    splitter = SentenceStream()
    out = [sentence for chunk in chunks for sentence in splitter.push(chunk)]
    assert out + splitter.flush() == ["bold word link ok.", "Next item"]


def test_stream_holds_short_sentences_back_and_merges_them() -> None:
    splitter = SentenceStream()
    assert splitter.push("Hi. T") == []
    assert splitter.push("his is fine. N") == ["Hi. This is fine."]
    assert splitter.flush() == ["N"]


def test_stream_first_fragment_is_cut_early_at_a_comma() -> None:
    splitter = SentenceStream(first_fragment_chars=10)
    assert splitter.push("Well, that is a good question,") == []
    assert splitter.push(" and") == []  # "and" is not finished: it could still become a link or an address
    assert splitter.push(" here, the answer") == ["Well, that is a good question,"]
    assert splitter.push(" is yes. Later, ") == ["and here, the answer is yes."]
    assert splitter.push("we talk.") == []  # later pieces are whole sentences
    assert splitter.flush() == ["Later, we talk."]


def test_stream_first_fragment_may_end_before_a_clause() -> None:
    """No comma comes: the first piece ends before "and", "but", "which"... once it is long enough (the voice starts
    on "Set a timer for ten minutes", not after the whole long sentence is written)."""
    splitter = SentenceStream(first_fragment_chars=16)
    assert splitter.push("Set a timer for ten minutes and") == []  # "and" may still be "android"
    assert splitter.push(" then") == []  # the word after it may not be finished either
    assert splitter.push(" start the game.") == ["Set a timer for ten minutes"]
    assert splitter.flush() == ["and then start the game."]
    splitter = SentenceStream(first_fragment_chars=16)
    assert splitter.push("Cats and dogs like to play and then ") == ["Cats and dogs like to play"], "not at 4"
    assert splitter.push("sleep.") == [] and splitter.flush() == ["and then sleep."]


def test_stream_without_first_fragment_never_cuts_at_commas() -> None:
    splitter = SentenceStream()
    assert splitter.push("Well, that is a good question, and here") == []
    assert splitter.flush() == ["Well, that is a good question, and here"]


def test_flush_resets_the_stream_for_the_next_reply() -> None:
    splitter = SentenceStream()
    splitter.push("```\nsome code")
    assert splitter.flush() == []
    assert splitter.push("Fresh start. N") == ["Fresh start."]
    assert splitter.flush() == ["N"]


CORPUS = [
    "Hello! 👋 How can I help you today? 😊",
    "## Plan\n1. Mix the **flour** and [sugar](https://x.com/s).\n2. Bake at 200 degrees, e.g. for 20 min.\n\n"
    "> Note: Dr. Lee says it's fine.\n```\ncode here\n```\nEnjoy! <laugh> Bye.",
    'Mr. Smith paid $3.50 at 9 a.m. in the U.S. Then he left... Really?! Yes!! "Great." (Sure.) Ok.',
    "| Col | Val |\n|---|---|\n| A | 1 |\nWrite to bob@example.com or see www.example.org. Thanks, <sigh> bye.",
    "J. R. R. Tolkien wrote it. v1.2.3 is out.\n\n- first\n- second\n* third <b>bold</b> 🇺🇸 end",
    "Wait… what? <gasp> No. Hi. A. 1. It is. ![img](a.png) Done_now __really__ `x`",
    # Sentence ends inside unfinished links and tags must wait until cleaning removes them.
    'See [the guide. It helps](https://x.com/g "Guide. Title") today. <a title="One. Two">Link</a> here. Bye.',
]


@pytest.mark.parametrize("text", CORPUS)
@pytest.mark.parametrize("seed", range(25))
def test_stream_matches_batch_for_random_chunkings(text: str, seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(1, 8) for _ in range(len(text))]
    assert stream(text, sizes) == speak(text)


@pytest.mark.parametrize("text", CORPUS)
def test_stream_matches_batch_char_by_char_and_in_one_push(text: str) -> None:
    assert stream(text, [1] * len(text)) == speak(text) == stream(text, [])


TOKENS = [
    "Hello", "there", "it", "Mr.", "e.g.", "U.S.", "J.", "3.14", "$5", "1.", ".", "!", "?!", "...", "…", ",", ":",
    '"', "(", ")", "**", "_", "`", "```", "#", "-", ">", "|", "😊", "🇺🇸", "<laugh>", "<b>", "<", "[", "](",
    "[link](https://x.com)", "![i](p.png)", "https://x.com/a.", "The", "I", "\n", "\n\n", "  ", "\n1. ", "\n## ",
    "[A b. C d](u \"t. T\")", "<a title=\"One. Two\">", "<laugh>Word", "😊Word",
    # Not glued to a word before it: a stream decides on "Word" + "bob@x.com" from the "W" before the
    # address (which cleaning removes whole) is complete; that one case is documented, not matched.
    " bob@x.com",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.lists(st.sampled_from(TOKENS), max_size=40),
    sizes=st.lists(st.integers(1, 9), max_size=60),
    joiner=st.sampled_from([" ", ""]),
    min_chars=st.integers(1, 6),
    keep_tags=st.booleans(),
)
def test_stream_matches_batch_property(
    tokens: list[str], sizes: list[int], joiner: str, min_chars: int, keep_tags: bool
) -> None:
    text = joiner.join(tokens)
    expected = split_sentences(clean_for_speech(text, keep_tags=keep_tags), min_chars=min_chars)
    assert stream(text, sizes, min_chars=min_chars, keep_tags=keep_tags) == expected
    assert all(sentence.strip() == sentence and any(c.isalnum() for c in sentence) for sentence in expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(st.sampled_from([*TOKENS, ",", ";", "a", "word", "and", "which"]), max_size=40),
       seed=st.integers(0, 99))
def test_first_fragment_only_moves_the_first_boundary(tokens: list[str], seed: int) -> None:
    text = " ".join(tokens)
    rng = random.Random(seed)
    sizes = [rng.randint(1, 6) for _ in range(len(text))]
    plain, early = stream(text, sizes), stream(text, sizes, first_fragment_chars=8)
    if len(early) == len(plain) + 1:
        assert [f"{early[0]} {early[1]}", *early[2:]] == plain
        assert early[0][-1] in ",;:—–-" or early[1].split()[0] in ("and", "which")
        assert len(early[0]) >= 8
    else:
        assert early == plain
    assert early == stream(text, [], first_fragment_chars=8)  # the cut does not depend on the chunking


def test_stream_first_fragment_may_end_at_a_dash() -> None:
    splitter = SentenceStream(first_fragment_chars=10)
    assert splitter.push("Paris is the capital — and the largest city") == ["Paris is the capital —"]
    assert splitter.push(" of France.") == []
    assert splitter.flush() == ["and the largest city of France."]
    hyphen = SentenceStream(first_fragment_chars=10)
    assert hyphen.push("A well-known city - Paris is it") == ["A well-known city -"]  # not at the word's hyphen
