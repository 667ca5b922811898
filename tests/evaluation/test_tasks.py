"""Task readers on the shipped sample files (published formats) and on the mistakes users make."""

from __future__ import annotations

import csv
import json

import pytest

from native_megatron.evaluation.tasks import READERS, few_shot_prompt, load_task
from native_megatron.utils.config import ConfigError
from tests.conftest import ROOT

SAMPLES = ROOT / "examples" / "eval"


def csv_rows(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(SAMPLES.glob(pattern)):
        with open(path, encoding="utf-8", newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


@pytest.mark.parametrize("task", list(READERS))
def test_every_sample_question_is_read_with_a_valid_answer(task):
    data = load_task(task, SAMPLES / task)
    assert len(data.test) >= 15 and len(data.dev) >= 4
    for q in data.test + data.dev:
        assert len(q.options) >= 2 and all(q.options) and 0 <= q.answer < len(q.options)
        assert q.prompt.endswith(":") and q.subject


def test_arabic_mmlu_answers_and_empty_options():
    data = load_task("arabic_mmlu", SAMPLES / "arabic_mmlu")
    rows = csv_rows("arabic_mmlu/*/test.csv")
    assert len(data.test) == len(rows)
    by_question = {q.prompt: q for q in data.test}
    for row in rows:
        options = [row[f"Option {i}"] for i in range(1, 6) if row[f"Option {i}"]]
        prompt = f"السؤال: {row['Context'] + chr(10) if row['Context'] else ''}{row['Question']}\nالإجابة:"
        q = by_question[prompt]
        assert q.options == tuple(options) and q.subject == row["Subject"]
        assert q.options[q.answer] == row[f"Option {'ABCDE'.index(row['Answer Key']) + 1}"]
    assert {len(q.options) for q in data.test} >= {2, 3, 4, 5}
    assert any("\n" in q.prompt.split("\nالإجابة:")[0] for q in data.test)  # a context before its question


def test_exams_keeps_arabic_rows_of_multilingual_files(tmp_path):
    rows = [json.loads(line) for line in (SAMPLES / "exams" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    other = dict(rows[0], id="bg-1", info={"language": "Bulgarian", "subject": "Physics", "grade": 12})
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [*rows, other]),
                                         encoding="utf-8")
    data = load_task("exams", tmp_path)
    assert [q.id for q in data.test] == [r["id"] for r in rows]
    q, r = data.test[0], rows[0]
    assert q.options[q.answer] == next(c["text"] for c in r["question"]["choices"] if c["label"] == r["answerKey"])


def test_acva_true_false_and_topics():
    data = load_task("acva", SAMPLES / "acva")
    rows = csv_rows("acva/*/test.csv")
    assert len(data.test) == len(rows)
    assert [q.options[q.answer] for q in data.test] == [r["answer"] for r in rows]
    assert {q.subject for q in data.test} == {p.name for p in (SAMPLES / "acva").iterdir()}


def test_alghafa_labels_are_zero_based():
    data = load_task("alghafa", SAMPLES / "alghafa")
    rows = csv_rows("alghafa/*/test.csv")
    assert [q.options[q.answer] for q in data.test] == [r[f"sol{int(r['label']) + 1}"] for r in rows]


def test_few_shot_examples_come_from_the_same_subject():
    data = load_task("arabic_mmlu", SAMPLES / "arabic_mmlu")
    q = data.test[0]
    shots = data.dev_for(q.subject, 2)
    assert len(shots) == 2 and all(s.subject == q.subject for s in shots)
    prompt = few_shot_prompt(q, shots)
    assert prompt.endswith(q.prompt) and prompt.count("الإجابة:") == 3
    assert f"{shots[0].prompt} {shots[0].options[shots[0].answer]}" in prompt


@pytest.mark.parametrize("task, content, message", [
    ("arabic_mmlu", "ID,Question,Answer Key,Option 1,Option 2\n1,س؟,C,أ,ب\n", "answer C points at an empty option"),
    ("acva", "id,question,answer\n1,عبارة,ربما\n", "neither صح nor خطأ"),
    ("alghafa", "query,sol1,sol2,label\nس؟,أ,ب,2\n", "outside the 2 options"),
])
def test_bad_rows_name_the_file_and_line(tmp_path, task, content, message):
    (tmp_path / "test.csv").write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        load_task(task, tmp_path)
    assert "test.csv:2" in str(err.value)


def test_missing_or_empty_folders_say_what_is_expected(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_task("acva", tmp_path / "nope")
    with pytest.raises(ConfigError, match="expected SUBJECT/test.csv and SUBJECT/dev.csv"):
        load_task("arabic_mmlu", tmp_path)
    (tmp_path / "dev.jsonl").write_text((SAMPLES / "exams" / "dev.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ConfigError, match="no test questions"):
        load_task("exams", tmp_path)
