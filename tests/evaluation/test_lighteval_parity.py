"""Our oall scores against the real lighteval, item by item, plain and through the chat template.

lighteval's own Arabic prompt functions (``lighteval.tasks.multilingual.tasks.arabic``) make the
documents from the shipped sample rows and ``TransformersModel.loglikelihood`` scores them, with the
chat template off and on (on is its default for a tokenizer that has one); ours are the per-choice
log-likelihoods ``--log-samples`` writes. lighteval is not in the dev extra: installing 0.13.0 into our
environment downgrades fsspec and nltk (docs/evaluation.md), so this test runs where it is importable,
as .ci/run does: ``pip install --no-deps --target DIR -r tests/evaluation/lighteval_side.txt`` and
``NM_LIGHTEVAL_PATH=DIR``; it skips elsewhere, and fails where ``NM_REQUIRE_LIGHTEVAL=1`` (CI). EXAMS is left
out: our sample is the EXAMS JSONL layout, lighteval reads OALL's flat copy.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from native_megatron.evaluation import models as model_io
from native_megatron.evaluation.run import EvalConfig, score_task
from native_megatron.evaluation.safety import chat_tokenizer
from native_megatron.evaluation.tasks import _is_dev, _read_table, _tables, load_task
from tests.helpers.paths import ROOT

pytestmark = pytest.mark.slow
if os.environ.get("NM_LIGHTEVAL_PATH"):
    # Appended, not prepended: the venv's own packages win; only what it lacks comes from there.
    sys.path.append(os.environ["NM_LIGHTEVAL_PATH"])
# Importing lighteval (and building its model) calls torch.set_grad_enabled(False) for the whole process;
# every other test in this session needs autograd back.
_GRAD = torch.is_grad_enabled()
try:
    from lighteval.models.transformers.transformers_model import TransformersModel, TransformersModelConfig
    from lighteval.tasks.multilingual.tasks import arabic
except ImportError as exc:  # not installed, or installed without what its imports need
    if os.environ.get("NM_REQUIRE_LIGHTEVAL") == "1":  # CI installs it (.ci/run): there it must run
        raise
    pytest.skip(f"lighteval is not importable ({exc}); not in the dev extra: docs/evaluation.md says why",
                allow_module_level=True)
finally:
    torch.set_grad_enabled(_GRAD)


@pytest.fixture(autouse=True)
def _autograd_back():
    yield
    torch.set_grad_enabled(_GRAD)


SAMPLES = ROOT / "examples" / "eval"
PROMPT_FUNCTIONS = {"arabic_mmlu": arabic.arabic_mmlu_pfn, "acva": arabic.acva_pfn, "alghafa": arabic.alghafa_pfn,
                    "aratrust": arabic.aratrust_pfn}


def _test_rows(task: str) -> list[dict]:
    """The sample's test rows as published, in the order our reader reads them."""
    root, rows = SAMPLES / task, []
    for path in _tables(root):
        if task == "aratrust" or not _is_dev(path, root):
            rows += [r for r in _read_table(path) if str(r.get("is_few_shot", "")) not in ("1", "True", "true")]
    return rows


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
def test_oall_loglikelihoods_and_picks_equal_lighteval(tiny_hf, tmp_path, chat):
    config = TransformersModelConfig(model_name=str(tiny_hf), batch_size=16, dtype="float32", device="cpu",
                                     override_chat_template=chat, cache_dir=str(tmp_path / "cache"))
    theirs_model = TransformersModel(config)
    loaded = model_io.load(str(tiny_hf), tmp_path, device="cpu", progress=False)
    cfg = EvalConfig(models=["x"], device="cpu", progress=False, batch_size=16, chat_template="on" if chat else "off")
    worst, n = 0.0, 0
    for task, pfn in PROMPT_FUNCTIONS.items():
        docs = [pfn(row, task_name=f"nm:{task}") for row in _test_rows(task)]
        samples = tmp_path / f"{task}.jsonl"
        result = score_task(loaded, load_task(task, SAMPLES / task), cfg, chat_tokenizer(loaded), samples)
        ours = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]
        assert len(ours) == len(docs) and result.chat_template == chat
        # loglikelihood() is _loglikelihood_tokens() behind a disk cache that fails to read back under datasets 5
        theirs = theirs_model._loglikelihood_tokens(docs)
        for doc, mine, resp in zip(docs, ours, theirs):
            assert mine["gold"] == doc.gold_index and [c["continuation"] for c in mine["choices"]] == doc.choices
            lls = [c["loglik"] for c in mine["choices"]]
            worst = max(worst, *(abs(a - b) for a, b in zip(lls, resp.logprobs)))
            n += len(lls)
            norm = [ll / len(c) for ll, c in zip(resp.logprobs, doc.choices)]  # LogProbCharNorm
            assert mine["pred"]["acc_norm"] == max(range(len(norm)), key=norm.__getitem__), (task, mine["id"])
    print(f"lighteval oall ({'chat template' if chat else 'plain'}): {n} options, max |delta loglik| {worst:.2e}")
    assert worst < 1e-4, worst
