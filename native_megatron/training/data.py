"""Training data: megatron-core GPTDatasets blended by BlendedMegatronDatasetBuilder.

Sample order is fixed by ``data.seed`` (megatron-core shuffles and caches its
indices); which samples a rank reads is fixed by the number of samples already
consumed, so a run resumed from a checkpoint reads exactly the samples the
uninterrupted run would have read next.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Iterator

import torch

from native_megatron.data import indexed
from native_megatron.data.tokenizer import TokenizerError, load_tokenizer
from native_megatron.training.config import TrainConfig, blend_prefixes, parse_blend
from native_megatron.training.distributed import decided_on_rank0
from native_megatron.utils.config import ConfigError

logger = logging.getLogger(__name__)


class DatasetTokenizer:
    """What megatron-core's GPTDataset asks of a tokenizer: vocabulary size and the EOD id."""

    def __init__(self, vocab_size: int, eod: int, path: str | None = None) -> None:
        self.vocab_size = vocab_size
        self.eod = eod
        self.eos = eod
        # megatron-core hashes this into the names of its cached sample indices.
        self.unique_identifiers = {"class": type(self).__name__, "path": path, "vocab_size": vocab_size,
                                   "eod": eod}

    @classmethod
    def from_path(cls, path: str) -> "DatasetTokenizer":
        try:
            tok = load_tokenizer(path)
        except TokenizerError as exc:
            raise ConfigError(f"data.tokenizer: {exc}") from None
        return cls(tok.vocab_size, tok.eod_id, os.path.abspath(path))


@dataclass
class Datasets:
    train: torch.utils.data.Dataset
    valid: torch.utils.data.Dataset | None
    tokenizer: DatasetTokenizer


