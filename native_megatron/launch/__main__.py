"""Run torchrun on this node of a SLURM job, joining a rendezvous on the job's first node.

    srun --ntasks-per-node=1 python -m native_megatron.launch pretrain_arabic.py --config CFG [overrides]
    python -m native_megatron.launch --standalone --nproc-per-node 8 pretrain_arabic.py --config CFG

One task per node: each reads SLURM's environment (node list, node id, GPUs on
the node, job id), starts torchrun with a c10d rendezvous hosted by the first
node, and passes SIGUSR1 (SLURM's warning before the time limit) and SIGTERM
(scancel, pre-emption, a pod stop) to the training processes, which save a
checkpoint and exit; the launcher then exits 0. ``--standalone`` runs one
machine without SLURM (e.g. as a Kubernetes container's command).
"""

from __future__ import annotations

import argparse
import sys

from native_megatron.launch.torchrun import (
    plan_from_slurm,
    plan_standalone,
    run_torchrun,
    torchrun_command_line,
)
from native_megatron.utils.config import ConfigError
from native_megatron.utils.logging import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m native_megatron.launch",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--nproc-per-node", type=int, help="processes per node (default: the node's GPUs in SLURM)")
    parser.add_argument("--port", type=int, help="rendezvous port on the first node (default: from the job id)")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="torchrun restarts of failed workers before the step fails (default 0)")
    parser.add_argument("--standalone", action="store_true",
                        help="one machine, no SLURM: torchrun --standalone (needs --nproc-per-node)")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print the torchrun flags for this node and exit")
    parser.add_argument("script", nargs="?", help="the training script, e.g. pretrain_arabic.py")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    try:
        if args.standalone:
            plan = plan_standalone(args.nproc_per_node, max_restarts=args.max_restarts)
        else:
            plan = plan_from_slurm(nproc_per_node=args.nproc_per_node, port=args.port,
                                   max_restarts=args.max_restarts)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_only:
        print(torchrun_command_line(plan))
        return 0
    if not args.script:
        parser.error("give the script to run, e.g. pretrain_arabic.py --config CFG")
    return run_torchrun(plan, [args.script, *args.script_args])


if __name__ == "__main__":
    sys.exit(main())
