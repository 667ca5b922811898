"""Option log-likelihoods, batched and padded, against a direct computation one sequence at a time."""

from __future__ import annotations

import pytest
import torch

from native_megatron.evaluation import models as model_io
from native_megatron.evaluation.run import EvalConfig, score_task
from native_megatron.evaluation.scoring import Request, encode_pair, loglikelihoods
from native_megatron.evaluation.tasks import Question, TaskData

QUESTIONS = [
    Question("q1", "جغرافيا", "السؤال: ما عاصمة المملكة العربية السعودية؟\nالإجابة:", ("الرياض", "جدة", "الدمام"), 0),
    Question("q2", "تاريخ", "السؤال: في أي عام هاجر النبي محمد من مكة إلى المدينة؟\nالإجابة:",
             ("622 م", "570 م", "632 ميلادية بعد الفتح"), 0),
    Question("q3", "لغة", "السؤال: ما جمع كلمة كتاب؟\nالإجابة:", ("كتب", "كتابات كثيرة جدا", "مكتبة", "كاتب"), 0),
]


def direct_logprob(model, hf_tok, context: str, continuation: str) -> float:
    """No batching, no padding: context + continuation as the HF tokenizer encodes them by default, summed by hand."""
    ctx = hf_tok(context).input_ids
    whole = hf_tok(context + continuation).input_ids
    assert whole[:len(ctx)] == ctx
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return sum(float(logprobs[i - 1, whole[i]]) for i in range(len(ctx), len(whole)))


@pytest.fixture(scope="module")
def loaded(tiny_hf, tmp_path_factory):
    return model_io.load(str(tiny_hf), tmp_path_factory.mktemp("out"), device="cpu", progress=False)


def test_batched_scores_equal_the_direct_computation(loaded, tiny_hf):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(tiny_hf)
    # The start is what the tokenizer adds by default, as lm-eval and lighteval feed it (this one adds nothing).
    assert loaded.start == hf_tok("x").input_ids[:-len(hf_tok("x", add_special_tokens=False).input_ids)]
    requests = [Request(q.prompt, f" {o}") for q in QUESTIONS for o in q.options]
    for batch_size in (1, 3, 8):  # different paddings, same numbers
        got = loglikelihoods(loaded.model, loaded.tokenizer, requests, loaded.start, batch_size=batch_size)
        for r, score in zip(requests, got):
            assert score.logprob == pytest.approx(direct_logprob(loaded.model, hf_tok, r.context, r.continuation),
                                                  abs=1e-4)
            assert score.tokens == len(loaded.tokenizer.encode(r.context + r.continuation)) - \
                len(loaded.tokenizer.encode(r.context))


def test_accuracy_picks_the_best_option_raw_and_per_character(loaded, tiny_hf):
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(tiny_hf)
    data = TaskData("toy", test=list(QUESTIONS))
    result = score_task(loaded, data, EvalConfig(models=["x"], protocol="cloze", batch_size=4, device="cpu",
                                                 progress=False))
    raw = norm = 0
    for q in QUESTIONS:
        lps = [direct_logprob(loaded.model, hf_tok, q.prompt, f" {o}") for o in q.options]
        raw += max(range(len(lps)), key=lps.__getitem__) == q.answer
        norm += max(range(len(lps)), key=lambda i: lps[i] / len(q.options[i])) == q.answer  # lm-eval: len(choice)
    assert (result.n, result.acc, result.acc_norm) == (3, raw / 3, norm / 3)
    assert result.chance == pytest.approx((1 / 3 + 1 / 3 + 1 / 4) / 3)
    assert set(result.subjects) == {"جغرافيا", "تاريخ", "لغة"}


def test_long_contexts_are_cut_from_the_left_never_the_option(loaded):
    long_context = "كلمة " * 300 + "السؤال: ما عاصمة مصر؟\nالإجابة:"
    req = Request(long_context, " القاهرة")
    cut = loglikelihoods(loaded.model, loaded.tokenizer, [req], loaded.start, max_length=32)[0]
    full = loglikelihoods(loaded.model, loaded.tokenizer, [req], loaded.start)[0]
    assert cut.tokens == full.tokens
    with pytest.raises(ValueError, match="does not fit"):
        loglikelihoods(loaded.model, loaded.tokenizer, [req], loaded.start, max_length=cut.tokens - 1)


def test_trailing_spaces_move_to_the_continuation(loaded):
    ctx_a, cont_a = encode_pair(loaded.tokenizer, loaded.start, Request("السؤال: س؟ الإجابة: ", "نعم"))
    ctx_b, cont_b = encode_pair(loaded.tokenizer, loaded.start, Request("السؤال: س؟ الإجابة:", " نعم"))
    assert (ctx_a, cont_a) == (ctx_b, cont_b)
