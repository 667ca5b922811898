import pytest

from native_megatron.data.cleaning import DEFAULT_BOILERPLATE, CleanConfig, Cleaner, arabic_ratio
from native_megatron.data.quality import QualityConfig
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
    ("normalize_persian_letters", "کتاب کبیر في الشارع", "كتاب كبير في الشارع"),
    ("normalize_digits", "عام ٢٠٢٤ و۱۴۰۳ و 2024", "عام 2024 و1403 و 2024"),
])
def test_letter_normalisations_are_off_by_default(option, before, after):
    assert clean(before) == before
    assert clean(before, **{option: True}) == after


def test_mojibake_is_repaired_and_nothing_else_restyled():
    arabic = "العربية لغة جميلة"
    broken = arabic.encode("utf-8").decode("cp1252", errors="replace")      # Ø§Ù„Ø¹Ø±Ø¨ÙŠØ©...
    cleaner = Cleaner(CleanConfig())
    assert cleaner.clean(broken) == arabic and cleaner.counts["fix_mojibake"] == 1
    # Curly quotes, accents and full-width characters are text, not damage.
    text = "قال: “مرحباً” à Paris ＡＢＣ"
    assert clean(text, nfkc=False) == text
    # Off, the damage stays (and "ة" read as cp1252 holds a "©" that the copyright rule would take).
    assert clean(broken, fix_mojibake=False, nfkc=False, remove_boilerplate=False) == broken


def test_symbol_only_lines_are_removed():
    text = "فقرة أولى من النص.\n---\n* * *\n|||\n😂😂\nفقرة ثانية ٢٠٢٤\n2024"
    cleaner = Cleaner(CleanConfig())
    assert cleaner.clean(text) == "فقرة أولى من النص.\nفقرة ثانية ٢٠٢٤\n2024"
    assert cleaner.counts["remove_symbol_lines"] == 4
    assert clean(text, remove_symbol_lines=False) == text


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
    "(c) 2024 Gulf Daily Media",
])
def test_boilerplate_lines_removed(line):
    body = "هذه فقرة حقيقية من المقال تتحدث عن الاقتصاد."
    cleaner = Cleaner(CleanConfig())
    assert cleaner.clean(f"{line}\n{body}\n{line}") == body
    lines = {k: v for k, v in cleaner.counts.items() if k.startswith("boilerplate:") and not k.endswith(":chars")}
    assert sum(lines.values()) == 2


def test_content_lines_that_mention_boilerplate_words_are_kept():
    text = ("شارك أكثر من ألف عداء في ماراثون الرياض هذا العام وسط أجواء حماسية.\n"
            "قال المدير إن الإعلان عن النتائج سيكون يوم الخميس المقبل في مؤتمر صحفي.\n"
            "(c) أن يدفع المستأجر فاتورة الماء كل شهر.\n"
            "Sign the document. Then send it back by Friday.")
    assert clean(text) == text


def test_boilerplate_selection_and_extra_patterns():
    text = "جميع الحقوق محفوظة\nنص المقال هنا\nسطر دعائي خاص"
    assert clean(text, boilerplate=["share"]) == text
    assert clean(text, extra_boilerplate=["سطر دعائي.*"]) == "نص المقال هنا"
    assert clean(text, remove_boilerplate=False) == text


