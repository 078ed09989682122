"""Text normalisation and matching for the content filter: the views of a text, and the lists matched on them.

A text is first *folded* character by character (NFKC, casefold, Latin diacritics removed, invisible
characters dropped), keeping for every folded character the index of the original character it came from,
so that a match can be masked in the original text. The folded characters then give three views:

* the **word view** (Latin and other spaced scripts): words joined by single spaces, where a run of single
  letters separated by short separators (``k i l l``, ``k.i.l.l``, ``k-i-l-l``) is collapsed into one word.
  Terms match there on word boundaries only, so ``skill`` never matches ``kill``;
* the **leet view**: the word view again with ``0 1 3 4 5 @ $`` read as ``o i e a s a s`` inside words that
  also hold a letter (``p0rn``, ``@ss``); only built when the text holds one of those characters;
* the **CJK view**: letters and digits only, every separator removed, because Chinese and Japanese have no
  spaces between words (``暴 力`` and ``暴*力`` both read ``暴力``). Terms holding a CJK character match there
  as plain substrings.
"""

from __future__ import annotations

import bisect
import functools
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import ahocorasick

# Letters that render as nothing but are not format (Cf) characters: fillers used to hide separations.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")
# Marks and format characters: combining marks (incl. variation selectors), enclosing marks, and Cf
# (zero-width space/joiners, bidi marks, word joiner, invisible operators, BOM, soft hyphen, ...).
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf"})

# Inside a word that also holds a letter, these read as the letter they imitate. "1" reads "i" (not "l"):
# one reading keeps the view single; "k1ll" and "sh1t" need "i", "1oli" would need "l" and is not caught.
LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "@": "a", "$": "s"}

# Single letters separated by at most this many separator characters are read as one spelled-out word.
_MAX_SPELLED_GAP = 3

# Scripts written without spaces between words (Han, kana, Hangul, bopomofo, CJK symbols that act as letters).
_CJK_RANGES = (
    (0x1100, 0x11FF),
    (0x2E80, 0x2FDF),
    (0x3005, 0x3007),
    (0x3021, 0x3029),
    (0x3031, 0x3035),
    (0x3038, 0x303C),
    (0x3040, 0x30FF),
    (0x3100, 0x312F),
    (0x3130, 0x318F),
    (0x31A0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xA960, 0xA97F),
    (0xAC00, 0xD7FF),
    (0xF900, 0xFAFF),
    (0x20000, 0x323AF),
)
_CJK_STARTS = [start for start, _ in _CJK_RANGES]


def is_cjk(ch: str) -> bool:
    """True for a character of a script written without spaces (Chinese, Japanese, Korean)."""
    code = ord(ch)
    i = bisect.bisect_right(_CJK_STARTS, code) - 1
    return i >= 0 and code <= _CJK_RANGES[i][1]


@functools.lru_cache(maxsize=8192)
def fold_char(ch: str) -> str:
    """The folded form of one character: possibly empty (invisible) or several characters (``ﬁ`` -> ``fi``)."""
    compat = unicodedata.normalize("NFKC", ch)
    if unicodedata.category(ch).startswith("S") and any(c.isalnum() for c in compat):
        # A symbol whose compatibility form is letters (™ -> TM, ㎏ -> kg) would glue onto the word next to it.
        return " "
    out = []
    for c in compat.casefold():
        if c in _INVISIBLE or unicodedata.category(c) in _DROPPED_CATEGORIES:
            continue
        if "\x7f" < c < "\u0250" or "\u1e00" <= c <= "\u1eff":
            # Latin letters with diacritics read as their base letter (nüde, ñude). Other scripts keep their
            # marks: in kana, for example, the voicing mark changes the word.
            decomposed = unicodedata.normalize("NFD", c)
            if decomposed[0].isascii():
                c = decomposed[0]
        out.append(c)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Folded:
    """A folded text: ``chars[i]`` came from the original character at ``origin[i]``."""

    chars: str
    origin: tuple[int, ...]


def fold(text: str) -> Folded:
    """Fold ``text`` character by character, keeping the map back to original positions."""
    chars: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        folded = ch if ch.isascii() and not ch.isupper() else fold_char(ch)
        for c in folded:
            chars.append(c)
            origin.append(i)
    return Folded("".join(chars), tuple(origin))


@dataclass(frozen=True, slots=True)
class View:
    """One view of a text: ``text[i]`` comes from the original character ``origin[i]`` (-1: a joining space).

    ``inner`` holds the extra word-boundary positions inside spelled-out words (``k i l l`` -> ``kill``):
    the letters were separate words, so a term may start or end between any two of them.
    """

    text: str
    origin: tuple[int, ...]
    inner: frozenset[int] = frozenset()

    def is_start(self, pos: int) -> bool:
        """True when a word-view match may start at ``pos``."""
        return pos == 0 or self.text[pos - 1] == " " or pos in self.inner

    def is_end(self, pos: int) -> bool:
        """True when a word-view match may end just before ``pos``."""
        return pos == len(self.text) or self.text[pos] == " " or pos in self.inner


def _is_word_char(ch: str, leet: bool) -> bool:
    return (ch.isalnum() and not is_cjk(ch)) or (leet and ch in "@$")


def _gap_joins(gap: str) -> bool:
    """True when the separators between two single letters are short enough to read them as one word."""
    return len(gap) <= _MAX_SPELLED_GAP and "\n" not in gap and not any(is_cjk(c) for c in gap)


