"""Named evaluation protocols: the prompt, few-shot examples and scored continuations of each question.

A protocol turns a :class:`Question` into an :class:`Item`: the context the
model reads, the continuations scored after it (one per option), the texts
``acc_norm`` divides by, and how continuations are tokenized (scoring.py).
Each follows a published source, so our numbers can be set beside its:

``oall``        the Open Arabic LLM Leaderboard: lighteval's Arabic tasks,
                ``src/lighteval/tasks/multilingual/tasks/arabic.py`` at commit
                3fd15266 (before Oct 2025 ``community_tasks/arabic_evals.py``, same
                prompts): an instruction, the options listed with Arabic letters
                (AlGhafa: digits), the letter scored; plain-text few-shot as
                ``PromptManager._prepare_plain_text`` joins it; headline acc_norm
                (``LogProbCharNorm``: log-likelihood / len(choice)).
``arabicmmlu``  the ArabicMMLU paper's code (mbzuai-nlp/ArabicMMLU ``util_prompt.py``,
                ``util_compute.py``): English or Arabic instruction, Latin or Arabic
                letters, zero-shot, the argmax of the next-token logits over the
                letter tokens; headline acc. It defines ArabicMMLU only, so other
                tasks are scored under ``oall`` (the report says so per row).
``cloze``       our own prompts with the options hidden, each option scored as the
                continuation (lm-evaluation-harness's ``multiple_choice``); acc_norm
                divides by len(option) and acc_bytes by its UTF-8 bytes, as
                ``lm_eval/api/task.py`` does.

A chat template (``--chat-template``) wraps the prompt as each source does: ``oall`` as lighteval's
``PromptManager._prepare_chat_template``, the others as lm-evaluation-harness's ``--apply_chat_template``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from native_megatron.evaluation.tasks import Question, TaskData, few_shot_prompt
from native_megatron.utils.config import ConfigError

PROTOCOLS = ("oall", "arabicmmlu", "cloze")
# The Open Arabic LLM Leaderboard publishes numbers for far more models (AceGPT-v2 among them) and on
# more of these tasks than any paper; its numbers are the ones users put ours beside.
DEFAULT_PROTOCOL = "oall"
HEADLINE = {"oall": "acc_norm", "arabicmmlu": "acc", "cloze": "acc_norm"}
CHAT_TEMPLATE = ("auto", "on", "off")
# A chat template: messages -> the text the model reads, ending with the assistant's turn opened
# (``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``).
Chat = Callable[[list[dict]], str]

# lighteval's LETTER_INDICES_AR, first five.
OALL_LETTERS = ("أ", "ب", "ج", "د", "هـ")
OALL_MMLU_INSTRUCTION = "السؤال التالي هو سؤال متعدد الإختيارات. اختر الإجابة الصحيحة:\n\n"
OALL_ALGHAFA_INSTRUCTION = "الأسئلة التالية هي أسئلة متعددة الإختيارات مع الجواب الصحيح\n\n"
OALL_ARATRUST_INSTRUCTION = "السؤال التالي هو سؤال متعدد الإختيارات. اختر الإجابة الصحيحة: أ، ب أو ج. \n\n"
ACVA_CHOICES = ("صح", "خطأ")


@dataclass(frozen=True)
class Item:
    context: str
    continuations: tuple[str, ...]
    norm_texts: tuple[str, ...]  # acc_norm divides each log-likelihood by len() of these
    answer: int
    mode: str  # scoring.Request.mode


@dataclass(frozen=True)
class ProtocolConfig:
    name: str = DEFAULT_PROTOCOL
    arabicmmlu_prompt: str = "ar"  # the repository's --lang_prompt (its default: ar)
    arabicmmlu_letters: str = "ar"  # its --lang_alpa (default: ar)
    chat_template: str = "auto"  # auto: as each protocol's source does by default (uses_chat_template)

    def validate(self) -> None:
        if self.name not in PROTOCOLS:
            raise ConfigError(f"--protocol {self.name!r}: choose from {', '.join(PROTOCOLS)}")
        if self.chat_template not in CHAT_TEMPLATE:
            raise ConfigError(f"--chat-template {self.chat_template!r}: choose from {', '.join(CHAT_TEMPLATE)}")
        if self.arabicmmlu_prompt not in ("ar", "en") or self.arabicmmlu_letters not in ("ar", "en"):
            raise ConfigError("--arabicmmlu-prompt and --arabicmmlu-letters take ar or en")

    def for_task(self, task: str) -> str:
        """The protocol a task is scored under: arabicmmlu defines ArabicMMLU only."""
        return "oall" if self.name == "arabicmmlu" and task != "arabic_mmlu" else self.name

    def uses_chat_template(self, protocol: str, has_template: bool, model: str = "the model") -> bool:
        """Whether a protocol's prompts go through the model's chat template.

        ``auto`` is each source's default: lighteval (oall) applies the template whenever the tokenizer has
        one (``models/utils.py`` ``uses_chat_template``: ``tokenizer.chat_template is not None``);
        lm-evaluation-harness (cloze) only with ``--apply_chat_template``, and the ArabicMMLU code scores
        plain prompts, so for those ``auto`` is off."""
        if self.chat_template == "on" and not has_template:
            raise ConfigError(f"--chat-template on: {model}'s tokenizer has no chat template; use auto or off")
        if self.chat_template == "auto":
            return protocol == "oall" and has_template
        return self.chat_template == "on"


# ---- oall (lighteval) --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Doc:
    """The parts of a lighteval ``Doc`` that the plain-text prompt uses."""
    query: str
    choices: tuple[str, ...]
    gold: int
    instruction: str | None = None


def _oall_doc(task: str, q: Question) -> _Doc:
    if task == "arabic_mmlu":  # arabic_mmlu_pfn: no Context; letters by the option's published position
        keys = [OALL_LETTERS[p] for p in q.meta.get("positions", range(len(q.options)))]
        query = f"{OALL_MMLU_INSTRUCTION}{q.text}\n" + "".join(f"{k}. {c}\n" for k, c in zip(keys, q.options))
        return _Doc(query + "الإجابة:", tuple(keys), q.answer, OALL_MMLU_INSTRUCTION)
    if task == "exams":  # arabic_exams_pfn
        keys = OALL_LETTERS[:len(q.options)]
        topic = q.subject.replace("_", " ")
        instruction = f"الأسئلة التالية هي أسئلة متعددة الإختيارات مع الجواب الصحيح حول {topic}. \n\n"
        query = f"{instruction}السؤال: {q.text}\n" + "\n".join(f" {k}) {c}\n" for k, c in zip(keys, q.options))
        return _Doc(query + "\nالإجابة:", tuple(keys), q.answer, instruction)
    if task == "acva":  # acva_pfn
        return _Doc(f"السؤال: {q.text}\nالإجابة:", ACVA_CHOICES, q.answer)
    if task == "alghafa":  # alghafa_pfn
        query = f"{OALL_ALGHAFA_INSTRUCTION}السؤال: {q.text}\n" + "".join(f"{i}) {c}\n"
                                                                        for i, c in enumerate(q.options))
        digits = tuple(str(i) for i in range(len(q.options)))
        return _Doc(query + "الإجابة:", digits, q.answer, OALL_ALGHAFA_INSTRUCTION)
    if task == "aratrust":  # aratrust_pfn: the published options carry their letters
        shown = q.meta.get("options_as_published", q.options)
        query = f"{OALL_ARATRUST_INSTRUCTION}{q.text}\n" + "".join(f"{c}\n" for c in shown)
        return _Doc(query + "الإجابة:", OALL_LETTERS[:3], q.answer, OALL_ARATRUST_INSTRUCTION)
    raise ConfigError(f"protocol oall has no prompt for task {task!r}")


def _strip_instruction(doc: _Doc) -> str:
    """``PromptManager._extract_query``: the query without its instruction, stripped."""
    if doc.instruction is not None and doc.query.startswith(doc.instruction):
        return doc.query[len(doc.instruction):].strip()
    return doc.query


def oall_prompt(doc: _Doc, shots: list[_Doc]) -> str:
    """``PromptManager._prepare_plain_text``: instruction, solved examples, query, a blank line apart."""
    parts = [doc.instruction] if doc.instruction is not None else []
    parts += [f"{_strip_instruction(s)} {s.choices[s.gold].strip()}" for s in shots]
    parts.append(_strip_instruction(doc))
    return "\n\n".join(parts)


def _subset(task: str, q: Question) -> str:
    """The lighteval subset a question belongs to: ArabicMMLU's config, ACVA's topic, AlGhafa's subset."""
    return q.meta.get("config", q.subject) if task == "arabic_mmlu" else q.subject


