"""PII redaction: each kind replaced by its placeholder and counted, look-alikes left alone, and
the text an openai rewriter receives carrying placeholders, never the originals."""

from __future__ import annotations

import json

import pytest

from native_megatron.alignment.backends.openai_http import OpenAIBackend
from native_megatron.alignment.pipeline import AlignedPreprocessConfig, run_preprocess_aligned
from native_megatron.data.cleaning import CleanConfig, Cleaner
from native_megatron.data.pii import PII_KINDS, PLACEHOLDERS, PiiRedactor, iban_ok, luhn_ok
from native_megatron.utils.config import ConfigError, load_config
from tests.helpers.paths import ROOT
from tests.helpers.servers import ExpertServer

# (kind, text with one PII item, the item). Numbers made up; checksums valid where the kind has one.
FOUND = [
    ("email", "راسلني على ali.hassan@example.com في أي وقت", "ali.hassan@example.com"),
    ("email", "Contact: first.last+news@mail.example.org.", "first.last+news@mail.example.org"),
    ("ip_address", "الخادم على العنوان 8.8.4.4 لا يستجيب", "8.8.4.4"),
    ("ip_address", "server 2001:4860:4860::8844 is up", "2001:4860:4860::8844"),
    ("phone", "اتصل على 0501234567 بعد العصر", "0501234567"),
    ("phone", "جوالي ٠١٠٠١٢٣٤٥٦٧ متاح دائماً", "٠١٠٠١٢٣٤٥٦٧"),                       # Arabic-Indic digits
    ("phone", "واتساب: +966 55 123 4567", "+966 55 123 4567"),
    ("phone", "Appelez le 00212 661 234 567 demain", "00212 661 234 567"),
    ("phone", "هاتف: 22 33 44 55 (الكويت)", "22 33 44 55"),                          # 8 digits after a keyword
    ("phone", "هاتف المكتب (02) 2345 6789 صباحاً", "(02) 2345 6789"),
    ("iban", "حول المبلغ إلى SA03 8000 0000 6080 1016 7519 لدى البنك", "SA03 8000 0000 6080 1016 7519"),
    ("iban", "IBAN: AE070331234567890123456 merci", "AE070331234567890123456"),
    ("credit_card", "رقم البطاقة 4111 1111 1111 1111 ينتهي في 2027", "4111 1111 1111 1111"),
    ("credit_card", "card 5555-5555-5555-4444 was used", "5555-5555-5555-4444"),
    ("credit_card", "Amex 378282246310005 ok", "378282246310005"),
    ("national_id", "الرقم 29501023201952 في السجل", "29501023201952"),              # Egypt
    ("national_id", "رقمه ٢٩٥٠١٠٢٣٢٠١٩٥٢ في السجل", "٢٩٥٠١٠٢٣٢٠١٩٥٢"),              # Egypt, Arabic-Indic
    ("national_id", "الهوية 1000000008 للمواطن", "1000000008"),                       # Saudi Arabia (Luhn)
    ("national_id", "Emirates ID 784-1990-1234567-1 expired", "784-1990-1234567-1"),  # UAE
    ("national_id", "البطاقة المدنية 290010112345 في الكويت", "290010112345"),       # Kuwait
    ("national_id", "رقم البطاقة الوطنية: AB123456 في الرباط", "AB123456"),           # keyword (Morocco's CIN)
    ("national_id", "Numéro CIN 08123456 à Tunis", "08123456"),                      # keyword (Tunisia)
]

# Numbers that look like PII and are not: prices, years, versions, dates, times, private
# addresses, failing checksums.
LEFT_ALONE = [
    "سعر الهاتف 4500 ريال وعدد المشاهدات 12345 في عام 2024",
    "الإصدار 10.0.19041.1 من ويندوز و 1.2.3.4.5",
    "تاريخ 05.12.2024 الساعة 12:30:45 والسعر 0.25 دينار",
    "الراوتر على 192.168.1.1 والخادم المحلي 127.0.0.1 و ::1",
    "بطاقة 4111 1111 1111 1112 غير صالحة",                 # Luhn fails
    "الرقم 1000000009 لا يصح هوية",                         # Luhn fails
    "SA03 8000 0000 6080 1016 7518 رقم خاطئ",               # mod 97 fails
    "بلغ عدد السكان 104258327 نسمة",
    "في الآية 255 من سورة البقرة وفي الصفحة 42",
]


@pytest.mark.parametrize("kind, text, item", FOUND)
def test_each_kind_is_replaced_and_counted(kind, text, item):
    out, counts = PiiRedactor().redact(text)
    assert item not in out and PLACEHOLDERS[kind] in out
    assert counts == {kind: 1}
    assert out == text.replace(item, PLACEHOLDERS[kind])


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_look_alikes_are_left_alone(text):
    assert PiiRedactor().redact(text) == (text, {})


