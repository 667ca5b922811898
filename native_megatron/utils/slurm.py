"""What a SLURM job step tells its processes, read from the environment.

SLURM describes a job in environment variables: the compressed node list
(``gpu-[001-004,010]``), this task's node index, the GPUs on the node, the
job-array index. :class:`SlurmEnv` reads them once, checks them and answers
the questions launchers ask: who is the first node, how many nodes, which
node am I, how many GPUs here, which share of a job array is mine. It reads a
mapping (``os.environ`` by default), so tests replay recorded environments.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from native_megatron.utils.config import ConfigError

# A hostlist: comma-separated names, each with optional bracketed ranges such as
# node[01-04,7] or rack[1-2]-gpu[01-02] (ranges keep their zero padding).
_BRACKET = re.compile(r"\[([^\]]+)\]")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"bad SLURM hostlist {text!r}: unbalanced ']'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ConfigError(f"bad SLURM hostlist {text!r}: unbalanced '['")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(spec: str, hostlist: str) -> list[str]:
    out = []
    for item in spec.split(","):
        item = item.strip()
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ConfigError(f"bad SLURM hostlist {hostlist!r}: range {item!r}")
            width = len(lo)
            out.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
        elif item.isdigit():
            out.append(item)
        else:
            raise ConfigError(f"bad SLURM hostlist {hostlist!r}: {item!r} is not a number or range")
    return out


def expand_hostlist(hostlist: str) -> list[str]:
    """``gpu-[001-003],login1`` -> ``['gpu-001', 'gpu-002', 'gpu-003', 'login1']`` (scontrol's order)."""
    hosts: list[str] = []
    for name in _split_top_level(hostlist):
        pieces = _BRACKET.split(name)  # literal, range, literal, range, ..., literal
        expanded = [""]
        for i, piece in enumerate(pieces):
            options = _expand_range(piece, hostlist) if i % 2 else [piece]
            expanded = [prefix + option for prefix in expanded for option in options]
        hosts.extend(expanded)
    return hosts


def _gpu_count(value: str) -> int | None:
    """SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE values: ``8``, ``h100:8``, ``gpu:a100:4(x2)``."""
    value = value.strip()
    if not value:
        return None
    first = value.split(",")[0]
    first = re.sub(r"\(x\d+\)$", "", first)
    count = first.rsplit(":", 1)[-1]
    return int(count) if count.isdigit() else None


@dataclass(frozen=True)
class SlurmEnv:
    job_id: str
    nodes: tuple[str, ...]
    node_rank: int
    gpus_per_node: int | None
    procid: int
    ntasks: int
    array_task_id: int | None = None
    array_index: int | None = None
    array_count: int | None = None
    restart_count: int = 0

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def first_node(self) -> str:
        return self.nodes[0]

    @property
    def is_array_task(self) -> bool:
        return self.array_index is not None


def in_slurm(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env


def _int(env: Mapping[str, str], key: str, default: int | None = None) -> int | None:
    value = env.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not an integer") from None


def _array_share(env: Mapping[str, str]) -> tuple[int | None, int | None, int | None]:
    """(task id, index among the array's tasks, task count) of a job-array task.

    SLURM gives the id and min/max/step/count; ids of ``--array=0-31`` or
    ``--array=4-10:2`` map to 0..count-1. An irregular list (``--array=1,5,9``)
    has no index SLURM can tell us, so it is an error.
    """
    task_id = _int(env, "SLURM_ARRAY_TASK_ID")
    if task_id is None:
        return None, None, None
    count = _int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    lo = _int(env, "SLURM_ARRAY_TASK_MIN", 0)
    step = _int(env, "SLURM_ARRAY_TASK_STEP", 1) or 1
    hi = _int(env, "SLURM_ARRAY_TASK_MAX", lo + (count - 1) * step)
    if count == 1:
        return task_id, 0, 1
    if (hi - lo) // step + 1 != count or (task_id - lo) % step:
        raise ConfigError(f"job array {lo}-{hi}:{step} with {count} tasks is not a regular range: submit it "
                          f"as --array=0-{count - 1} so each task can tell its share of the work")
    return task_id, (task_id - lo) // step, count


def read_slurm_env(env: Mapping[str, str] | None = None) -> SlurmEnv:
    """The job step this process is in. Raises ConfigError outside SLURM or on inconsistent values."""
    env = os.environ if env is None else env
    if not in_slurm(env):
        raise ConfigError("not inside a SLURM job (SLURM_JOB_ID is not set): run under sbatch/srun")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURMD_NODENAME", "")
    nodes = tuple(expand_hostlist(nodelist))
    if not nodes:
        raise ConfigError("SLURM_JOB_NODELIST is empty")
    declared = _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES"))
    if declared is not None and declared != len(nodes):
        raise ConfigError(f"SLURM_JOB_NUM_NODES={declared} but the node list {nodelist!r} has {len(nodes)} nodes")
    node_rank = _int(env, "SLURM_NODEID")
    if node_rank is None:
        here = env.get("SLURMD_NODENAME")
        node_rank = nodes.index(here) if here in nodes else 0
    if not 0 <= node_rank < len(nodes):
        raise ConfigError(f"SLURM_NODEID={node_rank} is outside the job's {len(nodes)} nodes")
    gpus = None
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        if env.get(key):
            gpus = _gpu_count(env[key])
            if gpus is not None:
                break
    if gpus is None and env.get("SLURM_JOB_GPUS"):
        gpus = len([g for g in env["SLURM_JOB_GPUS"].split(",") if g.strip()])
    array_task_id, array_index, array_count = _array_share(env)
    return SlurmEnv(
        job_id=env["SLURM_JOB_ID"],
        nodes=nodes,
        node_rank=node_rank,
        gpus_per_node=gpus,
        procid=_int(env, "SLURM_PROCID", 0),
        ntasks=_int(env, "SLURM_NTASKS", 1),
        array_task_id=array_task_id,
        array_index=array_index,
        array_count=array_count,
        restart_count=_int(env, "SLURM_RESTART_COUNT", 0),
    )


def work_share(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """(index, count) of this process's share of split work: a job-array task, else a SLURM task; None outside."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env:
        _, index, count = _array_share(env)
        return index, count
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return _int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS")
    return None
