"""SLURM's environment, read back: hostlists, node ranks, GPU counts, job-array shares."""

from __future__ import annotations

import pytest

from native_megatron.utils.config import ConfigError
from native_megatron.utils.slurm import expand_hostlist, read_slurm_env, work_share
from tests.helpers.launch_env import recorded_env as recorded


@pytest.mark.parametrize("hostlist, hosts", [
    ("gpu-017", ["gpu-017"]),
    ("gpu-[017-018,101-102]", ["gpu-017", "gpu-018", "gpu-101", "gpu-102"]),
    ("a100n[3,7]", ["a100n3", "a100n7"]),
    ("node[8-11]", ["node8", "node9", "node10", "node11"]),
    ("rack[1-2]-gpu[01-02]", ["rack1-gpu01", "rack1-gpu02", "rack2-gpu01", "rack2-gpu02"]),
    ("login1,gpu-[1-2],cpu9", ["login1", "gpu-1", "gpu-2", "cpu9"]),
])
def test_hostlists_expand_like_scontrol_show_hostnames(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["gpu-[1-", "gpu-[3-1]", "gpu-[a-b]", "gpu-1]"])
def test_malformed_hostlists_are_one_line_errors(bad):
    with pytest.raises(ConfigError, match="hostlist"):
        expand_hostlist(bad)


def test_single_node_job():
    job = read_slurm_env(recorded("single_node_8gpu"))
    assert (job.nodes, job.node_rank, job.gpus_per_node, job.ntasks) == (("gpu-h100-017",), 0, 8, 1)
    assert not job.is_array_task and job.restart_count == 0


def test_multi_node_job_on_its_third_node():
    job = read_slurm_env(recorded("multi_node_4x8_node2"))
    assert job.nodes == ("gpu-h100-017", "gpu-h100-018", "gpu-h100-101", "gpu-h100-102")
    assert (job.first_node, job.node_rank, job.gpus_per_node, job.restart_count) == ("gpu-h100-017", 2, 8, 1)


def test_node_rank_from_the_node_name_when_slurm_nodeid_is_missing():
    job = read_slurm_env(recorded("multi_node_2x4_a100_nodeid_missing"))
    assert (job.nodes, job.node_rank, job.gpus_per_node) == (("a100n3", "a100n7"), 1, 4)


def test_job_array_shares():
    job = read_slurm_env(recorded("job_array_task5_of_8"))
    assert (job.array_task_id, job.array_index, job.array_count) == (5, 5, 8)
    assert work_share(recorded("job_array_task5_of_8")) == (5, 8)
    assert work_share(recorded("job_array_stepped")) == (3, 8)  # ids 10, 12, 14, 16, ...
    assert work_share({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}) == (3, 4)
    assert work_share({}) is None


def test_an_irregular_job_array_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"--array=0-2"):
        work_share(recorded("job_array_irregular"))


def test_inconsistent_or_missing_environments():
    env = recorded("multi_node_4x8_node2")
    with pytest.raises(ConfigError, match="SLURM_JOB_NUM_NODES=5"):
        read_slurm_env({**env, "SLURM_JOB_NUM_NODES": "5", "SLURM_NNODES": "5"})
    with pytest.raises(ConfigError, match="SLURM_NODEID=7"):
        read_slurm_env({**env, "SLURM_NODEID": "7"})
    with pytest.raises(ConfigError, match="not inside a SLURM job"):
        read_slurm_env({})
