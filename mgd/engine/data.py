"""Seeded, sharded data loaders for the training scripts.

Every permutation depends only on (seed, epoch, salt), never on the process count's history or on what ran
before, so a run interrupted after epoch k and resumed sees exactly the batches an uninterrupted run sees.
Each process reads its own shard: training shards are padded to equal length (as torch's
DistributedSampler pads), so every process runs the same number of steps; evaluation shards are
disjoint and unpadded, so metrics summed over processes are exact.
"""
from __future__ import annotations

from typing import List

import torch
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = ["shard", "epoch_order", "epoch_loader", "eval_loader", "prepare_loader"]


def shard(dataset: Dataset, rank: int, world_size: int) -> Dataset:
    """Every world_size-th item starting at rank: disjoint shards, no padding (exact metrics)."""
    if world_size == 1:
        return dataset
    return Subset(dataset, list(range(rank, len(dataset), world_size)))


def epoch_order(size: int, epoch: int, seed: int, rank: int, world_size: int, salt: int = 0) -> List[int]:
    """This process's part of a permutation of ``range(size)`` that depends only on (seed, epoch, salt).

    The permutation is padded with its own first items to a multiple of ``world_size`` and cut into
    ``world_size`` contiguous parts of equal length.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch + salt)
    order = torch.randperm(size, generator=generator).tolist()
    per_rank = -(-size // world_size)
    order += order[:per_rank * world_size - size]
    return order[rank * per_rank:(rank + 1) * per_rank]


def epoch_loader(dataset: Dataset, batch_size: int, workers: int, epoch: int, seed: int, rank: int,
                 world_size: int, pin_memory: bool = False, drop_last: bool = False, salt: int = 0) -> DataLoader:
    """The epoch's training loader (rebuilt every epoch): this process's part of the epoch's permutation.

    ``drop_last=False`` keeps the last, smaller batch (as the original scripts and torchvision's references
    do); methods that need equal batches (MoCo's queue) pass True.
    """
    mine = epoch_order(len(dataset), epoch, seed, rank, world_size, salt)
    generator = torch.Generator().manual_seed(seed * 1000 + epoch + salt + 1)  # for the workers' seeds
    return DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=generator, persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int, world_size: int,
                pin_memory: bool = False) -> DataLoader:
    """This process's disjoint shard, in order."""
    return DataLoader(shard(dataset, rank, world_size), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=pin_memory)


def prepare_loader(dataset: Dataset, batch_size: int, workers: int, epoch: int, seed: int, rank: int,
                   world_size: int, pin_memory: bool = False) -> DataLoader:
    """What a distiller's ``prepare`` reads before ``epoch``: this process's disjoint shard in a seeded
    random order (so a capped pass, e.g. MGD's 20000 images, sees a fresh sample every time)."""
    part = shard(dataset, rank, world_size)
    generator = torch.Generator().manual_seed(seed * 1000 + 7919 * (epoch + 1))
    order = torch.randperm(len(part), generator=generator).tolist()
    return DataLoader(Subset(part, order), batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory)
