"""Text for speech: clean a chat-model reply (`clean_for_speech`), cut it into sentences to speak one
at a time (`split_sentences`), or do both on a streamed reply, releasing each sentence as soon as it is
certain (`SentenceStream`). Cleaning works line by line so a stream gets exactly the batch result.
"""

from __future__ import annotations

import re

EMOTION_TAGS: tuple[str, ...] = (
    "<laugh>", "<chuckle>", "<sigh>", "<cough>", "<sniffle>", "<groan>", "<yawn>", "<gasp>",
)  # fmt: skip

_TAG_RE = re.compile("|".join(re.escape(tag) for tag in EMOTION_TAGS), re.IGNORECASE)
_EMOJI = (
    "\u200d\u20e3\ufe0e\ufe0f\u203c\u2049\u2139\u2190-\u21ff\u2300-\u23ff\u24c2\u25a0-\u25ff"
    "\u2600-\u27bf\u2934\u2935\u2b00-\u2bff\u3030\u303d\u3297\u3299\U0001f000-\U0001faff\U000e0020-\U000e007f"
)
_EMOJI_RE = re.compile(f"[{_EMOJI}]+")
_FENCE_RE = re.compile(r"\s*(?:```|~~~)")
_PREFIX_RE = re.compile(r"\s*(?:>|#{1,6}(?=\s|$)|[-*+•·](?=\s|$))\s*")  # heading, quote or bullet marker
_AUTOLINK_RE = re.compile(r"<(?:https?://|mailto:|www\.)[^<>\s]*>", re.IGNORECASE)
_LINK_RE = re.compile(r"(!?)\[([^\[\]]*)\]\([^)]*\)")  # an image when it starts with "!"
_URL_RE = re.compile(r"(?:https?://|www\.)(?:[^\s<>\"]*[^\s<>\".,;:!?)\]'’”])?", re.IGNORECASE)
_EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_HTML_RE = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]*>")
_EMPHASIS_RE = re.compile(r"\*+|~~+|`+|(?<!\w)_+|_+(?!\w)")
_RULE_RE = re.compile(r":?-{3,}:?|={3,}")  # horizontal rules and table separator cells
_ANGLE_RE = re.compile(r"<[A-Za-z/!]")  # where an HTML tag may start
_PIPE_RE = re.compile(r"\s*\|+\s*")
_TIDY = (  # what removals leave behind: "Visit ." (a URL went), ", ,", "word,.", "word. ,", "word.."
    (re.compile(r"\s+(?=[,;:](?!\w)|[.!?…](?![.!?…\w]))"), ""),
    (re.compile(r"([,;:])[,;:]+"), r"\1"),
    (re.compile(r"[,;:]+(?=[.!?…])"), ""),
    (re.compile(r"([.!?…][\"'”’)\]»]*)[,;:]+"), r"\1"),
    (re.compile(r"(?<!\.)\.\.(?!\.)"), "."),
)
_LEAD_RE = re.compile(r"^(?:[\s,;:]|[.!?…]+(?=\s|$))+")
_LOWER_WORD_RE = re.compile(r"[a-z]+(?!\w)")

_OPENERS = "\"'“‘([«¿¡"
_CLOSERS = "\"'”’)]»"
_TERM_RE = re.compile(r"[.!?…]+[\"'”’)\]»]*")
# a soft break with words after it: `, ; :`, a dash (— or –), or a hyphen standing between spaces; or (an empty
# match) the end of the words before a conjunction that starts a clause ("... ten minutes | and then ...")
_SOFT_RE = re.compile(r"(?:[,;:—–]|(?<=\s)-|(?=\s(?:and|but|because|which|while|although|though|whereas)"
                      r"\s+[\"'“‘(\[]*[^\W_]))(?=\s+[\"'“‘(\[]*[^\W_])")
