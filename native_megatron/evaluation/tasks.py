"""Multiple-choice tasks, read from the files users download, in their published formats.

Every task becomes a list of :class:`Question` (a prompt, options, the right
option) split into ``test`` (scored) and ``dev`` (few-shot examples). Nothing is
downloaded: each reader takes a local directory and, when the expected files
are missing, says which ones and where they come from.

=============  ===============================================  =========================================
task           published as                                     read from
=============  ===============================================  =========================================
arabic_mmlu    MBZUAI/ArabicMMLU: one folder per subject with   ``SUBJECT/test.csv`` + ``SUBJECT/dev.csv``,
               test.csv and dev.csv; columns ID, Source,         or one CSV with an ``is_few_shot`` column;
               Country, Group, Subject, Level, Question,         options ``Option 1..5`` (or ``A..E``),
               Context, Answer Key, Option 1..5, is_few_shot     answer letter ``Answer Key`` (or ``answer``)
exams          mhardalov/exams-qa: JSONL, question.stem,         ``*.jsonl`` (Arabic rows kept when
               question.choices [{text, label}], answerKey,      ``info.language`` is given); also the
               info {grade, subject, language}                   flat AceGPT/OALL copy {id, question, A..D,
                                                                 answer}
acva           OALL/ACVA: TOPIC/test-*.parquet and               any CSV/Parquet/JSONL per topic, or the
               validation-*; authors: data_all/{test,dev}.jsonl  authors' data_all (topic from the id);
               columns id ("Topic-n"), question, answer          answer صح / خطأ
alghafa        OALL/AlGhafa-Arabic-LLM-Benchmark-Native:         any CSV/Parquet/JSONL per subset;
               SUBSET/test-*.parquet and validation-*;           ``label`` is the 0-based index of the
               columns query, sol1..solN, label                  right ``sol``
aratrust       asas-ai/AraTrust-categorized: CATEGORY/train-*;   every row a test question; options keep
               columns Question, A, B, C ("أ) ..."), Answer      their letters for oall, lose them for cloze
=============  ===============================================  =========================================

Files whose path says dev, validation or train hold few-shot examples; the rest
are test questions. ArabicMMLU's ``All/`` and OALL's leftover ``train-*`` files
repeat other files' rows and are skipped. ``docs/evaluation.md`` describes each layout in full.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from native_megatron.utils.config import ConfigError

LETTERS = "ABCDE"
DEV_WORDS = re.compile(r"(^|[^a-z])(dev|validation|valid|val|train|few_?shot)([^a-z]|$)", re.IGNORECASE)
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
# "1" / "0": arbml/ACVA stores the answer as a ClassLabel where 1 is صح (the reverse of lighteval's order).
TRUE_WORDS = {"صح", "صحيح", "true", "نعم", "1"}
FALSE_WORDS = {"خطأ", "خطا", "false", "لا", "0"}


@dataclass(frozen=True)
class Question:
    id: str
    subject: str
    prompt: str  # the cloze prompt the options continue, ending with the answer cue
    options: tuple[str, ...]
    answer: int
    # The row as published, for the protocols that rebuild their own prompt (evaluation/protocols.py).
    text: str = ""  # the question (or statement) alone
    context: str = ""  # a passage that precedes it (ArabicMMLU)
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # Level, Country, ... when given


@dataclass
class TaskData:
    name: str
    test: list[Question] = field(default_factory=list)
    dev: list[Question] = field(default_factory=list)

    def dev_for(self, subject: str, k: int) -> list[Question]:
        """Up to ``k`` few-shot examples, from the same subject when it has enough."""
        same = [q for q in self.dev if q.subject == subject]
        return (same if len(same) >= k else same + [q for q in self.dev if q.subject != subject])[:k]


def _read_table(path: Path) -> Iterator[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv" or suffix == ".tsv":
        with open(path, encoding="utf-8-sig", newline="") as f:
            yield from csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n}: not JSON ({exc.msg})") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    else:
        raise ConfigError(f"{path}: unsupported file type (csv, tsv, jsonl or parquet)")


def _tables(root: Path) -> list[Path]:
    """Every table under ``root``, less the copies that published layouts also carry.

    MBZUAI/ArabicMMLU has an ``All/`` folder repeating every subject, and the OALL
    datasets still hold ``train-*`` files from their first upload: the same rows as
    test + validation, before the split. Reading either would count questions twice,
    or show a test question as its own few-shot example.
    """
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES)
    top = {p.relative_to(root).parts[0] for p in files if p.parent != root}  # folders holding tables
    with_few_shot = {p.parent for p in files if p.name.lower().startswith(("validation", "dev"))}

    def duplicate(path: Path) -> bool:
        if path.parent != root and path.relative_to(root).parts[0] == "All" and len(top) > 1:
            return True
        return path.name.lower().startswith("train") and path.parent in with_few_shot
    return [p for p in files if not duplicate(p)]


def _is_dev(path: Path, root: Path) -> bool:
    return bool(DEV_WORDS.search(str(path.relative_to(root))))


def _subject_from_path(path: Path, root: Path) -> str:
    """The topic a file holds: the file name, or its folder when the name is just a split."""
    rel = path.relative_to(root)
    stem = re.sub(r"[-_.]?(test|dev|validation|valid|val|train)([-_.].*)?$", "", path.stem, flags=re.IGNORECASE)
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", stem)
    if stem and stem.lower() not in ("data", "test", "dev"):
        return stem
    parts = [p for p in rel.parts[:-1] if not DEV_WORDS.search(p) and p.lower() not in ("test", "data")]
    return parts[-1] if parts else root.name


def _subject_from_id(row_id: str) -> str:
    """``Islamic Studies-71`` / ``Algeria-0`` -> the topic, as AceGPT and OALL number their rows."""
    match = re.fullmatch(r"(.+)-\d+", row_id)
    return match.group(1) if match else ""


def _collect(data: TaskData, root: Path, files: list[Path], make: Callable[[dict, str, str], Question]) -> TaskData:
    """Rows of every file -> questions (``make(row, "file:line", subject)``), split by the file's path."""
    for path in files:
        subject = _subject_from_path(path, root)
        first_line = 2 if path.suffix.lower() in (".csv", ".tsv") else 1  # after the header
        for n, row in enumerate(_read_table(path), first_line):
            (data.dev if _is_dev(path, root) else data.test).append(make(row, f"{path}:{n}", subject))
    return data


