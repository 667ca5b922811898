"""Published document quality filters, with FineWeb-2's thresholds for Arabic (``arb_Arab``).

Each filter measures one thing about a cleaned document and drops it past a
threshold; each threshold is a key of :class:`QualityConfig` (``null`` switches
that filter off) and each filter is a manifest drop reason. Sources, as
re-implemented here from their published definitions (docs/data.md has the
table, with what each filter dropped on the sample):

- Gopher repetition filters (Rae et al. 2021, "Scaling Language Models", Table A1);
- FineWeb's line filters (Penedo et al. 2024) and Gopher's quality filters;
- the thresholds FineWeb-2 tuned for Standard Arabic: ``configs/arb_Arab.yml`` of
  huggingface/fineweb-2, applied by its ``fineweb-2-pipeline.py`` through
  datatrove's ``GopherRepetitionFilter``, ``FineWebQualityFilter`` and
  ``GopherQualityFilter``.

Words are split the way FineWeb-2 split Arabic (spaCy's tokenizer): runs of
letters, digits and marks are words, every other non-space character is a token
of its own, so "،" and "." count as words and the Arabic comma can be a stop word.

Also here: a bad-words filter (explicit sexual vocabulary, Arabic, English and
French, extendable) and a URL blocklist (domains and banned words in the URL, extendable).
"""

from __future__ import annotations

import itertools
import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from native_megatron.utils.config import ConfigError

# configs/arb_Arab.yml of huggingface/fineweb-2 (the "stopwords" list), in its order.
ARABIC_STOP_WORDS = ["،", "في", "من", "على", "إلى", "عام", "أن", "مع", "أو", "هو", "عن", "التي", "كان", "بين",
                     "ما", "كانت", "هي", "المتحدة", "بعد"]

# Line endings that count as the end of a sentence (FineWeb's line_punct filter);
# the Arabic question mark, the Urdu full stop and the Arabic triple dot are among them.
TERMINAL_PUNCTUATION = (".", "!", "?", "؟", "۔", "؞", "\u061d", "。", "！", "？", "．")

_MARKS = "\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e8\u06ea-\u06ed"
# Like spaCy: a URL or e-mail address is one token, so are "22:15", "12,000", "3.5", a
# list number's "1-" and an ellipsis ".."; other punctuation is one token per character.
WORD_RE = re.compile(rf"(?:https?://|www\.)\S+|[^\s@]+@[^\s@]+\.\w+|\d+-(?!\S)"
                     rf"|[\w{_MARKS}]+(?:[.,:'’][\w{_MARKS}]+)*|\.{{2,}}|[^\w\s{_MARKS}]")
ARABIC_START_RE = re.compile("[\u0600-\u06ff]")
_BLOCK_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")

# Explicit sexual vocabulary that news, religious and medical text do not use, so that
# one word in passing is rare; insults are left to the rewriter (docs/alignment.md).
# Written for this project. Arabic entries also match with a leading و ف ب ل ال.
DEFAULT_BAD_WORDS = [
    "سكس", "نيك", "نياكة", "نياكه", "ينيك", "تنيك", "منيوك", "منيوكة", "متناكة", "متناكه", "شرموطة", "شرموطه",
    "شراميط", "قحبة", "قحبه", "قحاب", "زبي", "زبر", "طيزها", "بزازها", "كسها",
    "porn", "porno", "pornhub", "xxx", "xvideos", "xnxx", "xhamster", "pussy", "blowjob", "handjob", "milf",
    "hentai", "fuck", "fucking", "dildo", "camsex", "salope", "baise", "pornographique",
]

# Words that mark an adult site when they are a whole token of the URL (host or path).
DEFAULT_URL_BANNED_WORDS = ["porn", "porno", "xxx", "sex", "xvideos", "xnxx", "xhamster", "pornhub", "hentai",
                            "camgirls", "escort", "escorts", "سكس", "نيك"]


