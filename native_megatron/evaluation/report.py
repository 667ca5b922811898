"""Results -> a Markdown table, a JSON file and a PNG plot comparing the models.

Accuracy is the fraction of questions whose highest-scoring option is the
answer; its standard error is the sample one, sqrt(p (1 - p) / (n - 1)), as
lm-evaluation-harness reports it. The harmlessness rate has the same form.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from native_megatron.utils.io import atomic_write_text


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


@dataclass
class TaskResult:
    model: str
    task: str
    n: int
    shots: int
    acc: float
    acc_norm: float
    chance: float  # accuracy of guessing uniformly among each question's options
    subjects: dict[str, dict] = field(default_factory=dict)
    protocol: str = "cloze"  # evaluation/protocols.py, or lm-eval for harness rows
    metric: str = "acc_norm"  # the headline: the one the protocol's source publishes
    acc_bytes: float | None = None
    chat_template: bool = False  # the prompts went through the model's chat template
    majority: float = 0.0  # accuracy of always answering the most frequent gold position (run.majority_baseline)

    @property
    def headline(self) -> float:
        return getattr(self, self.metric)

    @property
    def acc_stderr(self) -> float:
        return stderr(self.acc, self.n)

    @property
    def acc_norm_stderr(self) -> float:
        return stderr(self.acc_norm, self.n)

    def to_dict(self) -> dict:
        return {**asdict(self), "acc_stderr": self.acc_stderr, "acc_norm_stderr": self.acc_norm_stderr}


@dataclass
class SafetyResult:
    model: str
    n: int
    judged: int
    harmless: int
    judge: str
    by_category: dict[str, dict] = field(default_factory=dict)
    benchmark: str = "alignment"  # the prompt set: our alignment prompts or Ar-BeaverTails

    @property
    def rate(self) -> float | None:
        return self.harmless / self.judged if self.judged else None

    @property
    def rate_stderr(self) -> float | None:
        return stderr(self.rate, self.judged) if self.judged else None

    def to_dict(self) -> dict:
        return {**asdict(self), "harmlessness": self.rate, "harmlessness_stderr": self.rate_stderr}


@dataclass
class JudgeCheck:
    """The judge against human labels: agreement and Cohen's kappa on the items it gave a verdict for."""
    judge: str
    path: str
    n: int
    judged: int
    agreement: float
    kappa: float
    min_kappa: float

    @property
    def trusted(self) -> bool:
        return self.judged > 0 and self.kappa >= self.min_kappa

    def to_dict(self) -> dict:
        return {**asdict(self), "trusted": self.trusted}


def cohen_kappa(truth: list[bool], pred: list[bool]) -> float:
    """(p_o - p_e) / (1 - p_e); 1.0 when both raters use a single label and agree everywhere."""
    n = len(truth)
    if n == 0:
        return 0.0
    observed = sum(t == p for t, p in zip(truth, pred)) / n
    pt, pp = sum(truth) / n, sum(pred) / n
    expected = pt * pp + (1 - pt) * (1 - pp)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


def _cell(value: float | None, err: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} ± {100 * (err or 0):.1f}"


def _sources(data: dict) -> list[str]:
    """Where each task's questions came from, so that a format check is never read as a benchmark."""
    lines = ["Data:", ""]
    for task, d in data.items():
        what = ("shipped sample tasks (format check only, not a benchmark)" if d.get("kind") == "sample"
                else "data directory")
        lines.append(f"- {task}: {what}, {d.get('dir')}: {d.get('test', 0)} test and {d.get('dev', 0)} "
                     f"few-shot items")
    return lines + [""]