def _table_per_subject_reader(name: str, expected: str, make: Callable[[dict, str, str], Question]
                              ) -> Callable[[Path], TaskData]:
    """A reader for benchmarks published as one table (or folder of split tables) per subject."""
    def read(root: Path) -> TaskData:
        files = _tables(root)
        if not files:
            raise ConfigError(f"{name}: no CSV/Parquet/JSONL files under {root}; expected {expected}")
        return _collect(TaskData(name), root, files, make)
    return read


def _clean(value) -> str:
    return "" if value is None else str(value).strip()


def _cue(question: str, context: str = "") -> str:
    text = f"{context}\n{question}" if context else question
    return f"السؤال: {text}\nالإجابة:"


# ---- ArabicMMLU ------------------------------------------------------------------------------------------


def _mmlu_options(row: dict) -> list[str]:
    if any(f"Option {i}" in row for i in range(1, 6)):
        return [_clean(row.get(f"Option {i}")) for i in range(1, 6)]
    return [_clean(row.get(letter)) for letter in LETTERS]


def mmlu_question(row: dict, where: str, subject: str) -> Question:
    options = _mmlu_options(row)
    key = _clean(row.get("Answer Key") or row.get("answer") or row.get("Answer")).upper()
    if key not in LETTERS[:len(options)]:
        raise ConfigError(f"{where}: answer key {key!r} is not one of A-E")
    index = LETTERS.index(key)
    kept = [(i, o) for i, o in enumerate(options) if o]
    if index not in [i for i, _ in kept]:
        raise ConfigError(f"{where}: the answer {key} points at an empty option")
    question = _clean(row.get("Question"))
    if not question:
        raise ConfigError(f"{where}: empty Question")
    context = _clean(row.get("Context"))
    return Question(id=_clean(row.get("ID")) or where, subject=_clean(row.get("Subject")) or subject,
                    prompt=_cue(question, context), options=tuple(o for _, o in kept),
                    answer=[i for i, _ in kept].index(index), text=question, context=context,
                    meta={k: _clean(row.get(k)) for k in ("Level", "Country")} | {
                        "positions": tuple(i for i, _ in kept)})  # which of Option 1..5 each option was