# Every built-in pattern: (name, a real boilerplate line it removes, a long content
# line with its trigger words that it keeps). Written for these tests.
BOILERPLATE_PAIRS = [
    ("copyright", "جميع الحقوق محفوظة © 2024 لموقع الوطن نيوز",
     "قضت المحكمة التجارية في القاهرة بتعويض قدره مئتا ألف جنيه لصالح دار نشر صغيرة، بعد أن ثبت أن موقعاً "
     "إلكترونياً أعاد نشر روايتها كاملة دون إذن، مع أن الصفحة الأولى من الكتاب تحمل عبارة جميع الحقوق محفوظة "
     "والرمز © وسنة الطبع. وقال محامي الدار إن الحكم رسالة واضحة لكل من يظن أن الكتب المنشورة على الإنترنت مباحة."),
    ("copyright", "Copyright © 2024 Gulf Daily Media. All rights reserved.",
     "The court heard that the publisher had printed the usual copyright notice on the first page, yet the "
     "website copied the whole novel within a week of its release and refused to take it down until the "
     "author's lawyers wrote to the hosting company."),
    ("share", "شارك المقالة عبر: فيسبوك، تويتر، واتساب",
     "شارك أكثر من خمسة آلاف طالب من مدارس المنطقة الشرقية في حملة التشجير السنوية، ونشرت الجمعية صور "
     "المتطوعين على فيسبوك وتويتر وواتساب لتشجيع بقية المدارس على الانضمام في الموسم المقبل."),
    ("share", "Share on: Facebook | Twitter | WhatsApp | Email",
     "Share prices in Riyadh rose on Sunday after the central bank's announcement, and analysts on Twitter "
     "and Facebook said the rally could last until the end of the quarter if oil holds above eighty dollars."),
    ("read_also", "اقرأ أيضاً: الحكومة تعلن موعد صرف رواتب شهر رمضان",
     "اقرأ أيضاً ما كتبه ابن خلدون في المقدمة عن العصبية وقيام الدول وسقوطها، فهو يرى أن الدولة تمر بأطوار "
     "تشبه أعمار البشر، تبدأ بالخشونة ثم تنتقل إلى الترف الذي يضعف أهلها حتى تسقط."),
    ("follow_us", "حمّل تطبيق الجريدة الآن من جوجل بلاي وآب ستور",
     "كشفت الشركة الناشئة أن تطبيقها لتعليم الأطفال الحروف العربية تجاوز مليون تحميل على جوجل بلاي وآب ستور "
     "خلال ستة أشهر فقط، وأنها تعمل الآن على نسخة جديدة تدعم اللهجات المحلية وتتيح للأهل متابعة تقدم أبنائهم."),
    ("follow_us", "Download our app on Google Play and the App Store",
     "The ministry said the new e-visa application had been downloaded more than two hundred thousand times "
     "from Google Play and the App Store since January, and that most travellers now finish the whole process "
     "in under ten minutes."),
    ("cookies", "نستخدم ملفات تعريف الارتباط لتحسين تجربتك على موقعنا. موافق",
     "حذر خبراء أمن المعلومات في ندوة عقدت بجامعة الملك سعود من أن كثيراً من المستخدمين يضغطون على زر "
     "الموافقة على ملفات تعريف الارتباط دون قراءة شروطها، مع أن بعض المواقع تستخدمها لتتبع سلوكهم على "
     "الإنترنت وبيع بياناتهم لشركات الإعلان، ونصحوا بمراجعة إعدادات المتصفح وحذف هذه الملفات بانتظام."),
    ("cookies", "This website uses cookies to improve your experience. Accept",
     "The regulator fined the retailer after finding that its website placed advertising cookies on visitors' "
     "devices before they had given consent, and it ordered the company to redesign its banner so that "
     "refusing is as easy as accepting and to delete the data it had already collected."),
    ("newsletter", "اشترك في النشرة البريدية ليصلك كل جديد",
     "قالت مديرة المكتبة العامة إن عدد الأسر التي سجلت أبناءها في برنامج القراءة الصيفي تضاعف هذا العام، "
     "وإن من يريد المشاركة يمكنه أن يسجل في النشرة البريدية للمكتبة ليعرف مواعيد الورش والمسابقات."),
    ("account", "تسجيل الدخول / حساب جديد",
     "أعلنت وزارة الداخلية أن تسجيل الدخول إلى بوابة الخدمات الإلكترونية سيتم من الآن فصاعداً بالهوية "
     "الرقمية الموحدة، وأن إنشاء حساب جديد لم يعد يتطلب زيارة المكتب."),
    ("account", "Log in | Sign up",
     "Users who try to log in or sign up on the new portal will be asked for a one-time code sent by text "
     "message, a step the bank says has cut account takeovers by half."),
    ("comments", "التعليقات (12)",
     "تلقت الهيئة أكثر من ثلاثة آلاف تعليق على مسودة نظام العمل الجديد، ونشرت التعليقات كلها على موقعها."),
    ("comments", "Comments (4)",
     "Comments from readers poured in after the article asked why the bus route to the university was cut."),
    ("views", "عدد المشاهدات: ١٢٣٤",
     "بلغ عدد المشاهدات لحلقة البرنامج الأخيرة أكثر من مليوني مشاهدة في يومين، وهو رقم قياسي لبرنامج ثقافي."),
    ("views", "Views: 2,048",
     "Views from the new observation deck stretch across the old city, and the tower expects 3,000 visitors a day."),
    ("ad_label", "محتوى مدفوع",
     "أوضحت الهيئة أن كل إعلان ينشره المؤثرون يجب أن يحمل عبارة محتوى مدفوع بوضوح في بدايته."),
    ("ad_label", "Advertisement",
     "The advertisement that ran during the final was the most expensive in the channel's history."),
    ("breadcrumb", "الصفحة الرئيسية › الأخبار › رياضة",
     "الصفحة الرئيسية لموقع الوزارة تعرض الآن خريطة تفاعلية للمدارس الجديدة في كل حي، وقد زارها أكثر من مئة "
     "ألف ولي أمر خلال الأسبوع الأول من إطلاقها بحسب بيان الوزارة، فيما تعمل الوزارة على إضافة مواعيد "
     "التسجيل وأسماء المديرين."),
    ("breadcrumb", "Home > News > Sport",
     "Home prices in Amman rose by seven percent last year, driven by demand from families returning from the "
     "Gulf and by a shortage of new apartments in the western districts, where most buyers now wait months."),
    ("nav_bar", "من نحن | اتصل بنا | سياسة الخصوصية | الشروط والأحكام",
     "على شاطئ البحر الذي | حملت رماله سرنا | وقفنا نعد النجوم معاً | ونحسب الموج أياماً | فمرت بنا سنوات الصبا | "
     "كأنها حلم قصير | وعدنا إلى الدار نسأل | عن صوت من كان هنا | فلم نجد غير نافذة | يطل منها القمر | "
     "ولم يبق إلا الحنين | وشيء من الذكرى"),
    ("nav_bar", "About us | Contact | Privacy policy | Terms of use",
     "The tide came in at dusk | and took the lines away | we walked up the hill | salt upon our shoes | "
     "lamps were lit in town | the bells were still | and every window held | a face we used to know | "
     "we did not say a word | we had no need to speak"),
    ("wiki_tabs", "عرض المصدر · تاريخ · نقاش",
     "تاريخ هذه المدينة يعود إلى العصر النبطي، وقد طال نقاش المؤرخين حول اسمها قبل أن تحسم النقوش المكتشفة "
     "المسألة."),
    ("wiki_tabs", "Edit - History - Talk",
     "History teachers have long asked for a new curriculum, and the draft is open for talk and edit suggestions."),
    ("click_here", "لمشاهدة الفيديو كاملاً اضغط هنا",
     "قال مدير المستشفى إن المريض يفتح التطبيق ويختار الطبيب ثم اضغط هنا كما تقول الرسالة، فيحجز موعده في دقيقة."),
    ("click_here", "Click here to download the full report",
     "The phishing emails told staff to click here to confirm their salary, and a third of them did so."),
    ("script", "document.getElementById('year').innerHTML = new Date().getFullYear();",
     "في الدرس الثالث من سلسلة تعلم البرمجة للمبتدئين نشرح كيف نعرّف متغيراً في لغة جافاسكربت بكتابة "
     "var total = 0 ثم نضيف إليه أسعار المنتجات واحداً بعد الآخر داخل حلقة تكرار، وفي النهاية نعرض المجموع "
     "للمستخدم باستعمال الدالة document.write لكي يرى النتيجة مباشرة على الصفحة دون الحاجة إلى فتح أدوات "
     "المطور في المتصفح."),
    ("script", "var _gaq = _gaq || []; _gaq.push(['_trackPageview']);",
     "Our reviewer found that the tutorial explains clearly why you should never write var count = 0 inside "
     "a loop, and why document.write is best avoided on modern pages, but the chapter on window.onload "
     "events is too short for beginners who have never written an event handler before and need examples."),
]