def _oall_pool(task: str, data: TaskData, q: Question) -> list[Question]:
    """lighteval's ``sequential`` few-shot: the subset's few-shot split in file order (EXAMS is one subset)."""
    if task == "aratrust":
        return []  # no few-shot split
    return [d for d in data.dev if task == "exams" or _subset(task, d) == _subset(task, q)]


def oall_messages(doc: _Doc, shots: list[_Doc]) -> list[dict]:
    """``PromptManager._prepare_chat_template`` without a system prompt (lighteval's default): each solved
    example a user turn and the gold choice as the assistant's, the instruction in front of the first user
    turn, then the query as the last user turn."""
    messages = []
    for s in shots:
        messages += [{"role": "user", "content": _strip_instruction(s)},
                     {"role": "assistant", "content": s.choices[s.gold]}]
    messages.append({"role": "user", "content": _strip_instruction(doc)})
    if doc.instruction is not None:
        messages[0]["content"] = doc.instruction + messages[0]["content"]
    return messages


def _oall_item(task: str, data: TaskData, q: Question, shots: int, chat: Chat | None) -> Item:
    doc = _oall_doc(task, q)
    examples = [_oall_doc(task, d) for d in _oall_pool(task, data, q)[:shots]]
    context = chat(oall_messages(doc, examples)) if chat else oall_prompt(doc, examples)
    return Item(context, doc.choices, doc.choices, doc.gold, "pairwise")