def _tokens(folded: Folded, leet: bool) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` in ``folded.chars`` of the maximal runs of word characters."""
    spans = []
    start = -1
    for i, ch in enumerate(folded.chars):
        if _is_word_char(ch, leet):
            if start < 0:
                start = i
        elif start >= 0:
            spans.append((start, i))
            start = -1
    if start >= 0:
        spans.append((start, len(folded.chars)))
    return spans


def _words(folded: Folded, leet: bool) -> list[list[tuple[int, int]]]:
    """Words as lists of token spans: a spelled-out word holds several one-character tokens."""
    chars = folded.chars
    words: list[list[tuple[int, int]]] = []
    for span in _tokens(folded, leet):
        single = span[1] - span[0] == 1
        if words and single:
            last = words[-1]
            prev = last[-1]
            if prev[1] - prev[0] == 1 and _gap_joins(chars[prev[1] : span[0]]):
                last.append(span)
                continue
        words.append([span])
    return words


def _leet(word: str) -> str:
    if any(c.isalpha() for c in word) and any(c in LEET for c in word):
        return "".join(LEET.get(c, c) for c in word)
    return word


def word_view(folded: Folded, *, leet: bool = False) -> View:
    """The word view (``leet=True``: the leet view) of a folded text."""
    out: list[str] = []
    origin: list[int] = []
    inner: set[int] = set()
    for spans in _words(folded, leet):
        if out:
            out.append(" ")
            origin.append(-1)
        start = len(out)
        word = "".join(folded.chars[s:e] for s, e in spans)
        if leet:
            word = _leet(word)
        out.extend(word)
        for s, e in spans:
            origin.extend(folded.origin[s:e])
        if len(spans) > 1:
            inner.update(range(start + 1, len(out)))
    return View("".join(out), tuple(origin), frozenset(inner))


def cjk_view(folded: Folded) -> View:
    """The CJK view of a folded text: letters and digits only, no separators."""
    keep = [i for i, ch in enumerate(folded.chars) if ch.isalnum()]
    return View("".join(folded.chars[i] for i in keep), tuple(folded.origin[i] for i in keep))


def has_leet(folded: Folded) -> bool:
    """True when the leet view may differ from the word view."""
    return any(c in LEET for c in folded.chars)


@dataclass(frozen=True, slots=True)
class TermKey:
    """A normalised term: ``text`` is matched in the CJK view when ``cjk``, in the word views otherwise."""

    text: str
    cjk: bool


def term_key(term: str) -> TermKey:
    """Normalise a list term the way texts are normalised; an empty ``text`` means nothing is left to match."""
    folded = fold(term)
    if any(is_cjk(c) for c in folded.chars):
        return TermKey(cjk_view(folded).text, True)
    return TermKey(word_view(folded).text, False)


@functools.lru_cache(maxsize=65536)
def _cached_key(term: str) -> TermKey:
    return term_key(term)


def term_length(term: str) -> int:
    """Length of ``term`` after normalisation (0: nothing left to match)."""
    return len(_cached_key(term).text)


@dataclass(frozen=True, slots=True)
class Hit:
    """A match: original span ``[start, end)`` and the index of its category (``ALLOW`` for the allow-list)."""

    start: int
    end: int
    category: int


ALLOW = -1


def _automaton(keys: dict[str, set[int]]) -> ahocorasick.Automaton | None:
    if not keys:
        return None
    automaton = ahocorasick.Automaton()
    for key, categories in keys.items():
        automaton.add_word(key, (len(key), tuple(sorted(categories))))
    automaton.make_automaton()
    return automaton


class Matcher:
    """Term lists compiled into two Aho-Corasick automata: word terms and CJK terms.

    ``lists[i]`` are the terms of category ``i``; ``allow`` the allow-listed terms. :meth:`hits` returns the
    matches in a text, in original positions, without those lying inside an occurrence of an allowed term.
    """

    def __init__(self, lists: Sequence[Sequence[str]], allow: Sequence[str]) -> None:
        word: dict[str, set[int]] = {}
        cjk: dict[str, set[int]] = {}
        for category, terms in [*enumerate(lists), (ALLOW, allow)]:
            for term in terms:
                key = _cached_key(term)
                if key.text:
                    (cjk if key.cjk else word).setdefault(key.text, set()).add(category)
        self._word = _automaton(word)
        self._cjk = _automaton(cjk)

    def hits(self, text: str) -> list[Hit]:
        """Matches of ``text``, deduplicated across views, allow-listed ones removed."""
        if not text:
            return []
        folded = fold(text)
        found: set[Hit] = set()
        if self._word is not None:
            view = word_view(folded)
            self._scan(self._word, view, text, found, boundaries=True)
            if has_leet(folded):
                leet = word_view(folded, leet=True)
                if leet.text != view.text:
                    self._scan(self._word, leet, text, found, boundaries=True)
        if self._cjk is not None and any(is_cjk(c) for c in folded.chars):
            self._scan(self._cjk, cjk_view(folded), text, found, boundaries=False)
        allowed = [h for h in found if h.category == ALLOW]
        return [
            h for h in found if h.category != ALLOW and not any(a.start <= h.start and h.end <= a.end for a in allowed)
        ]

    @staticmethod
    def _scan(automaton: ahocorasick.Automaton, view: View, text: str, found: set[Hit], *, boundaries: bool) -> None:
        for last, (length, categories) in automaton.iter(view.text):
            first = last - length + 1
            if boundaries and not (view.is_start(first) and view.is_end(last + 1)):
                continue
            start = view.origin[first]
            end = view.origin[last] + 1
            # Marks and invisible characters right after the term belong to it (masking leaves none behind).
            while end < len(text) and not text[end].isascii() and not fold_char(text[end]):
                end += 1
            found.update(Hit(start, end, c) for c in categories)
