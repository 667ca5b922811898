"""PII redaction: e-mail and IP addresses, phone numbers, IBANs, card numbers, national IDs.

Each match is replaced by a fixed placeholder (``<EMAIL>``, ``<PHONE>``...) and
counted per kind. It runs in the prepare stage, so neither the tokenizer nor an
HTTP rewriter ever sees the original (and the rewrite stage redacts again before
an ``openai`` backend call, for text that skipped cleaning).

Our own regular expressions plus checksums, not a library: Presidio and scrubadub
need spaCy models (downloaded at run time) and know no Arab national IDs;
``phonenumbers`` parses one candidate at a time for a given region, which is slow
on free text and does not find the candidates. Digits may be Arabic-Indic
(٠١٢...) or Persian (۰۱۲...): matching runs on a copy with ASCII digits of the same
length, and the original is cut at the same places. Numbers are redacted only
when their shape is specific (a ``+`` or ``0`` prefix, a checksum, a date inside
an ID) or a keyword such as "هاتف" or "رقم الهوية" stands right before them, so
prices, years and counts stay.

National IDs (the largest Arabic-speaking countries whose format is published):

- Egypt, 14 digits: century (2 or 3), birth date YYMMDD, governorate of birth
  (01-04, 11-19, 21-29, 31-35, or 88 abroad), 4-digit serial, check digit;
- Saudi Arabia, 10 digits: 1 (citizen) or 2 (resident), Luhn check digit;
- United Arab Emirates, 15 digits: 784, birth year, 7 digits, check digit (784-1990-1234567-1);
- Kuwait civil ID, 12 digits: century (2 or 3), birth date YYMMDD, 5 digits;
- any other country's (Morocco and Tunisia's CIN, Algeria's NIN, Iraq's unified
  card, Jordan's national number, Qatar's QID, Bahrain's CPR...): a number of 6 to
  18 digits, optionally after one or two letters, right after an ID keyword.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "iban": "<IBAN>",
    "credit_card": "<CREDIT_CARD>",
    "national_id": "<NATIONAL_ID>",
    "ip_address": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}
PII_KINDS = tuple(PLACEHOLDERS)

# Arabic-Indic and extended (Persian/Urdu) digits -> ASCII, one character for one.
_DIGITS = str.maketrans({**{chr(0x660 + i): str(i) for i in range(10)}, **{chr(0x6F0 + i): str(i) for i in range(10)}})
_EASTERN_DIGIT = re.compile("[\u0660-\u0669\u06f0-\u06f9]")

# Each pattern starts with a character class and checks what comes before it only then
# ("\d(?<!\d\d)..." rather than "(?<!\d)\d..."): a leading look-behind stops the regex
# engine from skipping ahead to the next possible first character, which is 4-5 times slower.
EMAIL_RE = re.compile(r"[A-Za-z0-9](?<![\w.+%-][A-Za-z0-9])[A-Za-z0-9._%+-]*"
                      r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                      r"[A-Za-z]{2,24}(?![\w-])")
IPV4_RE = re.compile(r"\d(?<![\d.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?!\.?\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
IBAN_RE = re.compile(r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d{2}(?:[ -]?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
CARD_RE = re.compile(r"\d(?<![\d-]\d)(?:\d{3}([ -]?)\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"   # 4-4-4-4(-n)
                     r"|\d{3}[ -]?\d{6}[ -]?\d{4,5}"                                   # Amex, Diners: 4-6-5, 4-6-4
                     r"|\d{12,18})(?!\d)")
_DATE = r"(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
NATIONAL_ID_RES = [
    ("eg", re.compile(rf"[23](?<!\d[23])\d\d{_DATE}(?:0[1-4]|1[1-9]|2[1-9]|3[1-5]|88)\d{{5}}(?!\d)")),
    ("sa", re.compile(r"[12](?<!\d[12])\d{9}(?!\d)")),
    ("ae", re.compile(r"7(?<!\d7)84[ -]?(?:19|20)\d\d[ -]?\d{7}[ -]?\d(?!\d)")),
    ("kw", re.compile(rf"[23](?<!\d[23])\d\d{_DATE}\d{{5}}(?!\d)")),
]
_ID_KEYWORDS = (r"رقم\s+(?:ال)?(?:هوية|بطاقة|إقامة|اقامة|جواز|السجل)|الرقم\s+(?:القومي|الوطني|المدني|الشخصي)|"
                r"(?:ال)?هوية\s+(?:ال)?وطنية|بطاقة\s+(?:ال)?تعريف(?:\s+(?:ال)?وطنية)?|(?:ال)?سجل\s+(?:ال)?مدني|"
                r"(?:ال)?بطاقة\s+(?:ال)?موحدة|national\s+id(?:\s+(?:no|number))?|id\s+(?:no|number)|iqama|"
                r"passport\s+(?:no|number)|\bcin\b|\bcni\b|\bnin\b|\bqid\b|\bcpr\b|emirates\s+id")
# An ID after a keyword: candidates are found first (a cheap scan), then the keyword is
# looked for just before each, anchored at its end.
KEYED_ID_RE = re.compile(r"[A-Za-z\d](?<!\w[A-Za-z\d])[A-Za-z]?\d{5,18}(?!\d)")
ID_SHAPE_RE = re.compile(r"[A-Za-z]{0,2}\d{6,18}")
ID_KEYWORD_BEFORE_RE = re.compile(rf"(?:{_ID_KEYWORDS})(?:\s+(?:ال)?(?:وطنية|شخصية|مدنية|قومية|موحدة))?"
                                  rf"\s*(?:رقم|no\.?|number|n°)?\s*[:：#]?\s*$", re.IGNORECASE)
# Phones: international (+ or 00, 8 to 15 digits), national (a leading 0, 9 to 12 digits),
# or any 7 to 15 digits right after a phone keyword.
INTL_PHONE_RE = re.compile(r"[+0](?<![\w+][+0])(?:(?<=\+)|0)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,4}\)?){2,6}(?!\d)")
NATIONAL_PHONE_RE = re.compile(r"[(0](?<![\w+.,][(0])(?:(?<=\()0|(?<!\())\d{1,3}\)?(?:[ .-]?\d{2,4}){2,4}"
                               r"(?![\d.,]\d|\d)")
_PHONE_KEYWORDS = (r"هاتف|الهاتف|تلفون|تليفون|التليفون|جوال|الجوال|موبايل|الموبايل|محمول|المحمول|واتساب|واتس\s?اب|"
                   r"للتواصل|للاتصال|للاستفسار|للطلب|للحجز|اتصل|اتصلوا|رقمي|phone|tel|mobile|whatsapp|call")
KEYED_PHONE_RE = re.compile(r"[+\d](?<![\d+][+\d])(?:(?<=\+)\d)?(?:[ .-]?\d){6,14}(?!\d)")
PHONE_KEYWORD_BEFORE_RE = re.compile(rf"(?:{_PHONE_KEYWORDS})\s*(?:على|رقم|on|at)?\s*[:：]?\s*$", re.IGNORECASE)
KEYWORD_WINDOW = 40
# Which texts can hold which kinds at all: six digits close together; an IPv4 or IPv6 shape.
_LONG_NUMBER = re.compile(r"\d(?:[ .()+-]{0,2}\d){5}")
_IPV4_HINT = re.compile(r"\d\.\d")
_IPV6_HINT = re.compile(r"[0-9A-Fa-f]?:[0-9A-Fa-f]{0,4}:")

# Lengths of the IBANs of Arab countries (SWIFT's IBAN registry) and of a few others often seen.
IBAN_LENGTHS = {"AE": 23, "BH": 22, "DZ": 26, "EG": 29, "IQ": 23, "JO": 30, "KW": 30, "LB": 28, "LY": 25,
                "MA": 28, "MR": 27, "OM": 23, "PS": 29, "QA": 29, "SA": 24, "SD": 18, "SY": 35, "TN": 24,
                "YE": 30, "DE": 22, "FR": 27, "GB": 22, "TR": 26, "IT": 27, "ES": 24, "NL": 18, "BE": 16}


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check: card numbers, Saudi national IDs."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616 mod-97 check of a compact IBAN."""
    moved = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1
    except ValueError:
        return False


