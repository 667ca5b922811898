"""Recorded SLURM environments (tests/launch/slurm_envs/*.json), as the mappings a process would see."""

from __future__ import annotations

import json
from pathlib import Path

ENVS = Path(__file__).resolve().parents[1] / "launch" / "slurm_envs"


def recorded_env(name: str) -> dict[str, str]:
    data = json.loads((ENVS / f"{name}.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}
