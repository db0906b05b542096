"""--dataset cifar10|cifar100: torchvision's readers on a tiny archive generated in the python format
(torchvision checks md5 sums, which a generated archive cannot match: cls/data.py checks the files for
presence instead), the distillation papers' augmentation, the one-line error, one epoch of main_base.py."""
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from torchvision import transforms

from cls import main_base
from cls.data import CIFAR_STATS, build_datasets
from cls.utils import finish_args
from cls_runs import records, run

CLASSES = 3


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _images(count, seed):
    """(count, 3072) uint8 rows in the archive's channel-major layout; labels 0, 1, 2, 0, ... with the
    label's channel brightest, so that a model can learn them."""
    gen = np.random.default_rng(seed)
    labels = [i % CLASSES for i in range(count)]
    pixels = gen.integers(0, 120, size=(count, 3, 32, 32), dtype=np.uint8)
    for i, label in enumerate(labels):
        pixels[i, label] += 120
    return pixels.reshape(count, -1), labels


def write_cifar10(root, per_batch=6, test=6):
    """root/cifar-10-batches-py as torchvision reads it: data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for b in range(1, 6):
        data, labels = _images(per_batch, b)
        _pickle(folder / f"data_batch_{b}", {"data": data, "labels": labels, "batch_label": f"training batch {b}"})
    data, labels = _images(test, 0)
    _pickle(folder / "test_batch", {"data": data, "labels": labels})
    _pickle(folder / "batches.meta", {"label_names": [f"class{c}" for c in range(CLASSES)], "num_vis": 3072})
    return root


def write_cifar100(root, train=12, test=6):
    """root/cifar-100-python as torchvision reads it: train, test, meta (fine and coarse labels)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count, seed in (("train", train, 1), ("test", test, 0)):
        data, labels = _images(count, seed)
        _pickle(folder / name, {"data": data, "fine_labels": labels, "coarse_labels": [0] * count})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{c}" for c in range(CLASSES)], "coarse_label_names": ["c"]})
    return root


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar10"))


def parse(data, tmp_path, *flags):
    args = main_base.get_parser().parse_args([str(data), *flags, "--output-dir", str(tmp_path / "out")])
    return finish_args(args, tag=None)


def test_cifar10_reads_the_archive_with_the_papers_augmentation(cifar10, tmp_path):
    args = parse(cifar10, tmp_path, "--dataset", "cifar10")
    assert args.input_size == 32  # the images' own size by default
    train, valid, track, classes = build_datasets(args)
    assert (len(train), len(valid), len(track), classes) == (30, 6, 30, 3)
    kinds = [type(t) for t in train.transform.transforms]
    assert kinds == [transforms.RandomCrop, transforms.RandomHorizontalFlip, transforms.ToTensor, transforms.Normalize]
    assert train.transform.transforms[0].padding == 4 and train.transform.transforms[0].size == (32, 32)
    assert [type(t) for t in valid.transform.transforms] == [transforms.ToTensor, transforms.Normalize]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in CIFAR_STATS["cifar10"])
    with open(cifar10 / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    image, label = valid[4]
    expected = (torch.from_numpy(raw["data"][4].reshape(3, 32, 32)).float() / 255 - mean) / std
    assert label == raw["labels"][4] == 1 and torch.allclose(image, expected, atol=1e-6)
    # the track set: the training images through the validation transforms
    image, label = track[7]
    expected = (torch.from_numpy(train.data[7].transpose(2, 0, 1).copy()).float() / 255 - mean) / std
    assert label == train.targets[7] and torch.allclose(image, expected, atol=1e-6)
    assert track.data is train.data  # one copy of the images in memory
    assert train[7][0].shape == (3, 32, 32)


def test_cifar100_from_its_tar_gz_and_from_the_folder_itself(tmp_path):
    source = write_cifar100(tmp_path / "src")
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-100-python", arcname="cifar-100-python")
    train, valid, _, classes = build_datasets(parse(data, tmp_path, "--dataset", "cifar100", "--train-subset", "5"))
    assert (len(train), len(valid), classes) == (5, 6, 3)
    assert sorted(os.listdir(data)) == ["cifar-100-python", "cifar-100-python.tar.gz"]  # extracted, no leftovers
    train, _, _, _ = build_datasets(parse(data / "cifar-100-python", tmp_path, "--dataset", "cifar100"))
    assert len(train) == 12 and train.classes == ["fine0", "fine1", "fine2"]


def test_a_missing_file_is_named(tmp_path):
    root = write_cifar10(tmp_path / "data")
    os.remove(root / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(Exception, match="CIFAR-10: data_batch_3 missing in"):
        build_datasets(parse(root, tmp_path, "--dataset", "cifar10"))


def test_a_missing_archive_is_a_one_line_error(tmp_path):
    proc = run("main_base.py", tmp_path, "--dataset", "cifar100", "-a", "cifar_resnet8_w8", "--output-dir",
               tmp_path / "out", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: no CIFAR-100 in {tmp_path}: put cifar-100-python/ or cifar-100-python.tar.gz")
    assert lines[0].endswith("or pass --download")


def test_main_base_trains_one_epoch_on_cifar10(cifar10, tmp_path):
    out = tmp_path / "run"
    run("main_base.py", cifar10, "--dataset", "cifar10", "-a", "cifar_resnet8_w8", "--train-subset", 16, "-b", 8,
        "--epochs", 1, "-j", 0, "--seed", 0, "--output-dir", out)
    epochs = [r for r in records(out) if "epoch" in r]
    assert len(epochs) == 1 and 0 <= epochs[0]["top1"] <= 100 and epochs[0]["train_ce"] > 0
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["args"]["dataset"] == "cifar10" and ckpt["args"]["input_size"] == 32
    assert torch.load(out / "student.pth", weights_only=True)["fc.weight"].shape == (3, 32)