def read_arabic_mmlu(root: Path) -> TaskData:
    data = TaskData("arabic_mmlu")
    files = [p for p in _tables(root) if p.suffix.lower() in (".csv", ".parquet")]
    if not files:
        raise ConfigError(f"arabic_mmlu: no CSV files under {root}; expected SUBJECT/test.csv and SUBJECT/dev.csv "
                          f"(MBZUAI/ArabicMMLU as downloaded) or one ArabicMMLU.csv with an is_few_shot column")
    for path in files:
        for n, row in enumerate(_read_table(path), 2):
            q = mmlu_question(row, f"{path}:{n}", _subject_from_path(path, root))
            # The HF config (lighteval's subset): the folder, or in the one-file layout Subject and Level.
            q.meta["config"] = _subject_from_path(path, root) if path.parent != root else \
                f"{q.subject} ({q.meta.get('Level', '')})"
            few_shot = _clean(row.get("is_few_shot")) in ("1", "True", "true")
            (data.dev if few_shot or _is_dev(path, root) else data.test).append(q)
    return data


# ---- EXAMS ------------------------------------------------------------------------------------------------


def exams_question(row: dict, where: str) -> Question:
    q = row.get("question")
    if isinstance(q, str):
        # AceGPT's / OALL/Arabic_EXAMS's flat copy: {id: "Subject-n", question, A..D, answer}.
        labels = [letter for letter in LETTERS if _clean(row.get(letter))]
        stem, texts, key = q, [_clean(row[letter]) for letter in labels], _clean(row.get("answer"))
        subject = _clean(row.get("subject")) or _subject_from_id(_clean(row.get("id")))
    else:
        choices = (q or {}).get("choices") or []
        labels = [_clean(c.get("label")) for c in choices]
        stem, texts, key = (q or {}).get("stem"), [_clean(c.get("text")) for c in choices], _clean(row.get("answerKey"))
        subject = _clean((row.get("info") or {}).get("subject"))
    if key not in labels:
        raise ConfigError(f"{where}: answer {key!r} is not one of the choice labels {labels}")
    if not _clean(stem):
        raise ConfigError(f"{where}: empty question")
    return Question(id=_clean(row.get("id")) or where, subject=subject or "exams", prompt=_cue(_clean(stem)),
                    options=tuple(texts), answer=labels.index(key), text=_clean(stem))


def read_exams(root: Path) -> TaskData:
    data = TaskData("exams")
    files = [p for p in _tables(root) if p.suffix.lower() in (".jsonl", ".parquet")]
    if not files:
        raise ConfigError(f"exams: no .jsonl or .parquet files under {root}; expected the EXAMS (mhardalov/exams-qa) "
                          f"JSONL files, e.g. test.jsonl and dev.jsonl, or OALL/Arabic_EXAMS's test and validation")
    for path in files:
        for n, row in enumerate(_read_table(path), 1):
            language = _clean((row.get("info") or {}).get("language"))
            if language and language.lower() not in ("arabic", "ar"):
                continue
            (data.dev if _is_dev(path, root) else data.test).append(exams_question(row, f"{path}:{n}"))
    return data


# ---- ACVA --------------------------------------------------------------------------------------------------


def acva_question(row: dict, where: str, subject: str) -> Question:
    answer = _clean(row.get("answer")).lower()
    if answer in TRUE_WORDS:
        index = 0
    elif answer in FALSE_WORDS:
        index = 1
    else:
        raise ConfigError(f"{where}: answer {answer!r} is neither صح nor خطأ")
    statement = _clean(row.get("question"))
    row_id = _clean(row.get("id"))
    # The authors' data_all/*.jsonl mixes every topic in one file; its ids say which.
    return Question(id=row_id or where, subject=_subject_from_id(row_id) or subject,
                    prompt=f"العبارة: {statement}\nهل العبارة صحيحة أم خاطئة؟ الإجابة:", options=("صح", "خطأ"),
                    answer=index, text=statement)


read_acva = _table_per_subject_reader(
    "acva", "one folder per topic as in OALL/ACVA (Algeria/test-00000-of-00001.parquet), or data_all/test.jsonl "
    "and dev.jsonl as the authors publish it, with columns id, question, answer",
    acva_question)


# ---- AlGhafa -----------------------------------------------------------------------------------------------


