"""The ``keywords`` template filter: the most characteristic words of a text, in Chinese, English or both.

``{{ report.section.content | keywords(5) | join(', ') }}`` gives e.g. ``销售额, 增长, 华东, 渠道, 毛利率``.

Chinese runs are segmented with jieba and each word scored TF-IDF (count x jieba's IDF, the table's median for a
word it does not know); Latin words are regex tokens, lowercased, scored the same way (the table has no Latin
words, so they rank by how often they occur). Stop words (``stopwords/zh.txt``, ``en.txt``), one-character words
and tokens without a letter are dropped; equal scores keep the order the words first appear in.

jieba's dictionary and IDF table take a second or two to load and a render has half a second: ``warm()`` loads
them once per process, when the gateway starts (``service.load_shipped``), so no render pays for it.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

MAX_CHARS = 8_000  # only the start of a text is read: segmentation is linear, a render has 0.5 s
MAX_COUNT = 20

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_LATIN = "A-Za-z0-9\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"  # and their full-width forms, common in Chinese text
_TOKEN = re.compile(rf"([{_HAN}]+)|([{_LATIN}]+(?:['’\-][{_LATIN}]+)*)")


@dataclass(frozen=True)
class _Analyzer:
    cut: Callable[[str], Iterable[str]]  # a Chinese run -> its words
    idf: Mapping[str, float]
    median_idf: float
    stop_words: frozenset[str]


_lock = threading.Lock()
_analyzer: _Analyzer | None = None


def warm() -> None:
    """Load jieba's dictionary and IDF table (once per process; safe to call again and from several threads)."""
    _get()


def keywords(text: Any, count: int = 5) -> list[str]:
    """The ``count`` (1..20) most characteristic words of ``text`` (a string, or a list of strings), best first."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise ValueError(f"keywords() needs a count from 1 to {MAX_COUNT}")
    analyzer = _get()
    counts: dict[str, int] = {}  # in order of first appearance: the tie-break
    for word in _words(_bounded(text), analyzer):
        counts[word] = counts.get(word, 0) + 1
    first = {word: index for index, word in enumerate(counts)}
    idf, median = analyzer.idf, analyzer.median_idf
    ranked = sorted(counts, key=lambda w: (-counts[w] * idf.get(w, median), first[w]))
    return ranked[:count]


def _words(text: str, analyzer: _Analyzer) -> Iterator[str]:
    stop = analyzer.stop_words
    for match in _TOKEN.finditer(text):
        han, latin = match.groups()
        if han:
            for word in analyzer.cut(han):
                if len(word) > 1 and word not in stop:
                    yield word
            continue
        word = unicodedata.normalize("NFKC", latin).lower().replace("’", "'")
        if word.endswith("'s") and word not in stop:  # "company's" -> "company"; "it's" is a stop word
            word = word[:-2]
        if len(word) > 1 and word not in stop and any(c.isalpha() for c in word):
            yield word


def _bounded(value: Any) -> str:
    """The first MAX_CHARS characters of a text, or of a list's (or mapping's values') texts one per line."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value[:MAX_CHARS]
    if isinstance(value, list | tuple | Mapping):
        parts: list[str] = []
        size = 0
        for item in value.values() if isinstance(value, Mapping) else value:
            if size >= MAX_CHARS:
                break
            part = _bounded(item)
            parts.append(part)
            size += len(part) + 1
        return "\n".join(parts)[:MAX_CHARS]
    return str(value)[:MAX_CHARS]  # numbers; an undefined field raises here (a missing-field render error)


def _get() -> _Analyzer:
    global _analyzer
    if _analyzer is None:
        with _lock:
            if _analyzer is None:
                _analyzer = _load()
    return _analyzer


def _load() -> _Analyzer:
    stop_words = _stop_words("zh.txt") | _stop_words("en.txt")
    with warnings.catch_warnings():
        # Importing jieba warns about things of its own, not ours: the pkg_resources it imports is deprecated in
        # newer setuptools, its regexes have invalid escapes (when compiled without a .pyc), and jieba.analyse
        # reads its IDF table without closing the file (ResourceWarning). Under `-W error` any would fail the import.
        warnings.simplefilter("ignore")
        import jieba
        import jieba.analyse

        jieba.setLogLevel(logging.WARNING)  # its logger prints "Building prefix dict ..." at DEBUG to stderr
        # A tokenizer of our own (jieba.dt, the global one, is left as it is), built straight from jieba's
        # dictionary with no cache file: jieba would otherwise read and write `jieba.cache` in the shared temp
        # directory, a marshal file (unsafe to load if someone else put it there) that a read-only filesystem
        # cannot hold. Building takes about a second, once per process, at start.
        tokenizer = jieba.Tokenizer()
        tokenizer.FREQ, tokenizer.total = tokenizer.gen_pfdict(tokenizer.get_dict_file())
        tokenizer.initialized = True
        # A private TF-IDF instance: its IDF table, our stop words (jieba.analyse.set_stop_words changes the
        # module's shared extractors).
        tfidf = jieba.analyse.TFIDF()
        tfidf.tokenizer = tokenizer
        tfidf.stop_words = set(stop_words)

    def cut(run: str) -> Iterable[str]:
        return tokenizer.cut(run, HMM=True)  # HMM: also words the dictionary lacks (names, new terms)

    return _Analyzer(cut=cut, idf=tfidf.idf_freq, median_idf=tfidf.median_idf, stop_words=frozenset(stop_words))


def _stop_words(name: str) -> frozenset[str]:
    text = resources.files("gateway.templates").joinpath("stopwords", name).read_text(encoding="utf-8")
    return frozenset(w for w in (line.strip() for line in text.splitlines()) if w and not w.startswith("#"))
