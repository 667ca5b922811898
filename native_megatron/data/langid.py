"""Language identification: is a document's Arabic-script text Arabic, or Persian, Urdu, Pashto...?

Counting Arabic-script letters (``clean.min_arabic_ratio``) cannot tell Arabic from
the other languages written in the script, and Common Crawl's Arabic-script pages
are full of Persian and Urdu. This module asks CLD2 (Google's Compact Language
Detector 2, through ``pycld2``), whose model is compiled into the wheel: nothing
is downloaded at run time. It was chosen over fastText lid.176, lingua,
py3langid and CLD3 on the labelled set in ``tests/data/langid_set.jsonl``
(docs/data.md has the comparison; ``benchmarks/bench_langid.py`` reruns it).

CLD2 reports up to three languages with the share of the text in each. The
*score* of a document is the share of its Arabic-script text that is in the
target language: Latin-script words in an Arabic post (code-switching, brand
names) do not count against it, because how much Latin text a document may hold
is ``min_arabic_ratio``'s decision, not this one's. A Persian document scores 0,
an Arabic one with an English quote scores 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import pycld2

# CLD2's languages written in the Arabic script ("ku" is Kurdish, which CLD2
# detects in Arabic script as Sorani; "xx-Arab" is Arabic script it cannot place).
ARABIC_SCRIPT_LANGUAGES = frozenset({"ar", "fa", "ur", "ps", "sd", "ug", "ku", "ks", "xx-Arab"})
UNKNOWN = "un"

# CLD2 refuses C0/C1 control characters as "invalid UTF-8"; they carry no language.
_CONTROLS = {c: " " for c in [*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0)]}


@dataclass(frozen=True)
class LanguageGuess:
    """``language``: CLD2's code for the document's (Arabic-script, when it has any) text;
    ``score``: the share of that text in the target language, 0 to 1."""

    language: str
    score: float


class LanguageIdentifier:
    """Scores documents for one target language (a CLD2 code, ``ar`` for Arabic)."""

    def __init__(self, language: str = "ar") -> None:
        self.language = language
        # For an Arabic-script target, only the other Arabic-script languages compete with it.
        self._pool = ARABIC_SCRIPT_LANGUAGES if language in ARABIC_SCRIPT_LANGUAGES else None

    def identify(self, text: str) -> LanguageGuess:
        found = [(code, percent) for code, percent in _detect(text) if code != UNKNOWN]
        if not found:
            return LanguageGuess(UNKNOWN, 0.0)
        pool = [(c, p) for c, p in found if self._pool is None or c in self._pool]
        if not pool:
            return LanguageGuess(found[0][0], 0.0)
        total = sum(p for _, p in pool)
        target = sum(p for c, p in pool if c == self.language)
        top = max(pool, key=lambda cp: cp[1])[0]
        return LanguageGuess(top, round(target / total, 3) if total else 0.0)


def _detect(text: str) -> list[tuple[str, int]]:
    """(language code, percent of the text) for up to three languages, largest first."""
    try:
        _, _, details = pycld2.detect(text, isPlainText=True, bestEffort=True)
    except pycld2.error:
        try:
            _, _, details = pycld2.detect(text.translate(_CONTROLS), isPlainText=True, bestEffort=True)
        except pycld2.error:
            return []
    return [(code, percent) for _, code, percent, _ in details]
