"""The keywords filter: characteristic words of Chinese, English and mixed text, bounded, deterministic, in renders."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.templates import keywords as module
from gateway.templates.keywords import MAX_CHARS, keywords, warm
from gateway.templates.sandbox import MAX_SECONDS, PromptEnvironment, RenderError

env = PromptEnvironment()

ZH = (
    "2026年第三季度，公司实现销售额3.2亿元，同比增长18%，其中华东区域销售额增长最快。我们通过优化渠道结构和"
    "加强大客户管理，进一步提升了毛利率。线上渠道的销售额占比达到35%，新客户数量增长了20%。"
)
EN = (
    "In the third quarter, revenue grew 18% year over year to $320 million. The growth was driven by enterprise "
    "customers in the East region, and the company's online channel now accounts for 35% of revenue. Revenue "
    "growth from enterprise customers was the strongest we have seen."
)
MIXED = (
    "本季度SaaS订阅收入增长迅速，CRM产品线的ARR突破5000万元，Enterprise客户续约率达到95%。SaaS业务已成为主要增长引擎。"
)


@pytest.fixture(scope="module", autouse=True)
def warmed() -> Iterator[None]:
    warm()  # once per process: the dictionary takes a second or two to load
    yield


def test_chinese_text_gives_its_domain_words_and_no_stop_words() -> None:
    words = keywords(ZH, 5)

    assert len(words) == 5
    assert {"销售额", "增长", "渠道"} <= set(words)
    assert words[0] == "销售额"  # three times, and rarer than 增长 in general text
    everything = keywords(ZH, 20)
    assert not {"的", "了", "和", "我们", "通过", "进一步", "其中"} & set(everything)
    assert all(len(word) > 1 for word in everything)


def test_english_text_gives_its_domain_words_lowercased_and_no_stop_words() -> None:
    words = keywords(EN, 5)

    assert words[0] == "revenue"  # four times, in any case
    assert {"growth", "enterprise", "customers"} <= set(words)
    everything = keywords(EN, 20)
    assert not {"the", "in", "of", "and", "was", "we", "to", "by", "now"} & set(everything)
    assert "company" in everything and "company's" not in everything


def test_mixed_text_gives_chinese_and_english_words() -> None:
    words = keywords(MIXED, 8)

    assert "saas" in words and "crm" in words
    assert {"续约", "增长"} & set(words)
    assert not {"已", "成为", "主要"} & set(keywords(MIXED, 20))


def test_numbers_and_one_letter_tokens_are_dropped_and_ties_keep_the_text_order() -> None:
    assert keywords("2026 x Q3 100 alpha 3.5 beta 2026-09 gamma b", 10) == ["q3", "alpha", "beta", "gamma"]


def test_full_width_latin_is_read_as_latin() -> None:
    assert keywords("ＡＩ助手 ＡＩ", 1) == ["ai"]


def test_a_list_of_texts_or_a_mapping_of_them_is_read_as_one_text() -> None:
    assert keywords(["revenue", "Revenue growth"], 2) == ["revenue", "growth"]
    assert keywords({"a": "revenue", "b": ["Revenue growth"]}, 2) == ["revenue", "growth"]


def test_empty_and_wordless_texts_give_no_words() -> None:
    assert keywords("", 5) == []
    assert keywords(None, 5) == []
    assert keywords("……，。 100% 2026", 5) == []


def test_count_bounds_the_number_of_words() -> None:
    long_text = ZH + EN + MIXED

    assert len(keywords(long_text, 1)) == 1
    assert len(keywords(long_text, 20)) == 20
    assert keywords(long_text, 3) == keywords(long_text, 20)[:3]


@pytest.mark.parametrize("count", [0, -1, 21, 1000, "5", 2.5, True, None])
def test_a_count_outside_1_to_20_is_refused(count: object) -> None:
    with pytest.raises(ValueError, match="keywords\\(\\) needs a count from 1 to 20"):
        keywords(ZH, count)  # type: ignore[arg-type]


def test_only_the_first_8000_characters_are_read() -> None:
    padding = "销售额同比增长。" * (MAX_CHARS // 8)  # exactly MAX_CHARS characters
    assert len(padding) == MAX_CHARS

    assert "人工智能" in keywords(padding[:-5] + "，人工智能", 20)  # its last character is the 8,000th
    assert "人工智能" not in keywords(padding + "人工智能", 20)
    assert "blockchain" not in keywords(padding + " blockchain" * 100, 20)


def test_the_same_text_gives_the_same_words() -> None:
    assert keywords(ZH + EN, 20) == keywords(ZH + EN, 20)
    assert keywords(MIXED, 10) == keywords(MIXED, 10)


def test_the_filter_works_inside_a_render() -> None:
    text = env.render("{{ s.content | keywords(3) | join(', ') }}", {"s": {"content": ZH}})

    assert text == ", ".join(keywords(ZH, 3))
    assert env.render("{{ t | keywords | length }}", {"t": EN}) == "5"


def test_in_a_render_a_bad_count_and_a_missing_field_are_render_errors() -> None:
    with pytest.raises(RenderError) as bad:
        env.render("{{ t | keywords(50) }}", {"t": ZH})
    with pytest.raises(RenderError) as missing:
        env.render("{{ r.content | keywords }}", {"r": {"title": "x"}})

    assert bad.value.kind == "error" and "1 to 20" in bad.value.message
    assert missing.value.kind == "undefined" and "content" in missing.value.message


def test_a_render_of_a_64_kb_record_stays_within_the_clock() -> None:
    record = {"content": (ZH * 200)[: 64 * 1024 // 4], "notes": (EN * 100)[: 48 * 1024]}
    source = "{{ r.content | keywords(20) | join(', ') }} / {{ r.notes | keywords(20) | join(', ') }}"

    started = time.monotonic()
    text = env.render(source, {"r": record})

    assert time.monotonic() - started < MAX_SECONDS / 2
    assert "销售额" in text and "revenue" in text


def test_warming_again_from_several_threads_keeps_the_one_analyzer() -> None:
    loaded = module._get()
    threads = [threading.Thread(target=warm) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert module._get() is loaded


def test_jieba_shared_state_is_left_alone() -> None:
    import jieba
    import jieba.analyse

    assert "我们" not in jieba.analyse.default_tfidf.stop_words  # our stop words are on a private instance
    assert logging.getLogger("jieba").getEffectiveLevel() >= logging.WARNING


def test_a_cold_process_under_w_error_loads_quietly() -> None:
    code = "from gateway.templates.keywords import keywords; print(','.join(keywords('销售额同比增长，渠道优化', 3)))"

    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no "Building prefix dict", no warnings
    assert done.stdout.strip().split(",")[0] in {"销售额", "增长", "渠道", "优化", "同比"}
