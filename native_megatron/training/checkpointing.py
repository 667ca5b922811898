"""Checkpoints with megatron-core dist_checkpointing: atomic, resumable, reshardable.

Layout of ``checkpoint.dir``::

    iter_0000100/            a complete dist_checkpointing checkpoint (+ config.yaml)
    iter_0000200/
    latest                   the step of the newest complete checkpoint, written last
    iter_0000300.partial/    a save in progress (or one a crash interrupted): ignored
    initial/                 the initial weights, with checkpoint.save_initial (for init_from)

Each checkpoint also holds ``config.yaml`` (the run's resolved settings, with
absolute paths) and ``tokenizer/`` (a copy of ``data.tokenizer``), so it can be
exported or evaluated from any directory, or after the data has moved.

A save goes into ``iter_N.partial/`` and is renamed to ``iter_N/`` by rank 0
only after every rank has finished writing; ``latest`` is then replaced
atomically. A crash at any point leaves ``latest`` naming a complete
checkpoint. Model and optimizer are saved in megatron-core's fully reshardable
format, so a checkpoint saved at one TP/PP/DP layout loads at another; the
per-rank RNG states are restored only when the layout is unchanged.

Resuming does not trust ``latest`` alone: files go missing, get truncated by a
full disk or a half-finished copy, and ``latest`` itself can be lost.
:func:`find_resumable` scans the ``iter_*`` folders, newest first, and takes the
first whose files are all present and readable (:func:`checkpoint_problem`);
what it skipped is logged. Rotation deletes old checkpoints only once this run
has written a newer complete one, so nothing good is deleted on the strength
of a broken one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from native_megatron.training.config import SavedConfig
from native_megatron.utils.config import ConfigError, read_yaml
from native_megatron.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

LATEST = "latest"
PARTIAL = ".partial"
TOKENIZER_DIR = "tokenizer"
CONFIG_FILE = "config.yaml"
DATA_SETUP_FILE = "data_setup.json"  # what decides the sample order, compared on resume (training.data.data_setup)
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
# megatron-core's distributed-optimizer format that reshards across TP, PP and DP.
SHARDING_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used; the message names it and says what is wrong."""


def iter_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def _latest_text(root: str | Path) -> str | None:
    try:
        return (Path(root) / LATEST).read_text(errors="replace").strip()
    except OSError:
        return None


