"""The oall prompts pinned to lighteval's, one item per task, and the protocol rules around them.

Expected strings are what lighteval builds for these rows: the prompt functions of
src/lighteval/tasks/multilingual/tasks/arabic.py (huggingface/lighteval 3fd15266; before Oct 2025
community_tasks/arabic_evals.py) joined by PromptManager._prepare_plain_text
(src/lighteval/tasks/prompt_manager.py): instruction, then "\\n\\n", then the query without its
instruction, stripped; few-shot examples end with " " + the gold choice.
"""

from __future__ import annotations

import pytest

from native_megatron.evaluation.protocols import ProtocolConfig, build_items
from native_megatron.evaluation.tasks import Question, TaskData
from native_megatron.utils.config import ConfigError

OALL = ProtocolConfig("oall")


def one(task: str, q: Question, dev: list[Question] = (), shots: int = 0, cfg: ProtocolConfig = OALL):
    items, protocol, used = build_items(task, TaskData(task, test=[q], dev=list(dev)), [q], shots, cfg)
    return items[0], protocol, used


def test_arabic_mmlu_as_lighteval_arabic_mmlu_pfn():
    q = Question("1", "Biology", "", ("خلية", "نسيج", "عضو"), 1, text="ما وحدة بناء الكائن الحي؟",
                 context="نص لا يعرضه lighteval", meta={"positions": (0, 1, 2), "config": "Biology (High School)"})
    item, protocol, _ = one("arabic_mmlu", q)
    assert item.context == ("السؤال التالي هو سؤال متعدد الإختيارات. اختر الإجابة الصحيحة:\n\n\n\n"
                            "ما وحدة بناء الكائن الحي؟\nأ. خلية\nب. نسيج\nج. عضو\nالإجابة:")
    assert (item.continuations, item.answer, item.mode, protocol) == (("أ", "ب", "ج"), 1, "pairwise", "oall")


def test_exams_as_lighteval_arabic_exams_pfn():
    q = Question("e", "Islamic Studies", "", ("أ1", "ب1", "ج1", "د1"), 2, text="سؤال؟")
    item, _, _ = one("exams", q)
    assert item.context == ("الأسئلة التالية هي أسئلة متعددة الإختيارات مع الجواب الصحيح حول Islamic Studies. \n\n"
                            "\n\nالسؤال: سؤال؟\n أ) أ1\n\n ب) ب1\n\n ج) ج1\n\n د) د1\n\nالإجابة:")
    assert item.continuations == ("أ", "ب", "ج", "د")


def test_acva_as_lighteval_acva_pfn_with_a_sequential_few_shot_example():
    dev = [Question("d", "Algeria", "", ("صح", "خطأ"), 1, text="عبارة أولى"),
           Question("x", "Egypt", "", ("صح", "خطأ"), 0, text="من موضوع آخر")]
    q = Question("t", "Algeria", "", ("صح", "خطأ"), 0, text="عبارة")
    item, _, used = one("acva", q, dev, shots=2)
    assert item.context == "السؤال: عبارة أولى\nالإجابة: خطأ\n\nالسؤال: عبارة\nالإجابة:"  # only its own topic
    assert (item.continuations, used) == (("صح", "خطأ"), 2)


def test_alghafa_as_lighteval_alghafa_pfn():
    q = Question("a", "mcq_exams_test_ar", "", ("س", "ص"), 0, text="استعلام")
    item, _, _ = one("alghafa", q)
    assert item.context == ("الأسئلة التالية هي أسئلة متعددة الإختيارات مع الجواب الصحيح\n\n\n\n"
                            "السؤال: استعلام\n0) س\n1) ص\nالإجابة:")
    assert item.continuations == ("0", "1")


def test_aratrust_as_lighteval_aratrust_pfn_is_zero_shot():
    q = Question("r", "Ethics", "", ("نعم", "لا", "ربما"), 1, text="سؤال؟",
                 meta={"options_as_published": ("أ) نعم", "ب) لا", "ج) ربما")})
    item, _, used = one("aratrust", q, [q], shots=3)
    assert item.context == ("السؤال التالي هو سؤال متعدد الإختيارات. اختر الإجابة الصحيحة: أ، ب أو ج. \n\n\n\n"
                            "سؤال؟\nأ) نعم\nب) لا\nج) ربما\nالإجابة:")
    assert (item.continuations, used) == (("أ", "ب", "ج"), 0)


