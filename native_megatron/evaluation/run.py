"""One evaluation run: every model on every task, then the report.

Multiple choice: each option is scored as the continuation of the (few-shot)
prompt; ``acc`` picks the option with the highest total log-likelihood,
``acc_norm`` the highest log-likelihood per character of the option (longer
options are not penalised for their length), as lm-evaluation-harness does.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from native_megatron.evaluation import models as model_io
from native_megatron.evaluation.report import SafetyResult, TaskResult, write_report
from native_megatron.evaluation.safety import build_judge, evaluate_safety, read_prompts
from native_megatron.evaluation.scoring import Request, loglikelihoods
from native_megatron.evaluation.tasks import ALIGNMENT, READERS, TaskData, few_shot_prompt, load_task
from native_megatron.utils.config import ConfigError
from native_megatron.utils.io import Progress

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    models: list[str]
    tasks: list[str] = field(default_factory=lambda: [*READERS, ALIGNMENT])
    data_dir: str = "examples/eval"
    task_dirs: dict[str, str] = field(default_factory=dict)
    out: str = "runs/eval"
    shots: int = 0
    limit: int | None = None
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    tokenizer: str | None = None
    alignment_prompts: str | None = None
    judge: str = "none"
    judge_model: str | None = None
    judge_urls: list[str] = field(default_factory=list)
    judge_unsafe_labels: list[str] = field(default_factory=lambda: ["unsafe", "harmful", "toxic"])
    max_new_tokens: int = 128
    lm_eval_tasks: list[str] = field(default_factory=list)
    progress: bool = True

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("give at least one --model")
        unknown = [t for t in self.tasks if t not in READERS and t != ALIGNMENT]
        if unknown:
            raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join([*READERS, ALIGNMENT])}")
        if self.shots < 0 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("--shots >= 0, --batch-size >= 1 and --limit >= 1 required")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def task_dir(self, task: str) -> Path:
        return Path(self.task_dirs.get(task) or Path(self.data_dir) / task)


def score_task(loaded: model_io.LoadedModel, data: TaskData, cfg: EvalConfig) -> TaskResult:
    questions = data.test[:cfg.limit] if cfg.limit else data.test
    requests: list[Request] = []
    for q in questions:
        context = few_shot_prompt(q, data.dev_for(q.subject, cfg.shots)) if cfg.shots else q.prompt
        requests += [Request(context, f" {option}") for option in q.options]
    with Progress(len(requests), f"{loaded.name} {data.name}", unit="option", enabled=cfg.progress) as bar:
        scores = loglikelihoods(loaded.model, loaded.tokenizer, requests, loaded.start, cfg.batch_size,
                                device=cfg.device, progress=bar)
    correct = correct_norm = 0
    subjects: dict[str, dict] = {}
    chance = 0.0
    at = 0
    for q in questions:
        own = scores[at:at + len(q.options)]
        at += len(q.options)
        raw = max(range(len(own)), key=lambda i: own[i].logprob)
        norm = max(range(len(own)), key=lambda i: own[i].logprob / len(f" {q.options[i]}"))
        correct += raw == q.answer
        correct_norm += norm == q.answer
        chance += 1 / len(q.options)
        s = subjects.setdefault(q.subject, {"n": 0, "acc": 0, "acc_norm": 0})
        s["n"] += 1
        s["acc"] += raw == q.answer
        s["acc_norm"] += norm == q.answer
    for s in subjects.values():
        s["acc"] /= s["n"]
        s["acc_norm"] /= s["n"]
    n = len(questions)
    return TaskResult(model=loaded.name, task=data.name, n=n, shots=cfg.shots, acc=correct / n,
                      acc_norm=correct_norm / n, chance=chance / n, subjects=subjects)


def run_lm_eval(loaded: model_io.LoadedModel, cfg: EvalConfig) -> list[TaskResult]:
    """lm-evaluation-harness tasks on the same HF directory, as extra rows of the report."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("--lm-eval-tasks needs lm-evaluation-harness: pip install lm-eval") from None
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={loaded.path},dtype={cfg.dtype}",
                                  tasks=cfg.lm_eval_tasks, num_fewshot=cfg.shots, batch_size=cfg.batch_size,
                                  device=cfg.device, limit=cfg.limit)
    rows = []
    for task, metrics in (out.get("results") or {}).items():
        acc = metrics.get("acc,none")
        if acc is None:
            continue
        n = int((out.get("n-samples") or {}).get(task, {}).get("effective", 0)) or 0
        rows.append(TaskResult(model=loaded.name, task=f"lm_eval:{task}", n=n, shots=cfg.shots, acc=float(acc),
                               acc_norm=float(metrics.get("acc_norm,none", acc)), chance=0.0))
    return rows


def evaluate(cfg: EvalConfig) -> tuple[list[TaskResult], list[SafetyResult], dict[str, Path]]:
    cfg.validate()
    out = Path(cfg.out)
    mc_tasks = [t for t in cfg.tasks if t in READERS]
    datasets = {t: load_task(t, cfg.task_dir(t)) for t in mc_tasks}  # every file checked before any model loads
    prompts = None
    if ALIGNMENT in cfg.tasks:
        prompts = read_prompts(cfg.alignment_prompts or cfg.task_dir(ALIGNMENT) / "prompts.jsonl")
        if cfg.limit:
            prompts = prompts[:cfg.limit]
    judge = build_judge(cfg.judge, cfg.judge_model, cfg.judge_urls, cfg.judge_unsafe_labels, cfg.device) \
        if prompts else None
    task_results: list[TaskResult] = []
    safety_results: list[SafetyResult] = []
    names: list[str] = []
    try:
        for spec in cfg.models:
            loaded = model_io.load(spec, out, cfg.tokenizer, cfg.device, cfg.dtype, cfg.progress)
            if loaded.name in names:
                raise ConfigError(f"two models are named {loaded.name!r}: name them, e.g. --model raw=PATH")
            names.append(loaded.name)
            for task in mc_tasks:
                result = score_task(loaded, datasets[task], cfg)
                logger.info("%s %s: acc_norm %.3f, acc %.3f (n=%d)", loaded.name, task, result.acc_norm, result.acc,
                            result.n)
                task_results.append(result)
            if prompts:
                safety_results.append(evaluate_safety(loaded, prompts, judge, out / "answers" / f"{loaded.name}.jsonl",
                                                      cfg.max_new_tokens, cfg.batch_size, cfg.device))
            if cfg.lm_eval_tasks:
                task_results += run_lm_eval(loaded, cfg)
            del loaded
            gc.collect()
    finally:
        if judge is not None:
            judge.close()
    meta = {"shots": cfg.shots, "limit": cfg.limit, "device": cfg.device, "judge": cfg.judge,
            "data": {t: str(cfg.task_dir(t)) for t in mc_tasks}}
    paths = write_report(out, task_results, safety_results, names, meta)
    return task_results, safety_results, paths