def checkpoint_steps(root: str | Path) -> list[int]:
    """Steps of the ``iter_*`` folders under ``root``, complete or not, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _ITER_RE.match(p.name)))


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the dist_checkpointing checkpoint at ``path`` cannot be loaded, or None if it looks whole.

    Checks what a save writes, without reading the tensors: ``metadata.json``
    parses, ``common.pt`` loads, torch.distributed.checkpoint's ``.metadata``
    loads, and every shard file it names is there and long enough for the
    byte ranges it records (a truncated ``__0_0.distcp`` fails here).
    """

    from torch.distributed.checkpoint import FileSystemReader

    path = Path(path)
    meta = path / "metadata.json"
    if not meta.is_file():
        return "metadata.json is missing"
    try:
        json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        return f"metadata.json is unreadable ({type(exc).__name__})"
    common = path / "common.pt"
    if common.exists():
        try:
            torch.load(common, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any failure means this file cannot be loaded
            first = str(exc).splitlines()[0][:80] if str(exc) else ""
            return f"common.pt is unreadable ({type(exc).__name__}: {first})"
    if not (path / ".metadata").is_file():
        return ".metadata is missing"
    try:
        storage = FileSystemReader(str(path)).read_metadata().storage_data
    except Exception as exc:  # noqa: BLE001
        return f".metadata is unreadable ({type(exc).__name__})"
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        have = f.stat().st_size
        if have < size:
            return f"{name} is truncated ({have:,} of {size:,} bytes)"
    return None


@dataclass
class ResumePoint:
    """The checkpoint to resume from (None: none found) and what was passed over on the way."""

    step: int | None
    path: Path | None
    skipped: list[str] = field(default_factory=list)

    def describe_skipped(self) -> str:
        return "; ".join(self.skipped)


def find_resumable(root: str | Path) -> ResumePoint:
    """The newest complete checkpoint under ``root``, found by scanning, whatever ``latest`` says.

    Raises :class:`CheckpointError` when ``root`` holds checkpoints but none can be
    loaded: starting afresh there would train from scratch and rotate the
    checkpoints away.
    """
    root = Path(root)
    steps = checkpoint_steps(root)
    skipped: list[str] = []
    found = None
    for step in reversed(steps):
        problem = checkpoint_problem(iter_dir(root, step))
        if problem is None:
            found = step
            break
        skipped.append(f"{iter_dir(root, step).name}: {problem}")
    latest = _latest_text(root)
    if steps and latest is None:
        skipped.append(f"{LATEST} is missing")
    elif latest is not None and latest != str(found):
        skipped.append(f"{LATEST} says {latest[:40]!r}")
    if found is None and steps:
        raise CheckpointError(f"{root} holds {len(steps)} checkpoint(s) but none can be loaded "
                              f"({'; '.join(skipped)}); nothing was deleted: repair or move them, "
                              f"or give another checkpoint.dir")
    return ResumePoint(found, iter_dir(root, found) if found is not None else None, skipped)


def latest_step(root: str | Path) -> int | None:
    """The step of the newest complete checkpoint under ``root`` (scanned, see :func:`find_resumable`)."""
    point = find_resumable(root)
    if point.skipped and point.step is not None and any(not s.startswith(LATEST) for s in point.skipped):
        logger.warning("%s: using %s, skipping %s", root, point.path.name, point.describe_skipped())
    return point.step


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state_object(key: str = "rng_state"):
    """This rank's RNG states, sharded over (pp, tp) and replicated over data parallel."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    state = {
        "random": __import__("random").getstate(),
        "numpy": __import__("numpy").random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    shape = (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size())
    offset = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank())
    return ShardedObject(key, state, shape, offset, replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def restore_rng_state(state: dict) -> None:
    import random

    import numpy as np
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def model_sharded_state_dict(chunks: list[torch.nn.Module]) -> dict:
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def build_state_dict(chunks, optimizer, scheduler, trainer_state: dict, config: dict,
                     is_loading: bool, with_optimizer: bool = True, with_rng: bool = True) -> dict:
    """The sharded state dict saved and loaded by dist_checkpointing."""
    sd: dict[str, Any] = model_sharded_state_dict(chunks)
    if with_optimizer:
        if is_loading:
            _materialise_optimizer_state(optimizer)
        # The optimizer finds its parameters' shards by walking the model entries.
        sd["optimizer"] = optimizer.sharded_state_dict(dict(sd), is_loading=is_loading,
                                                       metadata=SHARDING_METADATA)
        sd["scheduler"] = scheduler.state_dict()
        sd["trainer"] = trainer_state
    if with_rng:
        sd["rng_state"] = rng_state_object()
    sd["config"] = config
    return sd


def _materialise_optimizer_state(optimizer) -> None:
    """A fresh distributed optimizer has no Adam state to load into; give it placeholder state.

    megatron-core's own routine: a zero-gradient step at the scheduler's initial
    learning rate; every value is then overwritten by the checkpoint.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if isinstance(opt, DistributedOptimizer) and not opt.optimizer.state:
            opt._init_optimizer_states_with_dummy_values()


def _save_atomically(final: Path, state_dict: dict, config_yaml: str, tokenizer: str | None,
                     data_setup: dict | None = None) -> None:
    """Write into ``final.partial`` and rename it to ``final`` once every rank is done."""
    from megatron.core import dist_checkpointing

    from native_megatron.data.tokenizer import copy_tokenizer

    partial = Path(str(final) + PARTIAL)
    if _rank0():
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(state_dict, str(partial), content_metadata=dict(SHARDING_METADATA))
    _barrier()
    if _rank0():
        atomic_write_text(partial / CONFIG_FILE, config_yaml)
        if data_setup is not None:
            atomic_write_text(partial / DATA_SETUP_FILE, json.dumps(data_setup, indent=1) + "\n")
        if tokenizer:
            copy_tokenizer(tokenizer, partial / TOKENIZER_DIR)
        if final.exists():  # re-saving a step (e.g. after a resume): the new one wins
            shutil.rmtree(final)
        os.replace(partial, final)


def save(root: str | Path, step: int, state_dict: dict, config_yaml: str, keep_last: int,
         written: list[int], tokenizer: str | None = None, data_setup: dict | None = None) -> Path:
    """Save atomically as ``iter_{step}`` and point ``latest`` at it. Collective: every rank calls it.

    ``written``: the steps this run has saved so far (``step`` is added); rotation
    only ever deletes checkpoints older than the newest of them.
    """
    final = iter_dir(root, step)
    _save_atomically(final, state_dict, config_yaml, tokenizer, data_setup)
    written.append(step)
    if _rank0():
        atomic_write_text(Path(root) / LATEST, f"{step}\n")
        _prune(root, keep_last, written)
    _barrier()
    return final


def save_weights(path: str | Path, state_dict: dict, config_yaml: str, tokenizer: str | None = None) -> Path:
    """A weights-only checkpoint (for ``checkpoint.init_from``); resuming never picks it up."""
    _save_atomically(Path(path), state_dict, config_yaml, tokenizer)
    _barrier()
    return Path(path)


def read_saved_config(path: str | Path) -> SavedConfig | None:
    """The training settings saved with checkpoint ``path`` (None: it has no config.yaml).

    Keys this version does not know (a checkpoint from another version) are named in one
    warning and ignored; keys an older checkpoint lacks take the defaults and are not in
    ``keys``. A file that is not a YAML mapping, or a value of the wrong type, is a CheckpointError.
    """
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    try:
        data = read_yaml(file)  # its errors name the file
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    try:
        saved = SavedConfig.from_dict(data)
    except ConfigError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    if saved.unknown:
        _warn_unknown_keys(str(file), saved.unknown)
    return saved


def read_data_setup(path: str | Path) -> dict | None:
    """The data setup saved with checkpoint ``path`` (None: saved by a version that did not write it)."""
    file = Path(path) / DATA_SETUP_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is unreadable ({type(exc).__name__}): repair or delete it") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is not a JSON object: repair or delete it")
    return data