@dataclass
class QualityConfig:
    """Thresholds of the quality filters; ``null`` (an empty list for the n-gram lists) switches one
    off (docs/data.md, "Quality filters")."""

    enabled: bool = True
    # Gopher repetition: duplicated lines / paragraphs, by count and by characters.
    max_dup_line_frac: float | None = 0.304            # FineWeb-2 arb_Arab (dup_line_frac)
    max_dup_para_frac: float | None = 0.30             # Gopher (FineWeb-2 turned it off)
    max_dup_line_char_frac: float | None = 0.10        # FineWeb-2 (char_duplicates_ratio)
    max_dup_para_char_frac: float | None = 0.20        # Gopher (FineWeb-2 turned it off)
    # Characters in the most frequent repeated n-gram, for n = 2, 3, 4 (FineWeb-2 arb_Arab top_n_grams).
    max_top_ngram_char_frac: list[float] = field(default_factory=lambda: [0.197, 0.172, 0.146])
    # Characters in repeated n-grams, for n = 5 ... 10 (FineWeb-2 arb_Arab dup_n_grams).
    max_dup_ngram_char_frac: list[float] = field(
        default_factory=lambda: [0.165, 0.153, 0.142, 0.131, 0.12, 0.109])
    # FineWeb: share of lines ending in terminal punctuation (arb_Arab: 0.143; off by default,
    # informal and dialect posts rarely end a line with one, docs/data.md); line breaks per word.
    min_line_punct_frac: float | None = None
    max_newline_ratio: float | None = 0.189
    # Gopher quality (arb_Arab values where FineWeb-2 set them, datatrove's defaults otherwise).
    min_avg_word_length: float | None = 2.0
    max_avg_word_length: float | None = 9.0
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_frac: float | None = 0.9
    max_ellipsis_lines_frac: float | None = 0.3
    # Share of words with a letter (arb_Arab: 0.787; off by default: numbered lists, verse
    # citations and forum timestamps push good Arabic pages below it, docs/data.md).
    min_alpha_words_frac: float | None = None
    stop_words: list[str] = field(default_factory=lambda: list(ARABIC_STOP_WORDS))
    min_stop_words: int = 2
    # Bad words: a document with at least min_bad_words occurrences is dropped.
    bad_words: bool = True
    extra_bad_words: list[str] = field(default_factory=list)
    bad_words_files: list[str] = field(default_factory=list)
    min_bad_words: int = 2
    # URL blocklist (the input's url field, see input.url_key): domains (with their
    # subdomains) and whole words of the URL.
    url_filter: bool = True
    url_blocklist: list[str] = field(default_factory=list)
    url_blocklist_files: list[str] = field(default_factory=list)
    extra_url_banned_words: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for name in ("bad_words_files", "url_blocklist_files"):
            for path in getattr(self, name):
                if not Path(path).is_file():
                    raise ConfigError(f"clean.quality.{name}: {path} is not a file")
        for name, value in vars(self).items():
            if isinstance(value, float) and value < 0:
                raise ConfigError(f"clean.quality.{name} must be >= 0 (or null to switch it off)")
        if self.min_stop_words < 0 or self.min_bad_words < 1:
            raise ConfigError("clean.quality: need min_stop_words >= 0 and min_bad_words >= 1")


def split_words(text: str) -> list[str]:
    """Words and single punctuation tokens, as FineWeb-2 split Arabic."""
    return WORD_RE.findall(text)


