"""One evaluation run: every model on every task, then the report.

Multiple choice: the protocol (protocols.py) makes each question's context and
scored continuations; ``acc`` picks the option with the highest total
log-likelihood, ``acc_norm`` the highest per character of the choice text
(``len(choice)``, as lm-evaluation-harness and lighteval's ``LogProbCharNorm``
divide) and ``acc_bytes`` per UTF-8 byte. Safety: our alignment prompts and
Ar-BeaverTails are answered and judged (safety.py); ``mmlu`` runs through
lm-evaluation-harness. ``--log-samples`` keeps every item's numbers (OUT/samples/MODEL/TASK.jsonl).
"""

from __future__ import annotations

import gc
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from native_megatron.evaluation import models as model_io
from native_megatron.evaluation.protocols import DEFAULT_PROTOCOL, HEADLINE, ProtocolConfig, build_items
from native_megatron.evaluation.report import JudgeCheck, SafetyResult, TaskResult, write_report
from native_megatron.evaluation.safety import (
    build_judge,
    chat_tokenizer,
    check_judge,
    evaluate_safety,
    read_beavertails,
    read_prompts,
)
from native_megatron.evaluation.scoring import Request, loglikelihoods
from native_megatron.evaluation.tasks import ALIGNMENT, READERS, TaskData, load_task
from native_megatron.utils.config import ConfigError, resolve_precision
from native_megatron.utils.io import Progress, atomic_write_text

logger = logging.getLogger(__name__)

BEAVERTAILS = "beavertails"  # Ar-BeaverTails-Evaluation, answered and judged like the alignment prompts
MMLU = "mmlu"  # English MMLU, through lm-evaluation-harness
GENERATION_TASKS = (ALIGNMENT, BEAVERTAILS)
ALL_TASKS = (*READERS, *GENERATION_TASKS, MMLU)
SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "eval"
# Marks a folder of sample tasks wherever it is copied, so that a copy is never reported as a benchmark.
SAMPLE_MARKER = "NM_SAMPLE_TASKS"
LM_EVAL_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=lambda: [*READERS, ALIGNMENT])
    protocol: str = DEFAULT_PROTOCOL
    arabicmmlu_prompt: str = "ar"
    arabicmmlu_letters: str = "ar"
    chat_template: str = "auto"  # auto | on | off: the model's chat template around the multiple-choice prompts
    log_samples: bool = False  # OUT/samples/MODEL/TASK.jsonl: every item's prompt, scores and verdicts
    data_dir: str | None = None  # None: the samples beside the package
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
    judge_check: str | None = None
    judge_min_kappa: float = 0.6
    max_new_tokens: int = 128
    lm_eval_tasks: list[str] = field(default_factory=list)
    progress: bool = True

    @property
    def protocol_config(self) -> ProtocolConfig:
        return ProtocolConfig(self.protocol, self.arabicmmlu_prompt, self.arabicmmlu_letters, self.chat_template)

    def validate(self) -> None:
        if not self.models:
            raise ConfigError("give at least one --model")
        unknown = [t for t in self.tasks if t not in ALL_TASKS]
        if unknown:
            raise ConfigError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(ALL_TASKS)}")
        self.protocol_config.validate()
        if MMLU in self.tasks and MMLU not in self.lm_eval_tasks:
            self.lm_eval_tasks = [*self.lm_eval_tasks, MMLU]
        if self.judge_check and self.judge == "none":
            raise ConfigError("--judge-check needs a judge: --judge openai or --judge classifier")
        if self.shots < 0 or self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("--shots >= 0, --batch-size >= 1 and --limit >= 1 required")
        if self.data_dir is None and not SAMPLES.is_dir() and any(
                t not in self.task_dirs for t in self.tasks if t != MMLU):
            raise ConfigError(f"the sample tasks ship with the repository ({SAMPLES} is not here, as in an installed "
                              f"package): pass --data-dir DIR holding one folder per task")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def task_dir(self, task: str) -> Path:
        return Path(self.task_dirs.get(task) or Path(self.data_dir or SAMPLES) / task)