@functools.lru_cache(maxsize=None)
def _warn_unknown_keys(file: str, keys: tuple[str, ...]) -> None:
    # Cached: a conversion reads the same checkpoint's config more than once; one warning is enough.
    logger.warning("%s: ignoring settings this version does not know (written by another version?): %s",
                   file, ", ".join(keys))


def _prune(root: str | Path, keep_last: int, written: list[int]) -> None:
    """Keep the newest ``keep_last`` whole checkpoints; delete older ones, never newer than this run's newest.

    A checkpoint newer than what this run wrote (say one a resume skipped as
    broken, or another run's) is left alone: it may be all someone has.
    """
    newest = max(written)
    steps = checkpoint_steps(root)
    whole = [s for s in steps if s in written or checkpoint_problem(iter_dir(root, s)) is None]
    keep = set(whole[-keep_last:]) | {newest}
    for step in steps:
        if step < newest and step not in keep:
            shutil.rmtree(iter_dir(root, step), ignore_errors=True)
    for p in Path(root).iterdir():
        if p.name.endswith(PARTIAL):
            shutil.rmtree(p, ignore_errors=True)


def load(path: str | Path, state_dict: dict) -> dict:
    """Load ``state_dict``'s entries from ``path`` (any TP/PP/DP layout).

    Every requested entry must be in the checkpoint; entries we do not ask for
    (the optimizer when loading weights only, RNG states of another layout) are
    left on disk.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    try:
        return dist_checkpointing.load(state_dict, str(path), strict=StrictHandling.RAISE_UNEXPECTED)
    except Exception as exc:  # noqa: BLE001 - megatron-core raises many types; the user needs the path
        problem = checkpoint_problem(path)
        detail = problem or f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        raise CheckpointError(f"cannot load checkpoint {path}: {detail}") from exc


def saved_layout_matches(path: str | Path) -> bool:
    """Whether the checkpoint's RNG shards fit the current (pp, tp) layout."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing import load_common_state_dict

    common = load_common_state_dict(str(path))
    saved = (common.get("config") or {}).get("parallel", {})
    return (saved.get("tensor") == ps.get_tensor_model_parallel_world_size()
            and saved.get("pipeline") == ps.get_pipeline_model_parallel_world_size())
