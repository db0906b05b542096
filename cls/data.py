"""Datasets and loaders for the classification scripts.

DATA is either an ImageFolder tree (``DATA/train`` and ``DATA/valid`` or ``DATA/val``, the original's
layout) or, with ``--dataset fashion-mnist``, a folder holding the Fashion-MNIST IDX files
(``*-ubyte.gz`` or gunzipped, directly in DATA or in ``DATA/FashionMNIST/raw``). Three datasets are built:
train (augmented), valid, and "track": the training images through the validation transforms, used by
the matching updates exactly as the original's extra loader.
"""
from __future__ import annotations

import gzip
import os
import shutil
from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from mgd.engine import SkipUnreadable, UserError
from mgd.engine.data import IMG_EXTENSIONS, image_folder

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MEAN, FASHION_STD = (0.2860,) * 3, (0.3530,) * 3
FASHION_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"]


def _transforms(input_size: int, mean, std, grayscale: bool):
    """Train/valid transforms: ImageNet-style crops at >= 64 px, pad-and-crop (CIFAR-style) below."""
    to3 = [transforms.Grayscale(num_output_channels=3)] if grayscale else []
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if input_size >= 64:
        train = [transforms.RandomResizedCrop(input_size), transforms.RandomHorizontalFlip()]
        valid = [transforms.Resize(int(round(input_size / 0.875))), transforms.CenterCrop(input_size)]
    else:
        train = [transforms.Resize(input_size), transforms.RandomCrop(input_size, padding=max(1, input_size // 8)),
                 transforms.RandomHorizontalFlip()]
        valid = [transforms.Resize(input_size), transforms.CenterCrop(input_size)]
    return transforms.Compose(to3 + train + norm), transforms.Compose(to3 + valid + norm)


def prepare_fashion_mnist(source: str, root: str) -> str:
    """Copy (gunzipping) the four Fashion-MNIST IDX files from ``source`` into ``root/FashionMNIST/raw``,
    the layout torchvision's FashionMNIST reads. Returns ``root``."""
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for name in FASHION_FILES:
        target = os.path.join(raw, name)
        if os.path.isfile(target):
            continue
        plain, packed = os.path.join(source, name), os.path.join(source, name + ".gz")
        if os.path.isfile(plain):
            shutil.copyfile(plain, target)
        elif os.path.isfile(packed):
            with gzip.open(packed, "rb") as src, open(target + ".tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(target + ".tmp", target)
        else:
            raise UserError(f"Fashion-MNIST file {name}(.gz) not found in {source}")
    return root


def _fashion_mnist(data: str, download: bool, train_tf, valid_tf):
    raw = os.path.join(data, "FashionMNIST", "raw")
    if not all(os.path.isfile(os.path.join(raw, f)) for f in FASHION_FILES):
        if all(os.path.isfile(os.path.join(data, f)) or os.path.isfile(os.path.join(data, f + ".gz"))
               for f in FASHION_FILES):
            prepare_fashion_mnist(data, data)
        elif not download:
            raise UserError(f"no Fashion-MNIST files in {data}: put the four *-ubyte(.gz) files there "
                            "(Debian package dataset-fashion-mnist), or pass --download to fetch them")
    try:
        train = datasets.FashionMNIST(data, train=True, transform=train_tf, download=download)
        valid = datasets.FashionMNIST(data, train=False, transform=valid_tf, download=download)
        track = datasets.FashionMNIST(data, train=True, transform=valid_tf, download=False)
    except RuntimeError as exc:
        raise UserError(f"cannot read Fashion-MNIST from {data}: {exc}") from exc
    return train, valid, track, len(train.classes)


def _has_images(folder: str) -> bool:
    for _, _, files in os.walk(folder):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return True
    return False


def _image_folder(data: str, train_tf, valid_tf):
    if not os.path.isdir(data):
        raise UserError(f"data directory not found: {data}")
    train_dir = os.path.join(data, "train")
    valid_dir = next((os.path.join(data, d) for d in ("valid", "val") if os.path.isdir(os.path.join(data, d))), None)
    if not os.path.isdir(train_dir) or valid_dir is None:
        raise UserError(f"{data} must contain train/ and valid/ (or val/) class folders")
    for folder in (train_dir, valid_dir):
        if not _has_images(folder):
            raise UserError(f"no images in {folder}")
    train, valid = image_folder(train_dir, train_tf), image_folder(valid_dir, valid_tf)
    if valid.classes != train.classes:
        raise UserError(f"train/ has classes {train.classes[:5]}... but {os.path.basename(valid_dir)}/ has "
                        f"{valid.classes[:5]}...: the class folders must match")
    track = image_folder(train_dir, valid_tf)
    return train, valid, track, len(train.classes)


def _subset(dataset: Dataset, size: Optional[int], seed: int = 0) -> Dataset:
    """A fixed random subset (the same for every run and every process), or the dataset itself."""
    if not size or size >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    return Subset(dataset, sorted(order.tolist()))


def build_datasets(args) -> Tuple[Dataset, Dataset, Dataset, int]:
    """(train, valid, track, num_classes) from the arguments (data, dataset, input size, subsets)."""
    if args.dataset == "fashion-mnist":
        train_tf, valid_tf = _transforms(args.input_size, FASHION_MEAN, FASHION_STD, grayscale=True)
        train, valid, track, classes = _fashion_mnist(args.data, args.download, train_tf, valid_tf)
    else:
        train_tf, valid_tf = _transforms(args.input_size, IMAGENET_MEAN, IMAGENET_STD, grayscale=False)
        train, valid, track, classes = _image_folder(args.data, train_tf, valid_tf)
    if args.skip_bad_images:
        train, valid, track = SkipUnreadable(train), SkipUnreadable(valid), SkipUnreadable(track)
    train_subset = _subset(train, args.train_subset)
    track = _subset(track, args.train_subset)  # same images as train: same indices
    return train_subset, _subset(valid, args.val_subset), track, classes