# ---- arabicmmlu (mbzuai-nlp/ArabicMMLU) ------------------------------------------------------------------

LEVEL_EN = {"Primary": "primary school", "Middle": "middle school", "High": "high school", "Univ": "university",
            "Prof": "professional"}
LEVEL_AR = {"Primary": "للمرحلة الابتدائية", "Middle": "للمرحلة المتوسطة", "High": "للمرحلة الثانوية",
            "Univ": "للجامعات", "Prof": "للمحترفين"}
COUNTRY_AR = {"UAE": "في دولة الإمارات العربية المتحدة", "Egypt": "في مصر", "Lebanon": "في لبنان",
              "Jordan": "في الأردن", "Kuwait": "في الكويت", "KSA": "في المملكة العربية السعودية",
              "Palestine": "في فلسطين", "Morocco": "في المغرب"}
SUBJECT_AR = {
    "Islamic Studies": "في الدراسات الإسلامية", "Driving Test": "اختبار القيادة",
    "Natural Science": "في العلوم الطبيعية", "History": "في التاريخ", "General Knowledge": "في المعلومات العامة",
    "Law": "في القانون", "Physics": "في الفيزياء", "Social Science": "في العلوم الاجتماعية",
    "Management": "في الإدارة", "Arabic Language": "في اللغة العربية", "Political Science": " في العلوم السياسية",
    "Philosophy": "في الفلسفة", "Accounting": "في المحاسبة", "Computer Science": "في علوم الحاسوب",
    "Geography": "في الجغرافيا", "Math": "في الرياضيات", "Biology": "في علم الأحياء", "Economics": "في الاقتصاد",
    "Arabic Language (General)": "في اللغة العربية (عام)",
    "Arabic Language (Grammar)": "في اللغة العربية (قواعد النحو)", "Civics": "في التربية المدنية"}
