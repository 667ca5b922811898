"""Checks on every rewrite, each configurable and counted by name.

A rewrite fails when any enabled check fails; the pipeline then applies the
failure policy (keep the raw text, drop the document, or retry once with
other sampling). Checks:

- ``empty``: nothing but whitespace came back.
- ``truncated``: the backend stopped at its token limit (finish reason ``length``).
- ``arabic_ratio``: Arabic letters over all letters below ``min_arabic_ratio``
  (only when the source itself was Arabic above that ratio: a rewrite must not
  translate).
- ``length_ratio``: rewrite length over source length outside
  ``[min_length_ratio, max_length_ratio]`` (lost knowledge, or padding).
- ``refusal``: refusal or apology phrases (Arabic and English) that the source
  does not contain ("I'm sorry, I can't", "عذراً، لا يمكنني").
- ``repetition``: a degenerate loop: the most repeated word 8-gram covers more
  than ``max_repeated_fraction`` of the text, and more than in the source.
- ``prompt_leak``: a line of the prompt or a guideline rule appears in the
  output but not in the source.
- ``garbled``: replacement characters (U+FFFD) or control characters that the
  source does not have: broken decoding or a model emitting bytes.
- ``knowledge``: fewer than ``min_content_recall`` of the source's distinct
  content words (3+ letters, numbers; spelling variants folded) appear in the
  rewrite: the document was replaced rather than polished, or invented.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from native_megatron.alignment.guidelines import Guidelines, normalise
from native_megatron.data.cleaning import arabic_ratio
from native_megatron.utils.config import ConfigError

CHECKS = ("empty", "truncated", "arabic_ratio", "length_ratio", "refusal", "repetition", "prompt_leak", "garbled",
          "knowledge")
_GARBLED = re.compile("[\ufffd\x00-\x08\x0b-\x1f\x7f-\x9f]")

REFUSAL_PATTERNS = [
    r"\b(i'?m|i am) (sorry|unable|not able)\b", r"\bi (can(no|')?t|cannot|won'?t) (help|assist|rewrite|comply|do that)",
    r"\bas an ai\b", r"\bi apologi[sz]e\b", r"\bunable to (comply|assist|help)\b",
    r"عذرا[ًً]?[،,]? (لا|لن) (يمكنني|أستطيع|أقدر)", r"(آسف|أعتذر|اعتذر)[،,]? (لا|لن|ولكن) (يمكنني|أستطيع)",
    r"لا (يمكنني|أستطيع) (المساعدة|إعادة كتابة|تلبية)", r"بصفتي (نموذج|نموذجا|نموذجاً) (لغويا|لغوياً|ذكاء)",
    r"كنموذج (لغوي|ذكاء اصطناعي)",
]


@dataclass
class ValidationConfig:
    checks: list[str] = field(default_factory=lambda: list(CHECKS))
    min_arabic_ratio: float = 0.5
    min_length_ratio: float = 0.5
    max_length_ratio: float = 1.6
    max_repeated_fraction: float = 0.3
    min_content_recall: float = 0.35
    extra_refusal_patterns: list[str] = field(default_factory=list)

    def validate(self) -> None:
        unknown = [c for c in self.checks if c not in CHECKS]
        if unknown:
            raise ConfigError(f"validate.checks: unknown check {unknown[0]!r}; known: {', '.join(CHECKS)}")
        if not 0 < self.min_length_ratio < self.max_length_ratio:
            raise ConfigError("validate: need 0 < min_length_ratio < max_length_ratio")
        for i, p in enumerate(self.extra_refusal_patterns):
            try:
                re.compile(p)
            except re.error as exc:
                raise ConfigError(f"validate.extra_refusal_patterns[{i}]: {exc}") from None


def content_recall(source: str, output: str) -> float:
    """Share of the source's distinct content words (3+ characters, or numbers) found in the output."""
    from native_megatron.data.dedup import normalize_for_match

    words = {w for w in normalize_for_match(source) if len(w) >= 3 or w.isdigit()}
    if not words:
        return 1.0
    return len(words & set(normalize_for_match(output))) / len(words)


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def repeated_fraction(text: str, n: int = 8) -> float:
    """Share of the words covered by the most repeated word n-gram (0 for none repeated)."""
    words = text.split()
    if len(words) < 2 * n:
        return 0.0
    (gram, count), = _ngrams(words, n).most_common(1)
    return 0.0 if count < 2 else min(1.0, count * n / len(words))