def markdown(tasks: list[TaskResult], safety: list[SafetyResult], models: list[str], meta: dict | None = None,
             judge_check: JudgeCheck | None = None) -> str:
    meta = meta or {}
    lines = ["# Evaluation", ""]
    if any(d.get("kind") == "sample" for d in (meta.get("data") or {}).values()):
        lines += ["**Shipped sample tasks (format check only, not a benchmark)**: these numbers say that the "
                  "pipeline runs, not how good a model is.", ""]
    if meta.get("data"):
        lines += _sources(meta["data"])
    if tasks:
        lines += ["Multiple choice, accuracy in % ± standard error. The headline metric is the one the "
                  "protocol's source publishes (oall and cloze: acc_norm, arabicmmlu and MMLU: acc); the other "
                  "follows in brackets. prompt: the model's chat template or plain text (--chat-template); "
                  "majority: always answering the most frequent gold position.", ""]
        lines.append("| task | protocol | prompt | metric | shots | n | chance | majority | "
                     + " | ".join(models) + " |")
        lines.append("| --- | --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in models) + " |")
        names = list(dict.fromkeys(r.task for r in tasks))
        for task in names:
            rows = {r.model: r for r in tasks if r.task == task}
            any_row = next(iter(rows.values()))
            other = "acc" if any_row.metric == "acc_norm" else "acc_norm"
            cells = []
            for m in models:
                r = rows.get(m)
                cells.append("-" if r is None else
                             f"{_cell(r.headline, stderr(r.headline, r.n))} ({other} {100 * getattr(r, other):.1f})")
            chance = f"{100 * any_row.chance:.1f}" if any_row.chance else "-"
            majority = f"{100 * any_row.majority:.1f}" if any_row.majority else "-"
            prompt = " / ".join(dict.fromkeys("chat template" if r.chat_template else "plain" for r in rows.values()))
            lines.append(f"| {task} | {any_row.protocol} | {prompt} | {any_row.metric} | {any_row.shots} | "
                         f"{any_row.n} | {chance} | {majority} | " + " | ".join(cells) + " |")
        lines.append("")
    if meta.get("log_samples"):
        lines += ["Every item's prompt, per-choice log-likelihoods and picks, and every answer with its verdict: "
                  "samples/MODEL/TASK.jsonl (--log-samples).", ""]
    if judge_check is not None:
        c = judge_check
        verdict = "trusted" if c.trusted else f"NOT trusted (kappa below {c.min_kappa:.2f}): read the rates below " \
                                                "as unverified"
        lines += [f"Judge check ({c.path}): {c.judge} agrees with the human labels on {100 * c.agreement:.1f}% of "
                  f"{c.judged} judged items (of {c.n}), Cohen's kappa {c.kappa:.2f}: {verdict}.", ""]
    if safety:
        lines += ["Safety: harmlessness rate in % ± standard error (responses judged safe / judged).", ""]
        lines.append("| benchmark | judge | n | " + " | ".join(models) + " |")
        lines.append("| --- | --- | --- | " + " | ".join("---" for _ in models) + " |")
        for bench in dict.fromkeys(r.benchmark for r in safety):
            rows = {r.model: r for r in safety if r.benchmark == bench}
            first = next(iter(rows.values()))
            lines.append(f"| {bench} | {first.judge} | {first.n} | "
                         + " | ".join(_cell(rows[m].rate, rows[m].rate_stderr) if m in rows else "-" for m in models)
                         + " |")
        if safety[0].judge == "none":
            lines.append("Not judged (--judge none): the answers are in answers/MODEL.jsonl.")
        lines.append("")
    return "\n".join(lines)


def plot(tasks: list[TaskResult], safety: list[SafetyResult], models: list[str], path: Path) -> Path:
    """Grouped bars: one group per task (and harmlessness), one bar per model, standard errors as whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r.task for r in tasks))
    values = {m: [] for m in models}
    errors = {m: [] for m in models}
    chance, majority = [], []
    for g in groups:
        rows = {r.model: r for r in tasks if r.task == g}
        chance.append(next(iter(rows.values())).chance)
        majority.append(next(iter(rows.values())).majority)
        for m in models:
            r = rows.get(m)
            values[m].append(100 * r.headline if r else 0.0)
            errors[m].append(100 * stderr(r.headline, r.n) if r else 0.0)
    for bench in dict.fromkeys(s.benchmark for s in safety if s.rate is not None):
        groups.append(f"{bench} harmless")
        chance.append(None)
        majority.append(None)
        rows = {s.model: s for s in safety if s.benchmark == bench}
        for m in models:
            s = rows.get(m)
            values[m].append(100 * (s.rate or 0.0) if s else 0.0)
            errors[m].append(100 * (s.rate_stderr or 0.0) if s else 0.0)
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4.5))
    for i, m in enumerate(models):
        xs = [g + (i - (len(models) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values[m], width, yerr=errors[m], capsize=3, error_kw={"elinewidth": 1}, label=m)
    for g, c in enumerate(chance):
        if c is not None:
            ax.hlines(100 * c, g - 0.45, g + 0.45, colors="grey", linestyles="dashed", linewidth=1)
    for g, m in enumerate(majority):
        if m:
            ax.hlines(100 * m, g - 0.45, g + 0.45, colors="black", linestyles="dotted", linewidth=1)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15)
    ax.set_ylabel("% (headline accuracy; harmlessness rate)")
    ax.set_ylim(0, 100)
    ax.set_title("Arabic knowledge and alignment (dashed: chance; dotted: majority answer)")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out_dir: Path, tasks: list[TaskResult], safety: list[SafetyResult], models: list[str],
                 meta: dict, judge_check: JudgeCheck | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "json": out_dir / "results.json", "plot": out_dir / "report.png"}
    atomic_write_text(paths["markdown"], markdown(tasks, safety, models, meta, judge_check))
    atomic_write_text(paths["json"], json.dumps({"models": models, "meta": meta,
                                                 "tasks": [r.to_dict() for r in tasks],
                                                 "alignment": [s.to_dict() for s in safety],
                                                 "judge_check": judge_check.to_dict() if judge_check else None},
                                                ensure_ascii=False, indent=1))
    plot(tasks, safety, models, paths["plot"])
    return paths
