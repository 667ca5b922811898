"""The SLURM launcher: torchrun flags from recorded job environments, and pretrain.sbatch run end to end.

The end-to-end tests run examples/slurm/pretrain.sbatch itself with bash, in a
SLURM-like environment of two "nodes" on this machine (localhost and 127.0.0.1):
a stand-in ``srun`` (tests/launch/fake_slurm) starts one launcher per node, each
launcher starts torchrun, and the two torchruns meet at a c10d rendezvous hosted
by the first node, so the trainer sees a world of two gloo ranks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from native_megatron.launch.torchrun import default_port, plan_from_slurm
from native_megatron.utils.config import ConfigError
from tests.helpers.launch_env import recorded_env
from tests.helpers.ports import free_port
from tests.helpers.training import MOCK_TINY, ROOT, TINY, losses, metrics

FAKE_SLURM = Path(__file__).resolve().parent / "fake_slurm"
SBATCH = ROOT / "examples" / "slurm" / "pretrain.sbatch"


def test_single_node_plan():
    plan = plan_from_slurm(recorded_env("single_node_8gpu"))
    assert plan.torchrun_args() == [
        "--nnodes=1", "--nproc-per-node=8", "--node-rank=0", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=gpu-h100-017:{default_port('1834467')}", "--rdzv-id=1834467-0",
        "--rdzv-conf=is_host=true", "--max-restarts=0"]


def test_multi_node_plan_points_every_node_at_the_first():
    plan = plan_from_slurm(recorded_env("multi_node_4x8_node2"), port=29500)
    assert (plan.nnodes, plan.nproc_per_node, plan.node_rank, plan.world_size) == (4, 8, 2, 32)
    args = plan.torchrun_args()
    assert "--rdzv-endpoint=gpu-h100-017:29500" in args
    assert "--rdzv-conf=is_host=false" in args
    # A requeued job starts a fresh rendezvous rather than joining the dead one's.
    assert "--rdzv-id=2291003-1" in args


def test_gpus_from_gres_when_slurm_gives_no_count():
    plan = plan_from_slurm(recorded_env("multi_node_2x4_a100_nodeid_missing"))
    assert (plan.nnodes, plan.nproc_per_node, plan.node_rank, plan.master_addr) == (2, 4, 1, "a100n3")


def test_ports_differ_between_jobs_and_stay_in_range():
    ports = {default_port(str(j)) for j in range(1834467, 1834477)}
    assert len(ports) == 10 and all(20000 <= p < 40000 for p in ports)


def test_user_mistakes_are_one_line_errors():
    env = recorded_env("single_node_8gpu")
    no_gpus = {k: v for k, v in env.items() if "GPU" not in k}
    with pytest.raises(ConfigError, match="--nproc-per-node"):
        plan_from_slurm(no_gpus)
    assert plan_from_slurm(no_gpus, nproc_per_node=2).nproc_per_node == 2
    with pytest.raises(ConfigError, match="one launcher per node"):
        plan_from_slurm({**env, "SLURM_NTASKS": "8"})


def test_launcher_cli_prints_the_flags_and_explains_errors():
    env = dict(os.environ, **recorded_env("multi_node_4x8_node2"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "native_megatron.launch", "--print", "--port", "29500"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == plan_from_slurm(recorded_env("multi_node_4x8_node2"), port=29500).torchrun_args()
    outside = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    bad = subprocess.run([sys.executable, "-m", "native_megatron.launch", "train.py"], env=outside,
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: not inside a SLURM job")


# ---- pretrain.sbatch, end to end --------------------------------------------------------------------


def sbatch_env(tmp_path: Path, restart_count: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "RANK", "WORLD", "MASTER"))}
    bindir = str(Path(sys.executable).parent)
    env.update(
        PATH=os.pathsep.join([str(FAKE_SLURM), bindir, env.get("PATH", "")]),
        PYTHONPATH=str(ROOT), PYTHON=sys.executable, REPO=str(ROOT), OMP_NUM_THREADS="1",
        FAKE_SLURM_LOG=str(tmp_path / "slurm_calls.log"), NPROC_PER_NODE="1", RDZV_PORT=str(free_port()),
        SLURM_JOB_ID="4242", SLURM_JOB_NAME="native-megatron", SLURM_JOB_NODELIST="localhost,127.0.0.1",
        SLURM_JOB_NUM_NODES="2", SLURM_NNODES="2", SLURM_NODEID="0", SLURM_PROCID="0", SLURM_NTASKS="2",
        SLURM_SUBMIT_DIR=str(ROOT), SLURM_RESTART_COUNT=str(restart_count),
    )
    return env


def sbatch_args(run_dir: Path, steps: int) -> list[str]:
    return ["bash", str(SBATCH), str(TINY), *MOCK_TINY, f"--logging.run_dir={run_dir}",
            f"--schedule.train_steps={steps}"]


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "slurm_calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.slow
def test_pretrain_sbatch_trains_on_two_nodes(tmp_path):
    run = tmp_path / "run"
    out = subprocess.run(sbatch_args(run, 3), env=sbatch_env(tmp_path), capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    assert sorted(losses(run)) == [1, 2, 3]
    assert "DP=2" in out.stderr  # two nodes x one process: data parallel over both
    assert "--nnodes=2" in out.stdout and "training exited with status 0" in out.stdout
    assert calls(tmp_path) == []  # finished: nothing requeued


@pytest.mark.slow
def test_pretrain_sbatch_saves_at_the_time_limit_requeues_and_resumes(tmp_path):
    run, steps = tmp_path / "run", 400
    log = open(tmp_path / "job.log", "w")
    job = subprocess.Popen(sbatch_args(run, steps), env=sbatch_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                           cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while max(losses(run), default=0) < 3:
            assert job.poll() is None, (tmp_path / "job.log").read_text()[-6000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@600 does before the time limit
        assert job.wait(timeout=240) == 0, (tmp_path / "job.log").read_text()[-6000:]
    finally:
        if job.poll() is None:
            job.kill()
        log.close()
    stopped_at = max(losses(run))
    assert 3 <= stopped_at < steps, "the signal should stop training early"
    assert (run / "checkpoints" / f"iter_{stopped_at:07d}").is_dir()
    assert "srun got SIGUSR1" in calls(tmp_path)
    assert "scontrol requeue 4242" in calls(tmp_path)

    # SLURM starts the requeued job with the same command: it resumes and finishes.
    out = subprocess.run(sbatch_args(run, steps), env=sbatch_env(tmp_path, restart_count=1),
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    steps_logged = [r["step"] for r in metrics(run) if "loss" in r]
    assert sorted(steps_logged) == list(range(1, steps + 1)), "every step exactly once across the two jobs"
    assert calls(tmp_path).count("scontrol requeue 4242") == 1


def test_pretrain_sbatch_passes_cpus_per_task_to_srun(tmp_path):
    # SLURM >= 22.05: srun does not inherit the job's --cpus-per-task; without it each node gets one CPU.
    stub = tmp_path / "python"
    stub.write_text('#!/bin/bash\n# the launcher\'s --print answers; the training tasks do nothing\n'
                    'for a in "$@"; do [[ $a == --print ]] && { echo --nnodes=2; exit 0; }; done\nexit 0\n')
    stub.chmod(0o755)
    env = dict(sbatch_env(tmp_path), PYTHON=str(stub), SLURM_CPUS_PER_TASK="64",
               FAKE_SRUN_LOG=str(tmp_path / "srun.log"))
    out = subprocess.run(["bash", str(SBATCH), str(TINY)], env=env, capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    srun_calls = (tmp_path / "srun.log").read_text().splitlines()
    assert srun_calls and all("--cpus-per-task=64" in line.split() for line in srun_calls), srun_calls


@pytest.mark.parametrize("script", sorted((ROOT / "examples" / "slurm").glob("*.sbatch")), ids=lambda p: p.name)
def test_every_srun_in_the_sbatch_scripts_carries_cpus_per_task(script):
    lines = [line for line in script.read_text().splitlines()
             if line.lstrip().startswith("srun ") or " srun " in line.split("#")[0]]
    for line in lines:
        assert "cpus-per-task" in line or "srun_opts" in line, f"{script.name}: {line.strip()}"
    if "srun_opts" in script.read_text():
        assert "--cpus-per-task=" in script.read_text()