# Patterns whose bare regular expression also matches the content line of their
# pair: only the length limit keeps that line.
HELD_BY_LIMIT = {"copyright", "read_also", "follow_us", "cookies", "newsletter", "nav_bar", "script"}


def test_every_builtin_pattern_has_a_pair():
    assert {name for name, _, _ in BOILERPLATE_PAIRS} == set(DEFAULT_BOILERPLATE)


@pytest.mark.parametrize("name, line, content", BOILERPLATE_PAIRS)
def test_pattern_removes_its_boilerplate_line(name, line, content):
    body = "هذه فقرة حقيقية من المقال تتحدث عن الاقتصاد."
    cleaner = Cleaner(CleanConfig(boilerplate=[name]))
    assert cleaner.clean(f"{body}\n{line}") == body
    assert cleaner.counts[f"boilerplate:{name}"] == 1
    assert cleaner.counts[f"boilerplate:{name}:chars"] == len(line)


@pytest.mark.parametrize("name, line, content", BOILERPLATE_PAIRS)
def test_long_content_line_with_trigger_words_is_kept(name, line, content):
    cleaner = Cleaner(CleanConfig())
    assert cleaner.clean(content) == content
    assert not [k for k in cleaner.counts if k.startswith("boilerplate:")]
    if name in HELD_BY_LIMIT:
        # The same regular expression without a length limit eats the line.
        unlimited = CleanConfig(boilerplate=[name], extra_boilerplate=[DEFAULT_BOILERPLATE[name].pattern],
                                extra_boilerplate_max_chars=10**6, extra_boilerplate_max_words=10**6)
        assert Cleaner(unlimited).clean(content) == ""


