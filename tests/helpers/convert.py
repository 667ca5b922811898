"""Run tools/convert_checkpoint.py and a Megatron forward pass in subprocesses, for the conversion tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.training import ROOT, env

TOOL = ROOT / "tools" / "convert_checkpoint.py"
LOGITS = ROOT / "tests" / "convert" / "megatron_logits.py"


def model_overrides(hf_dir: Path) -> list[str]:
    """Our ``--model.*`` overrides for the HF model in ``hf_dir``."""
    from native_megatron.convert.llama import read_hf_config

    return [f"--{k}={v}" for k, v in read_hf_config(hf_dir).model_overrides().items()]


def convert(*args, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    f"--nproc-per-node={nproc}", "--standalone"]
    out = subprocess.run([*launcher, str(TOOL), *map(str, args), "--no-progress"], capture_output=True, text=True,
                         timeout=600, env=env(), cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def megatron_logits(ckpt: Path, hf_dir: Path, ids: torch.Tensor, tmp: Path) -> torch.Tensor:
    """Logits of the checkpoint loaded into a TP=1/PP=1 fp32 GPTModel shaped like the HF model."""
    torch.save(ids, tmp / "ids.pt")
    out = subprocess.run([sys.executable, str(LOGITS), str(ckpt), str(tmp / "ids.pt"), str(tmp / "logits.pt"),
                          *model_overrides(hf_dir)], capture_output=True, text=True, timeout=600, env=env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    return torch.load(tmp / "logits.pt")
