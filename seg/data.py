"""Segmentation data for seg/train.py: Pascal VOC 2012 (+ SBD), Cityscapes and a plain folder layout, with
the joint image/label transforms of torchvision's references/segmentation and OFD's code.

Every source becomes a list of (image file, label file) pairs read by :class:`SegmentationFiles`, so that
every problem with a file is one line naming it (:class:`mgd.engine.UserError`): a label whose size differs
from its image, a label value outside [0, num_classes) other than 255 (ignored), an unreadable file.

* ``voc``: torchvision's ``VOCSegmentation`` layout (DATA/VOCdevkit/VOC2012), 21 classes; ``--use-sbd`` adds
  the SBD training images (torchvision's ``SBDataset`` layout in DATA/SBD, its ``train_noval`` split, which
  excludes VOC's val images; images already in VOC train are not repeated): the 10,582-image "train_aug".
* ``cityscapes``: torchvision's ``Cityscapes`` layout (DATA/leftImg8bit, DATA/gtFine), fine labels mapped to
  the 19 train ids (others to 255).
* ``folder``: DATA/{train,val}/images/* and DATA/{train,val}/labels/<same stem>.png holding class indices
  (255 = ignore); the class count is --num-classes or 1 + the largest label value in DATA/train/labels.

Training: random scale in [0.5, 2.0], padding to --crop-size (image 0, label 255), random crop, horizontal
flip, ImageNet normalisation. Validation: the original resolution (batches of one image). The prepare set
(MGD's matching, the loss-factor calibration): the training images padded and centre-cropped.
"""
from __future__ import annotations

import os
import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from mgd.engine import SkipUnreadable, UserError, read_rgb_image
from mgd.engine.data import IMG_EXTENSIONS

from .metrics import IGNORE_INDEX

__all__ = ["SegmentationFiles", "build_datasets", "folder_pairs", "folder_num_classes", "train_transform",
           "eval_transform", "center_transform", "DEFAULT_CROP", "NUM_CLASSES"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: --crop-size defaults: OFD's 513 for VOC, 768 for Cityscapes (torchvision's reference: 480).
DEFAULT_CROP = {"voc": 513, "cityscapes": 768, "folder": 513}
NUM_CLASSES = {"voc": 21, "cityscapes": 19}

Pair = Tuple[Image.Image, Image.Image]


# ------------------------------------------------------------------------------------------ transforms

def _to_tensors(image: Image.Image, label: Image.Image) -> Tuple[torch.Tensor, torch.Tensor]:
    tensor = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
    return tensor, torch.from_numpy(np.array(label, dtype=np.int64))


def _pad(image: Image.Image, label: Image.Image, size: int) -> Pair:
    """Pad right and bottom up to ``size`` (image with 0, label with 255), as torchvision's reference."""
    w, h = image.size
    pad_w, pad_h = max(size - w, 0), max(size - h, 0)
    if pad_w or pad_h:
        image = TF.pad(image, [0, 0, pad_w, pad_h], fill=0)
        label = TF.pad(label, [0, 0, pad_w, pad_h], fill=IGNORE_INDEX)
    return image, label


def train_transform(crop: int, scale: Tuple[float, float] = (0.5, 2.0)) -> Callable[[Image.Image, Image.Image],
                                                                                      Tuple[torch.Tensor, ...]]:
    """Random scale (bilinear image, nearest label), pad, random ``crop`` x ``crop`` crop, flip, normalise.
    Draws from Python's ``random`` only (seeded per sample by :class:`mgd.engine.data.SeededSamples`)."""
    def apply(image: Image.Image, label: Image.Image):
        factor = random.uniform(*scale)
        w, h = image.size
        size = [max(1, int(round(h * factor))), max(1, int(round(w * factor)))]
        image = TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR)
        label = TF.resize(label, size, interpolation=TF.InterpolationMode.NEAREST)
        image, label = _pad(image, label, crop)
        w, h = image.size
        top, left = random.randint(0, h - crop), random.randint(0, w - crop)
        image, label = TF.crop(image, top, left, crop, crop), TF.crop(label, top, left, crop, crop)
        if random.random() < 0.5:
            image, label = TF.hflip(image), TF.hflip(label)
        return _to_tensors(image, label)
    return apply


