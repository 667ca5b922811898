"""Save-and-exit on SIGTERM / SIGUSR1 (SLURM pre-emption and time limits) and Ctrl-C (SIGINT).

The handler only sets a flag; the trainer checks it after each step, agrees on
it across ranks (a signal may reach ranks at different steps) and then saves a
checkpoint and exits cleanly, so the next job resumes where this one stopped.
A second Ctrl-C exits at once, without saving (exit code 130), for when the
save is not wanted or cannot finish. Under torchrun, Ctrl-C reaches torchrun,
which forwards one SIGINT to the workers and kills them 30 s later: enough for
a small model's save; for large ones send SIGUSR1/SIGTERM to the workers, as
the SLURM scripts do.
"""

from __future__ import annotations

import logging
import os
import signal

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionHandler:
    def __init__(self) -> None:
        self.received: int | None = None
        self.interrupts = 0
        self._previous = {}
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.interrupts:
            logger.warning("second interrupt: exiting now, without saving")
            logging.shutdown()
            os._exit(130)
        if signum == signal.SIGINT:
            self.interrupts += 1
        if self.received is None:
            logger.warning("received %s: saving a checkpoint after this step, then exiting",
                           signal.Signals(signum).name)
        self.received = signum

    def should_stop(self, device: torch.device) -> bool:
        """True on every rank if any rank got a signal (collective: call on all ranks)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
