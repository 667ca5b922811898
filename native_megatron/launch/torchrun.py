"""SLURM job step -> torchrun command line, and a parent that passes pre-emption signals on.

One ``srun`` task per node runs this launcher. It reads the job from SLURM's
environment (:mod:`native_megatron.utils.slurm`), points every node's torchrun
at a c10d rendezvous hosted on the job's first node, and starts torchrun.

On one machine (a workstation, a Kubernetes pod) ``--standalone`` runs the same
torchrun without SLURM.

Signals: SLURM warns a job before its time limit with SIGUSR1 (``--signal``);
``scancel``, a pre-emption and a Kubernetes pod stop send SIGTERM. The trainer
saves a checkpoint and exits 0 on either. torchrun must not act on them itself:
SIGUSR1's default action kills it, and on SIGTERM it signals its workers, kills
them ``--shutdown-timeout`` seconds later (30 by default) and exits 1 whatever
they did. The launcher therefore starts torchrun with both ignored (and SIGTERM
left out of torchrun's ``--signals-to-handle``; workers install their own
handlers) and sends each to the workers itself; torchrun then exits with their
status, 0 after a save. SIGINT (Ctrl-C) still goes to torchrun.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from native_megatron.utils.config import ConfigError
from native_megatron.utils.slurm import SlurmEnv, read_slurm_env

logger = logging.getLogger(__name__)

# Ports 20000-39999: derived from the job id so that two jobs sharing a first
# node (shared partitions) do not race for the same rendezvous port.
_PORT_BASE, _PORT_SPAN = 20000, 20000


def default_port(job_id: str) -> int:
    digits = "".join(ch for ch in job_id if ch.isdigit()) or "0"
    return _PORT_BASE + int(digits) % _PORT_SPAN


@dataclass(frozen=True)
class LaunchPlan:
    """What this node's torchrun needs to join the job's rendezvous."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    rdzv_id: str
    max_restarts: int = 0
    standalone: bool = False  # one machine, torchrun's own local rendezvous (no SLURM)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def is_rendezvous_host(self) -> bool:
        return self.node_rank == 0

    def torchrun_args(self) -> list[str]:
        if self.standalone:
            return ["--standalone", f"--nproc-per-node={self.nproc_per_node}", f"--max-restarts={self.max_restarts}"]
        # is_host is given, not guessed: torchrun's guess compares the endpoint with
        # this machine's hostnames, which fails where node names are aliases.
        return [
            f"--nnodes={self.nnodes}",
            f"--nproc-per-node={self.nproc_per_node}",
            f"--node-rank={self.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={self.master_addr}:{self.master_port}",
            f"--rdzv-id={self.rdzv_id}",
            f"--rdzv-conf=is_host={'true' if self.is_rendezvous_host else 'false'}",
            f"--max-restarts={self.max_restarts}",
        ]

    def describe(self) -> str:
        if self.standalone:
            return f"one node, {self.nproc_per_node} processes (standalone)"
        return (f"node {self.node_rank + 1}/{self.nnodes}, {self.nproc_per_node} processes per node, "
                f"world size {self.world_size}, rendezvous {self.master_addr}:{self.master_port} "
                f"(id {self.rdzv_id})")


def plan_from_slurm(env: Mapping[str, str] | None = None, nproc_per_node: int | None = None,
                    port: int | None = None, max_restarts: int = 0) -> LaunchPlan:
    """The torchrun plan for this node. ``nproc_per_node`` defaults to the node's GPUs in SLURM."""
    job: SlurmEnv = read_slurm_env(env)
    nproc = nproc_per_node or job.gpus_per_node
    if not nproc:
        raise ConfigError("SLURM gives no GPU count for this node (SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE): "
                          "ask for GPUs with --gpus-per-node, or pass --nproc-per-node")
    if job.ntasks != job.num_nodes:
        raise ConfigError(f"the step has {job.ntasks} tasks on {job.num_nodes} nodes: run one launcher per node "
                          "(srun --ntasks-per-node=1)")
    return LaunchPlan(nnodes=job.num_nodes, nproc_per_node=nproc, node_rank=job.node_rank,
                      master_addr=job.first_node, master_port=port or default_port(job.job_id),
                      rdzv_id=f"{job.job_id}-{job.restart_count}", max_restarts=max_restarts)


def plan_standalone(nproc_per_node: int | None, max_restarts: int = 0) -> LaunchPlan:
    """The torchrun plan for a single machine outside SLURM."""
    if not nproc_per_node:
        raise ConfigError("--standalone needs --nproc-per-node (the processes to start on this machine)")
    return LaunchPlan(nnodes=1, nproc_per_node=nproc_per_node, node_rank=0, master_addr="localhost",
                      master_port=0, rdzv_id="standalone", max_restarts=max_restarts, standalone=True)


# Signals the launcher hands to the workers itself; torchrun ignores them (see the module's docstring).
TO_WORKERS = (signal.SIGTERM, signal.SIGUSR1)
# How often a stop signal is passed on again until torchrun exits.
RESEND_SECONDS = 5.0
# What torchrun still handles: its default list without SIGTERM.
TORCHRUN_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def _ignore_worker_signals() -> None:
    for sig in TO_WORKERS:
        signal.signal(sig, signal.SIG_IGN)


def run_torchrun(plan: LaunchPlan, script_and_args: list[str], python: str = sys.executable) -> int:
    """Run torchrun for this node until it exits; returns its exit status."""
    import psutil

    cmd = [python, "-m", "torch.distributed.run", *plan.torchrun_args(), f"--signals-to-handle={TORCHRUN_SIGNALS}",
           *script_and_args]
    logger.info("%s: %s", plan.describe(), " ".join(cmd))
    proc = subprocess.Popen(cmd, preexec_fn=_ignore_worker_signals)

    received: list[int] = []

    def send(signum: int) -> int:
        try:
            workers = psutil.Process(proc.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return 0
        for worker in workers:
            try:
                worker.send_signal(signum)
            except psutil.NoSuchProcess:
                pass
        return len(workers)

    def to_workers(signum, frame) -> None:
        received.append(signum)
        logger.warning("%s: passing it to %d worker(s)", signal.Signals(signum).name, send(signum))

    def to_torchrun(signum, frame) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, to_workers) for sig in TO_WORKERS}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, to_torchrun)
    try:
        while True:
            try:
                return proc.wait(timeout=RESEND_SECONDS)
            except subprocess.TimeoutExpired:
                # A worker still importing has not installed its handler yet and ignores the signal
                # (inherited from torchrun): say it again until they have all acted on it.
                if received:
                    send(received[-1])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def torchrun_command_line(plan: LaunchPlan) -> str:
    """The flags, for scripts that run torchrun themselves: ``torchrun $(... --print) train.py``."""
    return " ".join(plan.torchrun_args())
