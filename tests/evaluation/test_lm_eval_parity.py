"""Our scores against the real lm-evaluation-harness and lighteval on the shipped samples, item by item.

Our side is what ``--log-samples`` writes (OUT/samples/MODEL/TASK.jsonl): the per-choice
log-likelihoods a user compares with another harness. The harness gets our prompts as custom tasks
(tests/evaluation/lm_eval_tasks/): under ``cloze`` it scores every option itself (``simple_evaluate``),
plain and through the chat template (``apply_chat_template=True``, our ``--chat-template on``); under
``arabicmmlu`` its task renders the ArabicMMLU prompt and its own scoring kernel
(``HFLM._loglikelihood_tokens``) gives the letter's log-probability after the prompt, the quantity the
ArabicMMLU code takes the argmax of (a harness ``multiple_choice`` task would move the prompt's
trailing space into the continuation). lighteval scores ``oall`` with its own Arabic prompt functions
and ``TransformersModel.loglikelihood``, plain and with the chat template (its default for a tokenizer
that has one); it is not in the dev extra (docs/evaluation.md says why), so that test runs where
lighteval is importable and otherwise skips with the reason.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from native_megatron.evaluation import models as model_io
from native_megatron.evaluation.protocols import ProtocolConfig, build_items
from native_megatron.evaluation.run import EvalConfig, score_task
from native_megatron.evaluation.scoring import Request, encode_pair
from native_megatron.evaluation.tasks import load_task
from tests.helpers.paths import ROOT

lm_eval = pytest.importorskip("lm_eval")

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
SAMPLES = ROOT / "examples" / "eval"
CLOZE_TASKS = ("arabic_mmlu", "exams", "acva", "alghafa", "aratrust")
CHAT_TASKS = ("arabic_mmlu", "aratrust")


@pytest.fixture(scope="module")
def loaded(tiny_hf, tmp_path_factory):
    return model_io.load(str(tiny_hf), tmp_path_factory.mktemp("out"), device="cpu", progress=False)


@pytest.fixture(scope="module")
def harness(tiny_hf):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_hf), device="cpu", dtype="float32", batch_size=16)


def _task_config(name: str, rows: list[dict], tmp: Path) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml  # resolves the !function tags beside the YAML

    data = tmp / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = load_yaml(TASKS_DIR / f"{name}.yaml")
    config["dataset_kwargs"] = {"data_files": {"test": str(data)}}
    return config


def _ours(loaded, task: str, protocol: str, tmp: Path, chat_template: str = "off"):
    """score_task's result with --log-samples, and the per-option log-likelihoods read back from its file."""
    from native_megatron.evaluation.safety import chat_tokenizer

    data = load_task(task, SAMPLES / task)
    samples = tmp / "samples" / f"{task}.{protocol}.{chat_template}.jsonl"
    cfg = EvalConfig(models=["x"], protocol=protocol, device="cpu", progress=False, batch_size=16,
                     chat_template=chat_template)
    result = score_task(loaded, data, cfg, chat_tokenizer(loaded), samples)
    rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(data.test) and all(r["chat_template"] == result.chat_template for r in rows)
    items, _, _ = build_items(task, data, data.test, 0, ProtocolConfig(protocol))
    return data, items, [c["loglik"] for r in rows for c in r["choices"]], result


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
def test_cloze_loglikelihoods_and_accuracies_equal_the_harness(loaded, harness, tmp_path, chat):
    assert loaded.start == harness.tok_encode("x")[:-len(loaded.tokenizer.encode("x"))] or loaded.start == []
    ours, rows = {}, []
    tasks = CHAT_TASKS if chat else CLOZE_TASKS  # the template is the same for every task: two keep it quick
    for task in tasks:
        ours[task] = _ours(loaded, task, "cloze", tmp_path, "on" if chat else "off")
        assert ours[task][3].chat_template == chat
        data = ours[task][0]
        rows += [{"kind": task, "text": q.text, "context": q.context, "options": list(q.options), "answer": q.answer}
                 for q in data.test]
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=harness, tasks=[_task_config("nm_cloze", rows, tmp_path)], num_fewshot=0,
                                  log_samples=True, task_manager=TaskManager(include_defaults=False),
                                  apply_chat_template=chat)
    samples = sorted(out["samples"]["nm_cloze"], key=lambda s: s["doc_id"])
    theirs = [float(r[0]) for s in samples for r in s["filtered_resps"]]
    mine = [ll for task in tasks for ll in ours[task][2]]
    assert len(theirs) == len(mine)
    worst = max(abs(a - b) for a, b in zip(theirs, mine))
    assert worst < 1e-4, worst
    print(f"cloze ({'chat template' if chat else 'plain'}): {len(mine)} options, max |delta loglik| {worst:.2e}")
    # Per item, then per metric over all items: the same picks.
    at = 0
    for task in tasks:
        data, _, _, result = ours[task]
        mine_items = samples[at:at + len(data.test)]
        at += len(data.test)
        for metric in ("acc", "acc_norm", "acc_bytes"):
            assert getattr(result, metric) == pytest.approx(sum(s[metric] for s in mine_items) / len(mine_items)), \
                (task, metric)


def test_arabicmmlu_prompts_and_letter_scores_equal_the_harness(loaded, harness, tmp_path):
    from lm_eval.tasks import TaskManager

    rows = []
    for path in sorted((SAMPLES / "arabic_mmlu").rglob("test.csv")):
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows += list(csv.DictReader(f))
    manager = TaskManager(include_defaults=False)  # indexing the harness's own tasks takes most of a minute
    task = manager.load([_task_config("nm_arabicmmlu", rows, tmp_path)])["tasks"]["nm_arabicmmlu"]
    docs = list(task.test_docs())
    data, items, lls, result = _ours(loaded, "arabic_mmlu", "arabicmmlu", tmp_path)
    assert [task.doc_to_text(d) for d in docs] == [i.context for i in items]  # the same prompt, character for character
    requests = []
    for doc in docs:
        ctx = harness.tok_encode(task.doc_to_text(doc))
        requests += [(("", ""), ctx, [harness.tok_encode(letter)[-1]]) for letter in task.doc_to_choice(doc)]
    assert [(r[1], r[2]) for r in requests] == [
        encode_pair(loaded.tokenizer, loaded.start, Request(i.context, c, i.mode))
        for i in items for c in i.continuations]
    theirs = [ll for ll, _ in harness._loglikelihood_tokens(requests, disable_tqdm=True)]
    worst = max(abs(a - b) for a, b in zip(theirs, lls))
    assert worst < 1e-4, worst
    print(f"arabicmmlu: {len(lls)} letters, max |delta loglik| {worst:.2e}")
    at, correct = 0, 0
    for doc, item in zip(docs, items):
        own = theirs[at:at + len(item.continuations)]
        at += len(item.continuations)
        correct += max(range(len(own)), key=own.__getitem__) == task.doc_to_target(doc)
    assert result.protocol == "arabicmmlu" and result.metric == "acc" and result.shots == 0
    assert result.acc == correct / len(docs)