def test_arabicmmlu_english_prompt_latin_letters_and_fallback_for_other_tasks():
    q = Question("1", "Biology", "", ("خلية", "نسيج"), 0, text="سؤال؟", context="نص",
                 meta={"Level": "High", "Country": "Jordan"})
    cfg = ProtocolConfig("arabicmmlu", arabicmmlu_prompt="en", arabicmmlu_letters="en")
    item, protocol, used = one("arabic_mmlu", q, shots=5, cfg=cfg)
    assert item.context == ("This is a Biology question for high school in Jordan. Select the correct answer!\n\n"
                            "Question: نص\n\nسؤال؟\nA. خلية\nB. نسيج\n\nAnswer: ")
    assert (item.continuations, item.mode, protocol, used) == (("A", "B"), "next_token", "arabicmmlu", 0)
    ar, _, _ = one("arabic_mmlu", q, cfg=ProtocolConfig("arabicmmlu"))
    assert ar.context == "هذا سؤال في علم الأحياء للمرحلة الثانوية في الأردن. اختر الإجابة الصحيحة!\n\n" \
                         "سؤال: نص\n\nسؤال؟\nأ- خلية\nب- نسيج\n\nإجابة: "
    assert ar.continuations == ("أ", "ب")
    _, protocol, _ = one("acva", Question("t", "Algeria", "", ("صح", "خطأ"), 0, text="ع"), cfg=cfg)
    assert protocol == "oall"  # the ArabicMMLU code defines no other task


def test_cloze_scores_options_as_continuations_and_norms_by_the_option():
    q = Question("1", "s", "السؤال: س؟\nالإجابة:", ("نعم", "لا"), 0, text="س؟")
    item, protocol, _ = one("exams", q, cfg=ProtocolConfig("cloze"))
    assert (item.context, item.continuations, item.norm_texts, item.mode) == (
        "السؤال: س؟\nالإجابة:", (" نعم", " لا"), ("نعم", "لا"), "joint")


def test_unknown_protocol_is_a_one_line_error():
    with pytest.raises(ConfigError, match="choose from oall, arabicmmlu, cloze"):
        ProtocolConfig("helm").validate()


def test_oall_through_a_chat_template_as_lighteval_prepare_chat_template(tiny_hf):
    """lighteval (PromptManager._prepare_chat_template, no system prompt by default): each example a user turn
    and its gold choice as the assistant's, the instruction in front of the first user turn, the query last,
    the assistant's turn opened; the letter is then scored after it. ``auto`` does this for oall only and only
    when the tokenizer has a template (models/utils.py uses_chat_template)."""
    from transformers import AutoTokenizer

    from native_megatron.evaluation.protocols import _oall_doc, oall_messages

    hf = AutoTokenizer.from_pretrained(str(tiny_hf))
    chat = lambda m: hf.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    dev = [Question("d", "mcq", "", ("س", "ص"), 1, text="مثال")]
    q = Question("a", "mcq", "", ("س", "ص"), 0, text="استعلام")
    items, _, used = build_items("alghafa", TaskData("alghafa", test=[q], dev=dev), [q], 1, OALL, chat)
    instruction = "الأسئلة التالية هي أسئلة متعددة الإختيارات مع الجواب الصحيح\n\n"
    expected = [{"role": "user", "content": instruction + "السؤال: مثال\n0) س\n1) ص\nالإجابة:"},
                {"role": "assistant", "content": "1"},
                {"role": "user", "content": "السؤال: استعلام\n0) س\n1) ص\nالإجابة:"}]
    assert oall_messages(_oall_doc("alghafa", q), [_oall_doc("alghafa", dev[0])]) == expected
    assert items[0].context == chat(expected) and items[0].context.startswith(hf.bos_token or "")
    assert items[0].continuations == ("0", "1") and used == 1
    assert OALL.uses_chat_template("oall", True) and not OALL.uses_chat_template("oall", False)
    assert not OALL.uses_chat_template("cloze", True) and not OALL.uses_chat_template("arabicmmlu", True)
    assert ProtocolConfig("cloze", chat_template="on").uses_chat_template("cloze", True)
    assert not ProtocolConfig("oall", chat_template="off").uses_chat_template("oall", True)
    with pytest.raises(ConfigError, match="--chat-template on: raw's tokenizer has no chat template"):
        ProtocolConfig("oall", chat_template="on").uses_chat_template("oall", False, "raw")
