"""Launch torchrun on every node of a SLURM job (see ``python -m native_megatron.launch --help``)."""

from native_megatron.launch.torchrun import LaunchPlan, plan_from_slurm, run_torchrun

__all__ = ["LaunchPlan", "plan_from_slurm", "run_torchrun"]