def eval_transform(image: Image.Image, label: Image.Image):
    """Validation: the original resolution, normalised."""
    return _to_tensors(image, label)


def center_transform(crop: int):
    """Deterministic training-image view for a distiller's prepare pass: pad, centre crop (batchable)."""
    def apply(image: Image.Image, label: Image.Image):
        image, label = _pad(image, label, crop)
        w, h = image.size
        top, left = (h - crop) // 2, (w - crop) // 2
        return _to_tensors(TF.crop(image, top, left, crop, crop), TF.crop(label, top, left, crop, crop))
    return apply


# ------------------------------------------------------------------------------------------ files

def _read_label(path: str) -> Image.Image:
    """A label map as a single-channel image of class indices (PNG "L"/"P"; SBD's .mat files)."""
    try:
        if path.endswith(".mat"):
            from scipy.io import loadmat
            return Image.fromarray(loadmat(path)["GTcls"][0]["Segmentation"][0].astype(np.uint8))
        with open(path, "rb") as f:
            label = Image.open(f)
            label.load()
    except (OSError, SyntaxError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read label {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        ) from None
    if label.mode not in ("L", "P", "I", "I;16"):
        raise UserError(f"label {path} is a {label.mode} image: labels must be single-channel maps of class indices "
                        "(PNG mode L or P, 255 = ignore)")
    if label.mode in ("I", "I;16"):  # 16- or 32-bit: fine while every value is a class index of 8 bits
        values = np.array(label)
        wide = np.unique(values[(values > IGNORE_INDEX) | (values < 0)])
        if wide.size:
            raise UserError(f"label {path} holds value(s) {', '.join(map(str, wide[:5].tolist()))} outside 0..255: "
                            "class indices are 0..254 (255 = ignore); save the labels with at most 255 classes")
        label = Image.fromarray(values.astype(np.uint8))
    return label


class SegmentationFiles(Dataset):
    """(image, label) file pairs -> transformed (image tensor, int64 label map), checked on read.

    ``lut``: a 256-entry mapping of the stored label values (Cityscapes ids -> train ids), applied first.
    """

    def __init__(self, pairs: Sequence[Tuple[str, str]], num_classes: int, transform: Callable,
                 lut: Optional[np.ndarray] = None) -> None:
        self.pairs, self.num_classes, self.transform, self.lut = list(pairs), int(num_classes), transform, lut

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Pair:
        """The image and its label, checked: same size, values in [0, num_classes) or 255."""
        image_path, label_path = self.pairs[index]
        image, label = read_rgb_image(image_path), _read_label(label_path)
        if image.size != label.size:
            raise UserError(f"label {label_path} is {label.size[0]}x{label.size[1]} but its image {image_path} is "
                            f"{image.size[0]}x{image.size[1]}: a label map must have its image's size")
        values = np.array(label)
        if self.lut is not None:
            values = self.lut[values]
            label = Image.fromarray(values.astype(np.uint8))
        bad = np.unique(values[(values >= self.num_classes) & (values != IGNORE_INDEX)])
        if bad.size:
            raise UserError(f"label {label_path} holds value(s) {', '.join(map(str, bad[:5].tolist()))} outside "
                            f"[0, {self.num_classes}) (255 = ignore): fix the labels, or raise --num-classes above the largest "
                            "class value")
        if label.mode != "L":
            label = Image.fromarray(values.astype(np.uint8))
        return image, label

    def __getitem__(self, index: int):
        return self.transform(*self.load(index))


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def folder_pairs(data: str, split: str) -> List[Tuple[str, str]]:
    """The (image, label) pairs of DATA/<split>/images and DATA/<split>/labels (same stems, labels .png)."""
    images_dir, labels_dir = os.path.join(data, split, "images"), os.path.join(data, split, "labels")
    for folder in (images_dir, labels_dir):
        if not os.path.isdir(folder):
            raise UserError(f"folder not found: {folder} (--dataset folder reads DATA/{{train,val}}/images/* and "
                            "DATA/{train,val}/labels/*.png)")
    images = sorted(f for f in os.listdir(images_dir) if f.lower().endswith(IMG_EXTENSIONS))
    if not images:
        raise UserError(f"no images in {images_dir}")
    pairs = []
    for name in images:
        label = os.path.join(labels_dir, _stem(name) + ".png")
        if not os.path.isfile(label):
            raise UserError(f"no label for {os.path.join(images_dir, name)}: expected {label}")
        pairs.append((os.path.join(images_dir, name), label))
    return pairs


def folder_num_classes(data: str) -> int:
    """1 + the largest label value other than 255 over DATA/train/labels (every label file is read)."""
    top = -1
    for _, label in folder_pairs(data, "train"):
        values = np.array(_read_label(label))
        values = values[values != IGNORE_INDEX]
        if values.size:
            top = max(top, int(values.max()))
    if top < 0:
        raise UserError(f"every pixel of {os.path.join(data, 'train', 'labels')} is 255 (ignored): no class to learn")
    return top + 1


def _voc_pairs(data: str, split: str, download: bool, use_sbd: bool) -> List[Tuple[str, str]]:
    from torchvision.datasets import SBDataset, VOCSegmentation
    try:
        voc = VOCSegmentation(data, year="2012", image_set=split, download=download)
    except RuntimeError as exc:
        raise UserError(f"Pascal VOC 2012 not found in {data} ({exc}); pass --download to fetch it") from None
    pairs = list(zip(voc.images, voc.masks))
    if use_sbd and split == "train":
        root = os.path.join(data, "SBD")
        try:
            sbd = SBDataset(root, image_set="train_noval", mode="segmentation", download=download)
        except RuntimeError as exc:
            raise UserError(f"--use-sbd: SBD not found in {root} ({exc}); pass --download to fetch it") from None
        seen = {_stem(p) for p, _ in pairs}
        pairs += [(img, mask) for img, mask in zip(sbd.images, sbd.masks) if _stem(img) not in seen]
    return pairs


def _cityscapes(data: str, split: str) -> Tuple[List[Tuple[str, str]], np.ndarray]:
    from torchvision.datasets import Cityscapes
    try:
        city = Cityscapes(data, split=split, mode="fine", target_type="semantic")
    except RuntimeError as exc:
        raise UserError(f"Cityscapes not found in {data} ({exc}): torchvision's Cityscapes layout, downloaded by "
                        "hand (it needs a login)") from None
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for c in Cityscapes.classes:
        if c.id >= 0 and 0 <= c.train_id < 255:
            lut[c.id] = c.train_id
    return [(img, targets[0]) for img, targets in zip(city.images, city.targets)], lut


def build_datasets(args) -> Tuple[Dataset, Dataset, Dataset, int]:
    """(train, val, prepare, num_classes) for ``args`` (data, dataset, crop_size, num_classes, use_sbd,
    download, skip_bad_images)."""
    if not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")
    lut = None
    if args.dataset == "voc":
        train, val = (_voc_pairs(args.data, s, args.download, args.use_sbd) for s in ("train", "val"))
    elif args.dataset == "cityscapes":
        (train, lut), (val, _) = _cityscapes(args.data, "train"), _cityscapes(args.data, "val")
    else:
        train, val = folder_pairs(args.data, "train"), folder_pairs(args.data, "val")
    num_classes = args.num_classes or NUM_CLASSES.get(args.dataset) or folder_num_classes(args.data)
    sets = (SegmentationFiles(train, num_classes, train_transform(args.crop_size), lut),
            SegmentationFiles(val, num_classes, eval_transform, lut),
            SegmentationFiles(train, num_classes, center_transform(args.crop_size), lut))
    if args.skip_bad_images:
        sets = tuple(SkipUnreadable(s) for s in sets)
    return (*sets, num_classes)