# util_prompt.py writes the options with these; util_compute.py scores the bare letters (ه, not هـ).
MMLU_OPTION_LABELS = {"en": ("A.", "B.", "C.", "D.", "E."), "ar": ("أ-", "ب-", "ج-", "د-", "ه-")}
MMLU_LETTERS = {"en": ("A", "B", "C", "D", "E"), "ar": ("أ", "ب", "ج", "د", "ه")}


def arabicmmlu_prompt(q: Question, lang: str, letters: str) -> str:
    """``prepare_data_en`` / ``prepare_data_ar`` for a base model (``--lora_weights x``)."""
    level, country = q.meta.get("Level", ""), q.meta.get("Country", "")
    if lang == "en":
        meta = f"{q.subject} question{' for ' + LEVEL_EN[level] if level else ''}{' in ' + country if country else ''}"
        template = "This is a [MAIN_META_DATA]. Select the correct answer!\n\nQuestion: [INPUT]\n[OPTION]\n\nAnswer: "
    else:
        meta = (f"{SUBJECT_AR.get(q.subject, q.subject)}{' ' + LEVEL_AR[level] if level else ''}"
                f"{' ' + COUNTRY_AR.get(country, country) if country else ''}")
        template = "هذا سؤال [MAIN_META_DATA]. اختر الإجابة الصحيحة!\n\nسؤال: [INPUT]\n[OPTION]\n\nإجابة: "
    question = f"{q.context}\n\n{q.text}" if q.context else q.text
    options = "\n".join(f"{label} {o}" for label, o in zip(MMLU_OPTION_LABELS[letters], q.options))
    return template.replace("[MAIN_META_DATA]", meta).replace("[INPUT]", question).replace("[OPTION]", options)


def _arabicmmlu_item(q: Question, cfg: ProtocolConfig) -> Item:
    if q.meta.get("Level", "") not in ("", *LEVEL_EN):
        raise ConfigError(f"{q.id}: Level {q.meta['Level']!r} is not one of {', '.join(LEVEL_EN)} (ArabicMMLU.csv)")
    letters = MMLU_LETTERS[cfg.arabicmmlu_letters][:len(q.options)]
    return Item(arabicmmlu_prompt(q, cfg.arabicmmlu_prompt, cfg.arabicmmlu_letters), letters, letters, q.answer,
                "next_token")


# ---- cloze --------------------------------------------------------------------------------------------------


def _cloze_item(data: TaskData, q: Question, shots: int) -> Item:
    context = few_shot_prompt(q, data.dev_for(q.subject, shots)) if shots else q.prompt
    return Item(context, tuple(f" {o}" for o in q.options), q.options, q.answer, "joint")


def _as_one_user_turn(item: Item, chat: Chat) -> Item:
    """lm-evaluation-harness's ``--apply_chat_template`` without ``--fewshot_as_multiturn``: the whole
    context (examples included) as one user turn, the continuations right after the opened assistant turn,
    without the space before them (``ConfigurableTask.construct_requests`` drops the target delimiter)."""
    continuations = tuple(c[1:] if c.startswith(" ") else c for c in item.continuations)
    return Item(chat([{"role": "user", "content": item.context}]), continuations, item.norm_texts,
                item.answer, item.mode)


def build_items(task: str, data: TaskData, questions: list[Question], shots: int,
                cfg: ProtocolConfig, chat: Chat | None = None) -> tuple[list[Item], str, int]:
    """(items, the protocol used, the shots used): arabicmmlu and AraTrust are zero-shot by their sources.
    ``chat`` given: the prompts go through that chat template (see ``ProtocolConfig.uses_chat_template``)."""
    protocol = cfg.for_task(task)
    if protocol == "arabicmmlu":
        items = [_arabicmmlu_item(q, cfg) for q in questions]
        return [_as_one_user_turn(i, chat) for i in items] if chat else items, protocol, 0
    if protocol == "oall":
        used = 0 if task == "aratrust" else shots
        return [_oall_item(task, data, q, used, chat) for q in questions], protocol, used
    items = [_cloze_item(data, q, shots) for q in questions]
    return [_as_one_user_turn(i, chat) for i in items] if chat else items, protocol, shots