Span = tuple[int, int]


def _iban_span(m: re.Match) -> Span | None:
    """The IBAN inside a candidate (which may run on into the next word), or None."""
    text, start = m.group(0), m.start()
    alnum = [i for i, ch in enumerate(text) if ch.isalnum()]
    compact = "".join(text[i] for i in alnum)
    known = IBAN_LENGTHS.get(compact[:2])
    for length in ([known] if known else range(min(34, len(compact)), 14, -1)):
        if length <= len(compact) and iban_ok(compact[:length]):
            return start, start + alnum[length - 1] + 1
    return None


_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[47]|3[068]|35|6(?:011|5|4[4-9]|2)")


def _card_span(m: re.Match) -> Span | None:
    digits = re.sub(r"\D", "", m.group(0))
    if 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) and luhn_ok(digits):
        return m.span()
    return None


def _ip_span(m: re.Match) -> Span | None:
    try:
        ip = ipaddress.ip_address(m.group(0))
    except ValueError:
        return None
    # Private, loopback and documentation addresses (192.168.1.1 in a router guide) are not anyone's.
    return m.span() if ip.is_global else None


def _after(keyword: re.Pattern, shape: re.Pattern | None = None) -> Callable[[re.Match], Span | None]:
    """Accept a candidate (of ``shape``, when given) only when ``keyword`` ends right before it."""
    def check(m: re.Match) -> Span | None:
        if shape is not None and not shape.fullmatch(m.group(0)):
            return None
        before = m.string[max(0, m.start() - KEYWORD_WINDOW):m.start()]
        return m.span() if keyword.search(before) else None
    return check


