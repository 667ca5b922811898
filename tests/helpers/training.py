"""Run pretrain_arabic.py under torchrun (gloo, CPU) from tests, and read what it logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "pretrain_arabic.py"
TINY = ROOT / "examples" / "configs" / "tiny_cpu.yaml"

# A model small enough for 4 gloo ranks on 2 cores, large enough to shard 2 x 2.
MOCK_TINY = ["--data.mock=true", "--data.paths=[]", "--model.vocab_size=256", "--data.seq_length=32",
             "--schedule.micro_batch_size=2", "--schedule.global_batch_size=8", "--schedule.warmup_steps=1",
             "--schedule.eval_interval=0", "--checkpoint.save_interval=0", "--logging.log_interval=1",
             "--logging.tensorboard=false"]


def torchrun_cmd(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            "--standalone", str(SCRIPT), "--config", str(TINY), *args]


def env() -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def train(run_dir: Path, nproc: int = 1, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    args = [f"--logging.run_dir={run_dir}", *overrides]
    out = subprocess.run(torchrun_cmd(nproc, args), capture_output=True, text=True, timeout=timeout,
                         env=env(), cwd=ROOT)
    if out.returncode != 0:
        raise AssertionError(f"training failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return out


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


def valid_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["valid_loss"] for r in metrics(run_dir) if "valid_loss" in r}


def write_dataset(prefix: Path, docs: list[list[int]], dtype=None) -> str:
    """A megatron-core indexed dataset ``prefix.bin/.idx`` holding ``docs`` (one sequence per document)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix.parent.mkdir(parents=True, exist_ok=True)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype or np.uint16)
    for doc in docs:
        builder.add_document(torch.tensor(doc, dtype=torch.int64), [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def random_docs(count: int, vocab: int, seed: int = 0, length: tuple[int, int] = (20, 80)) -> list[list[int]]:
    """``count`` documents of random ids below ``vocab``, each ending with the sample tokenizer's EOD (2)."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(4, vocab) for _ in range(rng.randint(*length))] + [2] for _ in range(count)]


def start_in_session(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` in a session of its own (as a job or a pod runs it), its output going to ``log``."""
    with open(log, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=ROOT,
                                start_new_session=True)


def wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int, log: Path, timeout: float = 240) -> None:
    """Until ``run_dir``'s metrics.jsonl has a loss for ``step``; fails with the log if ``proc`` ends first."""
    import time

    deadline = time.monotonic() + timeout
    while max(losses(run_dir), default=0) < step:
        assert proc.poll() is None, log.read_text()[-6000:]
        assert time.monotonic() < deadline, log.read_text()[-6000:]
        time.sleep(0.2)


def stop(proc: subprocess.Popen, signum: int, log: Path, pids: list[int] | None = None, timeout: float = 180) -> str:
    """Send ``signum`` to ``proc`` (or to ``pids``), wait for it to end, return its log; kills it if it hangs."""
    import signal

    for pid in pids or [proc.pid]:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return log.read_text()


def assert_saved_at_last_step(run_dir: Path, log_text: str) -> int:
    """The newest checkpoint is whole, is the last step trained, and nothing ``.partial`` is left."""
    ckpts = run_dir / "checkpoints"
    last = max(losses(run_dir))
    assert (ckpts / "latest").read_text().strip() == str(last), log_text[-6000:]
    assert [p.name for p in ckpts.iterdir() if p.name.endswith(".partial")] == [], log_text[-6000:]
    assert f"saved checkpoint {ckpts}/iter_{last:07d}" in log_text, log_text[-6000:]
    # No worker traceback (torchrun prints its own SignalException, see test_signals.py).
    assert "BrokenPipeError" not in log_text and "]: Traceback" not in log_text, log_text[-6000:]
    return last