def test_kinds_can_be_chosen_and_redaction_is_idempotent():
    text = "راسلني على ali@example.com أو اتصل على 0501234567"
    only_email, counts = PiiRedactor(["email"]).redact(text)
    assert only_email == "راسلني على <EMAIL> أو اتصل على 0501234567" and counts == {"email": 1}
    once, _ = PiiRedactor().redact(text)
    assert PiiRedactor().redact(once) == (once, {})
    with pytest.raises(ValueError, match="unknown PII kind"):
        PiiRedactor(["passport"])
    with pytest.raises(ConfigError, match="pii_kinds"):
        load_config(CleanConfig, overrides=["--pii_kinds=[passport]"])
    assert set(PII_KINDS) == set(PLACEHOLDERS)


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok("1000000008")                         # a valid Saudi national ID shape
    assert iban_ok("SA0380000000608010167519") and iban_ok("DE89370400440532013000")
    assert not iban_ok("SA0380000000608010167518")


def test_the_cleaner_redacts_kept_documents_and_counts_per_kind():
    text = ("للتواصل مع إدارة الموقع يرجى مراسلتنا على البريد info@example.com أو الاتصال على الرقم ٠٥٠١٢٣٤٥٦٧ "
            "في أوقات الدوام الرسمي من الأحد إلى الخميس، ونحن نرد على جميع الرسائل خلال يومين من تاريخ الإرسال.")
    cleaner = Cleaner(CleanConfig())
    verdict = cleaner.process(text)
    assert verdict.reason is None
    assert "<EMAIL>" in verdict.text and "<PHONE>" in verdict.text and "info@example.com" not in verdict.text
    assert cleaner.counts["pii:email"] == 1 and cleaner.counts["pii:phone"] == 1
    assert Cleaner(CleanConfig(redact_pii=False)).process(text).text == text


# ---- before the text leaves the machine -----------------------------------------------------

PII = ["ali.hassan@example.com", "0501234567", "SA03 8000 0000 6080 1016 7519", "4111 1111 1111 1111",
       "29501023201952", "8.8.4.4"]
BODY = ("أعلنت الجمعية الخيرية في المدينة عن إطلاق حملة جديدة لجمع التبرعات من أجل ترميم المدرسة القديمة، "
        "وقال رئيس الجمعية إن الحملة تستمر شهراً كاملاً وإن التبرعات تستقبل من الأفراد والشركات على حد سواء.")


@pytest.fixture
def pii_corpus(tmp_path):
    rows = [{"id": f"d{i}", "text": f"{BODY}\nللتواصل: {item} مع مسؤول الحملة في المدينة."}
            for i, item in enumerate(PII)]
    path = tmp_path / "pii.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rewrite_through(server_url, corpus, prefix, *overrides):
    base = {"input.paths": [str(corpus)], "output.prefix": str(prefix), "run.workers": 1, "run.progress": False,
            "tokenize.tokenizer": str(ROOT / "examples" / "tokenizer" / "sample_ar.model"),
            "rewrite.backend": "openai", "rewrite.model": "expert", "rewrite.openai.base_urls": [server_url],
            "rewrite.guidelines": str(ROOT / "examples" / "guidelines" / "native_alignment_ar.yaml"),
            "rewrite.openai.max_retries": 0, "rewrite.on_failure": "keep_raw", "rewrite.min_rewritten_fraction": 0.0,
            "dedup.near": False}      # the documents differ only in their PII
    cfg = load_config(AlignedPreprocessConfig, overrides=list(overrides), base=base)
    run_preprocess_aligned(cfg, backend=OpenAIBackend(cfg.rewrite))
    return cfg


def sent(server) -> str:
    return "\n".join(m["content"] for r in server.requests for m in r["messages"])


@pytest.mark.parametrize("overrides", [(), ("--clean.redact_pii=false",)], ids=["prepare", "rewrite_hook"])
def test_the_openai_rewriter_receives_placeholders_not_pii(tmp_path, pii_corpus, overrides):
    # Redacted in the prepare stage by default; with that off, the rewrite stage still redacts
    # before an openai call.
    with ExpertServer() as server:
        rewrite_through(server.url, pii_corpus, tmp_path / "out", *overrides)
    text = sent(server)
    assert len(server.requests) == len(PII)
    for item in PII:
        assert item not in text, item
    for placeholder in ("<EMAIL>", "<PHONE>", "<IBAN>", "<CREDIT_CARD>", "<NATIONAL_ID>", "<IP_ADDRESS>"):
        assert placeholder in text
    stats = json.loads((tmp_path / "out_stats.json").read_text())
    expected = {} if overrides else {k: 1 for k in ("email", "phone", "iban", "credit_card", "national_id",
                                                    "ip_address")}
    assert stats["pii_redacted"] == expected


def test_with_both_switches_off_the_text_goes_as_it_is(tmp_path, pii_corpus):
    with ExpertServer() as server:
        rewrite_through(server.url, pii_corpus, tmp_path / "out", "--clean.redact_pii=false",
                        "--rewrite.redact_pii=false")
    text = sent(server)
    assert all(item in text for item in PII)
