"""Content filter: shipped lists, normalisation against evasion, word boundaries, masking, per-system rules."""

from __future__ import annotations

from importlib import resources

import pytest

from policies.content import (
    DEFAULT_ACTIONS,
    MASK,
    SHIPPED_CATEGORIES,
    Action,
    ContentDecision,
    ContentFilter,
    ContentRules,
    shipped_lists,
)
from policies.normalize import TermKey, cjk_view, fold, term_key, word_view

# One term per shipped category and language, to prove each list is loaded and refuses (or masks) alone.
OWN_TERMS = {
    ("en", "violence"): "a beheading in the town square",
    ("zh", "violence"): "城市街头的暴力场面",
    ("en", "sexual"): "a nude woman on a beach",
    ("zh", "sexual"): "一张色情海报",
    ("en", "minors"): "child pornography",
    ("zh", "minors"): "儿童色情漫画",
    ("en", "hate"): "a poster about ethnic cleansing",
    ("zh", "hate"): "宣传白人至上的海报",
    ("en", "brand"): "a pair of Nike sneakers",
    ("zh", "brand"): "一双耐克运动鞋",
}


@pytest.fixture(scope="module")
def content() -> ContentFilter:
    return ContentFilter.default()


def refused(content: ContentFilter, text: str) -> str | None:
    decision = content.evaluate(text)
    return None if decision.allowed else decision.category


def test_every_shipped_list_loads_in_both_languages() -> None:
    root = resources.files("policies") / "wordlists"
    for lang in ("en", "zh"):
        for category in SHIPPED_CATEGORIES:
            text = (root / lang / f"{category}.txt").read_text(encoding="utf-8")
            terms = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
            assert len(terms) >= 20, (lang, category)
    lists, allow = shipped_lists()
    assert tuple(lists) == SHIPPED_CATEGORIES
    assert allow


@pytest.mark.parametrize(("lang", "category"), sorted(OWN_TERMS))
def test_each_category_acts_on_its_own_term(content: ContentFilter, lang: str, category: str) -> None:
    decision = content.evaluate(OWN_TERMS[lang, category])
    if DEFAULT_ACTIONS[category] is Action.block:
        assert not decision.allowed
        assert decision.category == category
        assert decision.field == "prompt"
    else:
        assert decision.allowed
        assert decision.masked == (category,)
        assert MASK in decision.prompt


def test_default_actions(content: ContentFilter) -> None:
    assert {c: content.action(c) for c in content.categories} == {
        "violence": Action.block,
        "sexual": Action.block,
        "minors": Action.block,
        "hate": Action.block,
        "brand": Action.mask,
    }


@pytest.mark.parametrize(
    "text",
    [
        "ｎｕｄｅ",  # full-width
        "NuDe",
        "NUDE",
        "nu\u200bde",  # zero-width space
        "n\u200du\u2060d\ufeffe",  # joiner, word joiner, BOM
        "nu\u00adde",  # soft hyphen
        "n u d e",
        "n  u  d  e",
        "n.u.d.e",
        "n-u-d-e",
        "n_u_d_e",
        "n*u*d*e",
        "Ｎ.u\u200b.D e",  # mixed
        "nüde",  # diacritic
        "nu\u0301de",  # combining mark
        "n\ufe0fude",  # variation selector
        "a n u d e woman",
        "p0rn",
        "p0rn0graphy",
        "@ss",
    ],
)
def test_latin_evasions_are_caught(content: ContentFilter, text: str) -> None:
    assert refused(content, f"a photo, {text}, outdoors") == "sexual"


@pytest.mark.parametrize("text", ["暴力", "暴 力", "暴\u3000力", "暴*力", "暴.力", "暴\u200b力", "暴，力", "暴 * 力"])
def test_chinese_evasions_are_caught(content: ContentFilter, text: str) -> None:
    assert refused(content, f"画一个{text}场景") == "violence"


def test_chinese_zero_width_inside_sexual_term(content: ContentFilter) -> None:
    assert refused(content, "色\u200b情图片") == "sexual"


@pytest.mark.parametrize(
    "text",
    [
        "a skill tree for a video game",
        "Scunthorpe town centre at dusk",
        "a therapist's office with a couch",
        "a class of students in a bright classroom",
        "assassin's creed style rooftop",
        "a bass guitar on a stage",
        "a professional photo shoot in a studio",
        "a killer whale jumping",
        "a gorgeous sunset",
        "grapes on a drape",
        "a hitchhiker",
        "summa cum laude diploma",
        "a field of rape flowers in spring",
        "a chink in the armour",
        "4k, 1girl, 3d render, 8k uhd",
        "a same-sex couple at their wedding",
        "negative space, minimalism",
        "这家店很有特色情调",
        "白色情人节的礼物",
        "角色情感丰富的插画",
        "表情色彩丰富",
        "一头杀人鲸在海里",
        "印度支那半岛地图",
        "城市规划中的断头路",
        "裸露的岩石和山脉",
    ],
)
def test_benign_text_is_not_refused(content: ContentFilter, text: str) -> None:
    decision = content.evaluate(text)
    assert decision == ContentDecision(allowed=True, prompt=text)


