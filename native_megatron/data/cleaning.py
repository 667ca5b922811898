"""Arabic text cleaning: a documented, configurable sequence of steps and filters.

Steps run in this order (each can be switched off in :class:`CleanConfig`):

0. ``fix_mojibake``        ftfy repairs text decoded with the wrong codec (``Ø§Ù„Ø¹Ø±Ø¨ÙŠØ©``
                           -> العربية); only texts with a character of U+00C2-U+00F4 are
                           looked at, since UTF-8 mojibake always has one.
1. ``strip_html``          unescape entities (``&nbsp;``), drop leftover tags (``<br>``).
2. ``nfkc``                Unicode NFKC: presentation forms (U+FB50-U+FEFF) and
                           ligatures become ordinary letters, so one word has one spelling.
3. ``remove_control``      control and invisible format characters (zero-width joiners,
                           bidi marks, BOM, soft hyphen); newlines and tabs are kept.
4. ``remove_tatweel``      the kashida U+0640 (كـــبير -> كبير), pure decoration.
5. ``remove_diacritics``   harakat, tanwin, shadda, sukun, dagger alef, Quranic marks.
                           Off by default: fully vowelled text (Quran, poetry) is real data.
6. ``normalize_alef``      أ إ آ ٱ -> ا          } Off by default for pre-training: they
   ``normalize_yaa``       ى -> ي                } erase real spelling; useful for search
   ``normalize_taa_marbuta`` ة -> ه              } and deduplication keys.
   ``normalize_persian_letters`` ی -> ي, ک -> ك  } Off by default: Persian keyboards'
   ``normalize_digits``    ٠-٩, ۰-۹ -> 0-9       } letters and Arabic-Indic digits are real text.
7. ``normalize_whitespace`` Unicode spaces -> space, runs collapsed, lines stripped,
                           at most one blank line in a row.
8. ``remove_boilerplate``  short whole lines matching a boilerplate pattern (share buttons,
                           copyright, cookie notices, navigation bars, "read also"...);
                           each pattern has a length limit above which a line is content.
9. ``remove_symbol_lines`` lines with no letter or digit (``* * *``, ``|||``, ``=====``).

Then document filters, each giving a drop reason: ``too_long`` (before cleaning,
so a 10 MB blob costs nothing), ``blocked_url`` (the input's URL, also before
cleaning), ``too_short`` (characters or words after cleaning),
``low_arabic_ratio`` (Arabic letters over all letters), ``wrong_language``
(:mod:`native_megatron.data.langid`), then the quality filters of
:mod:`native_megatron.data.quality`. A kept document's PII is redacted last
(:mod:`native_megatron.data.pii`), before deduplication and tokenization.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from native_megatron.data import arabic
from native_megatron.data.langid import LanguageGuess, LanguageIdentifier
from native_megatron.data.pii import PII_KINDS, PiiRedactor
from native_megatron.data.quality import QualityConfig, QualityFilter
from native_megatron.utils.config import ConfigError

TATWEEL = arabic.TATWEEL
DIACRITICS_RE = re.compile(f"[{arabic.HARAKAT}{arabic.QURANIC_MARKS}{arabic.EXTENDED_MARKS}]")
ALEF_RE = re.compile(f"[{arabic.ALEF_VARIANTS}]")
HTML_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
SPACES_RE = re.compile(r"[^\S\n]+")
BLANK_LINES_RE = re.compile(r"\n{3,}")
# Letters of the Arabic script blocks (Arabic, Supplement, Extended-A, presentation forms).
ARABIC_LETTER_RE = re.compile("[\u0620-\u064a\u066e-\u06d3\u06d5\u06ee\u06ef\u06fa-\u06ff"
                              "\u0750-\u077f\u08a0-\u08c9\ufb50-\ufdff\ufe70-\ufefc]")
# UTF-8 read as Latin-1 or cp1252 always shows a lead byte as one of these characters.
MOJIBAKE_HINT_RE = re.compile("[\u00c2-\u00f4]")
PERSIAN_LETTERS = {0x06CC: "\u064a", 0x06A9: "\u0643"}          # ی -> ي, ک -> ك
EASTERN_DIGITS = {**{0x0660 + i: str(i) for i in range(10)}, **{0x06F0 + i: str(i) for i in range(10)}}

@dataclass(frozen=True)
class BoilerplateRule:
    """A boilerplate pattern and the longest line it may remove.

    The pattern must match the whole (whitespace-normalised) line, and the line
    must have at most ``max_chars`` characters and ``max_words`` words: a longer
    line is content, whatever it contains. This is what keeps a single-line JSONL
    document that mentions "©" or "cookies" in passing.
    """

    pattern: str
    max_chars: int
    max_words: int


# Web boilerplate lines, Arabic and English; names are counted in the stats.
# Limits sit well above the longest real line of each kind (the sample corpus's
# longest is noted) and well below a paragraph. Menus, share bars and
# breadcrumbs are anchored by their shape; the contained-phrase patterns (copyright,
# read_also, follow_us, cookies, newsletter, click_here, script) rely on the limit.
DEFAULT_BOILERPLATE: dict[str, BoilerplateRule] = {
    # "جميع الحقوق محفوظة © 2024 ..." (sample: 67 chars, 12 words).
    "copyright": BoilerplateRule(
        r"(?:جميع|كل) الحقوق محفوظة.*|.*(?:©|\(c\)\s*[\d٠-٩]{4}|copyright|all rights reserved).*", 120, 20),
    # "شارك: فيسبوك تويتر واتساب" (sample: 38, 7).
    "share": BoilerplateRule(
        r"(?:شارك(?:ها|ه)?|مشاركة|انشر|share)(?:\s(?:هذا|هذه|الخبر|المقال|المقالة|الصفحة|على|عبر|on|via))*[\s:،,]*"
        r"(?:(?:فيسبوك|فيس بوك|تويتر|واتساب|واتس اب|تيليجرام|تلغرام|لينكد إن|إكس|X|"
        r"facebook|twitter|whatsapp|telegram|linkedin|email|البريد)[\s|،,/-]*)*", 100, 16),
    # "اقرأ أيضاً: <a headline>" (sample: 77, 12); headlines run to about 120 characters.
    "read_also": BoilerplateRule(r"(?:اقرأ|إقرأ|اقرا) (?:أيضا|أيضاً|ايضا|ايضاً|المزيد)\b.{0,200}", 150, 25),
    # "تابعونا على ..." and app-store links (sample: 61, 10).
    "follow_us": BoilerplateRule(
        r"(?:تابعونا|تابعنا|حمل|حمّل|تحميل|نزّل|نزل) (?:على|عبر|من|تطبيق|التطبيق).{0,120}"
        r"|.*(?:جوجل بلاي|google play|app store|آب ستور|اب ستور).*", 120, 20),
    # Cookie banners are one or two sentences (sample: 110, 17; a long English
    # GDPR banner is about 220, 35).
    "cookies": BoilerplateRule(r".*(?:ملفات تعريف الارتباط|ملفات الارتباط|الكوكيز|cookies?\b).*", 220, 35),
    # "اشترك في النشرة البريدية" (sample: 24, 4).
    "newsletter": BoilerplateRule(
        r".*(?:اشترك|سجل|اشتراك) (?:في|ب)?\s?(?:النشرة|القائمة) (?:البريدية|الإخبارية).*", 120, 20),
    # "سجل الدخول | إنشاء حساب" (sample: 23, 5).
    "account": BoilerplateRule(
        r"(?:تسجيل الدخول|سجل الدخول|دخول|إنشاء حساب|حساب جديد|تسجيل|log ?in|sign ?up|register)"
        r"(?:\s*[|/]\s*(?:تسجيل الدخول|سجل الدخول|دخول|إنشاء حساب|حساب جديد|تسجيل|log ?in|sign ?up|register))+",
        60, 10),
    # "تعليقات (3)", "أضف تعليقاً" (sample: 15, 2).
    "comments": BoilerplateRule(
        r"(?:التعليقات|تعليقات|أضف تعليق[اً]{0,2}|اترك تعليق[اً]{0,2}|comments?)\s*(?:\(\d+\)|\d+)?\s*:?", 30, 5),
    # "عدد المشاهدات: 1532".
    "views": BoilerplateRule(r"(?:عدد )?(?:المشاهدات|مشاهدات|القراءات|views)\s*[:：]?\s*[\d٠-٩,.]+", 40, 5),
    # A lone "إعلان" / "Advertisement" label (sample: 7, 1).
    "ad_label": BoilerplateRule(r"(?:إعلان|اعلان|إعلانات|اعلانات|advertisement|sponsored|محتوى مدفوع)", 25, 3),
    # "الرئيسية » أقسام » وصفات", and menus that start with "الرئيسية |" (sample: 76, 14).
    "breadcrumb": BoilerplateRule(
        r"(?:الرئيسية|الصفحة الرئيسية|home)\s*(?:[>»›/|]\s*[^>»›/|\n]{1,40}){1,6}", 160, 30),
    # Menus of "|"-separated items; SEO keyword lists have the same shape (sample: 112, 23).
    "nav_bar": BoilerplateRule(r"(?:[^|\n]{1,25}\|){3,}[^|\n]{0,25}", 200, 40),
    # "تعديل - تاريخ - نقاش" (sample: 20, 5).
    "wiki_tabs": BoilerplateRule(
        r"(?:تعديل|عرض المصدر|تاريخ|نقاش|edit|history|talk)"
        r"(?:\s*[-|·]\s*(?:تعديل|عرض المصدر|تاريخ|نقاش|edit|history|talk))+", 80, 12),
    # "للمزيد اضغط هنا" (sample: 15, 3).
    "click_here": BoilerplateRule(r".{0,40}(?:اضغط هنا|انقر هنا|click here).{0,40}", 90, 15),
    # Leftover JavaScript. Code has few spaces, so the word limit is what tells it
    # from prose; the character limit lets a minified line go (sample: 110, 10).
    "script": BoilerplateRule(
        r".*(?:var \w+\s*=|function\s*\(|document\.\w|window\.\w|_gaq|gtag\(|<script|</script>).*", 2000, 40),
}


@dataclass
class CleanConfig:
    """Cleaning steps and document filters (see the module docstring for the order)."""

    fix_mojibake: bool = True
    strip_html: bool = True
    nfkc: bool = True
    remove_control: bool = True
    remove_tatweel: bool = True
    remove_diacritics: bool = False
    normalize_alef: bool = False
    normalize_yaa: bool = False
    normalize_taa_marbuta: bool = False
    normalize_persian_letters: bool = False
    normalize_digits: bool = False
    normalize_whitespace: bool = True
    remove_boilerplate: bool = True
    # Names from DEFAULT_BOILERPLATE to use; empty means all of them.
    boilerplate: list[str] = field(default_factory=list)
    # Extra full-line regular expressions of your own, named extra_0, extra_1, ...;
    # they remove a line only up to these lengths, like the built-in ones.
    extra_boilerplate: list[str] = field(default_factory=list)
    extra_boilerplate_max_chars: int = 200
    extra_boilerplate_max_words: int = 30
    min_chars: int = 100
    min_words: int = 10
    max_chars: int = 1_000_000
    min_arabic_ratio: float = 0.5
    remove_symbol_lines: bool = True
    # The language to keep, as a CLD2 code ("ar"); "" keeps every language. A document
    # whose Arabic-script text is less than min_language_score in it is dropped.
    language: str = "ar"
    min_language_score: float = 0.5
    quality: QualityConfig = field(default_factory=QualityConfig)
    # PII of these kinds (empty: all of them) is replaced by placeholders in kept documents.
    redact_pii: bool = True
    pii_kinds: list[str] = field(default_factory=list)

    def validate(self) -> None:
        unknown = [n for n in self.boilerplate if n not in DEFAULT_BOILERPLATE]
        if unknown:
            raise ConfigError(f"clean.boilerplate: unknown pattern {unknown[0]!r}; "
                              f"known: {', '.join(DEFAULT_BOILERPLATE)}")
        for i, pattern in enumerate(self.extra_boilerplate):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"clean.extra_boilerplate[{i}]: invalid regular expression ({exc})") from None
        if self.extra_boilerplate_max_chars < 1 or self.extra_boilerplate_max_words < 1:
            raise ConfigError("clean.extra_boilerplate_max_chars and clean.extra_boilerplate_max_words "
                              "must be at least 1")
        if not 0.0 <= self.min_arabic_ratio <= 1.0:
            raise ConfigError("clean.min_arabic_ratio must be between 0 and 1")
        if self.min_chars < 0 or self.min_words < 0 or self.max_chars <= self.min_chars:
            raise ConfigError("clean: need 0 <= min_chars < max_chars and min_words >= 0")
        if not 0.0 <= self.min_language_score <= 1.0:
            raise ConfigError("clean.min_language_score must be between 0 and 1")
        unknown = [k for k in self.pii_kinds if k not in PII_KINDS]
        if unknown:
            raise ConfigError(f"clean.pii_kinds: unknown kind {unknown[0]!r}; known: {', '.join(PII_KINDS)}")


@dataclass(frozen=True)
class Verdict:
    """What became of one document: ``reason`` (None when kept) and ``detail`` of a drop,
    the kept ``text``, and the language found (None when it was not looked for)."""

    reason: str | None = None
    detail: str | None = None
    text: str | None = None
    language: LanguageGuess | None = None


def arabic_ratio(text: str) -> float:
    """Arabic-script letters over all letters (digits, punctuation, spaces ignored)."""
    letters = sum(1 for ch in text if ch.isalpha())
    if letters == 0:
        return 0.0
    return len(ARABIC_LETTER_RE.findall(text)) / letters


def _is_removed_char(ch: str) -> bool:
    if ch in "\n\t":
        return False
    cat = unicodedata.category(ch)
    return cat in ("Cc", "Cf")


@functools.lru_cache(maxsize=1)
def _control_table() -> dict[int, None]:
    # All Cc/Cf code points except newline and tab; built once per process.
    table = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if _is_removed_char(chr(cp)):
            table[cp] = None
    return table


class Cleaner:
    """Apply a :class:`CleanConfig` to texts; counts what each step did in ``counts``."""

    def __init__(self, config: CleanConfig) -> None:
        self.config = config
        names = config.boilerplate or list(DEFAULT_BOILERPLATE)
        rules = [(n, DEFAULT_BOILERPLATE[n]) for n in names]
        rules += [(f"extra_{i}", BoilerplateRule(p, config.extra_boilerplate_max_chars,
                                                 config.extra_boilerplate_max_words))
                  for i, p in enumerate(config.extra_boilerplate)]
        self._boilerplate = [(name, re.compile(r.pattern, re.IGNORECASE), r.max_chars, r.max_words)
                             for name, r in rules]
        # Lines longer than every limit skip the regular expressions altogether.
        self._longest_boilerplate = max((r.max_chars for _, r in rules), default=0)
        self._control = _control_table() if config.remove_control else {}
        letters = {}
        if config.normalize_yaa:
            letters[ord(arabic.ALEF_MAKSURA)] = arabic.YAA
        if config.normalize_taa_marbuta:
            letters[ord(arabic.TAA_MARBUTA)] = arabic.HAA
        if config.normalize_persian_letters:
            letters.update(PERSIAN_LETTERS)
        if config.normalize_digits:
            letters.update(EASTERN_DIGITS)
        self._letters = letters
        self._ftfy = _ftfy_config() if config.fix_mojibake else None
        self._langid = LanguageIdentifier(config.language) if config.language else None
        self._quality = QualityFilter(config.quality)
        self._pii = PiiRedactor(config.pii_kinds) if config.redact_pii else None
        self.counts: Counter[str] = Counter()

    def clean(self, text: str) -> str:
        """The cleaned text (possibly empty). Document filters are in :meth:`filter`."""
        c = self.config
        counts = self.counts
        if self._ftfy is not None and MOJIBAKE_HINT_RE.search(text):
            import ftfy

            new = ftfy.fix_text(text, self._ftfy)
            if new != text:
                counts["fix_mojibake"] += 1
                text = new
        if c.strip_html and ("&" in text or "<" in text):
            new = HTML_TAG_RE.sub(" ", html.unescape(text))
            if new != text:
                counts["strip_html"] += 1
                text = new
        if c.nfkc and not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
            counts["nfkc"] += 1
        if self._control:
            new = text.translate(self._control)
            if new != text:
                counts["remove_control"] += 1
                text = new
        if c.remove_tatweel and TATWEEL in text:
            text = text.replace(TATWEEL, "")
            counts["remove_tatweel"] += 1
        if self._letters:  # only the normalize_* switches, all off by default
            new = text.translate(self._letters)
            if new != text:
                counts["normalize_letters"] += 1
                text = new
        if c.remove_diacritics:
            new = DIACRITICS_RE.sub("", text)
            if new != text:
                counts["remove_diacritics"] += 1
                text = new
        if c.normalize_alef:
            new = ALEF_RE.sub(arabic.ALEF, text)
            if new != text:
                counts["normalize_alef"] += 1
                text = new
        if c.normalize_whitespace or c.remove_boilerplate or c.remove_symbol_lines:
            text = self._lines(text)
        return text

    def _lines(self, text: str) -> str:
        c = self.config
        out = []
        changed = False
        for line in text.split("\n"):
            if c.normalize_whitespace:
                new = SPACES_RE.sub(" ", line).strip()
                changed |= new != line
                line = new
            if c.remove_boilerplate and line and self._is_boilerplate(line):
                continue
            if c.remove_symbol_lines and line.strip() and not any(ch.isalnum() for ch in line):
                self.counts["remove_symbol_lines"] += 1
                continue
            out.append(line)
        text = "\n".join(out)
        if c.normalize_whitespace:
            new = BLANK_LINES_RE.sub("\n\n", text).strip()
            if changed or new != text:
                self.counts["normalize_whitespace"] += 1
            text = new
        return text

    def _is_boilerplate(self, line: str) -> bool:
        chars = len(line)
        if chars > self._longest_boilerplate:
            return False
        words = len(line.split())
        for name, pattern, max_chars, max_words in self._boilerplate:
            if chars <= max_chars and words <= max_words and pattern.fullmatch(line):
                # Lines and characters, so that a rule which eats content shows up.
                self.counts[f"boilerplate:{name}"] += 1
                self.counts[f"boilerplate:{name}:chars"] += chars
                return True
        return False

    def filter(self, text: str) -> str | None:
        """The drop reason for a cleaned text, or None to keep it."""
        return self.check(text).reason

    def check(self, text: str) -> Verdict:
        """The document filters on a cleaned text: the first that fails, with its measurement."""
        c = self.config
        if len(text) < c.min_chars:
            return Verdict("too_short")
        if c.min_words and len(text.split()) < c.min_words:
            return Verdict("too_short")
        if c.min_arabic_ratio > 0 and arabic_ratio(text) < c.min_arabic_ratio:
            return Verdict("low_arabic_ratio")
        guess = None
        if self._langid is not None:
            guess = self._langid.identify(text)
            self.counts[f"language:{guess.language}"] += 1
            if guess.score < c.min_language_score:
                return Verdict("wrong_language", f"{guess.language} (score {guess.score:.3f})", language=guess)
        failed = self._quality.check(text)
        if failed is not None:
            return Verdict(failed[0], failed[1], language=guess)
        return Verdict(text=text, language=guess)

    def redact(self, text: str) -> str:
        """``text`` with its PII replaced by placeholders (counted as ``pii:KIND``)."""
        if self._pii is None:
            return text
        text, found = self._pii.redact(text)
        for kind, n in found.items():
            self.counts[f"pii:{kind}"] += n
        return text

    def process(self, raw_text: str, url: str | None = None) -> Verdict:
        """One raw document through everything: the drop reason, or the cleaned, redacted text."""
        if self.too_long(raw_text):
            return Verdict("too_long", f"{len(raw_text)} chars")
        blocked = self._quality.check_url(url)
        if blocked is not None:
            return Verdict(*blocked)
        verdict = self.check(self.clean(raw_text))
        if verdict.reason is not None:
            return verdict
        return Verdict(text=self.redact(verdict.text), language=verdict.language)

    def too_long(self, raw_text: str) -> bool:
        return len(raw_text) > self.config.max_chars


@functools.lru_cache(maxsize=1)
def _ftfy_config():
    """ftfy's encoding repairs only, as FineWeb-2 ran it (datatrove's FTFYFormatter): nothing that
    restyles text (quotes, widths, ligatures, normalisation); HTML and controls are our own steps."""
    from ftfy import TextFixerConfig

    return TextFixerConfig(unescape_html=False, remove_control_chars=False, fix_latin_ligatures=False,
                           fix_character_width=False, uncurl_quotes=False, fix_line_breaks=False,
                           normalization=None, explain=False)
