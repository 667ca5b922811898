"""Run by test_native_spec under torchrun: train a few steps with the settings given on the command
line and print (rank 0) which native_megatron ops ran, as JSON on the last line."""

import json
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from native_megatron.training.config import TrainConfig
from native_megatron.training.distributed import destroy_distributed
from native_megatron.training.trainer import Trainer
from native_megatron.utils.config import load_config, split_overrides


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "native_megatron":
            self.counts[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


def main():
    rest, overrides = split_overrides(sys.argv[1:])
    cfg = load_config(TrainConfig, rest[rest.index("--config") + 1], overrides)
    trainer = Trainer(cfg)
    with CountOps() as mode:
        trainer.train()
    trainer.close()
    if torch.distributed.get_rank() == 0:
        print(json.dumps(dict(mode.counts)))
    destroy_distributed()


if __name__ == "__main__":
    main()
