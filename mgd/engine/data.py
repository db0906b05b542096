"""Seeded, sharded data loaders for the training scripts, and image files that fail to decode.

Every permutation depends only on (seed, epoch, salt), never on the process count's history or on what ran
before, and every random augmentation of a training sample only on (seed, epoch, salt, sample index): not on
the number of loader workers (``-j``) nor on which process reads it. A run interrupted after epoch k and
resumed, with any ``-j``, sees exactly the batches an uninterrupted run sees.
Each process reads its own shard: training shards are padded to equal length (as torch's
DistributedSampler pads), so every process runs the same number of steps; evaluation shards are
disjoint and unpadded, so metrics summed over processes are exact.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Callable, List, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import UserError

__all__ = ["shard", "epoch_order", "epoch_loader", "eval_loader", "prepare_loader", "SeededSamples", "WithIndices",
           "UnreadableImage", "read_rgb_image", "image_folder", "SkipUnreadable"]

logger = logging.getLogger("mgd.engine")


class UnreadableImage(UserError):
    """An image file that is truncated or cannot be decoded; the message names the file."""


def read_rgb_image(path: str) -> Image.Image:
    """torchvision's PIL loader (open, decode, convert to RGB) with an error that names the file: PIL's own
    ("Truncated File Read", "image file is truncated") names nothing."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableImage(f"cannot read image {path}: {reason} (--skip-bad-images skips such files with a "
                              "warning)") from None


def image_folder(root: str, transform: Optional[Callable] = None) -> datasets.ImageFolder:
    """torchvision's ImageFolder whose image errors name the file (:func:`read_rgb_image`), and whose folder
    problems (a class folder without images, no class folder at all) are one-line UserErrors."""
    try:
        return datasets.ImageFolder(root, transform, loader=read_rgb_image)
    except FileNotFoundError as exc:
        text = str(exc)
        if text.startswith("Found no valid file for the classes "):
            empty = text[len("Found no valid file for the classes "):].split(". Supported")[0]
            raise UserError(f"no images in the class folder(s) {empty} of {root} (image files end in "
                            f"{', '.join(IMG_EXTENSIONS)})") from None
        raise UserError(f"cannot read the image folder {root}: {text}") from None


class SkipUnreadable(Dataset):
    """``dataset`` in which an unreadable image (:class:`UnreadableImage`) is replaced by the next readable
    one, with a warning naming the file (once per file and process): --skip-bad-images. Replacing rather
    than dropping keeps every batch full, which MoCo's queue and DDP's equal steps need."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._warned: set = set()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        for offset in range(len(self.dataset)):
            try:
                return self.dataset[(index + offset) % len(self.dataset)]
            except UnreadableImage as exc:
                message = str(exc).split(" (--skip-bad-images")[0]
                if message not in self._warned:
                    self._warned.add(message)
                    logger.warning("skipped (replaced by the next readable image): %s", message)
        raise UserError(f"no readable image in a dataset of {len(self.dataset)}: check the data")


class SeededSamples(Dataset):
    """``dataset`` whose every random augmentation is seeded from (seed, epoch, index), under a forked RNG
    state (the caller's torch, Python and NumPy RNG streams are left as they were).

    Without it, a sample's augmentation depends on which loader worker reads it and on what that worker read
    before, so that a run resumed with another ``-j`` (or another number of processes) trains on other
    crops than an uninterrupted one.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset = dataset
        self.base = (seed * 1_000_003 + epoch) * 1_000_003

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample_seed = (self.base + index) % (2 ** 63)
        state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            np.random.seed(sample_seed % 2 ** 32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)
                np.random.set_state(np_state)


class WithIndices(Dataset):
    """``dataset`` whose samples carry their index: ``(image, target, index)``. For the methods that keep a
    per-sample memory (CRD); the others read the plain dataset, so the index costs them nothing."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return (*self.dataset[index], index)


def _loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool, **kwargs) -> DataLoader:
    """In-order batches of ``dataset``. Its own generator: iterating it draws nothing from the global RNG (a
    DataLoader draws its workers' base seed from it otherwise)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0), **kwargs)


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


_said_dropped: List[bool] = []


def epoch_loader(dataset: Dataset, batch_size: int, workers: int, epoch: int, seed: int, rank: int,
                 world_size: int, pin_memory: bool = False, drop_last: bool = False, salt: int = 0) -> DataLoader:
    """The epoch's training loader (rebuilt every epoch): this process's part of the epoch's permutation.

    ``drop_last=False`` keeps the last, smaller batch (as the original scripts and torchvision's references
    do), except a last batch of a single sample, which a BatchNorm in training mode cannot normalise where the
    network's maps are 1x1 (it is dropped, and the log says so once); methods that need equal batches
    (MoCo's queue) pass True. Augmentations are seeded per sample (:class:`SeededSamples`).
    """
    mine = epoch_order(len(dataset), epoch, seed, rank, world_size, salt)
    if not drop_last and batch_size > 1 and len(mine) % batch_size == 1:
        drop_last = True
        if not _said_dropped:
            _said_dropped.append(True)
            logger.info("the last batch of each epoch would hold 1 image (%d per process, batches of %d): it is "
                        "dropped, since a BatchNorm cannot train on one value per channel", len(mine), batch_size)
    return _loader(Subset(SeededSamples(dataset, seed + salt, epoch), mine), batch_size, workers, pin_memory,
                   drop_last=drop_last)


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int, world_size: int,
                pin_memory: bool = False) -> DataLoader:
    """This process's disjoint shard, in order."""
    return _loader(shard(dataset, rank, world_size), batch_size, workers, pin_memory)


def prepare_loader(dataset: Dataset, batch_size: int, workers: int, epoch: int, seed: int, rank: int,
                   world_size: int, pin_memory: bool = False) -> DataLoader:
    """What a distiller's ``prepare`` reads before ``epoch``: this process's disjoint shard in a seeded
    random order (so a capped pass, e.g. MGD's 20000 images, sees a fresh sample every time)."""
    part = shard(dataset, rank, world_size)
    generator = torch.Generator().manual_seed(seed * 1000 + 7919 * (epoch + 1))
    order = torch.randperm(len(part), generator=generator).tolist()
    return _loader(Subset(part, order), batch_size, workers, pin_memory)
