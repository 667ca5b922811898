import pytest

from native_megatron.data.cleaning import DEFAULT_BOILERPLATE, CleanConfig, Cleaner, arabic_ratio
from native_megatron.utils.config import ConfigError, load_config


def clean(text, **kw):
    return Cleaner(CleanConfig(**kw)).clean(text)


def test_nfkc_turns_presentation_forms_into_letters():
    # "ﻣﺮﺣﺒﺎ" written with Arabic presentation forms B, and the lam-alef ligature.
    assert clean("ﻣﺮﺣﺒﺎ ﻻ") == "مرحبا لا"
    assert clean("ﻣﺮﺣﺒﺎ", nfkc=False) == "ﻣﺮﺣﺒﺎ"


def test_tatweel_removed_and_optional():
    assert clean("كـــبير جـداً") == "كبير جداً"
    assert clean("كـــبير", remove_tatweel=False) == "كـــبير"


def test_diacritics_off_by_default_and_removable():
    vowelled = "بِسْمِ اللَّهِ الرَّحْمَٰنِ"
    assert clean(vowelled) == vowelled
    assert clean(vowelled, remove_diacritics=True) == "بسم الله الرحمن"


@pytest.mark.parametrize("option, before, after", [
    ("normalize_alef", "أحمد إلى آمن ٱلله", "احمد الى امن الله"),
    ("normalize_yaa", "مستشفى على", "مستشفي علي"),
    ("normalize_taa_marbuta", "مدرسة جميلة", "مدرسه جميله"),
])
def test_letter_normalisations_are_off_by_default(option, before, after):
    assert clean(before) == before
    assert clean(before, **{option: True}) == after


def test_whitespace_and_control_characters():
    text = "  مرحبا\u00a0\u00a0بكم\t\tهنا \u200f\u200b\x07\n\n\n\n\nسطر  ثان\r\n"
    assert clean(text) == "مرحبا بكم هنا\n\nسطر ثان"


def test_html_entities_and_tags():
    assert clean("نص&nbsp;أول<br>نص &quot;ثان&quot; <div class=\"menu\">ثالث</div>") == 'نص أول نص "ثان" ثالث'
    # A lone "<" in running text is not a tag.
    assert clean("س < ص و ص > ع") == "س < ص و ص > ع"


@pytest.mark.parametrize("line", [
    "جميع الحقوق محفوظة © 2023",
    "شارك هذا الخبر على فيسبوك تويتر واتساب",
    "شارك: فيسبوك تويتر واتساب تيليجرام",
    "اقرأ أيضاً: ارتفاع أسعار الذهب في السوق المحلية",
    "الرئيسية > أخبار > اقتصاد",
    "الرئيسية » أقسام » وصفات",
    "الرئيسية | من نحن | اتصل بنا | سياسة الخصوصية",
    "يستخدم هذا الموقع ملفات تعريف الارتباط لتحسين تجربتك",
    "اشترك في النشرة البريدية",
    "سجل الدخول | إنشاء حساب",
    "تعليقات (0)",
    "أضف تعليقاً",
    "عدد المشاهدات: 1532",
    "إعلان",
    "تحميل التطبيق من جوجل بلاي وآب ستور",
    "تعديل - تاريخ - نقاش",
    "var _gaq = _gaq || [];",
    "للمزيد اضغط هنا",
])
def test_boilerplate_lines_removed(line):
    body = "هذه فقرة حقيقية من المقال تتحدث عن الاقتصاد."
    cleaner = Cleaner(CleanConfig())
    assert cleaner.clean(f"{line}\n{body}\n{line}") == body
    assert sum(v for k, v in cleaner.counts.items() if k.startswith("boilerplate:")) == 2


def test_content_lines_that_mention_boilerplate_words_are_kept():
    text = ("شارك أكثر من ألف عداء في ماراثون الرياض هذا العام وسط أجواء حماسية.\n"
            "قال المدير إن الإعلان عن النتائج سيكون يوم الخميس المقبل في مؤتمر صحفي.")
    assert clean(text) == text


def test_boilerplate_selection_and_extra_patterns():
    text = "جميع الحقوق محفوظة\nنص المقال هنا\nسطر دعائي خاص"
    assert clean(text, boilerplate=["share"]) == text
    assert clean(text, extra_boilerplate=["سطر دعائي.*"]) == "نص المقال هنا"
    assert clean(text, remove_boilerplate=False) == text


def test_filters():
    cleaner = Cleaner(CleanConfig(min_chars=20, min_words=4, min_arabic_ratio=0.5))
    assert cleaner.filter("قصير") == "too_short"
    assert cleaner.filter("كلمة" * 10) == "too_short"  # enough characters, one word
    assert cleaner.filter("This is an English sentence with one كلمة") == "low_arabic_ratio"
    assert cleaner.filter("هذه جملة عربية طويلة بما يكفي للاختبار") is None
    assert cleaner.too_long("x" * 1_000_001)


def test_arabic_ratio_ignores_digits_and_punctuation():
    assert arabic_ratio("مرحبا 123 !!!") == 1.0
    assert arabic_ratio("abc مرحبا") == pytest.approx(5 / 8)
    assert arabic_ratio("123") == 0.0


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown pattern 'nope'"):
        load_config(CleanConfig, overrides=["--boilerplate=[nope]"])
    with pytest.raises(ConfigError, match="invalid regular expression"):
        load_config(CleanConfig, overrides=["--extra_boilerplate=['(']"])
    with pytest.raises(ConfigError, match="min_arabic_ratio"):
        load_config(CleanConfig, overrides=["--min_arabic_ratio=1.5"])
    assert set(DEFAULT_BOILERPLATE) >= {"copyright", "share", "cookies", "nav_bar"}