_SPACE_RE = re.compile(r"\s*")
_OPENING_RE = re.compile(f"[{re.escape(_OPENERS)}]*")
_ALNUM_RE = re.compile(r"[^\W_]")
_WORD_RE = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_DOTTED_RE = re.compile(r"(?:[A-Za-z]{1,2}\.)+[A-Za-z]{1,2}")  # e.g, i.e, a.m, U.S, Ph.D (final dot cut)
_PROVISIONAL_RE = re.compile(f"(?:[*_~`]|[{_EMOJI}])*([{re.escape(_OPENERS)}]*)(.?)")
_ABBREVIATIONS = frozenset((
    "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "vs", "etc", "approx", "inc", "ltd", "co", "corp",
    "dept", "est", "mt", "ft", "gen", "gov", "sen", "rep", "capt", "col", "lt", "sgt", "rev", "hon", "al", "cf",
    "ca", "ave", "blvd", "rd", "bros", "univ", "jan", "feb", "apr", "aug", "sept", "oct", "nov", "dec",
))  # fmt: skip
_NUMBER_ABBREVIATIONS = frozenset(("no", "nos", "fig", "figs", "vol", "pp", "ch", "sec", "art"))  # before a digit

DEFAULT_MIN_CHARS = 3  # fewer letters and digits than this cannot be spoken well alone: "Hi.", "A.", "1."


def strip_tags(text: str) -> str:
    """`text` without emotion tags (for a voice that would read "<laugh>" aloud), spaces tidied."""
    return re.sub(r"\s{2,}", " ", _TAG_RE.sub(" ", text)).strip()


def word_count(text: str) -> int:
    """Number of words in `text` (emotion tags, emoji and punctuation are not words)."""
    return len(_WORD_RE.findall(_TAG_RE.sub(" ", text)))


def _speakable(text: str) -> int:
    # Letters and digits a voice will say; emotion tags are sounds, not words.
    return len(_ALNUM_RE.findall(_TAG_RE.sub(" ", text)))


def _strip_markup(text: str, keep_tags: bool) -> str:
    """Remove links, URLs, addresses, HTML, emoji and markdown syntax from one line."""
    # The membership tests skip patterns that cannot match: a stream re-cleans its growing line often.
    if "<" in text:
        text = _AUTOLINK_RE.sub("", text)
    if "](" in text:
        text = _LINK_RE.sub(lambda m: "" if m.group(1) else m.group(2), text)
    if "://" in text or "www." in text.lower():
        text = _URL_RE.sub("", text)
    if "@" in text:
        text = _EMAIL_RE.sub("", text)
    if "<" in text:
        text = _HTML_RE.sub(lambda m: m.group().lower() if keep_tags and _TAG_RE.fullmatch(m.group()) else "", text)
    if not text.isascii():
        text = _EMOJI_RE.sub("", text)
    if any(mark in text for mark in "*_~`"):
        text = _EMPHASIS_RE.sub("", text)
    if "---" in text or "===" in text:
        text = _RULE_RE.sub("", text)
    return _PIPE_RE.sub(", ", text) if "|" in text else text


def _clean_line(line: str, keep_tags: bool, capitalize: bool, terminated: bool) -> str:
    """Clean one line (no newline in it) of a reply; see `clean_for_speech`."""
    while match := _PREFIX_RE.match(line):
        line = line[match.end() :]
    is_table_row = line.rstrip().endswith("|")
    text = " ".join(_strip_markup(line, keep_tags).split())
    for pattern, replacement in _TIDY:
        text = pattern.sub(replacement, text)
    text = text.rstrip(" ,") if is_table_row else text.rstrip()
    text = _LEAD_RE.sub("", text, count=1)
    if capitalize and _LOWER_WORD_RE.match(text):
        # A new line is a new sentence; a capital lets the splitter see that.
        text = text[0].upper() + text[1:]
    last = _TAG_RE.sub("", text).rstrip().rstrip(_CLOSERS)
    if terminated and last and last[-1] not in ".!?…:;,":
        text += "."
    return text


class _LineCleaner:
    """Cleans a reply line by line, remembering code fences and whether any line had text."""

    def __init__(self, keep_tags: bool) -> None:
        self.keep_tags, self.in_fence, self.had_text = keep_tags, False, False

    def peek(self, line: str, terminated: bool = False) -> str:
        """Clean `line` without consuming it (for the unfinished last line of a stream)."""
        fenced = self.in_fence or _FENCE_RE.match(line)
        return "" if fenced else _clean_line(line, self.keep_tags, self.had_text, terminated)

    def feed(self, line: str, terminated: bool = True) -> str:
        """Clean the next line of the reply."""
        if _FENCE_RE.match(line):
            self.in_fence = not self.in_fence  # code is unreadable aloud: drop fenced blocks whole
        text = self.peek(line, terminated)
        self.had_text = self.had_text or bool(text)
        return text