@pytest.mark.parametrize(
    "text", ["a skill tree", "a killer whale", "overkill", "a photoshoot", "Killington ski resort"]
)
def test_short_terms_match_whole_words_only(content: ContentFilter, text: str) -> None:
    system = content.with_rules(ContentRules(extra={"custom": ["kill", "shoot"]}))
    assert system.evaluate(text).allowed
    assert refused(system, text + ", then kill") == "custom"
    assert refused(system, text + ", then k.i.l.l") == "custom"


def test_allow_listed_phrase_does_not_cover_the_term_elsewhere(content: ContentFilter) -> None:
    assert refused(content, "summa cum laude, then cum") == "sexual"
    assert refused(content, "特色情调的色情图片") == "sexual"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Nike shoes", "*** shoes"),
        ("buy ｎｉｋｅ now", "buy *** now"),
        ("buy Ni\u200bke now", "buy *** now"),
        ("buy N i k e now", "buy *** now"),
        ("buy N.I.K.E. now", "buy ***. now"),
        ("Nike\u0301 x", "*** x"),
        ("Nike's logo", "***'s logo"),
        ("Coca-Cola and Mickey Mouse", "*** and ***"),
        ("Pokémon cards", "*** cards"),
        ("一双耐克运动鞋", "一双***运动鞋"),
        ("耐\u200b克 鞋", "*** 鞋"),
        ("迪士尼城堡，Disney castle", "***城堡，*** castle"),
    ],
)
def test_masking_replaces_the_original_span(content: ContentFilter, text: str, expected: str) -> None:
    decision = content.evaluate(text)
    assert decision.allowed
    assert decision.prompt == expected
    assert decision.masked == ("brand",)


def test_masking_applies_to_the_negative_prompt_too(content: ContentFilter) -> None:
    decision = content.evaluate("a red sneaker", "adidas logo, blurry")
    assert decision == ContentDecision(
        allowed=True, prompt="a red sneaker", negative_prompt="*** logo, blurry", masked=("brand",)
    )


def test_negative_prompt_is_checked_like_the_prompt(content: ContentFilter) -> None:
    decision = content.evaluate("a portrait", "lowres, naked")
    assert not decision.allowed
    assert (decision.category, decision.field) == ("sexual", "negative_prompt")


def test_prompt_refusal_comes_before_the_negative_prompt(content: ContentFilter) -> None:
    decision = content.evaluate("a beheading", "nude")
    assert (decision.category, decision.field) == ("violence", "prompt")


def test_first_refusing_category_by_position(content: ContentFilter) -> None:
    assert refused(content, "nude, then a beheading") == "sexual"
    assert refused(content, "a beheading, then nude") == "violence"
    # "child nude" starts before its "nude": the more specific category wins.
    assert refused(content, "a child nude") == "minors"


def test_refusal_hides_the_texts_and_the_terms(content: ContentFilter) -> None:
    decision = content.evaluate("a nude Nike model", "beheading")
    assert decision == ContentDecision(allowed=False, category="sexual", field="prompt")
    for term in ("nude", "nike", "beheading"):
        assert term not in repr(decision).lower()


def test_masked_decision_holds_no_masked_term(content: ContentFilter) -> None:
    decision = content.evaluate("Ｎｉｋｅ shoes next to a Coca-Cola", "disney")
    assert decision.allowed
    for term in ("nike", "ｎｉｋｅ", "coca", "cola", "disney"):
        assert term not in repr(decision).lower()


def test_per_system_extra_terms_and_new_category(content: ContentFilter) -> None:
    rules = ContentRules(extra={"violence": ["chainsaw massacre"], "weapons": ["ar-15", "突击步枪"]})
    system = content.with_rules(rules)
    assert system.categories == (*SHIPPED_CATEGORIES, "weapons")
    assert system.action("weapons") is Action.block
    assert refused(system, "the Chainsaw-Massacre") == "violence"
    assert refused(system, "an AR 15 on a table") == "weapons"
    assert refused(system, "一把突 击 步 枪") == "weapons"
    # The base filter is unchanged.
    assert content.evaluate("an AR 15 on a table").allowed


