"""Task readers on the shipped sample files (published formats) and on the mistakes users make."""

from __future__ import annotations

import csv
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from native_megatron.evaluation.tasks import READERS, few_shot_prompt, load_task
from native_megatron.utils.config import ConfigError
from tests.helpers.paths import ROOT

SAMPLES = ROOT / "examples" / "eval"


def csv_rows(pattern: str) -> list[dict]:
    rows = []
    for path in sorted(SAMPLES.glob(pattern)):
        with open(path, encoding="utf-8", newline="") as f:
            rows += list(csv.DictReader(f))
    return rows


def parquet_rows(pattern: str) -> list[dict]:
    return [row for path in sorted(SAMPLES.glob(pattern)) for row in pq.read_table(path).to_pylist()]


@pytest.mark.parametrize("task", list(READERS))
def test_every_sample_question_is_read_with_a_valid_answer(task):
    data = load_task(task, SAMPLES / task)
    assert len(data.test) >= 15 and (len(data.dev) >= 4 or task == "aratrust")  # AraTrust has no few-shot split
    for q in data.test + data.dev:
        assert len(q.options) >= 2 and all(q.options) and 0 <= q.answer < len(q.options)
        assert q.prompt.endswith(":") and q.subject
    ids = [q.id for q in data.test + data.dev]
    assert len(set(ids)) == len(ids)


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
    assert {r["is_few_shot"] for r in rows} == {"0"}
    assert {r["is_few_shot"] for r in csv_rows("arabic_mmlu/*/dev.csv")} == {"1"}
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


def test_arabic_mmlu_skips_the_all_folder_that_repeats_every_subject(tmp_path):
    shutil.copytree(SAMPLES / "arabic_mmlu", tmp_path / "mmlu")
    (tmp_path / "mmlu" / "All").mkdir()
    for split in ("test", "dev"):
        with open(tmp_path / "mmlu" / "All" / f"{split}.csv", "w", encoding="utf-8", newline="") as out:
            rows = csv_rows(f"arabic_mmlu/*/{split}.csv")
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    with_all, without = load_task("arabic_mmlu", tmp_path / "mmlu"), load_task("arabic_mmlu", SAMPLES / "arabic_mmlu")
    assert [q.id for q in with_all.test] == [q.id for q in without.test]
    assert len(with_all.dev) == len(without.dev)
    # All/ alone (a user who downloaded only that config) is read.
    assert len(load_task("arabic_mmlu", tmp_path / "mmlu" / "All").test) == len(without.test)


def test_exams_reads_the_flat_acegpt_copy(tmp_path):
    rows = [{"id": "Islamic Studies-71", "question": "ما أول ركن من أركان الإسلام؟", "A": "الصلاة",
             "B": "الشهادتان", "C": "الزكاة", "D": "الحج", "answer": "B"},
            {"id": "Biology-3", "question": "أين يحدث البناء الضوئي؟", "A": "البلاستيدات الخضراء",
             "B": "النواة", "C": "", "D": "", "answer": "A"}]
    (tmp_path / "exam_test.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows),
                                              encoding="utf-8")
    data = load_task("exams", tmp_path)
    assert [(q.subject, q.options[q.answer], len(q.options)) for q in data.test] == [
        ("Islamic Studies", "الشهادتان", 4), ("Biology", "البلاستيدات الخضراء", 2)]


def test_acva_true_false_and_topics():
    data = load_task("acva", SAMPLES / "acva")
    rows = parquet_rows("acva/*/test-*.parquet")
    assert len(data.test) == len(rows) and len(data.dev) == len(parquet_rows("acva/*/validation-*.parquet"))
    assert [q.options[q.answer] for q in data.test] == [r["answer"] for r in rows]
    assert {q.subject for q in data.test} == {p.name for p in (SAMPLES / "acva").iterdir()}


def test_acva_reads_the_authors_single_file_layout_by_topic_from_the_id(tmp_path):
    (tmp_path / "data_all").mkdir()
    for split, pattern in (("test", "test-*"), ("dev", "validation-*")):
        rows = parquet_rows(f"acva/*/{pattern}.parquet")
        (tmp_path / "data_all" / f"{split}.jsonl").write_text(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    published, single = load_task("acva", SAMPLES / "acva"), load_task("acva", tmp_path)
    key = sorted((q.id, q.subject, q.answer) for q in published.test)
    assert sorted((q.id, q.subject, q.answer) for q in single.test) == key
    assert len(single.dev) == len(published.dev)


def test_alghafa_labels_are_zero_based_and_options_vary_per_subset():
    data = load_task("alghafa", SAMPLES / "alghafa")
    rows = parquet_rows("alghafa/*/test-*.parquet")
    assert [q.options[q.answer] for q in data.test] == [r[f"sol{int(r['label']) + 1}"] for r in rows]
    assert {len(q.options) for q in data.test} == {2, 4, 5}


def test_alghafa_ignores_the_train_files_left_from_the_first_upload(tmp_path):
    shutil.copytree(SAMPLES / "alghafa", tmp_path / "alghafa")
    subset = tmp_path / "alghafa" / "mcq_exams_test_ar"
    both = pq.read_table(subset / "test-00000-of-00001.parquet").to_pylist() + \
        pq.read_table(subset / "validation-00000-of-00001.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist(both), subset / "train-00000-of-00001.parquet")
    copy, published = load_task("alghafa", tmp_path / "alghafa"), load_task("alghafa", SAMPLES / "alghafa")
    assert (len(copy.test), len(copy.dev)) == (len(published.test), len(published.dev))


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


def test_aratrust_reads_the_categorized_layout_every_row_a_test_question(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "Ethics").mkdir()
    pq.write_table(pa.Table.from_pylist([{"ID": 7, "Question": "س؟", "A": "أ) نعم", "B": "ب) لا", "C": "ج) ربما",
                                          "Answer": "ب"}]), tmp_path / "Ethics" / "train-00000-of-00001.parquet")
    data = load_task("aratrust", tmp_path)
    [q] = data.test
    assert (data.dev, q.subject, q.options, q.answer) == ([], "Ethics", ("نعم", "لا", "ربما"), 1)
    assert q.meta["options_as_published"] == ("أ) نعم", "ب) لا", "ج) ربما")
    samples = load_task("aratrust", SAMPLES / "aratrust")
    assert len(samples.test) == 16 and {q.subject for q in samples.test} == {"Ethics", "Offensive", "Privacy",
                                                                               "Trustfulness"}


def test_the_aratrust_sample_is_balanced_so_a_constant_guess_scores_chance():
    """Gold ب for 10 of 16 items let a toy model that always says ب score 62.5 against a chance of 33.3."""
    from collections import Counter

    golds = Counter(q.answer for q in load_task("aratrust", ROOT / "examples" / "eval" / "aratrust").test)
    assert sorted(golds) == [0, 1, 2] and max(golds.values()) / sum(golds.values()) <= 0.375, golds
