"""Arabic text cleaning: a documented, configurable sequence of steps and filters.

Steps run in this order (each can be switched off in :class:`CleanConfig`):

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
7. ``normalize_whitespace`` Unicode spaces -> space, runs collapsed, lines stripped,
                           at most one blank line in a row.
8. ``remove_boilerplate``  whole lines matching ``boilerplate_patterns`` (share buttons,
                           copyright, cookie notices, navigation bars, "read also"...).

Then document filters, each giving a drop reason: ``too_long`` (before cleaning,
so a 10 MB blob costs nothing), ``too_short`` (characters or words after
cleaning) and ``low_arabic_ratio`` (Arabic letters over all letters).
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from native_megatron.utils.config import ConfigError

TATWEEL = "\u0640"
# Harakat and tanwin (U+064B-U+065F), superscript (dagger) alef U+0670, Quranic
# annotation marks (U+06D6-U+06ED except the letters in that range), small high marks.
DIACRITICS_RE = re.compile("[\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e8\u06ea-\u06ed\u08d3-\u08ff]")
ALEF_RE = re.compile("[\u0622\u0623\u0625\u0671]")
HTML_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
SPACES_RE = re.compile(r"[^\S\n]+")
BLANK_LINES_RE = re.compile(r"\n{3,}")
# Letters of the Arabic script blocks (Arabic, Supplement, Extended-A, presentation forms).
ARABIC_LETTER_RE = re.compile("[\u0620-\u064a\u066e-\u06d3\u06d5\u06ee\u06ef\u06fa-\u06ff"
                              "\u0750-\u077f\u08a0-\u08c9\ufb50-\ufdff\ufe70-\ufefc]")

# Web boilerplate lines, Arabic and English. A line is removed when a pattern
# matches the whole (whitespace-normalised) line; names are counted in the stats.
DEFAULT_BOILERPLATE: dict[str, str] = {
    "copyright": r"(?:جميع|كل) الحقوق محفوظة.*|.*(?:©|\(c\)|copyright|all rights reserved).*",
    "share": r"(?:شارك(?:ها|ه)?|مشاركة|انشر|share)(?:\s(?:هذا|هذه|الخبر|المقال|المقالة|الصفحة|على|عبر|on|via))*[\s:،,]*"
             r"(?:(?:فيسبوك|فيس بوك|تويتر|واتساب|واتس اب|تيليجرام|تلغرام|لينكد إن|إكس|X|"
             r"facebook|twitter|whatsapp|telegram|linkedin|email|البريد)[\s|،,/-]*)*",
    "read_also": r"(?:اقرأ|إقرأ|اقرا) (?:أيضا|أيضاً|ايضا|ايضاً|المزيد)\b.{0,200}",
    "follow_us": r"(?:تابعونا|تابعنا|حمل|حمّل|تحميل|نزّل|نزل) (?:على|عبر|من|تطبيق|التطبيق).{0,120}"
                 r"|.*(?:جوجل بلاي|google play|app store|آب ستور|اب ستور).*",
    "cookies": r".*(?:ملفات تعريف الارتباط|ملفات الارتباط|الكوكيز|cookies?\b).*",
    "newsletter": r".*(?:اشترك|سجل|اشتراك) (?:في|ب)?\s?(?:النشرة|القائمة) (?:البريدية|الإخبارية).*",
    "account": r"(?:تسجيل الدخول|سجل الدخول|دخول|إنشاء حساب|حساب جديد|تسجيل|log ?in|sign ?up|register)"
               r"(?:\s*[|/]\s*(?:تسجيل الدخول|سجل الدخول|دخول|إنشاء حساب|حساب جديد|تسجيل|log ?in|sign ?up|register))+",
    "comments": r"(?:التعليقات|تعليقات|أضف تعليق[اً]{0,2}|اترك تعليق[اً]{0,2}|comments?)\s*(?:\(\d+\)|\d+)?\s*:?",
    "views": r"(?:عدد )?(?:المشاهدات|مشاهدات|القراءات|views)\s*[:：]?\s*[\d٠-٩,.]+",
    "ad_label": r"(?:إعلان|اعلان|إعلانات|اعلانات|advertisement|sponsored|محتوى مدفوع)",
    "breadcrumb": r"(?:الرئيسية|الصفحة الرئيسية|home)\s*(?:[>»›/|]\s*[^>»›/|\n]{1,40}){1,6}",
    "nav_bar": r"(?:[^|\n]{1,25}\|){3,}[^|\n]{0,25}",
    "wiki_tabs": r"(?:تعديل|عرض المصدر|تاريخ|نقاش|edit|history|talk)"
                 r"(?:\s*[-|·]\s*(?:تعديل|عرض المصدر|تاريخ|نقاش|edit|history|talk))+",
    "click_here": r".{0,40}(?:اضغط هنا|انقر هنا|click here).{0,40}",
    "script": r".*(?:var \w+\s*=|function\s*\(|document\.|window\.|_gaq|gtag\(|<script|</script>).*",
}


@dataclass
class CleanConfig:
    """Cleaning steps and document filters (see the module docstring for the order)."""

    strip_html: bool = True
    nfkc: bool = True
    remove_control: bool = True
    remove_tatweel: bool = True
    remove_diacritics: bool = False
    normalize_alef: bool = False
    normalize_yaa: bool = False
    normalize_taa_marbuta: bool = False
    normalize_whitespace: bool = True
    remove_boilerplate: bool = True
    # Names from DEFAULT_BOILERPLATE to use; empty means all of them.
    boilerplate: list[str] = field(default_factory=list)
    # Extra full-line regular expressions of your own, named extra_0, extra_1, ...
    extra_boilerplate: list[str] = field(default_factory=list)
    min_chars: int = 100
    min_words: int = 10
    max_chars: int = 1_000_000
    min_arabic_ratio: float = 0.5

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
        if not 0.0 <= self.min_arabic_ratio <= 1.0:
            raise ConfigError("clean.min_arabic_ratio must be between 0 and 1")
        if self.min_chars < 0 or self.min_words < 0 or self.max_chars <= self.min_chars:
            raise ConfigError("clean: need 0 <= min_chars < max_chars and min_words >= 0")


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
        patterns = [(n, DEFAULT_BOILERPLATE[n]) for n in names]
        patterns += [(f"extra_{i}", p) for i, p in enumerate(config.extra_boilerplate)]
        self._boilerplate = [(name, re.compile(p, re.IGNORECASE)) for name, p in patterns]
        self._control = _control_table() if config.remove_control else {}
        letters = {}
        if config.normalize_yaa:
            letters[ord("\u0649")] = "\u064a"
        if config.normalize_taa_marbuta:
            letters[ord("\u0629")] = "\u0647"
        if config.remove_tatweel:
            letters[ord(TATWEEL)] = None
        self._letters = letters
        self.counts: Counter[str] = Counter()

    def clean(self, text: str) -> str:
        """The cleaned text (possibly empty). Document filters are in :meth:`filter`."""
        c = self.config
        counts = self.counts
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
        if self._letters:
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
            new = ALEF_RE.sub("\u0627", text)
            if new != text:
                counts["normalize_alef"] += 1
                text = new
        if c.normalize_whitespace or c.remove_boilerplate:
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
            out.append(line)
        text = "\n".join(out)
        if c.normalize_whitespace:
            new = BLANK_LINES_RE.sub("\n\n", text).strip()
            if changed or new != text:
                self.counts["normalize_whitespace"] += 1
            text = new
        return text

    def _is_boilerplate(self, line: str) -> bool:
        for name, pattern in self._boilerplate:
            if pattern.fullmatch(line):
                self.counts[f"boilerplate:{name}"] += 1
                return True
        return False

    def filter(self, text: str) -> str | None:
        """The drop reason for a cleaned text, or None to keep it."""
        c = self.config
        if len(text) < c.min_chars:
            return "too_short"
        if c.min_words and len(text.split()) < c.min_words:
            return "too_short"
        if c.min_arabic_ratio > 0 and arabic_ratio(text) < c.min_arabic_ratio:
            return "low_arabic_ratio"
        return None

    def too_long(self, raw_text: str) -> bool:
        return len(raw_text) > self.config.max_chars