# Sentences written for these tests; joined they make the long single-line
# documents that JSONL corpora are full of.
LONG_AR = ("أعلنت وزارة الثقافة اليوم عن إطلاق برنامج وطني لرقمنة المخطوطات العربية القديمة المحفوظة في المكتبات العامة. "  # noqa: E501
           "ويهدف البرنامج إلى إتاحة هذه الكنوز للباحثين والطلاب في جميع أنحاء العالم دون الحاجة إلى السفر. "
           "وقال المتحدث باسم الوزارة إن المرحلة الأولى تشمل ثلاثة آلاف مخطوطة في الفقه والطب والفلك والأدب. ")


def long_line(words, insert):
    """A single line of about ``words`` words of running Arabic text with ``insert`` in the middle."""
    base = LONG_AR.split()
    out = [base[i % len(base)] for i in range(words)]
    out.insert(words // 2, insert)
    return " ".join(out)


@pytest.mark.parametrize("insert", ["(© مكتبة المخطوطات 2021)", "(c) 2021", "all rights reserved",
                                    "ملفات تعريف الارتباط", "جوجل بلاي", "window.open"])
def test_long_single_line_document_mentioning_a_trigger_is_kept(insert):
    doc = long_line(160, insert)
    # The line repeats three sentences, which the repetition filters rightly drop (test_quality.py);
    # here only cleaning and the length and script filters are under test.
    cleaner = Cleaner(CleanConfig(quality=QualityConfig(enabled=False)))
    assert cleaner.clean(doc) == doc
    assert cleaner.filter(doc) is None


def test_boilerplate_stats_count_lines_and_characters_per_pattern():
    copyright_line, share_line = "جميع الحقوق محفوظة © 2024", "شارك: فيسبوك تويتر واتساب"
    body = "هذه فقرة حقيقية من المقال تتحدث عن الاقتصاد."
    cleaner = Cleaner(CleanConfig())
    cleaner.clean(f"{share_line}\n{body}\n{copyright_line}")
    cleaner.clean(f"{body}\n{copyright_line}")
    counts = {k: v for k, v in cleaner.counts.items() if k.startswith("boilerplate:")}
    assert counts == {"boilerplate:copyright": 2, "boilerplate:copyright:chars": 2 * len(copyright_line),
                      "boilerplate:share": 1, "boilerplate:share:chars": len(share_line)}


def test_extra_patterns_apply_up_to_their_configurable_limits():
    pattern = ["سطر دعائي.*"]
    short_ad, long_ad = "سطر دعائي قصير", "سطر دعائي" + " كلمة" * 60
    assert clean(f"{short_ad}\nنص", extra_boilerplate=pattern) == "نص"
    assert clean(f"{long_ad}\nنص", extra_boilerplate=pattern) == f"{long_ad}\nنص"
    # Both limits are inclusive: a line of exactly max_chars characters and max_words words goes.
    line = "سطر دعائي 12345"
    assert len(line) == 15 and len(line.split()) == 3
    assert clean(line, extra_boilerplate=pattern, extra_boilerplate_max_chars=15) == ""
    assert clean(line, extra_boilerplate=pattern, extra_boilerplate_max_chars=14) == line
    assert clean(line, extra_boilerplate=pattern, extra_boilerplate_max_words=3) == ""
    assert clean(line, extra_boilerplate=pattern, extra_boilerplate_max_words=2) == line


def test_filters():
    cleaner = Cleaner(CleanConfig(min_chars=20, min_words=4, min_arabic_ratio=0.5,
                                  quality=QualityConfig(enabled=False)))
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
    with pytest.raises(ConfigError, match="extra_boilerplate_max_chars"):
        load_config(CleanConfig, overrides=["--extra_boilerplate_max_words=0"])
    with pytest.raises(ConfigError, match="min_arabic_ratio"):
        load_config(CleanConfig, overrides=["--min_arabic_ratio=1.5"])
    assert set(DEFAULT_BOILERPLATE) >= {"copyright", "share", "cookies", "nav_bar"}

