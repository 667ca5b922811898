import pytest

from native_megatron.data.dedup import DedupConfig, fingerprint, normalize_for_match
from native_megatron.utils.config import ConfigError, load_config
from tests.helpers.inmemory_dedup import Deduplicator

ARTICLE = (
    "أعلنت وزارة الصحة اليوم عن إطلاق حملة وطنية للتطعيم ضد الإنفلونزا الموسمية تستهدف كبار السن "
    "والأطفال والعاملين في القطاع الصحي، وتستمر الحملة ثلاثة أشهر في جميع المراكز الصحية. "
    "وقال المتحدث الرسمي إن اللقاح متوفر مجانا وإن الوزارة جهزت أكثر من خمسمئة مركز لاستقبال "
    "المراجعين طوال أيام الأسبوع، داعيا المواطنين إلى المبادرة بأخذ اللقاح قبل ذروة الموسم."
)
OTHER = (
    "افتتح معرض الكتاب الدولي أبوابه أمس بمشاركة أكثر من ثمانمئة دار نشر من ثلاثين دولة، "
    "ويضم المعرض هذا العام جناحا خاصا لأدب الأطفال وسلسلة من الندوات الفكرية والأمسيات الشعرية. "
    "وتوقع المنظمون أن يتجاوز عدد الزوار مليون زائر خلال عشرة أيام، مع تخفيضات على أسعار الكتب."
)
# The same article reposted: a figure changed and a source line added (Jaccard ~0.78).
NEAR = ARTICLE.replace("ثلاثة أشهر", "أربعة أشهر") + " المصدر: وكالة الأنباء الرسمية."
# Differs only in spelling variants, diacritics, tatweel and punctuation: an exact duplicate.
EXACT_VARIANT = ARTICLE.replace("إطلاق", "اطلاق").replace("الصحة", "الصحـــة").replace("،", " ,") + "!!"


def decide(texts, **kw):
    config = DedupConfig(**kw)
    dedup = Deduplicator(config)
    return [dedup.check(f"d{i}", fingerprint(t, config)) for i, t in enumerate(texts)]


def test_exact_duplicates_match_on_normalised_text():
    assert decide([ARTICLE, EXACT_VARIANT], near=False) == [None, ("exact_duplicate", "d0")]
    assert normalize_for_match("أحمدُ إلى") == normalize_for_match("احمد الي")


def test_planted_near_duplicate_is_caught_and_distinct_documents_are_not():
    assert decide([ARTICLE, OTHER, NEAR], exact=False) == [None, None, ("near_duplicate", "d0")]


HALF = " ".join(ARTICLE.split()[: len(ARTICLE.split()) // 2]) + " " + " ".join(OTHER.split()[:30])


def test_near_duplicate_below_threshold_is_kept():
    assert decide([ARTICLE, HALF], exact=False, threshold=0.9) == [None, None]


def test_first_copy_wins_and_decisions_are_reproducible():
    texts = [OTHER, ARTICLE, NEAR, EXACT_VARIANT, ARTICLE]
    first = decide(texts)
    assert first == decide(texts)
    assert first[0] is None and first[1] is None
    assert all(d is not None and d[1] == "d1" for d in first[2:])


def test_seed_changes_signatures_not_decisions():
    a = fingerprint(ARTICLE, DedupConfig(seed=1)).minhash
    b = fingerprint(ARTICLE, DedupConfig(seed=2)).minhash
    assert (a != b).any()
    assert decide([ARTICLE, NEAR], exact=False, seed=2) == [None, ("near_duplicate", "d0")]


def test_explicit_bands_rows_and_char_shingles():
    assert decide([ARTICLE, NEAR], exact=False, bands=32, rows=4, num_perm=128) == [None, ("near_duplicate", "d0")]
    assert decide([ARTICLE, NEAR], exact=False, shingle_unit="char", shingle_size=7) == \
        [None, ("near_duplicate", "d0")]
    dedup = Deduplicator(DedupConfig(bands=16, rows=8))
    assert dedup.bands_rows == (16, 8)


def test_without_verification_lsh_candidates_count_as_duplicates():
    # 64 bands of 2 rows: a pair sharing a third of its shingles almost surely collides.
    loose = dict(exact=False, bands=64, rows=2, threshold=0.9)
    assert decide([ARTICLE, HALF], verify=False, **loose)[1] == ("near_duplicate", "d0")
    assert decide([ARTICLE, HALF], verify=True, **loose)[1] is None


@pytest.mark.parametrize("override, message", [
    ("--threshold=0", "threshold"),
    ("--bands=4", "set both"),
    ("--bands=64", "set both"),
])
def test_config_validation(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DedupConfig, overrides=[override])
    with pytest.raises(ConfigError, match="must be at most num_perm"):
        load_config(DedupConfig, overrides=["--bands=64", "--rows=4"])
