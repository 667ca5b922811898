"""Language identification on the labelled Arabic-script set (tests/data/langid_set.jsonl, written for
this project: 20+ sentences per class) and its place in the pipeline: the drop reason and the manifest."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from native_megatron.data.cleaning import CleanConfig, Cleaner
from native_megatron.data.langid import LanguageIdentifier
from native_megatron.data.quality import QualityConfig
from native_megatron.utils.config import ConfigError, load_config

SET = Path(__file__).with_name("langid_set.jsonl")
ARABIC = {"msa", "egyptian", "levantine", "gulf", "maghrebi", "mixed_en", "mixed_fr"}
OTHERS = {"persian", "urdu", "pashto", "sorani", "sindhi", "uyghur"}


def labelled():
    return [json.loads(line) for line in open(SET, encoding="utf-8")]


def test_the_set_has_every_class_with_at_least_20_distinct_sentences():
    rows = labelled()
    per = Counter(r["label"] for r in rows)
    assert set(per) == ARABIC | OTHERS
    assert min(per.values()) >= 20
    assert len({r["text"] for r in rows}) == len(rows)
    assert all(r["arabic"] == (r["label"] in ARABIC) for r in rows)


def test_no_other_language_kept_and_no_arabic_dropped_above_5_percent():
    # The language decision alone: the sentences are shorter than clean.min_chars, and the
    # share of Latin letters in the code-switched ones is min_arabic_ratio's business.
    cleaner = Cleaner(CleanConfig(min_chars=0, min_words=0, min_arabic_ratio=0.0,
                                  quality=QualityConfig(enabled=False), redact_pii=False))
    outcome = defaultdict(Counter)
    for r in labelled():
        v = cleaner.process(r["text"])
        assert v.reason in (None, "wrong_language"), (r, v)
        outcome[r["label"]]["kept" if v.reason is None else "dropped"] += 1
    for label, n in outcome.items():
        wrong = n["dropped"] if label in ARABIC else n["kept"]
        assert wrong / sum(n.values()) <= 0.05, (label, dict(n))


def test_score_is_the_arabic_share_of_the_arabic_script_text():
    ident = LanguageIdentifier("ar")
    arabic = "أعلنت وزارة التعليم عن خطة جديدة لتطوير المناهج الدراسية في المرحلة الابتدائية خلال العام المقبل."
    persian = "دانشگاه تهران یکی از قدیمی‌ترین دانشگاه‌های ایران است و دانشجویان زیادی دارد."
    assert ident.identify(arabic).language == "ar" and ident.identify(arabic).score == 1.0
    # English words around Arabic do not count against it (min_arabic_ratio decides on those).
    mixed = "عندي meeting مهم بكرة الصبح مع الـ team عشان نراجع الـ budget بتاع المشروع."
    assert ident.identify(mixed).score == 1.0
    guess = ident.identify(persian)
    assert guess.language == "fa" and guess.score == 0.0
    assert ident.identify("The quick brown fox jumps over the lazy dog again.").score == 0.0
    assert ident.identify("").language == "un"
    # Control characters, which CLD2 refuses as invalid UTF-8, are no obstacle.
    assert ident.identify(arabic + "\x07\x0b" + arabic).score == 1.0


def test_wrong_language_is_the_drop_reason_with_the_language_found():
    persian = ("امروز هوا خیلی سرد است و باید لباس گرم بپوشیم. ما تابستان امسال به شیراز و اصفهان سفر کردیم و "
               "از دیدن بناهای تاریخی لذت بردیم. نوروز جشن آغاز سال نو در ایران و افغانستان است.")
    cleaner = Cleaner(CleanConfig())
    v = cleaner.process(persian)
    assert v.reason == "wrong_language" and v.detail.startswith("fa ")
    assert v.language.language == "fa" and cleaner.counts["language:fa"] == 1
    # Switched off, or pointed at another language.
    assert Cleaner(CleanConfig(language="", quality=QualityConfig(enabled=False))).process(persian).reason is None
    assert Cleaner(CleanConfig(language="fa", quality=QualityConfig(enabled=False))).process(persian).reason is None


def test_min_language_score_is_validated():
    with pytest.raises(ConfigError, match="min_language_score"):
        load_config(CleanConfig, overrides=["--min_language_score=1.5"])
