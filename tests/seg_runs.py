"""How the seg/ tests make data and run seg/train.py (in this process, or as a script)."""
import json
import os

import numpy as np
from PIL import Image

from scripts import run_script

#: background, red squares (class 1), green squares (class 2)
COLORS = np.array([(20, 20, 20), (220, 40, 40), (40, 220, 40)], dtype=np.uint8)


def write_folder_set(root, train=4, val=3, seed=0):
    """DATA/{train,val}/{images,labels}: 40-48 px images of two coloured squares on a dark background; each
    label map has a few 255 (ignored) pixels; the validation images have different sizes."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(count):
            h, w = 40 + 4 * i, 48
            label = np.zeros((h, w), np.uint8)
            for c in (1, 2):
                y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
                label[y:y + 12, x:x + 12] = c
            label[0, :4] = 255
            image = COLORS[np.minimum(label, 2)] + rng.integers(0, 30, (h, w, 3)).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{i}.png")
            Image.fromarray(label).save(root / split / "labels" / f"{i}.png")
    return root


def common(data, out, epochs=1):
    """Flags every seg/ test run shares: 32 px crops, batches of 2, one thread, seeded."""
    return [data, "--dataset", "folder", "--crop-size", 32, "-b", 2, "-j", 0, "--seed", 0, "--epochs", epochs,
            "--lr", 0.02, "--output-dir", out, "--model", "deeplabv3plus_resnet18"]


def distil(data, out, teacher, method, epochs=1):
    return common(data, out, epochs) + ["--teacher-model", "deeplabv3plus_resnet18", "--teacher-resume", teacher,
                                        "--distiller", method, "--mgd-update-freq", 1]


def run(*argv, check=True):
    return run_script(os.path.join("seg", "train.py"), *argv, check=check)


def records(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]