def clean_for_speech(text: str, keep_tags: bool = True) -> str:
    """Return `text` as plain speakable prose, or "" when nothing in it can be spoken.

    Drops emoji, fenced code blocks, images, bare URLs, e-mail addresses, HTML tags and markdown syntax
    (headings, emphasis, inline-code backticks, bullets, quotes, table pipes), keeps link labels and, when
    `keep_tags`, the Orpheus `EMOTION_TAGS`. Each line becomes its own sentence: a line followed by another
    gets a period unless it ends in `.!?…:;,`, and a later line that starts with a lowercase word gets a capital.
    """
    cleaner = _LineCleaner(keep_tags)
    *lines, last = text.replace("\r", "").split("\n")
    parts = [*map(cleaner.feed, lines), cleaner.feed(last, terminated=False)]
    cleaned = " ".join(part for part in parts if part)
    return cleaned if any(char.isalnum() for char in cleaned) else ""


def _skip_space(text: str, index: int) -> int:
    return _SPACE_RE.match(text, index).end()  # type: ignore[union-attr]  # "\s*" always matches


def _is_abbreviation(text: str, dot: int, start: int, following: str) -> bool:
    """Whether the "." at `dot` ends an abbreviation, initial or list number rather than a sentence."""
    parts = text[start:dot].rsplit(None, 1)
    if not parts:
        return False
    word = parts[-1].lstrip(_OPENERS)
    lowered = word.lower()
    if lowered in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or _DOTTED_RE.fullmatch(word):
        return True
    if lowered in _NUMBER_ABBREVIATIONS:
        return following.isdigit()
    if word.isdigit() and len(word) <= 2:  # "1. First step" or "Steps: 1. Mix"
        return len(parts) == 1 or parts[0].rstrip().endswith(":")
    return False


def _starts_sentence(text: str, index: int, final: bool) -> bool | None:
    """Whether a new sentence starts at `index`; None when the text seen so far cannot tell."""
    unknown = False if final else None
    after = _OPENING_RE.match(text, index).end()  # type: ignore[union-attr]  # "[...]*" always matches
    if after == len(text):
        return unknown
    if text[after].isupper() or text[after].isdigit():
        return True
    if after > index or text[index] != "<":
        return False
    tagged = False
    while match := _TAG_RE.match(text, index):
        tagged, index = True, _skip_space(text, match.end())
    if not tagged:
        return False  # a stream only scans finished words, so a tag here is never cut short
    # A tag opens the next sentence only when words follow it; a trailing tag stays where it is.
    if index == len(text):
        return unknown
    return text[index].isalnum() or text[index] in _OPENERS


def _decide(text: str, term: re.Match[str], start: int, final: bool) -> bool | None:
    """Whether the sentence that began at `start` ends with the terminator `term`; None if not known yet."""
    end = term.end()
    if end < len(text) and not text[end].isspace():
        return False  # 3.14, v1.2.3, e.g, example.com
    following = _skip_space(text, end)
    if following == len(text):
        return True if final else None
    if term.group().rstrip(_CLOSERS) == "." and _is_abbreviation(text, term.start(), start, text[following]):
        return False
    return _starts_sentence(text, following, final)


def _scan(text: str, final: bool) -> tuple[list[str], int, int]:
    """Cut certain sentences off `text`; return them, where the rest starts and where scanning stopped."""
    sentences: list[str] = []
    start = _skip_space(text, 0)
    for term in _TERM_RE.finditer(text, start):
        verdict = _decide(text, term, start, final)
        if verdict is None:
            return sentences, start, term.start()
        if verdict:
            sentences.append(text[start : term.end()])
            start = _skip_space(text, term.end())
    if final and start < len(text):
        sentences.append(text[start:])
        start = len(text)
    return sentences, start, len(text)


