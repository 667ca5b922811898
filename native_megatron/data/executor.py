"""The one executor of the data path: a stage's units -> this process's share, each run once.

A stage (prepare's clean, merge, clusters, filter; the standalone dedup's signatures, merge,
clusters, filter) says its units of work, each a :class:`Unit`: a name, its done-marker (identity
and files, :class:`~native_megatron.data.work.Marker`), how to run it and what to clean up first.
:func:`execute` alone decides which units are this process's (:class:`Share`: every unit here over a
pool of workers, or task ``i`` of ``n`` of a SLURM array, which takes the units ``p % n == i``), runs
each through :func:`~native_megatron.data.work.run_unit` (lease, verified marker, cleanup), logs
progress and returns one :class:`Done` per unit, in the units' order. This is datatrove's split of
a ``PipelineStep`` from its Local/Slurm executors, over our markers and leases.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from native_megatron.data.work import Marker, run_unit
from native_megatron.utils.config import ConfigError
from native_megatron.utils.io import Progress
from native_megatron.utils.parallel import ordered_map
from native_megatron.utils.slurm import work_share

logger = logging.getLogger(__name__)


@dataclass
class Unit:
    """One unit of a stage. ``work`` and ``cleanup`` must be picklable (module functions or
    ``functools.partial`` of them) when units run in a pool."""

    name: str
    marker: Marker
    # () -> (the marker's result fields, the files it wrote).
    work: Callable[[], tuple[dict, list]]
    # Removes what a dead holder of the unit left half-written; called under the lease only.
    cleanup: Callable[[], None] | None = None
    lease: Path | None = None


@dataclass(frozen=True)
class Done:
    """A unit's outcome: its marker's content and whether it was found finished (not redone)."""

    name: str
    reused: bool
    record: dict


@dataclass(frozen=True)
class Share:
    """Which units are this process's: every one (``task`` None), or those ``p % num_tasks == task``."""

    task: int | None = None
    num_tasks: int = 1

    def __post_init__(self) -> None:
        if self.task is not None and not 0 <= self.task < self.num_tasks:
            raise ConfigError(f"task {self.task} is outside 0..{self.num_tasks - 1} ({self.num_tasks} tasks)")

    @classmethod
    def of(cls, task: int | None = None, num_tasks: int | None = None) -> "Share":
        """The share given (``task`` of ``num_tasks``), else the SLURM array's, else every unit here."""
        if task is not None:
            return cls(task, num_tasks or 1)
        array = work_share()
        if array is not None and array[1] > 1:
            return cls(*array)
        return cls()

    def mine(self, count: int) -> range:
        """The indices of this process's units among ``count``."""
        return range(count) if self.task is None else range(self.task, count, self.num_tasks)


def run_one(unit: Unit) -> Done:
    record = run_unit(unit.marker, unit.work, cleanup=unit.cleanup, lease_path=unit.lease)
    return Done(unit.name, record.pop("reused"), record)


def execute(stage: str, count: int, unit: Callable[[int], Unit], share: Share = Share(), workers: int = 1,
            describe: Callable[[Done], str] | None = None, progress: bool = True) -> list[Done]:
    """Run this process's share of the stage's ``count`` units, ``unit(i)`` building unit ``i`` (only
    this process's are built: building one may check the files it reads), ``workers`` at a time (1:
    here, for units that use their own pool). Progress: a bar on a terminal, a line every 30 s in a
    batch log, and with ``describe`` a line per unit saying what it did."""
    mine = [unit(i) for i in share.mine(count)]
    start = time.monotonic()
    results = []
    with Progress(len(mine), stage, unit="unit", enabled=progress and len(mine) > 1) as bar:
        for done in ordered_map(run_one, mine, min(workers, len(mine))):
            results.append(done)
            bar.update()
            if describe is not None:
                name = f" {done.name}" if count > 1 else ""
                logger.info("%s%s: %s%s", stage, name, describe(done), " (reused)" if done.reused else "")
    if len(mine) > 1:
        logger.info("%s: %d of %d units here in %.1fs, %d reused", stage, len(mine), count,
                    time.monotonic() - start, sum(d.reused for d in results))
    return results
