"""tools/plan.py's memory estimate against what each rank of a tiny CPU run really holds (memory.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from native_megatron.training import planner
from native_megatron.training.config import TrainConfig
from native_megatron.utils.config import load_config
from tests.helpers.training import MOCK_TINY, TINY

H100 = planner.GPUS["h100"]


def measured_against_planned(run_dir: Path, nproc: int, *overrides: str) -> list[tuple[str, int, float, float]]:
    """(what, rank, measured bytes, planned bytes) for each rank of a tiny CPU run's memory.json."""
    cfg = load_config(TrainConfig, TINY, [*MOCK_TINY, *overrides])
    plan = planner.plan_layout(cfg, planner.layout_from_config(cfg, nproc), cfg.model.vocab_size, H100)
    out = []
    for r in json.loads((run_dir / "memory.json").read_text())["ranks"]:
        stage = plan.stages[r["pp_rank"]]
        for what in ("weights", "grads", "optimizer"):
            out.append((what, r["rank"], r[what], getattr(stage, what)))
    return out


def assert_plan_matches_trainer(run_dir: Path, nproc: int, *overrides: str) -> None:
    # Within 3%: megatron-core pads its buffers (parameters to 64 elements, buckets to a multiple of DP x 128).
    for what, rank, measured, planned in measured_against_planned(run_dir, nproc, *overrides):
        assert measured == pytest.approx(planned, rel=0.03), (what, rank, measured, planned)
