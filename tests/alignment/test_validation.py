from pathlib import Path

import pytest

from native_megatron.alignment.guidelines import load_guidelines
from native_megatron.alignment.validation import CHECKS, ValidationConfig, Validator, content_recall
from native_megatron.utils.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ("أعلنت وزارة الصحة اليوم عن حملة وطنية للتطعيم ضد الإنفلونزا تستمر ثلاثة أشهر في 500 مركز صحي، "
          "وقال المتحدث الرسمي إن اللقاح مجاني ومتوفر للجميع طوال أيام الأسبوع يا غبي!!!")
GOOD = ("أعلنت وزارة الصحة اليوم عن حملة وطنية للتطعيم ضد الإنفلونزا تستمر ثلاثة أشهر في 500 مركز صحي. "
        "وقال المتحدث الرسمي إن اللقاح مجاني ومتوفر للجميع طوال أيام الأسبوع.")


@pytest.fixture(scope="module")
def validator():
    g = load_guidelines(ROOT / "examples" / "guidelines" / "native_alignment_en.yaml")
    return Validator(ValidationConfig(), g)


def test_a_faithful_polish_passes(validator):
    assert validator.check(SOURCE, GOOD, "stop") == []
    assert validator.check(SOURCE, SOURCE, "stop") == []


@pytest.mark.parametrize("output, finish, check", [
    ("   ", "stop", "empty"),
    (GOOD, "length", "truncated"),
    ("The Ministry of Health announced a national flu vaccination campaign lasting three months in 500 "
     "centres; the spokesman said the vaccine is free and available every day of the week.", "stop", "arabic_ratio"),
    ("أعلنت وزارة الصحة عن حملة.", "stop", "length_ratio"),
    (GOOD + " " + GOOD, "stop", "length_ratio"),
    ("I'm sorry, I can't help with that. " + GOOD, "stop", "refusal"),
    ("عذراً، لا يمكنني تلبية هذا الطلب. " + GOOD, "stop", "refusal"),
    (" ".join(["الحملة الوطنية للتطعيم ضد الإنفلونزا مستمرة في كل المراكز الصحية"] * 8), "stop", "repetition"),
    ("Output only the rewritten document: no preface, no explanation, no notes. " + GOOD, "stop", "prompt_leak"),
    (GOOD.replace("وطنية", "وط\ufffdنية").replace("مجاني", "مج\x07اني"), "stop", "garbled"),
    ("قالت الوزارة في بيان رسمي إن الطقس سيكون معتدلاً هذا الأسبوع مع رياح خفيفة على السواحل الغربية "
     "وأمطار متفرقة في المناطق الجبلية الشمالية، ونصحت السائقين بالحذر.", "stop", "knowledge"),
])
def test_each_check_catches_its_planted_failure(validator, output, finish, check):
    assert check in validator.check(SOURCE, output, finish)


def test_checks_can_be_switched_off_and_sources_with_the_same_trait_are_not_blamed():
    g = load_guidelines(ROOT / "examples" / "guidelines" / "native_alignment_en.yaml")
    v = Validator(ValidationConfig(checks=["empty"]), g)
    assert v.check(SOURCE, "x", "length") == []
    v = Validator(ValidationConfig(), g)
    english = "This English page is about the weather in Riyadh this week, with light winds."
    assert "arabic_ratio" not in v.check(english, english, "stop")  # the source was not Arabic either
    refusing = "قال: عذراً، لا يمكنني الحضور غداً بسبب السفر، " + GOOD
    assert "refusal" not in v.check(refusing, refusing, "stop")


def test_content_recall_and_config():
    assert content_recall(SOURCE, GOOD) > 0.9
    assert content_recall(SOURCE, "نص آخر تماما") < 0.1
    assert set(ValidationConfig().checks) == set(CHECKS)
    with pytest.raises(ConfigError, match="unknown check"):
        load_config(ValidationConfig, overrides=["--checks=[nope]"])


def test_every_check_reports_its_value_and_the_threshold_it_was_held_to(validator):
    passed = validator.check_details(SOURCE, GOOD, "stop")
    assert list(passed) == ["empty", "truncated", "arabic_ratio", "length_ratio", "refusal", "repetition", "garbled",
                            "knowledge", "prompt_leak"]
    assert all(c["passed"] for c in passed.values())
    assert passed["knowledge"]["threshold"] == 0.35 and 0.35 <= passed["knowledge"]["value"] <= 1
    assert passed["refusal"] == {"value": False, "threshold": None, "passed": True}
    short = validator.check_details(SOURCE, "أعلنت وزارة الصحة عن حملة.", "length")
    assert short["length_ratio"]["threshold"] == 0.5 and short["length_ratio"]["value"] < 0.5
    assert short["truncated"] == {"value": True, "threshold": None, "passed": False}
    assert short["knowledge"]["value"] < 0.35 and not short["knowledge"]["passed"]
    assert validator.check(SOURCE, "أعلنت وزارة الصحة عن حملة.", "length") == \
        [k for k, c in short.items() if not c["passed"]]
    long = validator.check_details(SOURCE, GOOD + " " + GOOD, "stop")
    assert long["length_ratio"]["threshold"] == 1.6 and long["length_ratio"]["value"] > 1.6
    garbled = validator.check_details(SOURCE, GOOD.replace("وطنية", "وط\ufffdنية"), "stop")
    assert garbled["garbled"] == {"value": 1, "threshold": 0, "passed": False}
    assert validator.check_details(SOURCE, "  ", "stop") == {"empty": {"value": 0, "threshold": None,
                                                                        "passed": False}}
