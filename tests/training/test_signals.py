"""Signals a cluster sends, each to the process it really reaches: torchrun itself, the launcher, every process.

Real torchruns (2 gloo ranks, TP=2, mock data) and real signals. torchrun passes SIGTERM to each worker's
process group, which also holds megatron-core's checkpoint-writer helpers; ``scancel`` signals every
process of the step at once.
"""

from __future__ import annotations

import signal
import sys

import psutil
import pytest

from tests.helpers.training import (
    MOCK_TINY,
    SCRIPT,
    TINY,
    assert_saved_at_last_step,
    start_in_session,
    stop,
    wait_for_step,
)

LONG = [*MOCK_TINY, "--parallel.tensor=2", "--schedule.train_steps=100000", "--checkpoint.save_interval=2",
        "--checkpoint.keep_last=1"]


def start_past_a_save(launcher: list[str], tmp_path):
    """The long tiny run under ``python -m LAUNCHER...`` in its own session, once past a save (so
    megatron-core's writer helpers are running): (process, run dir, log file)."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    cmd = [sys.executable, "-m", *launcher, str(SCRIPT), "--config", str(TINY), f"--logging.run_dir={run_dir}",
           *LONG]
    proc = start_in_session(cmd, log)
    wait_for_step(proc, run_dir, 3, log)
    return proc, run_dir, log


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_the_current_step(tmp_path):
    proc, run_dir, log = start_past_a_save(["torch.distributed.run", "--nproc-per-node=2", "--standalone"],
                                           tmp_path)
    text = stop(proc, signal.SIGTERM, log)
    assert_saved_at_last_step(run_dir, text)
    assert "received SIGTERM" in text
    # Nothing for a CPU user to act on: megatron-core's CUDA stream advice is not printed per rank.
    assert "UserWarning" not in text and "FutureWarning" not in text
    # torchrun's own status after a signal is 1 (it re-raises its SignalException), whatever the workers did.
    assert proc.returncode == 1


@pytest.mark.slow
def test_sigterm_to_every_process_under_the_launcher_saves_and_exits_0(tmp_path):
    # What scancel (through srun's step) and a pod stop do: every process gets SIGTERM at once.
    proc, run_dir, log = start_past_a_save(["native_megatron.launch", "--standalone", "--nproc-per-node=2"],
                                           tmp_path)
    pids = [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]
    assert len(pids) >= 5  # launcher, torchrun, two workers, their writer helpers
    text = stop(proc, signal.SIGTERM, log, pids)
    assert proc.returncode == 0, text[-6000:]
    assert_saved_at_last_step(run_dir, text)
