"""Datasets and loaders for the classification scripts.

DATA is either an ImageFolder tree (``DATA/train`` and ``DATA/valid`` or ``DATA/val``, the original's
layout; CINIC-10 is one), or, with ``--dataset fashion-mnist``, a folder holding the Fashion-MNIST IDX files
(``*-ubyte.gz`` or gunzipped, directly in DATA or in ``DATA/FashionMNIST/raw``), or, with ``--dataset
cifar10|cifar100``, a folder holding the CIFAR python archive (``cifar-10-batches-py/`` / ``cifar-100-python/``,
or the ``.tar.gz`` they come in). Three datasets are built:
train (augmented), valid, and "track": the training images through the validation transforms, used by
the matching updates exactly as the original's extra loader.
"""
from __future__ import annotations

import copy
import gzip
import os
import pickle
import shutil
import tarfile
from typing import Optional, Tuple

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms
from torchvision.datasets.utils import download_and_extract_archive, extract_archive
from torchvision.datasets.vision import StandardTransform

from mgd.engine import SkipUnreadable, UserError
from mgd.engine.data import IMG_EXTENSIONS, image_folder

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MEAN, FASHION_STD = (0.2860,) * 3, (0.3530,) * 3
FASHION_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"]
#: The training sets' per-channel statistics, as in the CIFAR distillation code (CRD, DKD).
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))}


class _PresenceChecked:
    """torchvision's CIFAR reader with its files checked for presence (by :func:`_read_cifar`) instead of
    md5: a pickle that does not load is a one-line error all the same, and an archive of other images in
    the same format (a subset, the tests' generated one) loads."""

    def _check_integrity(self) -> bool:
        return True


class CIFAR10Files(_PresenceChecked, datasets.CIFAR10):
    meta = dict(datasets.CIFAR10.meta, md5=None)


class CIFAR100Files(_PresenceChecked, datasets.CIFAR100):
    meta = dict(datasets.CIFAR100.meta, md5=None)


CIFAR_READERS = {"cifar10": CIFAR10Files, "cifar100": CIFAR100Files}
#: The --dataset choices.
DATASETS = ("imagefolder", "fashion-mnist", "cifar10", "cifar100")


def default_input_size(dataset: str) -> int:
    """The --input-size when none is given: the images' own 32 px for CIFAR, 224 otherwise."""
    return 32 if dataset in CIFAR_READERS else 224


def _transforms(input_size: int, mean, std, grayscale: bool, native: Optional[int] = None):
    """Train/valid transforms: ImageNet-style crops at >= 64 px, pad-and-crop (CIFAR-style) below; at the
    images' ``native`` size there is nothing to resize: random crops padded by 4 at 32 px and flips for
    training (the CIFAR augmentation of the distillation papers), the images themselves for validation."""
    to3 = [transforms.Grayscale(num_output_channels=3)] if grayscale else []
    norm = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    resize = [] if input_size == native else [transforms.Resize(input_size)]
    if input_size >= 64:
        train = [transforms.RandomResizedCrop(input_size), transforms.RandomHorizontalFlip()]
        valid = [transforms.Resize(int(round(input_size / 0.875))), transforms.CenterCrop(input_size)]
    else:
        train = resize + [transforms.RandomCrop(input_size, padding=max(1, input_size // 8)),
                          transforms.RandomHorizontalFlip()]
        valid = resize + ([] if input_size == native else [transforms.CenterCrop(input_size)])
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


def _cifar_root(data: str, reader, download: bool) -> str:
    """The folder that holds ``reader.base_folder``: DATA, its parent when DATA is that folder, or DATA
    after extracting the .tar.gz found there (or downloaded with ``download``). UserError when absent."""
    name, folder = _cifar_name(reader), reader.base_folder
    if os.path.basename(os.path.normpath(data)) == folder:
        data = os.path.dirname(os.path.normpath(data))
    if os.path.isdir(os.path.join(data, folder)):
        return data
    archive = os.path.join(data, reader.filename)
    if os.path.isfile(archive):
        _extract(archive, data, folder)
    elif download:
        try:  # torchvision's download, md5-checked, then extracted
            download_and_extract_archive(reader.url, data, filename=reader.filename, md5=reader.tgz_md5)
        except (OSError, RuntimeError, tarfile.TarError) as exc:
            raise UserError(f"cannot download {name} into {data}: {exc}") from exc
    else:
        raise UserError(f"no {name} in {data}: put {folder}/ or {reader.filename} (the python version, "
                        f"{reader.url}) there, or pass --download")
    return data


def _cifar_name(reader) -> str:
    return "CIFAR-10" if issubclass(reader, CIFAR10Files) else "CIFAR-100"


def _extract(archive: str, data: str, folder: str) -> None:
    """Extract ``archive`` into a temporary folder of DATA, then move its ``folder`` into place in one
    rename, so that processes starting together never read a half-extracted archive."""
    tmp = os.path.join(data, f".{folder}.{os.getpid()}.tmp")
    try:
        extract_archive(archive, tmp)
    except (OSError, tarfile.TarError, EOFError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot extract {archive}: {exc}") from exc
    try:
        os.rename(os.path.join(tmp, folder), os.path.join(data, folder))
    except FileNotFoundError:
        raise UserError(f"{archive} holds no {folder}/ folder: is it the python version of the archive?") from None
    except OSError as exc:  # fine when another process put it in place first
        if not os.path.isdir(os.path.join(data, folder)):
            raise UserError(f"cannot move the extracted {folder}/ into {data}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cifar(reader, root: str, train: bool, transform):
    """One split, read by torchvision's reader; UserError naming the missing or unreadable file."""
    files = [name for name, _ in (reader.train_list if train else reader.test_list)] + [reader.meta["filename"]]
    missing = [f for f in files if not os.path.isfile(os.path.join(root, reader.base_folder, f))]
    if missing:
        raise UserError(f"{_cifar_name(reader)}: {', '.join(missing)} missing in "
                        f"{os.path.join(root, reader.base_folder)}")
    try:
        return reader(root, train=train, transform=transform, download=False)
    except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"cannot read {_cifar_name(reader)} from {os.path.join(root, reader.base_folder)}: "
                        f"{type(exc).__name__}: {exc}") from exc


def _cifar(data: str, dataset: str, download: bool, train_tf, valid_tf):
    reader = CIFAR_READERS[dataset]
    root = _cifar_root(data, reader, download)
    train = _read_cifar(reader, root, True, train_tf)
    valid = _read_cifar(reader, root, False, valid_tf)
    track = copy.copy(train)  # the same images (one copy in memory) through the validation transforms
    track.transform, track.transforms = valid_tf, StandardTransform(valid_tf)
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
    elif args.dataset in CIFAR_READERS:
        mean, std = CIFAR_STATS[args.dataset]
        train_tf, valid_tf = _transforms(args.input_size, mean, std, grayscale=False, native=32)
        train, valid, track, classes = _cifar(args.data, args.dataset, args.download, train_tf, valid_tf)
    else:
        train_tf, valid_tf = _transforms(args.input_size, IMAGENET_MEAN, IMAGENET_STD, grayscale=False)
        train, valid, track, classes = _image_folder(args.data, train_tf, valid_tf)
    if args.skip_bad_images:
        train, valid, track = SkipUnreadable(train), SkipUnreadable(valid), SkipUnreadable(track)
    train_subset = _subset(train, args.train_subset)
    track = _subset(track, args.train_subset)  # same images as train: same indices
    return train_subset, _subset(valid, args.val_subset), track, classes
