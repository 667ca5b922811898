"""One logging setup for every entry point: rank-aware, quiet third-party noise."""

from __future__ import annotations

import logging
import os
import warnings


def get_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


def setup_logging(level: str = "INFO", all_ranks: bool = False) -> None:
    """Log to stderr; only rank 0 speaks below WARNING unless ``all_ranks``.

    Every rank printing the same line N times is the commonest complaint about
    distributed trainers; warnings and errors still come from every rank.
    """
    rank = get_rank()
    fmt = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"
    if rank or all_ranks:
        fmt = f"[%(asctime)s] [rank {rank}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, datefmt="%H:%M:%S", force=True)
    if rank != 0 and not all_ranks:
        logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    quiet_third_party()


def quiet_third_party() -> None:
    """megatron-core warns at import that TE/apex are missing; that is expected on CPU."""
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
    # megatron-core 0.16 calls collectives that torch 2.13 renamed, and sets a
    # deprecated default itself; neither is something a user can act on.
    warnings.filterwarnings("ignore", message=".*(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated.*")
    warnings.filterwarnings("ignore", message="full scope is deprecated.*")
    warnings.filterwarnings("ignore", message="The .grad attribute of a Tensor that is not a leaf Tensor",
                            module="megatron.*")
    logging.getLogger("megatron.core.rerun_state_machine").setLevel(logging.ERROR)
    # megatron-core logs every index it opens at INFO; keep its warnings only.
    for name in ("megatron", "urllib3", "httpx", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
