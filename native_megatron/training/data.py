"""Training data: megatron-core GPTDatasets blended by BlendedMegatronDatasetBuilder.

Sample order is fixed by ``data.seed`` (megatron-core shuffles and caches its
indices); which samples a rank reads is fixed by the number of samples already
consumed, so a run resumed from a checkpoint reads exactly the samples the
uninterrupted run would have read next.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch

from native_megatron.data.tokenizer import load_tokenizer
from native_megatron.training.config import TrainConfig, parse_blend

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
        tok = load_tokenizer(path)
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


def build_datasets(cfg: TrainConfig, vocab_size_hint: int | None = None) -> Datasets:
    """Build the train and validation datasets on every rank (rank 0 first, as megatron-core does)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    d = cfg.data
    if d.mock:
        tokenizer = DatasetTokenizer(vocab_size_hint or cfg.model.vocab_size or 1024, 0)
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
    sizes = split_sizes(cfg)
    cls = MockGPTDataset if d.mock else GPTDataset
    train, valid, _ = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    if train is None:
        raise ValueError("the training split is empty: check data.split")
    return Datasets(train, valid if sizes[1] else None, tokenizer)


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


def tokens_per_step(cfg: TrainConfig) -> int:
    return cfg.schedule.global_batch_size * cfg.data.seq_length


def epochs_of_data(num_samples: int, dataset_len: int) -> float:
    return num_samples / dataset_len if dataset_len else math.inf