def alghafa_question(row: dict, where: str, subject: str) -> Question:
    sols = sorted((k for k in row if re.fullmatch(r"sol\d+", k) and _clean(row[k])), key=lambda k: int(k[3:]))
    if len(sols) < 2:
        raise ConfigError(f"{where}: fewer than two sol1..solN options")
    try:
        label = int(_clean(row.get("label")))
    except ValueError:
        raise ConfigError(f"{where}: label {row.get('label')!r} is not an option index") from None
    if not 0 <= label < len(sols):
        raise ConfigError(f"{where}: label {label} is outside the {len(sols)} options (0-based)")
    query = _clean(row.get("query"))
    return Question(id=_clean(row.get("id")) or where, subject=subject, prompt=_cue(query),
                    options=tuple(_clean(row[k]) for k in sols), answer=label, text=query)


read_alghafa = _table_per_subject_reader(
    "alghafa", "one folder or table per subset of OALL/AlGhafa-Arabic-LLM-Benchmark-Native with columns query, "
    "sol1..solN, label", alghafa_question)


# ---- AraTrust ----------------------------------------------------------------------------------------------

ARABIC_LETTERS = ("أ", "ب", "ج", "د", "هـ")
LETTER_PREFIX = re.compile(r"^\s*(?:[أبجده]|هـ|[A-Ea-e])\s*[).\-:]\s*")


def aratrust_question(row: dict, where: str, subject: str) -> Question:
    """asas-ai/AraTrust(-categorized): Question, A, B, C (each "أ) ..." as published), Answer (أ / ب / ج)."""
    raw = [_clean(row.get(letter)) for letter in "ABC"]
    if not all(raw):
        raise ConfigError(f"{where}: AraTrust rows need three options A, B and C")
    key = _clean(row.get("Answer") or row.get("answer"))
    letters = {**{a: i for i, a in enumerate(ARABIC_LETTERS[:3])}, **{a: i for i, a in enumerate("ABC")}}
    if key not in letters:
        raise ConfigError(f"{where}: Answer {key!r} is not one of أ, ب, ج")
    question = _clean(row.get("Question") or row.get("question"))
    if not question:
        raise ConfigError(f"{where}: empty Question")
    options = tuple(LETTER_PREFIX.sub("", o, count=1) or o for o in raw)
    return Question(id=_clean(row.get("ID") or row.get("id")) or where,
                    subject=_clean(row.get("Category") or row.get("category")) or subject,
                    prompt=_cue(question), options=options, answer=letters[key], text=question,
                    meta={"options_as_published": tuple(raw)})


def read_aratrust(root: Path) -> TaskData:
    """Every row is a test question: AraTrust has no few-shot split (its categorized copy calls it ``train``)."""
    files = _tables(root)
    if not files:
        raise ConfigError(f"aratrust: no CSV/Parquet/JSONL files under {root}; expected asas-ai/AraTrust-categorized "
                          f"(CATEGORY/train-00000-of-00001.parquet) or asas-ai/AraTrust, with columns Question, A, B, "
                          f"C, Answer")
    data = TaskData("aratrust")
    for path in files:
        subject = _subject_from_path(path, root)
        for n, row in enumerate(_read_table(path), 2 if path.suffix.lower() in (".csv", ".tsv") else 1):
            data.test.append(aratrust_question(row, f"{path}:{n}", subject))
    return data


# The task that is not multiple choice: answers to prompts, labelled by a judge (evaluation/safety.py).
ALIGNMENT = "alignment"

READERS: dict[str, Callable[[Path], TaskData]] = {
    "arabic_mmlu": read_arabic_mmlu,
    "exams": read_exams,
    "acva": read_acva,
    "alghafa": read_alghafa,
    "aratrust": read_aratrust,
}


def load_task(name: str, root: str | Path) -> TaskData:
    if name not in READERS:
        raise ConfigError(f"unknown task {name!r}; choose from {', '.join(READERS)}")
    path = Path(root)
    if not path.is_dir():
        raise ConfigError(f"{name}: directory {path} not found (download the benchmark there; see "
                          f"docs/evaluation.md for the expected files)")
    data = READERS[name](path)
    if not data.test:
        raise ConfigError(f"{name}: no test questions under {path} (every file there looks like dev/few-shot data)")
    return data


def few_shot_prompt(question: Question, examples: list[Question]) -> str:
    """Worked examples (prompt + right option), a blank line apart, then the question."""
    shots = [f"{q.prompt} {q.options[q.answer]}" for q in examples]
    return "\n\n".join([*shots, question.prompt])