def _dups(items: list[str]) -> tuple[int, int]:
    """(items equal to an earlier one, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


class QualityFilter:
    """Applies a :class:`QualityConfig`; :meth:`check` gives ``(reason, detail)`` or None."""

    def __init__(self, config: QualityConfig) -> None:
        self.config = config
        self.stop_words = frozenset(config.stop_words)
        words = (DEFAULT_BAD_WORDS if config.bad_words else []) + config.extra_bad_words
        words += _read_list(config.bad_words_files)
        # Single words are looked up among the document's words (with Arabic proclitics);
        # phrases, rarer, by a regular expression.
        self._bad_tokens = frozenset(v for w in words if " " not in w.strip() for v in _variants(w.strip()))
        phrases = [w for w in words if " " in w.strip()]
        self._bad_phrases = _word_pattern(phrases) if phrases else None
        self._blocked_domains = {d.lower().lstrip(".") for d in config.url_blocklist + _read_list(
            config.url_blocklist_files)}
        self._url_words = {w.lower() for w in DEFAULT_URL_BANNED_WORDS + config.extra_url_banned_words}

    def check_url(self, url: str | None) -> tuple[str, str] | None:
        """``("blocked_url", why)`` for a URL on the blocklist."""
        if not self.config.enabled or not self.config.url_filter or not url:
            return None
        parts = urllib.parse.urlsplit(url if "//" in url else "//" + url)
        host = (parts.hostname or "").lower()
        labels = host.split(".")
        for i in range(len(labels) - 1):
            if ".".join(labels[i:]) in self._blocked_domains:
                return "blocked_url", f"domain {'.'.join(labels[i:])}"
        tokens = re.split(r"[\W_]+", urllib.parse.unquote(f"{host} {parts.path} {parts.query}").lower())
        hit = next((t for t in tokens if t in self._url_words), None)
        return ("blocked_url", f"word {hit!r}") if hit else None

    def check(self, text: str) -> tuple[str, str] | None:
        """The first filter the text fails, as ``(reason, measurement)``, or None."""
        if not self.config.enabled:
            return None
        tokens = split_words(text)
        return (self._repetition(text, tokens) or self._lines(text) or self._words(text, tokens)
                or self._bad_words(text, tokens))

    # ---- Gopher repetition -----------------------------------------------------

    def _repetition(self, text: str, tokens: list[str]) -> tuple[str, str] | None:
        c = self.config
        n_chars = len(text) or 1
        paragraphs = _BLOCK_SPLIT.split(text.strip())
        dup, dup_chars = _dups(paragraphs)
        if over(dup / len(paragraphs), c.max_dup_para_frac):
            return "dup_para_frac", _fmt(dup / len(paragraphs), c.max_dup_para_frac, ">")
        if over(dup_chars / n_chars, c.max_dup_para_char_frac):
            return "dup_para_char_frac", _fmt(dup_chars / n_chars, c.max_dup_para_char_frac, ">")
        lines = [line for line in _LINE_SPLIT.split(text) if line]
        dup, dup_chars = _dups(lines)
        if lines and over(dup / len(lines), c.max_dup_line_frac):
            return "dup_line_frac", _fmt(dup / len(lines), c.max_dup_line_frac, ">")
        # FineWeb's version: over the characters of the text without its newlines.
        line_chars = (len(text) - text.count("\n")) or 1
        if over(dup_chars / line_chars, c.max_dup_line_char_frac):
            return "dup_line_char_frac", _fmt(dup_chars / line_chars, c.max_dup_line_char_frac, ">")
        return self._ngrams(tokens, n_chars)

    def _ngrams(self, words: list[str], n_chars: int) -> tuple[str, str] | None:
        c = self.config
        tops = [(n, lim) for n, lim in enumerate(c.max_top_ngram_char_frac, start=2) if lim is not None]
        dups = [(n, lim) for n, lim in enumerate(c.max_dup_ngram_char_frac, start=5) if lim is not None]
        ids: dict[str, int] = {}
        seq = [ids.setdefault(w, len(ids)) for w in words]
        if not (tops or dups) or len(ids) == len(seq):
            return None     # no word comes twice, so no n-gram does
        prefix = list(itertools.accumulate(map(len, words), initial=0))
        keys = _NgramKeys(seq)
        for n, limit in tops:
            grams = keys.of(n)
            if not grams:
                break
            key, count = Counter(grams).most_common(1)[0]
            if count < 2:
                break       # an n-gram that occurs once is not repetition, nor is any longer one
            start = grams.index(key)
            # The n-gram as written, with its n - 1 spaces, times its count.
            frac = (prefix[start + n] - prefix[start] + n - 1) * count / n_chars
            if frac > limit:
                return "top_ngram", f"{n}-gram {_fmt(frac, limit, '>')}"
        for n, limit in dups:
            grams = keys.of(n)
            if len(set(grams)) == len(grams):
                break       # no n-gram repeats, so no longer one does
            frac = _duplicated_ngram_chars(grams, prefix, n) / n_chars
            if frac > limit:
                return "dup_ngram", f"{n}-gram {_fmt(frac, limit, '>')}"
        return None

    # ---- FineWeb lines, Gopher quality, bad words ---------------------------------

    def _lines(self, text: str) -> tuple[str, str] | None:
        c = self.config
        if c.min_line_punct_frac is None:
            return None
        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            return None
        frac = sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION)) / len(lines)
        if under(frac, c.min_line_punct_frac):
            return "line_punct", _fmt(frac, c.min_line_punct_frac, "<")
        return None

    def _words(self, text: str, tokens: list[str]) -> tuple[str, str] | None:
        c = self.config
        if not tokens:
            return None
        n = len(tokens)
        # Line breaks, not newline characters: a blank line between paragraphs is one break,
        # as in the trafilatura output FineWeb-2 tuned this on (one newline per paragraph).
        breaks = len(_LINE_SPLIT.findall(text.strip()))
        if over(breaks / n, c.max_newline_ratio):
            return "newline_ratio", _fmt(breaks / n, c.max_newline_ratio, ">")
        if c.min_avg_word_length is not None or c.max_avg_word_length is not None:
            # Words: tokens other than a lone punctuation mark.
            lengths = [len(t) for t in tokens if len(t) > 1 or t.isalnum()]
            if lengths:
                mean = sum(lengths) / len(lengths)
                if under(mean, c.min_avg_word_length) or over(mean, c.max_avg_word_length):
                    return "avg_word_length", (f"{mean:.2f} outside [{c.min_avg_word_length}, "
                                               f"{c.max_avg_word_length}]")
        symbols = max(text.count("#"), text.count("...") + text.count("…"))
        if over(symbols / n, c.max_symbol_word_ratio):
            return "symbol_word_ratio", _fmt(symbols / n, c.max_symbol_word_ratio, ">")
        if c.max_bullet_lines_frac is not None or c.max_ellipsis_lines_frac is not None:
            lines = text.splitlines() or [""]
            bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-"))) / len(lines)
            if over(bullets, c.max_bullet_lines_frac):
                return "bullet_lines", _fmt(bullets, c.max_bullet_lines_frac, ">")
            ellipsis_lines = sum(1 for line in lines if line.rstrip().endswith(("...", "…"))) / len(lines)
            if over(ellipsis_lines, c.max_ellipsis_lines_frac):
                return "ellipsis_lines", _fmt(ellipsis_lines, c.max_ellipsis_lines_frac, ">")
        if c.min_alpha_words_frac is not None:
            alpha = sum(1 for t in tokens if any(ch.isalpha() for ch in t)) / n
            if under(alpha, c.min_alpha_words_frac):
                return "alpha_words", _fmt(alpha, c.min_alpha_words_frac, "<")
        if c.min_stop_words:
            found = self.stop_words.intersection(tokens)
            if len(found) < c.min_stop_words:
                return "stop_words", f"{len(found)} stop words < {c.min_stop_words}"
        return None

    def _bad_words(self, text: str, tokens: list[str]) -> tuple[str, str] | None:
        if not self._bad_tokens and self._bad_phrases is None:
            return None
        hits = 0
        if self._bad_tokens:
            bad = self._bad_tokens
            hits = sum(n for t, n in Counter(tokens).items() if t in bad or t.lower() in bad)
        if self._bad_phrases is not None and hits < self.config.min_bad_words:
            hits += sum(1 for _ in self._bad_phrases.finditer(text))
        if hits >= self.config.min_bad_words:
            return "bad_words", f"{hits} occurrences"
        return None


class _NgramKeys:
    """One integer key per n-gram position, built from the (n-1)-gram keys (no tuples kept)."""

    def __init__(self, seq: list[int]) -> None:
        self.seq = seq
        self.keys = {1: seq}

    def of(self, n: int) -> list[int]:
        if n not in self.keys:
            shorter = self.of(n - 1)
            self.keys[n] = [hash((k, w)) for k, w in zip(shorter, self.seq[n - 1:])]
        return self.keys[n]


def over(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def under(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit


def _fmt(value: float, limit: float | None, op: str) -> str:
    return f"{value:.3f} {op} {limit}"


def _duplicated_ngram_chars(grams: list[int], prefix: list[int], n: int) -> int:
    """Characters (spaces excluded) of the n-grams that repeat an earlier one; after a
    repeat the scan jumps past it, so no word is counted twice (datatrove's method)."""
    seen: set[int] = set()
    chars = i = 0
    while i < len(grams):
        if grams[i] in seen:
            chars += prefix[i + n] - prefix[i]
            i += n
        else:
            seen.add(grams[i])
            i += 1
    return chars


def _read_list(paths: list[str]) -> list[str]:
    """Entries of one-per-line files; blank lines and ``#`` comments skipped."""
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out += [s for s in (line.split("#", 1)[0].strip() for line in f) if s]
    return out


_PROCLITICS = ("", "و", "ف", "ب", "ل", "ال", "وال", "بال", "فال", "لل")


def _variants(word: str) -> list[str]:
    """The word in lower case and, when it is Arabic, with each proclitic in front."""
    word = word.lower()
    return [p + word for p in _PROCLITICS] if ARABIC_START_RE.match(word) else [word]


def _word_pattern(words: list[str]) -> re.Pattern:
    """Whole words (and phrases), case-insensitive; an Arabic entry also with a proclitic."""
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    clitic = "(?:وال|بال|فال|لل|ال|و|ف|ب|ل)?"
    return re.compile(rf"(?<![\w{_MARKS}]){clitic}(?:{alternatives})(?![\w{_MARKS}])", re.IGNORECASE)
