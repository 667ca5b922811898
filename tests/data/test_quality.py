"""Each quality filter at its published threshold, on documents made for each side of it.

Every test switches on one filter alone, builds a document whose measurement sits just
under the threshold (kept) and one just over it (dropped), and checks the measurement
with a plain reference computation written here, so the threshold, not the arithmetic,
is what is under test. Values: FineWeb-2's configs/arb_Arab.yml, else Gopher (Rae et al.
2021, Table A1) or datatrove's defaults, as in docs/data.md.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import fields

import pytest

from native_megatron.data.cleaning import CleanConfig, Cleaner
from native_megatron.data.quality import ARABIC_STOP_WORDS, QualityConfig, QualityFilter, split_words
from native_megatron.utils.config import ConfigError

PUBLISHED = {
    "max_dup_line_frac": 0.304, "max_dup_para_frac": 0.30, "max_dup_line_char_frac": 0.10,
    "max_dup_para_char_frac": 0.20, "max_top_ngram_char_frac": [0.197, 0.172, 0.146],
    "max_dup_ngram_char_frac": [0.165, 0.153, 0.142, 0.131, 0.12, 0.109], "min_line_punct_frac": 0.143,
    "max_newline_ratio": 0.189, "min_avg_word_length": 2.0, "max_avg_word_length": 9.0,
    "max_symbol_word_ratio": 0.1, "max_bullet_lines_frac": 0.9, "max_ellipsis_lines_frac": 0.3,
    "min_alpha_words_frac": 0.787, "min_stop_words": 2,
}
# Published, but off by default: on the shipped sample they drop good Arabic pages (docs/data.md).
OFF_BY_DEFAULT = {"min_line_punct_frac", "min_alpha_words_frac"}

ALL_OFF = dict(max_dup_line_frac=None, max_dup_para_frac=None, max_dup_line_char_frac=None,
               max_dup_para_char_frac=None, max_top_ngram_char_frac=[], max_dup_ngram_char_frac=[],
               min_line_punct_frac=None, max_newline_ratio=None, min_avg_word_length=None,
               max_avg_word_length=None, max_symbol_word_ratio=None, max_bullet_lines_frac=None,
               max_ellipsis_lines_frac=None, min_alpha_words_frac=None, min_stop_words=0, bad_words=False,
               url_filter=False)

LETTERS = "ابتثجحخدذرزسشصضطظعغفقكلمنهوي"


def unique_word(i: int, length: int = 4) -> str:
    """The i-th of 28**length distinct Arabic letter strings of the given length."""
    out = []
    for _ in range(length):
        i, r = divmod(i, len(LETTERS))
        out.append(LETTERS[r])
    return "".join(out)


def line(i: int, words: int = 6) -> str:
    """A distinct line of ``words`` four-letter words (all lines have the same length)."""
    return " ".join(unique_word(i * 50 + j) for j in range(words))


def only(**settings) -> QualityFilter:
    return QualityFilter(QualityConfig(**{**ALL_OFF, **settings}))


def reason(flt: QualityFilter, text: str) -> str | None:
    verdict = flt.check(text)
    return verdict and verdict[0]


def assert_sides(flt, keep: str, drop: str, expected: str):
    assert reason(flt, keep) is None
    assert reason(flt, drop) == expected


def test_defaults_are_the_published_thresholds():
    cfg = QualityConfig()
    for name, value in PUBLISHED.items():
        assert getattr(cfg, name) == (None if name in OFF_BY_DEFAULT else value), name
    assert cfg.stop_words == ARABIC_STOP_WORDS and len(ARABIC_STOP_WORDS) == 19 and "،" in ARABIC_STOP_WORDS


# ---- Gopher repetition ------------------------------------------------------------------


def dup_frac(items):
    return sum(c - 1 for c in Counter(items).values()) / len(items)


@pytest.mark.parametrize("sep, key, reason_name", [("\n", "max_dup_line_frac", "dup_line_frac"),
                                                    ("\n\n", "max_dup_para_frac", "dup_para_frac")])
def test_duplicate_line_and_paragraph_fractions(sep, key, reason_name):
    limit = PUBLISHED[key]

    def doc(distinct, repeats):
        return sep.join([line(i) for i in range(distinct)] + [line(0)] * repeats)

    keep, drop = (doc(7, 3), doc(16, 7)) if key == "max_dup_line_frac" else (doc(7, 3), doc(9, 4))
    def split(t):
        return t.split(sep)
    assert dup_frac(split(keep)) <= limit < dup_frac(split(drop)) < limit + 0.01
    assert_sides(only(**{key: limit}), keep, drop, reason_name)


def test_duplicate_line_characters():
    limit = PUBLISHED["max_dup_line_char_frac"]

    def doc(distinct):
        return "\n".join([line(i) for i in range(distinct)] + [line(0)])

    keep, drop = doc(9), doc(8)
    def ratio(t):
        return len(line(0)) / len(t.replace("\n", ""))
    assert ratio(keep) <= limit < ratio(drop) < limit + 0.02
    assert_sides(only(max_dup_line_char_frac=limit), keep, drop, "dup_line_char_frac")


def test_duplicate_paragraph_characters():
    limit = PUBLISHED["max_dup_para_char_frac"]

    def doc(distinct):
        return "\n\n".join([line(i) for i in range(distinct)] + [line(0)] * 2)

    keep, drop = doc(8), doc(7)
    def ratio(t):
        return 2 * len(line(0)) / len(t)
    assert ratio(keep) <= limit < ratio(drop) < limit + 0.03
    assert_sides(only(max_dup_para_char_frac=limit), keep, drop, "dup_para_char_frac")


def top_ngram_frac(text: str, n: int) -> float:
    words = text.split()
    grams = Counter(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))
    gram, count = grams.most_common(1)[0]
    return len(gram) * count / len(text) if count > 1 else 0.0


def dup_ngram_frac(text: str, n: int) -> float:
    words, seen, chars, i = text.split(), set(), 0, 0
    while i <= len(words) - n:
        gram = "".join(words[i:i + n])
        if gram in seen:
            chars += len(gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars / len(text)


def closest_pair(make, measure, limit):
    """The documents of ``make(m)`` whose measurement is the largest <= limit and the smallest > limit."""
    docs = sorted(((measure(make(m)), make(m)) for m in range(1, 400)), key=lambda x: x[0])
    below = max((d for d in docs if d[0] <= limit), key=lambda d: d[0])
    above = min((d for d in docs if d[0] > limit), key=lambda d: d[0])
    return below, above


@pytest.mark.parametrize("n", [2, 3, 4])
def test_top_ngram_character_fraction(n):
    limit = PUBLISHED["max_top_ngram_char_frac"][n - 2]
    gram = [unique_word(10_000 + k) for k in range(n)]

    def make(m):   # the n-gram three times among m distinct filler words
        filler = [unique_word(k) for k in range(m)]
        third = m // 3
        return " ".join(gram + filler[:third] + gram + filler[third:2 * third] + gram + filler[2 * third:])

    (low, keep), (high, drop) = closest_pair(make, lambda t: top_ngram_frac(t, n), limit)
    assert high - low < 0.02
    thresholds = [1.0, 1.0, 1.0]
    thresholds[n - 2] = limit
    assert_sides(only(max_top_ngram_char_frac=thresholds), keep, drop, "top_ngram")


def test_an_ngram_seen_once_is_not_repetition():
    # Ten words: the first 4-gram alone is 40% of the text, yet nothing repeats.
    text = " ".join(unique_word(k) for k in range(10))
    assert reason(only(max_top_ngram_char_frac=PUBLISHED["max_top_ngram_char_frac"]), text) is None


@pytest.mark.parametrize("n", [5, 6, 7, 8, 9, 10])
def test_duplicated_ngram_character_fraction(n):
    limit = PUBLISHED["max_dup_ngram_char_frac"][n - 5]
    chunk = [unique_word(10_000 + k) for k in range(n)]

    def make(m):   # an n-word passage twice among m distinct filler words
        filler = [unique_word(k) for k in range(m)]
        return " ".join(chunk + filler[: m // 2] + chunk + filler[m // 2:])

    (low, keep), (high, drop) = closest_pair(make, lambda t: dup_ngram_frac(t, n), limit)
    assert high - low < 0.02
    thresholds = [1.0] * 6
    thresholds[n - 5] = limit
    assert_sides(only(max_dup_ngram_char_frac=thresholds), keep, drop, "dup_ngram")


# ---- FineWeb lines ----------------------------------------------------------------------


def test_line_ending_punctuation():
    limit = PUBLISHED["min_line_punct_frac"]

    def doc(lines):   # one line of ``lines`` ends a sentence
        return "\n".join([line(0) + "."] + [line(i) for i in range(1, lines)])

    keep, drop = doc(6), doc(7)
    assert 1 / 7 < limit <= 1 / 6
    assert_sides(only(min_line_punct_frac=limit), keep, drop, "line_punct")
    # Arabic question marks end sentences too.
    assert reason(only(min_line_punct_frac=limit), doc(7).replace(".", "؟") + "\n" + line(9) + "؟") is None


def test_line_breaks_per_word():
    limit = PUBLISHED["max_newline_ratio"]

    def doc(lines):
        return "\n".join(line(i, words=5) for i in range(lines))

    keep, drop = doc(18), doc(20)
    def ratio(t):
        return t.count("\n") / len(split_words(t))
    assert ratio(keep) <= limit < ratio(drop)
    assert_sides(only(max_newline_ratio=limit), keep, drop, "newline_ratio")
    # A blank line between paragraphs is one break, as one newline was in FineWeb-2's input.
    assert reason(only(max_newline_ratio=limit), keep.replace("\n", "\n\n")) is None


# ---- Gopher quality ---------------------------------------------------------------------


def test_mean_word_length():
    lo, hi = PUBLISHED["min_avg_word_length"], PUBLISHED["max_avg_word_length"]
    flt = only(min_avg_word_length=lo, max_avg_word_length=hi)
    short_keep = " ".join(["و", "بيت"] * 10)                       # mean 2.0
    short_drop = " ".join(["و", "بيت"] * 10 + ["و"])               # mean 1.95
    long_keep = " ".join(["ا" * 9] * 20)                            # mean 9.0
    long_drop = " ".join(["ا" * 9] * 19 + ["ا" * 10])              # mean 9.05
    assert_sides(flt, short_keep, short_drop, "avg_word_length")
    assert_sides(flt, long_keep, long_drop, "avg_word_length")


@pytest.mark.parametrize("symbol", ["#", "…"])
def test_hash_and_ellipsis_per_word(symbol):
    limit = PUBLISHED["max_symbol_word_ratio"]
    keep = line(0, 9) + f" {symbol}"                          # 1 of 10 tokens
    drop = line(0, 17) + f" {symbol} {symbol}"                # 2 of 19
    assert 1 / 10 <= limit < 2 / 19
    assert_sides(only(max_symbol_word_ratio=limit), keep, drop, "symbol_word_ratio")


def test_bullet_and_ellipsis_lines():
    bullets = PUBLISHED["max_bullet_lines_frac"]
    keep = "\n".join([line(0)] + [f"- {line(i)}" for i in range(1, 10)])          # 9 of 10
    drop = "\n".join([line(0)] + [f"• {line(i)}" for i in range(1, 11)])          # 10 of 11
    assert_sides(only(max_bullet_lines_frac=bullets), keep, drop, "bullet_lines")
    ellipsis = PUBLISHED["max_ellipsis_lines_frac"]
    keep = "\n".join([f"{line(i)}…" for i in range(3)] + [line(i) for i in range(3, 10)])   # 3 of 10
    drop = "\n".join([f"{line(i)}..." for i in range(4)] + [line(i) for i in range(4, 13)])  # 4 of 13
    assert_sides(only(max_ellipsis_lines_frac=ellipsis), keep, drop, "ellipsis_lines")


def test_words_with_a_letter():
    limit = PUBLISHED["min_alpha_words_frac"]

    def doc(words, numbers):
        return " ".join([unique_word(k) for k in range(words)] + [str(100 + k) for k in range(numbers)])

    keep, drop = doc(37, 10), doc(48, 13)
    assert 48 / 61 < limit <= 37 / 47
    assert_sides(only(min_alpha_words_frac=limit), keep, drop, "alpha_words")


def test_stop_words():
    flt = only(min_stop_words=PUBLISHED["min_stop_words"], stop_words=ARABIC_STOP_WORDS)
    base = line(0, 20)
    assert_sides(flt, f"{base} في البيت من الصباح", f"{base} في البيت", "stop_words")
    # The Arabic comma is one of them, as a word of its own.
    assert reason(flt, f"{base}، في البيت") is None


# ---- bad words and URLs ------------------------------------------------------------------


def test_bad_words_need_two_occurrences_and_can_be_extended(tmp_path):
    flt = only(bad_words=True)
    base = line(0, 30)
    assert reason(flt, f"{base} موقع سكس") is None
    assert reason(flt, f"{base} موقع سكس وأفلام PORN") == "bad_words"
    assert reason(flt, f"{base} والسكس بالسكس") == "bad_words"          # with proclitics
    assert reason(flt, f"{base} الكسكس والسكسوكة") is None               # not inside other words
    words = tmp_path / "words.txt"
    words.write_text("# ours\nكلمةممنوعة\n", encoding="utf-8")
    mine = only(bad_words=False, bad_words_files=[str(words)], extra_bad_words=["محظور"])
    assert reason(mine, f"{base} كلمةممنوعة محظور") == "bad_words"


def test_url_blocklist(tmp_path):
    listed = tmp_path / "domains.txt"
    listed.write_text("listed.example\n", encoding="utf-8")
    flt = only(url_filter=True, url_blocklist=["bad.example"], url_blocklist_files=[str(listed)])
    assert flt.check_url("https://www.bad.example/news/1")[0] == "blocked_url"
    assert flt.check_url("http://cdn.listed.example/a")[0] == "blocked_url"
    assert flt.check_url("https://notbad.example/news") is None
    assert flt.check_url("https://example.com/porn-videos/1")[0] == "blocked_url"
    assert flt.check_url("https://example.com/%D8%B3%D9%83%D8%B3/")[0] == "blocked_url"      # /سكس/
    assert flt.check_url("https://www.sussex.ac.uk/news") is None
    assert flt.check_url(None) is None and flt.check_url("") is None
    cleaner = Cleaner(CleanConfig(quality=QualityConfig(url_blocklist=["bad.example"])))
    assert cleaner.process("نص " * 50, "https://bad.example/x").reason == "blocked_url"


def test_every_filter_can_be_switched_off():
    text = "\n".join([line(0)] * 10)       # fails the repetition filters
    assert QualityFilter(QualityConfig()).check(text) is not None
    assert QualityFilter(QualityConfig(enabled=False)).check(text) is None
    assert only().check(text) is None


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="bad_words_files"):
        QualityConfig(bad_words_files=[str(tmp_path / "missing.txt")]).validate()
    with pytest.raises(ConfigError, match="max_dup_line_frac"):
        QualityConfig(max_dup_line_frac=-1.0).validate()
    names = {f.name for f in fields(QualityConfig)}
    assert set(PUBLISHED) <= names and set(ALL_OFF) <= names


# ---- on the shipped sample ---------------------------------------------------------------

# 5% of the 321 documents the sample kept before language ID and the quality filters.
SAMPLE_BUDGET = 16


def sample_texts(sample_corpus):
    """The sample's documents that pass cleaning and the length, script and language filters."""
    import json

    cleaner = Cleaner(CleanConfig(quality=QualityConfig(enabled=False), redact_pii=False))
    texts = []
    with open(sample_corpus, encoding="utf-8") as f:
        for line_ in f:
            try:
                raw = json.loads(line_)["text"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(raw, str):
                verdict = cleaner.process(raw)
                if verdict.reason is None:
                    texts.append(verdict.text)
    return texts


def test_each_filter_alone_on_the_sample_stays_within_5_percent_or_is_off_by_default(sample_corpus):
    texts = sample_texts(sample_corpus)
    assert len(texts) > 321
    published = {**PUBLISHED, "bad_words": True}
    drops = {}
    for name, value in published.items():
        flt = only(**{name: value, **({"stop_words": ARABIC_STOP_WORDS} if name == "min_stop_words" else {})})
        drops[name] = sum(1 for t in texts if flt.check(t) is not None)
    over_budget = {name for name, n in drops.items() if n > SAMPLE_BUDGET}
    # The two that drop more are named here and off by default; docs/data.md says why.
    assert over_budget == OFF_BY_DEFAULT, drops