def _phone_span(lo: int, hi: int) -> Callable[[re.Match], Span | None]:
    def check(m: re.Match) -> Span | None:
        digits = sum(ch.isdigit() for ch in m.group(0))
        return m.span() if lo <= digits <= hi else None
    return check


def _intl_phone_span(m: re.Match) -> Span | None:
    digits = re.sub(r"\D", "", m.group(0))
    digits = digits[2:] if m.group(0).startswith("00") else digits
    return m.span() if 8 <= len(digits) <= 15 else None


def _national_id_span(country: str) -> Callable[[re.Match], Span | None]:
    if country != "sa":
        return lambda m: m.span()
    return lambda m: m.span() if luhn_ok(m.group(0)) else None


# kind -> [(pattern, validator returning the span to replace)]; kinds run in this order,
# the most specific first, so a card number is not half-eaten as a phone.
RULES: dict[str, list[tuple[re.Pattern, Callable[[re.Match], Span | None]]]] = {
    "email": [(EMAIL_RE, lambda m: m.span())],
    "iban": [(IBAN_RE, _iban_span)],
    "credit_card": [(CARD_RE, _card_span)],
    "national_id": [(KEYED_ID_RE, _after(ID_KEYWORD_BEFORE_RE, ID_SHAPE_RE))] + [(p, _national_id_span(c))
                                                                  for c, p in NATIONAL_ID_RES],
    "ip_address": [(IPV4_RE, _ip_span), (IPV6_RE, _ip_span)],
    "phone": [(KEYED_PHONE_RE, _after(PHONE_KEYWORD_BEFORE_RE)), (INTL_PHONE_RE, _intl_phone_span),
              (NATIONAL_PHONE_RE, _phone_span(9, 12))],
}
_LONG_NUMBER_KINDS = {"iban", "credit_card", "national_id", "phone"}


class PiiRedactor:
    """Replaces PII of the chosen kinds (all by default) with :data:`PLACEHOLDERS`."""

    def __init__(self, kinds: list[str] | tuple[str, ...] = ()) -> None:
        unknown = [k for k in kinds if k not in PLACEHOLDERS]
        if unknown:
            raise ValueError(f"unknown PII kind {unknown[0]!r}; known: {', '.join(PII_KINDS)}")
        self.kinds = [k for k in PII_KINDS if not kinds or k in kinds]

    def redact(self, text: str) -> tuple[str, Counter]:
        """The redacted text and the count of replacements per kind."""
        counts: Counter = Counter()
        view = text.translate(_DIGITS) if _EASTERN_DIGIT.search(text) else text
        long_number = _LONG_NUMBER.search(view) is not None
        for kind in self.kinds:
            if (kind == "email" and "@" not in text or kind in _LONG_NUMBER_KINDS and not long_number
                    or kind == "ip_address" and not (_IPV4_HINT.search(view) or _IPV6_HINT.search(view))):
                continue
            for pattern, span_of in RULES[kind]:
                text, view, n = _replace(text, view, pattern, span_of, PLACEHOLDERS[kind])
                counts[kind] += n
        return text, +counts


def _replace(text: str, view: str, pattern: re.Pattern, span_of, placeholder: str) -> tuple[str, str, int]:
    """Cut ``text`` and its same-length ``view`` at each validated match of ``pattern`` in the view."""
    parts, vparts, pos, n = [], [], 0, 0
    for m in pattern.finditer(view):
        span = span_of(m)
        if span is None or span[0] < pos:
            continue
        a, b = span
        parts += [text[pos:a], placeholder]
        vparts += [view[pos:a], placeholder]
        pos, n = b, n + 1
    if not n:
        return text, view, 0
    parts.append(text[pos:])
    vparts.append(view[pos:])
    return "".join(parts), "".join(vparts), n