class _Merger:
    """Drops fragments without letters or digits and carries short ones forward into the next."""

    def __init__(self, min_chars: int) -> None:
        self.min_chars, self.carry = min_chars, ""

    def add(self, fragment: str) -> str | None:
        fragment = " ".join(fragment.split())
        if not any(char.isalnum() for char in fragment):
            return None
        piece = f"{self.carry} {fragment}" if self.carry else fragment
        self.carry = piece if _speakable(piece) < self.min_chars else ""
        return None if self.carry else piece


def split_sentences(text: str, min_chars: int = DEFAULT_MIN_CHARS) -> list[str]:
    """Split cleaned text into sentences to speak one at a time.

    A sentence ends at `. ! ? …` (or a run such as `?!` or `...`, with any closing quotes or brackets)
    followed by a space and a new sentence: an uppercase letter, a digit, an opening quote or bracket
    before one, or an emotion tag with words after it. Abbreviations (Mr., e.g., U.S., a.m.), initials,
    bare list numbers ("1. First"), decimals, versions, e-mails and URLs never end one. Fragments
    without letters or digits are dropped. A fragment with fewer than `min_chars` letters and digits
    (emotion tags do not count) is too short to speak well alone - "Hi.", "A.", "1." - and is merged
    into the following sentence; "Hello!" (5) stands alone with the default of 3. A short fragment at
    the very end stays on its own, because a stream has already spoken the sentence before it.
    """
    merger = _Merger(min_chars)
    pieces = [piece for piece in map(merger.add, _scan(text, final=True)[0]) if piece]
    return [*pieces, merger.carry] if merger.carry else pieces


def _first_cut(piece: str, min_length: int, min_chars: int) -> int | None:
    """End of the first `, ; :` or dash in `piece`, or of the words before a conjunction that starts a clause ("and",
    "but", "because", "which", ...), that leaves a head of at least `min_length` characters."""
    for match in _SOFT_RE.finditer(piece):
        if match.end() >= min_length and _speakable(piece[: match.end()]) >= min_chars:
            return match.end()
    return None


def _open_link(line: str) -> int:
    """Start of a markdown link or image that `line` may still complete, or len(line)."""
    closes = [len(line)]  # a label still open
    if line.endswith("]"):
        closes.append(len(line) - 1)  # "(" may follow
    target = line.find("](", line.rfind(")") + 1)  # the first target still open
    if target >= 0:
        closes.append(target)
    start = len(line)
    for close in closes:
        opener = line.rfind("[", 0, close)
        if opener > line.rfind("]", 0, close):
            start = min(start, opener - 1 if line[opener - 1 : opener] == "!" else opener)
    return start


def _safe_cut(line: str) -> int:
    """The last word start in `line` before which no link, image or tag is unfinished or cut in two.

    Cleaning `line[:cut]` then gives a prefix of what cleaning the finished line will give.
    """
    spans = []
    open_at = _open_link(line)
    if "<" in line:
        spans = [m.span() for regex in (_AUTOLINK_RE, _HTML_RE) for m in regex.finditer(line)]
        angle = max((m.start() for m in _ANGLE_RE.finditer(line)), default=len(line))
        if ">" not in line[angle:]:
            open_at = min(open_at, angle)
    if "](" in line:
        spans += [m.span() for m in _LINK_RE.finditer(line)]
    cut = len(line) if line[-1:].isspace() else _word_start(line, len(line))
    while cut > 0 and (cut > open_at or any(a < cut < b for a, b in spans)):
        cut = _word_start(line, cut)
    return cut


def _word_start(line: str, end: int) -> int:
    """Start of the last word that begins before `end`."""
    end = len(line[:end].rstrip())
    return end - len(line[:end].split()[-1]) if end else 0


def _provisional(rest: str) -> str:
    # The first letter of the next, unfinished word decides a sentence end when it is a capital or a
    # digit: it will survive cleaning (unless the word turns out to be a capitalised e-mail address).
    opening, char = _PROVISIONAL_RE.match(rest).groups()  # type: ignore[union-attr]  # all optional
    return opening + char if char.isupper() or char.isdigit() else ""


