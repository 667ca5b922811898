"""The full preprocessing pipeline with native alignment: clean -> dedup -> rewrite -> validate -> tokenize."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from native_megatron.alignment.backends import check_backend
from native_megatron.alignment.config import RewriteConfig
from native_megatron.alignment.rewrite import KEPT_RAW, REWRITTEN, run_rewrite
from native_megatron.alignment.validation import ValidationConfig
from native_megatron.data.pipeline import PreprocessConfig, run_preprocess
from native_megatron.data.tasks import StageResult


@dataclass
class AlignedPreprocessConfig(PreprocessConfig):
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    validate: ValidationConfig = field(default_factory=ValidationConfig)


class RewriteStage:
    """The rewrite stage, plugged in between the data path's prepare and tokenize stages."""

    name = "rewrite"
    statuses = (REWRITTEN, KEPT_RAW)

    def __init__(self, cfg: AlignedPreprocessConfig, backend=None) -> None:
        self.cfg = cfg
        self.backend = backend

    def run(self, shards: list[str], work_dir: Path, show_progress: bool, do_work: bool = True) -> StageResult:
        return run_rewrite(shards, work_dir, self.cfg.rewrite, self.cfg.validate, show_progress, self.backend,
                           do_work=do_work)

    @staticmethod
    def summary(stats: dict[str, Any]) -> list[str]:
        rw = stats.get("rewrite")
        if not rw:
            return []
        checks = ", ".join(f"{k} {v}" for k, v in rw["failed_checks"].items()) or "none"
        t_rw = stats["timing"].get("rewrite", {})
        return [f"rewrite:   {rw['backend']} {rw['model']} ({rw['guidelines']}); failed checks: {checks}; "
                f"{t_rw.get('generated_tokens_per_second') or 0:,.0f} generated tokens/s"]


def run_preprocess_aligned(cfg: AlignedPreprocessConfig, backend=None) -> dict[str, Any]:
    """Run the configured stages; with ``rewrite.backend: none`` this is the raw data path.

    When this process will rewrite, the backend is checked first (servers answer, vLLM is
    installed, the model is there), so that a broken one fails in seconds, not after prepare.
    """
    middle = RewriteStage(cfg, backend) if cfg.rewrite.backend != "none" else None
    if middle is not None and backend is None and cfg.run.stage in ("all", "rewrite"):
        check_backend(cfg.rewrite)
    return run_preprocess(cfg, middle)
