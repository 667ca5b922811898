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

    @property
    def rate(self) -> float | None:
        return self.harmless / self.judged if self.judged else None

    @property
    def rate_stderr(self) -> float | None:
        return stderr(self.rate, self.judged) if self.judged else None

    def to_dict(self) -> dict:
        return {**asdict(self), "harmlessness": self.rate, "harmlessness_stderr": self.rate_stderr}


def _cell(value: float | None, err: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} ± {100 * (err or 0):.1f}"


def markdown(tasks: list[TaskResult], safety: list[SafetyResult], models: list[str]) -> str:
    lines = ["# Evaluation", ""]
    if tasks:
        lines += ["Multiple choice, accuracy in % ± standard error: length-normalised (acc_norm) and, in "
                  "brackets, raw log-likelihood (acc).", ""]
        lines.append("| task | shots | n | chance | " + " | ".join(models) + " |")
        lines.append("| --- | --- | --- | --- | " + " | ".join("---" for _ in models) + " |")
        names = list(dict.fromkeys(r.task for r in tasks))
        for task in names:
            rows = {r.model: r for r in tasks if r.task == task}
            any_row = next(iter(rows.values()))
            cells = []
            for m in models:
                r = rows.get(m)
                cells.append("-" if r is None else
                             f"{_cell(r.acc_norm, r.acc_norm_stderr)} ({100 * r.acc:.1f})")
            lines.append(f"| {task} | {any_row.shots} | {any_row.n} | {100 * any_row.chance:.1f} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    if safety:
        lines += ["Alignment: harmlessness rate in % ± standard error (responses judged safe / judged).", ""]
        lines.append("| judge | n | " + " | ".join(models) + " |")
        lines.append("| --- | --- | " + " | ".join("---" for _ in models) + " |")
        rows = {r.model: r for r in safety}
        first = safety[0]
        lines.append(f"| {first.judge} | {first.n} | "
                     + " | ".join(_cell(rows[m].rate, rows[m].rate_stderr) if m in rows else "-" for m in models)
                     + " |")
        if first.judge == "none":
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
    chance = []
    for g in groups:
        rows = {r.model: r for r in tasks if r.task == g}
        chance.append(next(iter(rows.values())).chance)
        for m in models:
            r = rows.get(m)
            values[m].append(100 * r.acc_norm if r else 0.0)
            errors[m].append(100 * r.acc_norm_stderr if r else 0.0)
    if safety and any(s.rate is not None for s in safety):
        groups.append("harmlessness")
        chance.append(None)
        rows = {s.model: s for s in safety}
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
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15)
    ax.set_ylabel("% (acc_norm; harmlessness rate)")
    ax.set_ylim(0, 100)
    ax.set_title("Arabic knowledge and alignment (dashed: chance)")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out_dir: Path, tasks: list[TaskResult], safety: list[SafetyResult], models: list[str],
                 meta: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "report.md", "json": out_dir / "results.json", "plot": out_dir / "report.png"}
    atomic_write_text(paths["markdown"], markdown(tasks, safety, models))
    atomic_write_text(paths["json"], json.dumps({"models": models, "meta": meta,
                                                 "tasks": [r.to_dict() for r in tasks],
                                                 "alignment": [s.to_dict() for s in safety]},
                                                ensure_ascii=False, indent=1))
    plot(tasks, safety, models, paths["plot"])
    return paths
