"""ExtraDistributedSampler, kept for code written against the original API.

The original needed every rank to see the *same* images during the matching update, because each rank
solved its own assignment. mgd all-reduces the statistics instead, so a plain DistributedSampler (each
rank its own shard) is enough and cheaper; this class remains so old scripts run unchanged.
"""
from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import Dataset, Sampler

from . import distributed as mdist

__all__ = ["ExtraDistributedSampler"]


class ExtraDistributedSampler(Sampler[int]):
    """Every rank iterates the same (optionally shuffled, seeded by epoch) permutation of the dataset."""

    def __init__(self, dataset: Dataset, num_replicas: Optional[int] = None, rank: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0) -> None:
        self.dataset = dataset
        self.num_replicas = mdist.get_world_size() if num_replicas is None else num_replicas
        self.rank = mdist.get_rank() if rank is None else rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.num_samples = len(dataset)  # type: ignore[arg-type]
        self.total_size = self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            return iter(torch.randperm(self.num_samples, generator=g).tolist())
        return iter(range(self.num_samples))

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
