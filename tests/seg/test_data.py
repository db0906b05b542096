"""The joint transforms and the folder dataset's checks (each bad file is one UserError naming it)."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mgd.engine import UserError
from seg.data import SegmentationFiles, center_transform, folder_num_classes, folder_pairs, train_transform
from seg_runs import write_folder_set


def _pair(h=10, w=6):
    label = np.arange(h * w, dtype=np.uint8).reshape(h, w) % 3
    image = np.stack([label * 80] * 3, -1).astype(np.uint8)
    return Image.fromarray(image), Image.fromarray(label)


def test_train_transform_pads_labels_with_255_and_keeps_classes():
    random.seed(0)
    for _ in range(5):
        image, label = train_transform(16, scale=(0.5, 2.0))(*_pair())
        assert image.shape == (3, 16, 16) and label.shape == (16, 16) and label.dtype == torch.int64
        assert set(label.unique().tolist()) <= {0, 1, 2, 255}  # nearest resize: no interpolated class
    random.seed(1)
    _, label = train_transform(32, scale=(1.0, 1.0))(*_pair())  # a 10x6 image in a 32 crop: padded
    assert (label == 255).sum() == 32 * 32 - 60 and set(label[label != 255].unique().tolist()) == {0, 1, 2}


def test_center_transform_is_deterministic():
    a, b = center_transform(8)(*_pair()), center_transform(8)(*_pair())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[1].shape == (8, 8)


def test_folder_pairs_and_class_count(tmp_path):
    root = write_folder_set(tmp_path / "d", train=2, val=1)
    assert len(folder_pairs(root, "train")) == 2 and folder_num_classes(root) == 3
    with pytest.raises(UserError, match="folder not found"):
        folder_pairs(tmp_path / "nothing", "train")
    (root / "val" / "labels" / "0.png").unlink()
    with pytest.raises(UserError, match="no label for"):
        folder_pairs(root, "val")


def test_bad_label_files_name_the_file(tmp_path):
    root = write_folder_set(tmp_path / "d", train=2, val=1)
    pairs = folder_pairs(root, "train")
    data = SegmentationFiles(pairs, 3, lambda i, l: (i, l))
    image, label = data[0]
    assert image.size == label.size
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(pairs[0][1])
    with pytest.raises(UserError, match=r"0\.png is 5x5 but its image .* is 48x40"):
        data[0]
    Image.fromarray(np.full((44, 48), 7, np.uint8)).save(pairs[1][1])
    with pytest.raises(UserError, match=r"1\.png holds value\(s\) 7 outside \[0, 3\)"):
        data[1]
    Image.fromarray(np.zeros((44, 48, 3), np.uint8)).save(pairs[1][1])
    with pytest.raises(UserError, match="single-channel"):
        data[1]


def test_a_16_bit_label_is_read_while_its_values_are_class_indices_and_refused_above_255(tmp_path):
    """A 16-bit label of value 300 once made 301 classes and was cast to 8 bits (44) on read."""
    from seg.data import _read_label
    path = tmp_path / "a.png"
    Image.fromarray(np.array([[0, 3], [255, 7]], dtype=np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    label = _read_label(str(path))
    assert label.mode == "L" and np.array(label).tolist() == [[0, 3], [255, 7]]
    Image.fromarray(np.array([[0, 300], [255, 7]], dtype=np.uint16)).save(path)
    with pytest.raises(UserError, match=r"holds value\(s\) 300 outside 0\.\.255: class indices are 0\.\.254"):
        _read_label(str(path))