class Validator:
    def __init__(self, config: ValidationConfig, guidelines: Guidelines) -> None:
        self.config = config
        self.enabled = set(config.checks)
        self._refusal = [re.compile(p, re.IGNORECASE) for p in REFUSAL_PATTERNS + config.extra_refusal_patterns]
        # Only fragments long enough to be unlikely in ordinary text.
        self._fragments = [normalise(f) for f in guidelines.prompt_fragments() if len(normalise(f).split()) >= 4]
        self._fragments += ["<document>", "</document>"]

    def check(self, source: str, output: str, finish_reason: str | None) -> list[str]:
        """Names of the failed checks (empty when the rewrite is acceptable)."""
        return failed_checks(self.check_details(source, output, finish_reason))

    def check_details(self, source: str, output: str, finish_reason: str | None) -> dict[str, dict]:
        """Every enabled check's ``{"value", "threshold", "passed"}``, in the order they run.

        An empty output runs only ``empty``: the other measures mean nothing on no text. The
        threshold is the number the value was compared with (for ``length_ratio``, the bound nearer
        the value; for ``repetition`` and ``garbled``, the source's own level when that is higher),
        or None for a yes/no check.
        """
        c, on = self.config, self.enabled
        out: dict[str, dict] = {}

        def put(name: str, value, threshold, passed: bool) -> None:
            out[name] = {"value": value, "threshold": threshold, "passed": bool(passed)}

        if "empty" in on:
            put("empty", len(output.strip()), None, bool(output.strip()))
            if not output.strip():
                return out
        if "truncated" in on:
            put("truncated", finish_reason == "length", None, finish_reason != "length")
        if "arabic_ratio" in on:
            value = arabic_ratio(output)
            applies = arabic_ratio(source) >= c.min_arabic_ratio  # a non-Arabic source may stay non-Arabic
            put("arabic_ratio", round(value, 4), c.min_arabic_ratio, not applies or value >= c.min_arabic_ratio)
        if "length_ratio" in on:
            ratio = len(output.strip()) / max(1, len(source.strip()))
            nearer = c.min_length_ratio if ratio < (c.min_length_ratio + c.max_length_ratio) / 2 \
                else c.max_length_ratio
            put("length_ratio", round(ratio, 4), nearer, c.min_length_ratio <= ratio <= c.max_length_ratio)
        if "refusal" in on:
            hit = any(p.search(output) and not p.search(source) for p in self._refusal)
            put("refusal", hit, None, not hit)
        if "repetition" in on:
            frac = repeated_fraction(output)
            limit = max(c.max_repeated_fraction, repeated_fraction(source))
            put("repetition", round(frac, 4), round(limit, 4), frac <= limit)
        if "garbled" in on:
            bad, src_bad = len(_GARBLED.findall(output)), len(_GARBLED.findall(source))
            put("garbled", bad, src_bad, bad <= src_bad)
        if "knowledge" in on:
            recall = content_recall(source, output)
            put("knowledge", round(recall, 4), c.min_content_recall, recall >= c.min_content_recall)
        if "prompt_leak" in on:
            text, src = normalise(output), normalise(source)
            leak = any(f in text and f not in src for f in self._fragments)
            put("prompt_leak", leak, None, not leak)
        return out


def failed_checks(details: dict[str, dict]) -> list[str]:
    """The names of the failed checks in ``details`` (see :meth:`Validator.check_details`), in order."""
    return [name for name, d in details.items() if not d["passed"]]
