"""The lm-evaluation-harness hook: called with the exported HF directory, its results become report rows."""

from __future__ import annotations

import sys
import types

import pytest

from native_megatron.evaluation.models import LoadedModel
from native_megatron.evaluation.run import EvalConfig, run_lm_eval
from native_megatron.utils.config import ConfigError


def loaded() -> LoadedModel:
    return LoadedModel(name="aligned", path="/models/aligned_hf", source="x", model=None, tokenizer=None, start=[0],
                       chat_template_dir=None)


def test_missing_harness_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(ConfigError, match="pip install lm-eval"):
        run_lm_eval(loaded(), EvalConfig(models=["x"], lm_eval_tasks=["arabic_mmlu"]))


def test_results_become_rows(monkeypatch):
    calls = []

    def simple_evaluate(**kwargs):
        calls.append(kwargs)
        return {"results": {"arabicmmlu": {"acc,none": 0.42, "acc_stderr,none": 0.01},
                            "acva": {"acc,none": 0.7, "acc_norm,none": 0.72},
                            "some_generation_task": {"exact_match,none": 0.1}},
                "n-samples": {"arabicmmlu": {"original": 14575, "effective": 100}}}

    monkeypatch.setitem(sys.modules, "lm_eval", types.SimpleNamespace(simple_evaluate=simple_evaluate))
    rows = run_lm_eval(loaded(), EvalConfig(models=["x"], lm_eval_tasks=["arabicmmlu", "acva"], shots=5, limit=100,
                                            device="cpu", dtype="auto", batch_size=4))
    assert calls[0]["model"] == "hf" and calls[0]["model_args"].startswith("pretrained=/models/aligned_hf")
    assert (calls[0]["tasks"], calls[0]["num_fewshot"], calls[0]["limit"]) == (["arabicmmlu", "acva"], 5, 100)
    assert [(r.task, r.acc, r.acc_norm, r.n) for r in rows] == [("lm_eval:arabicmmlu", 0.42, 0.42, 100),
                                                                  ("lm_eval:acva", 0.7, 0.72, 0)]


@pytest.mark.parametrize("dtype, device, expected", [("auto", "cpu", "float32"), ("auto", "cuda", "bfloat16"),
                                                     ("bf16", "cpu", "bfloat16"), ("fp16", "cuda", "float16")])
def test_model_args_name_the_tokenizer_and_a_dtype_the_harness_takes(dtype, device, expected):
    from native_megatron.evaluation.run import lm_eval_model_args

    model = loaded()
    model.tokenizer_dir = "/models/aligned_hf"
    args = lm_eval_model_args(model, EvalConfig(models=["x"], dtype=dtype, device=device))
    assert args == f"pretrained=/models/aligned_hf,tokenizer=/models/aligned_hf,dtype={expected}"