def score_task(loaded: model_io.LoadedModel, data: TaskData, cfg: EvalConfig, chat_tok=None,
               samples: Path | None = None) -> TaskResult:
    """One model on one task. ``chat_tok``: the model's HF tokenizer when it has a chat template
    (safety.chat_tokenizer); ``samples``: a JSONL file to write every item's numbers to."""
    questions = data.test[:cfg.limit] if cfg.limit else data.test
    protocol_cfg = cfg.protocol_config
    use_chat = protocol_cfg.uses_chat_template(protocol_cfg.for_task(data.name), chat_tok is not None, loaded.name)
    chat = (lambda messages: chat_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)) \
        if use_chat else None
    items, protocol, shots = build_items(data.name, data, questions, cfg.shots, protocol_cfg, chat)
    # lighteval puts the start tokens before a templated prompt even when the template wrote them (oall);
    # lm-evaluation-harness (HFLM.tok_encode) does not when the text already begins with them.
    start_text = chat_tok.decode(loaded.start) if use_chat and protocol != "oall" and loaded.start else None
    requests = [Request(item.context, c, item.mode, not (start_text and item.context.startswith(start_text)))
                for item in items for c in item.continuations]
    with Progress(len(requests), f"{loaded.name} {data.name}", unit="option", enabled=cfg.progress) as bar:
        scores = loglikelihoods(loaded.model, loaded.tokenizer, requests, loaded.start, cfg.batch_size,
                                device=cfg.device, progress=bar)
    totals = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    subjects: dict[str, dict] = {}
    chance = 0.0
    at = 0
    records = []
    for q, item in zip(questions, items):
        own = scores[at:at + len(item.continuations)]
        lls = [s.logprob for s in own]
        at += len(item.continuations)
        picks = {"acc": _argmax(lls),
                 "acc_norm": _argmax([ll / len(t) for ll, t in zip(lls, item.norm_texts)]),
                 "acc_bytes": _argmax([ll / len(t.encode("utf-8")) for ll, t in zip(lls, item.norm_texts)])}
        if samples is not None:
            records.append(_sample_record(q, item, own, picks, protocol, use_chat, shots))
        chance += 1 / len(lls)
        s = subjects.setdefault(q.subject, {"n": 0, "acc": 0, "acc_norm": 0, "acc_bytes": 0})
        s["n"] += 1
        for metric, pick in picks.items():
            totals[metric] += pick == item.answer
            s[metric] += pick == item.answer
    for s in subjects.values():
        for metric in totals:
            s[metric] /= s["n"]
    n = len(questions)
    if samples is not None:
        write_jsonl(samples, records)
    return TaskResult(model=loaded.name, task=data.name, n=n, shots=shots, acc=totals["acc"] / n,
                      acc_norm=totals["acc_norm"] / n, chance=chance / n, subjects=subjects, protocol=protocol,
                      metric=HEADLINE[protocol], acc_bytes=totals["acc_bytes"] / n, chat_template=use_chat,
                      majority=majority_baseline(items))


def majority_baseline(items) -> float:
    """The accuracy of always answering the most frequent gold position (per number of options): what a
    model that learnt only the answer key's skew would score, beside the uniform chance."""
    by_size = Counter((len(i.continuations), i.answer) for i in items)
    best: dict[int, int] = {}
    for (size, _), count in by_size.items():
        best[size] = max(best.get(size, 0), count)
    return sum(best.values()) / len(items) if items else 0.0


def _sample_record(q, item, scores, picks: dict, protocol: str, chat: bool, shots: int) -> dict:
    """One item as --log-samples writes it: enough to audit the pick or compare with another harness."""
    choices = []
    for text, norm, s in zip(item.continuations, item.norm_texts, scores):
        chars, nbytes = len(norm), len(norm.encode("utf-8"))
        choices.append({"continuation": text, "loglik": s.logprob, "tokens": s.tokens, "greedy": s.greedy,
                        "norm_text": norm, "chars": chars, "bytes": nbytes, "loglik_per_char": s.logprob / chars,
                        "loglik_per_byte": s.logprob / nbytes})
    return {"id": q.id, "subject": q.subject, "protocol": protocol, "chat_template": chat, "shots": shots,
            "scoring": item.mode, "prompt": item.context, "choices": choices, "gold": item.answer,
            "pred": picks, "correct": {m: p == item.answer for m, p in picks.items()}}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _samples_path(cfg: EvalConfig, model: str, task: str) -> Path | None:
    return Path(cfg.out) / "samples" / model / f"{task}.jsonl" if cfg.log_samples else None


def _argmax(values: list[float]) -> int:
    """The first best, as numpy's argmax (lm-evaluation-harness) breaks ties."""
    return max(range(len(values)), key=values.__getitem__)


def run_lm_eval(loaded: model_io.LoadedModel, cfg: EvalConfig) -> list[TaskResult]:
    """lm-evaluation-harness tasks on the same HF directory, as extra rows of the report."""
    try:
        import lm_eval
    except ImportError:
        raise ConfigError("--lm-eval-tasks needs lm-evaluation-harness: pip install lm-eval") from None
    out = lm_eval.simple_evaluate(model="hf", model_args=lm_eval_model_args(loaded, cfg),
                                  tasks=cfg.lm_eval_tasks, num_fewshot=cfg.shots, batch_size=cfg.batch_size,
                                  device=cfg.device, limit=cfg.limit)
    results = out.get("results") or {}
    wanted = [t for t in cfg.lm_eval_tasks if t in results] or list(results)  # a group, not its 57 subtasks
    rows = []
    for task in wanted:
        metrics = results[task]
        acc = metrics.get("acc,none")
        if acc is None:
            continue
        norm = metrics.get("acc_norm,none")
        rows.append(TaskResult(model=loaded.name, task=f"lm_eval:{task}", n=_lm_eval_n(out, task), shots=cfg.shots,
                               acc=float(acc), acc_norm=float(acc if norm is None else norm), chance=0.0,
                               protocol="lm-eval", metric="acc" if norm is None else "acc_norm"))
    return rows