class SentenceStream:
    """Cut a streamed reply into clean sentences as soon as each one is certain.

    `push` each text delta and speak what it returns, then `flush` at the end. A sentence is released
    by the push that brings the first character of the next sentence ("Hello there. " waits, "H" releases
    it); abbreviations and numbers wait for the characters that decide them. Released sentences are
    cleaned with `clean_for_speech` and follow the rules of `split_sentences`; together they are exactly
    `split_sentences(clean_for_speech(reply, keep_tags), min_chars)` however the reply was chunked (one
    exception: a sentence that starts with a capitalised e-mail address, decided on its first letter).
    With `first_fragment_chars`, the first piece is cut early after the first `, ; :` or dash, or before the first
    conjunction that starts a clause ("and", "but", "because", "which", ...), that leaves at least that many
    characters before it, so the voice can start sooner; later pieces are whole.
    """

    def __init__(
        self, min_chars: int = DEFAULT_MIN_CHARS, first_fragment_chars: int | None = None, keep_tags: bool = True
    ) -> None:
        self.min_chars, self.first_fragment_chars, self.keep_tags = min_chars, first_fragment_chars, keep_tags
        self._reset()

    def _reset(self) -> None:
        self._cleaner = _LineCleaner(self.keep_tags)
        self._merger = _Merger(self.min_chars)
        self._raw = ""  # the unfinished current line, raw
        self._text = ""  # cleaned, unreleased text of finished lines
        self._skip = 0  # cleaned characters of the current line already released
        self._head = 0  # characters of the first piece already released early
        self._emitted = False
        self._peeked = (-1, "")  # (cut, clean text of the current line up to it)

    def push(self, delta: str) -> list[str]:
        """Add the next piece of the reply; return the sentences now certain."""
        self._raw += delta.replace("\r", "")
        *lines, self._raw = self._raw.split("\n")
        for line in lines:
            rest = self._cleaner.feed(line)[self._skip :]
            self._skip, self._peeked = 0, (-1, "")
            if rest.strip():
                self._text = f"{self._text} {rest}" if self._text else rest
        return self._release(final=False)

    def flush(self) -> list[str]:
        """End the reply: return everything not yet released, and reset for another reply."""
        out = self._release(final=True)
        if self._merger.carry:
            out += self._emit(self._merger.carry)
        self._reset()
        return out

    def _view(self, final: bool) -> tuple[str, str, int]:
        """The unreleased clean text, it with the provisional start of the next word, the separator length."""
        cut = len(self._raw) if final else _safe_cut(self._raw)
        if self._peeked[0] != cut:  # a push inside a word leaves the finished prefix as it was
            self._peeked = (cut, self._cleaner.peek(self._raw[:cut]))
        line = self._peeked[1][self._skip :]
        fenced = self._cleaner.in_fence or _FENCE_RE.match(self._raw)
        provisional = "" if final or fenced else _provisional(self._raw[cut:])
        separator = " " if self._text and line.strip() else ""
        view = self._text + separator + line
        return view, f"{view} {provisional}" if provisional else view, len(separator)

    def _release(self, final: bool) -> list[str]:
        view, scanned, separator = self._view(final)
        sentences, start, stop = _scan(scanned, final)
        out = [part for piece in map(self._merger.add, sentences) if piece for part in self._emit(piece)]
        if start <= len(self._text):  # drop what was released
            self._text = self._text[start:]
        else:
            self._skip += min(start, len(view)) - len(self._text) - separator
            self._text = ""
        if self.first_fragment_chars is not None and not self._emitted and not final:
            out += self._early_head(" ".join(scanned[start:stop].split()), self.first_fragment_chars)
        return out

    def _early_head(self, growing: str, min_length: int) -> list[str]:
        """Release the head of the first piece, still growing, when it can be cut at `, ; :`."""
        carry = self._merger.carry
        piece = f"{carry} {growing}" if carry and growing else carry or growing
        head = _first_cut(piece, min_length, self.min_chars)
        if head is None:
            return []
        self._head, self._emitted = head, True
        return [piece[:head]]

    def _emit(self, piece: str) -> list[str]:
        if self._head:  # the head of this piece went out early
            piece, self._head = piece[self._head :].strip(), 0
            return [piece]
        first, self._emitted = not self._emitted, True
        cut = first and self.first_fragment_chars is not None
        head = _first_cut(piece, self.first_fragment_chars or 0, self.min_chars) if cut else None
        return [piece] if head is None else [piece[:head], piece[head:].strip()]