def split_sizes(cfg: TrainConfig) -> list[int]:
    """Samples to draw per split: all training steps, and every validation pass."""
    s = cfg.schedule
    train = s.train_steps * s.global_batch_size
    evals = (s.train_steps // s.eval_interval + 1) if s.eval_interval else int(s.skip_train)
    return [train, evals * s.eval_steps * s.global_batch_size, 0]


def build_datasets(cfg: TrainConfig) -> Datasets:
    """Build the train and validation datasets on every rank (rank 0 first, as megatron-core does)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    d = cfg.data
    if d.sft_dir:
        return build_sft_datasets(cfg)
    if d.mock:
        tokenizer = DatasetTokenizer(cfg.model.vocab_size or 1024, 0)
        blend = None
    else:
        tokenizer = DatasetTokenizer.from_path(d.tokenizer)
        weights, prefixes = parse_blend(d.paths)
        blend = (prefixes, weights)
    cache = d.cache_dir or os.path.join(cfg.run_dir(), "data_cache")
    config = GPTDatasetConfig(
        random_seed=d.seed,
        sequence_length=d.seq_length,
        blend=blend,
        split=d.split,
        path_to_cache=cache,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=d.eod_mask_loss,
        create_attention_mask=False,
        mid_level_dataset_surplus=0.005,
    )
    if not d.mock:
        sizes = decided_on_rank0(partial(check_data, cfg, tokenizer.vocab_size,
                                         cfg.model.vocab_size or tokenizer.vocab_size))
        log_blend(cfg, sizes)
    sizes = split_sizes(cfg)
    cls = MockGPTDataset if d.mock else GPTDataset
    logger.info("building the sample indices (cached in %s) ...", cache)
    start = time.monotonic()
    train, valid, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    logger.info("sample indices ready in %.1fs: %s training samples of %d tokens", time.monotonic() - start,
                f"{len(train):,}" if train is not None else 0, d.seq_length)
    if train is None:
        raise ValueError("the training split is empty: check data.split")
    return Datasets(train, valid if sizes[1] else None, tokenizer)


def build_sft_datasets(cfg: TrainConfig) -> Datasets:
    """Packed chat SFT datasets from ``data.sft_dir``: its train split, and its held-out split for validation."""
    from native_megatron.data.sft import PackedSFTDataset, SFTDataError, read_stats

    d = cfg.data
    tokenizer = DatasetTokenizer.from_path(d.tokenizer_path())
    try:
        stats = read_stats(d.sft_dir)
        if stats.get("vocab_size") != tokenizer.vocab_size:
            raise ConfigError(f"data.sft_dir {d.sft_dir} was tokenized with a {stats.get('vocab_size')}-token "
                              f"vocabulary, but data.tokenizer {d.tokenizer_path()} has {tokenizer.vocab_size:,}")
        sizes = split_sizes(cfg)
        make = partial(PackedSFTDataset, d.sft_dir, seq_length=d.seq_length, seed=d.seed, pack=d.pack,
                       pad_id=tokenizer.eod)
        train = make("train", num_samples=sizes[0])
        valid = make("valid", num_samples=sizes[1]) if sizes[1] and stats["splits"]["valid"]["conversations"] \
            else None
    except SFTDataError as exc:
        raise ConfigError(f"data.sft_dir: {exc}") from None
    s = cfg.schedule
    for name, ds, reads in (("train", train, sizes[0]), ("validation", valid, s.eval_steps * s.global_batch_size)):
        if ds is not None:
            logger.info("SFT %s: %s conversations%s in %s sequences of %d tokens (%.0f%% filled, %s); %s reads "
                        "%.2f epochs of them", name, f"{ds.conversations:,}",
                        f" ({ds.dropped:,} longer than data.seq_length left out)" if ds.dropped else "",
                        f"{ds.per_epoch:,}", d.seq_length, 100 * ds.fill,
                        "packed" if d.pack else "one per sequence",
                        "the schedule" if name == "train" else "each validation", reads / ds.per_epoch)
    return Datasets(train, valid, tokenizer)


SPLIT_NAMES = ("train", "validation", "test")
_SCAN_CHUNK = 1 << 26  # token ids per read when scanning a .bin for its largest id


def check_data(cfg: TrainConfig, tokenizer_vocab: int, model_vocab: int) -> dict[str, tuple[int, int]]:
    """One line, before any work, for data that megatron-core would hang or fail on, or that misfits the model.

    - an empty dataset (megatron-core: "cannot mmap an empty file");
    - a split share that gives a dataset 0 documents (megatron-core's
      ``_get_num_epochs`` then loops forever);
    - data tokenized with another vocabulary than ``data.tokenizer``'s (recorded in
      the preprocessing's ``_stats.json``), or holding ids the model has no row
      for: vocab-parallel layers at TP > 1 would mask them and train on silently.
    """
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    d = cfg.data
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(d.split))
    sizes: dict[str, tuple[int, int]] = {}
    for prefix in blend_prefixes(d.paths):
        if os.path.getsize(prefix + ".bin") == 0:
            raise ConfigError(f"data.paths: {prefix}.bin is empty (no tokens); was every document dropped?")
        try:
            ds = IndexedDataset(prefix, mmap=True)
        except Exception as exc:  # noqa: BLE001 - a broken .idx raises from deep inside numpy
            raise ConfigError(f"data.paths: {prefix}.idx/.bin cannot be read ({type(exc).__name__}: {exc})") from None
        docs = len(ds.sequence_lengths)
        for name, bounds in zip(SPLIT_NAMES, matrix):
            if bounds is not None and int(round(bounds[1] * docs)) <= int(round(bounds[0] * docs)):
                raise ConfigError(f"data.split {d.split!r} leaves the {name} split of {prefix} with 0 of {docs:,} "
                                  f"documents, which megatron-core cannot build; give it a larger share or 0")
        recorded_vocab, max_id = recorded_vocabulary(prefix)
        if recorded_vocab is not None and recorded_vocab != tokenizer_vocab:
            raise ConfigError(f"data.paths: {prefix} was tokenized with a {recorded_vocab:,}-token vocabulary, "
                              f"but data.tokenizer {d.tokenizer} has {tokenizer_vocab:,}")
        if max_id is None:
            max_id = _scan_max_id(prefix, ds.index.dtype)
        if max_id >= model_vocab:
            raise ConfigError(f"data.paths: {prefix} holds token id {max_id:,}, but the model's vocabulary has "
                              f"{model_vocab:,} ids (model.vocab_size, else data.tokenizer's)")
        sizes[prefix] = (docs, int(ds.sequence_lengths.sum(dtype="int64")))
    return sizes


def log_blend(cfg: TrainConfig, sizes: dict[str, tuple[int, int]]) -> None:
    """One line per dataset: its weight, size, and how much of it this run will read."""
    weights, prefixes = parse_blend(cfg.data.paths)
    weights = weights or [1.0] * len(prefixes)
    total = sum(weights)
    from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

    train_share = parse_and_normalize_split(cfg.data.split)[0]
    run_tokens = split_sizes(cfg)[0] * cfg.data.seq_length
    for weight, prefix in zip(weights, prefixes):
        docs, tokens = sizes[prefix]
        read = run_tokens * weight / total
        epochs = read / (tokens * train_share) if tokens and train_share else math.inf
        logger.info("data: %5.1f%% %s: %s documents, %s tokens; the schedule reads %s tokens of it "
                    "(%.2f epochs of its train split)", 100 * weight / total, prefix, f"{docs:,}", f"{tokens:,}",
                    f"{read:,.0f}", epochs)


def dataset_identity(prefix: str) -> dict[str, Any]:
    """:func:`native_megatron.data.indexed.dataset_identity`, computed once per state of the files:
    the vocabulary check, the data setup and every save ask for it."""
    idx = os.stat(prefix + ".idx")
    return dict(_identity(prefix, os.path.getsize(prefix + ".bin"), idx.st_size, idx.st_mtime_ns))


@functools.lru_cache(maxsize=None)
def _identity(prefix: str, bin_bytes: int, idx_bytes: int, idx_mtime_ns: int) -> tuple:
    return tuple(indexed.dataset_identity(prefix).items())


def recorded_vocabulary(prefix: str) -> tuple[int | None, int | None]:
    """(vocabulary size, largest token id) that preprocessing recorded beside ``prefix``, where it did.

    Trusted only while the stats name these very files (``dataset_files``, see
    :func:`dataset_identity`): a stats file copied beside other data, or one older
    than the contract, gives (None, None) with a log line saying why, and the caller scans.
    """
    import json

    suffix = "_text_document"
    if not prefix.endswith(suffix):
        return None, None
    stats = prefix[: -len(suffix)] + "_stats.json"
    try:
        with open(stats, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None, None
    recorded = (data.get("dataset_files") or {}).get(os.path.basename(prefix)) if isinstance(data, dict) else None
    if not isinstance(recorded, dict):
        logger.info("%s: %s does not record these files' sizes and checksum (older preprocessing?); "
                    "not trusting its vocabulary or largest id", prefix, os.path.basename(stats))
        return None, None
    actual = dataset_identity(prefix)
    differ = [k for k in actual if recorded.get(k) != actual[k]]
    if differ:
        logger.warning("%s: %s was written for other files (%s differ): not trusting its vocabulary or largest id",
                       prefix, os.path.basename(stats), ", ".join(differ))
        return None, None
    vocab = (data.get("tokenizer") or {}).get("vocab_size")
    max_id = data.get("max_token_id")
    return (int(vocab) if isinstance(vocab, int) else None), (int(max_id) if isinstance(max_id, int) else None)


# ---- the data setup a checkpoint was trained on ------------------------------------------------------------

def data_setup(cfg: TrainConfig, with_files: bool = True) -> dict[str, Any]:
    """Everything that decides which samples step N reads, as flat ``key: value`` pairs.

    Saved with each checkpoint (``data_setup.json``) and compared on resume: the
    consumed-sample count in a checkpoint only means the same samples under the same setup.
    ``with_files``: add each dataset's :func:`dataset_identity` (needs the files).
    """
    d, s = cfg.data, cfg.schedule
    setup: dict[str, Any] = {"schedule.global_batch_size": s.global_batch_size, "data.seq_length": d.seq_length,
                             "data.seed": d.seed}
    if d.sft_dir:
        setup.update({"data.sft_dir": d.sft_dir, "data.pack": d.pack})
        prefixes = sorted(p[:-4] for p in glob.glob(os.path.join(d.sft_dir, "*.idx")))
        weights = [None] * len(prefixes)
    elif d.mock:
        setup["data.mock"] = True
        weights, prefixes = [], []
    else:
        setup["data.split"] = d.split
        weights, prefixes = parse_blend(d.paths)
        weights = weights or [1.0] * len(prefixes)
        total = sum(weights)
        weights = [round(w / total, 6) for w in weights]
    for weight, prefix in zip(weights, prefixes):
        if weight is not None:
            setup[f"data.weight[{prefix}]"] = weight
        if with_files:
            ident = dataset_identity(prefix)
            setup[f"data.files[{prefix}]"] = (f"{ident['bin_bytes']}+{ident['idx_bytes']} bytes, "
                                              f"idx blake2b {ident['idx_blake2b'][:16]}")
    return setup


def data_setup_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(changes as ``key checkpoint=A config=B``, datasets that only moved) between two :func:`data_setup` s.

    A dataset whose prefix changed but whose files and weight did not (the data was moved
    or mounted elsewhere) is not a change.
    """
    def prefix_of(key: str) -> str:
        return key[key.index("[") + 1:-1]

    gone = {prefix_of(k): v for k, v in saved.items() if k.startswith("data.files[") and k not in current}
    new = {prefix_of(k): v for k, v in current.items() if k.startswith("data.files[") and k not in saved}
    moved: list[str] = []
    saved, current = dict(saved), dict(current)
    for old, files in gone.items():
        match = next((p for p, f in new.items() if f == files
                      and saved.get(f"data.weight[{old}]") == current.get(f"data.weight[{p}]")), None)
        if match is not None:
            del new[match]
            for kind in ("files", "weight"):
                saved.pop(f"data.{kind}[{old}]", None)
                current.pop(f"data.{kind}[{match}]", None)
            moved.append(f"{old} -> {match}")
    changes = []
    for key in [*saved, *(k for k in current if k not in saved)]:
        weighted = f"data.weight[{key[11:-1]}]" in saved or f"data.weight[{key[11:-1]}]" in current
        if key.startswith("data.files[") and (key not in saved or key not in current) and weighted:
            continue  # a dataset added to or dropped from a blend shows as its weight
        theirs, ours = saved.get(key, "absent"), current.get(key, "absent")
        if theirs != ours:
            changes.append(f"{key} checkpoint={theirs} config={ours}")
    return changes, moved


def _scan_max_id(prefix: str, dtype) -> int:
    import numpy as np

    logger.info("%s: scanning the .bin for its largest token id", prefix)
    tokens = np.memmap(prefix + ".bin", dtype=dtype, mode="r")
    return max((int(tokens[i:i + _SCAN_CHUNK].max()) for i in range(0, len(tokens), _SCAN_CHUNK)), default=0)


class MicroBatchSampler:
    """Sample indices for one data-parallel rank, starting after ``consumed`` samples.

    Global batch ``g`` covers samples ``[g*G, (g+1)*G)``; within it, microbatch
    ``k`` of rank ``r`` is the ``b`` samples at ``g*G + (k*dp + r)*b``. The same
    split as Megatron-LM's pretraining sampler, without dropping anything.
    """

    def __init__(self, total: int, consumed: int, micro_batch: int, dp_rank: int, dp_size: int) -> None:
        self.total, self.consumed = total, consumed
        self.micro_batch, self.dp_rank, self.dp_size = micro_batch, dp_rank, dp_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro_batch * self.dp_size
        start = self.consumed
        while start + step <= self.total:
            first = start + self.dp_rank * self.micro_batch
            yield list(range(first, first + self.micro_batch))
            start += step

    def __len__(self) -> int:
        return max(0, (self.total - self.consumed) // (self.micro_batch * self.dp_size))


def microbatch_iterator(dataset, consumed: int, micro_batch: int, dp_rank: int, dp_size: int,
                        num_workers: int = 0, total: int | None = None) -> Iterator[dict]:
    """Microbatches (dicts of tensors) for this rank, from sample ``consumed`` on."""
    total = len(dataset) if total is None else min(total, len(dataset))
    sampler = MicroBatchSampler(total, consumed, micro_batch, dp_rank, dp_size)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                         pin_memory=torch.cuda.is_available(),
                                         persistent_workers=num_workers > 0)
    return iter(loader)