def test_per_system_allow_list(content: ContentFilter) -> None:
    system = content.with_rules(ContentRules(allow=["Nike", "naked eye"]))
    assert system.evaluate("Nike shoes") == ContentDecision(allowed=True, prompt="Nike shoes")
    assert system.evaluate("stars visible to the naked eye").allowed
    assert not system.evaluate("a naked man").allowed
    assert system.evaluate("Adidas shoes").prompt == "*** shoes"


def test_action_overrides(content: ContentFilter) -> None:
    system = content.with_rules(ContentRules(actions={"brand": Action.block, "violence": Action.mask}))
    assert refused(system, "Disney castle") == "brand"
    decision = system.evaluate("a beheading scene")
    assert decision == ContentDecision(allowed=True, prompt="a *** scene", masked=("violence",))


def test_actions_accept_strings_and_reject_unknown_categories(content: ContentFilter) -> None:
    assert content.with_rules(ContentRules(actions={"brand": "block"})).action("brand") is Action.block  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="unknown categories: weapons"):
        content.with_rules(ContentRules(actions={"weapons": Action.mask}))


def test_with_rules_is_cached_by_digest(content: ContentFilter) -> None:
    first = content.with_rules(ContentRules(extra={"weapons": ["ar-15", "ak-47"]}, allow=["x"]))
    second = content.with_rules(ContentRules(extra={"weapons": ["ak-47", "ar-15"]}, allow=["x"]))
    assert first is second
    assert content.with_rules(ContentRules(extra={"weapons": ["ak-47"]})) is not first
    assert ContentFilter.default() is ContentFilter.default()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"extra": {"Weapons": ["x"]}}, "category name"),
        ({"extra": {"9lives": ["x"]}}, "category name"),
        ({"extra": {"a" * 33: ["x"]}}, "category name"),
        ({"extra": {"weapons": "ak-47"}}, "must be a list"),
        ({"extra": {"weapons": ["ok", " *** "]}}, r"extra\['weapons'\]\[1\] is 0 characters"),
        ({"extra": {"weapons": ["x" * 101]}}, "101 characters"),
        ({"extra": {"weapons": [f"t{i}" for i in range(10_001)]}}, "at most 10000"),
        ({"allow": [""]}, r"allow\[0\]"),
        ({"actions": {"brand": "warn"}}, "must be one of block, mask"),
    ],
)
def test_rules_are_validated(rules: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContentRules(**rules)  # type: ignore[arg-type]


def test_term_length_counts_after_normalisation() -> None:
    # 100 full-width letters and a zero-width space are 100 characters once normalised.
    assert ContentRules(extra={"long": ["ａ" * 100 + "\u200b"]}).extra["long"]


def test_rules_are_read_only() -> None:
    rules = ContentRules(extra={"weapons": ["ak-47"]})
    with pytest.raises(TypeError):
        rules.extra["weapons"] = ["x"]  # type: ignore[index]


def test_fold_keeps_the_map_to_original_positions() -> None:
    folded = fold("Ａ\u200bﬁ é")
    assert folded.chars == "afi e"
    assert folded.origin == (0, 2, 2, 3, 4)


def test_word_view_collapses_spelled_words_only() -> None:
    view = word_view(fold("a k.i.l.l skill, it's OK"))
    assert view.text == "akill skill it s ok"
    # Inside the spelled run a term may start at any letter; inside "skill" it may not.
    assert view.is_start(1) and view.is_end(5)
    assert not view.is_start(7)


def test_spelled_letters_do_not_join_across_cjk_or_lines() -> None:
    assert word_view(fold("A 和 B")).text == "a b"
    assert word_view(fold("a\nb")).text == "a b"


def test_cjk_view_drops_every_separator() -> None:
    view = cjk_view(fold("暴 *\u200b力, AV 女优"))
    assert view.text == "暴力av女优"
    assert view.origin[:2] == (0, 4)


def test_leet_view_only_rewrites_words_with_letters() -> None:
    assert word_view(fold("p0rn 4k 2024 $100 @ss"), leet=True).text == "porn ak 2024 $100 ass"
    assert word_view(fold("p0rn 2024 @ss")).text == "p0rn 2024 ss"


def test_term_keys() -> None:
    assert term_key("Coca-Cola") == TermKey("coca cola", cjk=False)
    assert term_key("3K 党") == TermKey("3k党", cjk=True)
    assert term_key(" *** ").text == ""


def test_a_full_extra_list_adds_to_a_shipped_category(content: ContentFilter) -> None:
    # The limit bounds what a system adds, not shipped plus added terms.
    terms = [f"zq{i}x" for i in range(10_000)]
    system = content.with_rules(ContentRules(extra={"violence": terms}))
    assert refused(system, "a zq9999x here") == "violence"
    assert refused(system, "a beheading") == "violence"