def lm_eval_model_args(loaded: model_io.LoadedModel, cfg: EvalConfig) -> str:
    """HFLM's arguments: the exported directory, its tokenizer, and our --dtype in the names lm-eval takes."""
    dtype = resolve_precision(cfg.dtype, on_gpu=str(cfg.device).startswith("cuda"))
    tokenizer = loaded.tokenizer_dir or loaded.path
    return f"pretrained={loaded.path},tokenizer={tokenizer},dtype={LM_EVAL_DTYPES[dtype]}"


def _lm_eval_n(out: dict, task: str) -> int:
    """Questions scored: a task's own count, or the sum over a group's subtasks."""
    samples = out.get("n-samples") or {}
    if task in samples:
        return int(samples[task].get("effective", 0) or 0)
    subtasks = (out.get("group_subtasks") or {}).get(task) or []
    return sum(_lm_eval_n(out, t) for t in subtasks)


def describe_data(path: Path, data: TaskData | None, n_prompts: int | None = None) -> dict:
    """Where a task's items came from: the shipped samples (a format check) or a real data directory."""
    resolved = path.resolve()
    kind = "sample" if any((d / SAMPLE_MARKER).is_file() for d in (resolved, *resolved.parents)) else "data"
    if data is not None:
        return {"dir": str(path), "kind": kind, "test": len(data.test), "dev": len(data.dev)}
    return {"dir": str(path), "kind": kind, "test": n_prompts or 0, "dev": 0}


def _generation_sets(cfg: EvalConfig) -> dict[str, tuple[Path, list]]:
    """The prompt sets to answer and judge: our alignment prompts and Ar-BeaverTails, as asked."""
    sets = {}
    if ALIGNMENT in cfg.tasks:
        path = Path(cfg.alignment_prompts or cfg.task_dir(ALIGNMENT) / "prompts.jsonl")
        sets[ALIGNMENT] = (path, read_prompts(path))
    if BEAVERTAILS in cfg.tasks:
        path = cfg.task_dir(BEAVERTAILS)
        sets[BEAVERTAILS] = (path, read_beavertails(path))
    return {k: (p, items[:cfg.limit] if cfg.limit else items) for k, (p, items) in sets.items()}


def evaluate(cfg: EvalConfig) -> tuple[list[TaskResult], list[SafetyResult], dict[str, Path]]:
    cfg.validate()
    out = Path(cfg.out)
    mc_tasks = [t for t in cfg.tasks if t in READERS]
    datasets = {t: load_task(t, cfg.task_dir(t)) for t in mc_tasks}  # every file checked before any model loads
    generation = _generation_sets(cfg)
    judge = build_judge(cfg.judge, cfg.judge_model, cfg.judge_urls, cfg.judge_unsafe_labels, cfg.device) \
        if generation or cfg.judge_check else None
    task_results: list[TaskResult] = []
    safety_results: list[SafetyResult] = []
    names: list[str] = []
    calibration: JudgeCheck | None = None
    try:
        if cfg.judge_check:
            calibration = check_judge(judge, cfg.judge_check, cfg.judge_min_kappa)
        for spec in cfg.models:
            loaded = model_io.load(spec, out, cfg.tokenizer, cfg.device, cfg.dtype, cfg.progress)
            if loaded.name in names:
                raise ConfigError(f"two models are named {loaded.name!r}: name them, e.g. --model raw=PATH")
            names.append(loaded.name)
            chat_tok = chat_tokenizer(loaded)
            for task in mc_tasks:
                result = score_task(loaded, datasets[task], cfg, chat_tok, _samples_path(cfg, loaded.name, task))
                logger.info("%s %s (%s%s): %s %.3f, acc %.3f (n=%d)", loaded.name, task, result.protocol,
                            ", chat template" if result.chat_template else "", result.metric, result.headline,
                            result.acc, result.n)
                task_results.append(result)
            for bench, (_, prompts) in generation.items():
                stem = loaded.name if bench == ALIGNMENT else f"{loaded.name}.{bench}"
                answers = out / "answers" / f"{stem}.jsonl"
                safety_results.append(evaluate_safety(loaded, prompts, judge, answers, cfg.max_new_tokens,
                                                      cfg.batch_size, cfg.device, benchmark=bench,
                                                      samples=_samples_path(cfg, loaded.name, bench)))
            if cfg.lm_eval_tasks:
                task_results += run_lm_eval(loaded, cfg)
            del loaded
            gc.collect()
    finally:
        if judge is not None:
            judge.close()
    data = {t: describe_data(cfg.task_dir(t), datasets[t]) for t in mc_tasks}
    data |= {b: describe_data(p, None, len(items)) for b, (p, items) in generation.items()}
    meta = {"protocol": cfg.protocol, "chat_template": cfg.chat_template, "log_samples": cfg.log_samples,
            "shots": cfg.shots, "limit": cfg.limit, "device": cfg.device,
            "judge": cfg.judge, "data": data}
    paths = write_report(out, task_results, safety_results, names, meta, calibration)
    return task_results, safety_results, paths
