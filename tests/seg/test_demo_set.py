"""The demo's segmentation set (seg/demo.py, `make demo-seg`): what its docstring says a canvas is."""
import numpy as np

from seg.demo import FOREGROUND, canvas


def _photos(count=6, seed=0):
    """Fashion-MNIST-like photographs: a bright garment on black (grey >= 120 inside a square, 0 around it)."""
    rng = np.random.default_rng(seed)
    photos = np.zeros((count, 28, 28), np.uint8)
    photos[:, 6:22, 8:20] = rng.integers(120, 256, (count, 16, 12))
    return photos, np.arange(count) % 10


def test_a_canvas_labels_each_garment_pixel_with_its_class_and_the_rest_background():
    photos, classes = _photos()
    order = list(range(len(photos)))
    image, label = canvas(np.random.default_rng(3), photos, classes, order, 48)
    used = [k for k in range(len(photos)) if k not in order]
    assert image.shape == label.shape == (48, 48) and image.dtype == label.dtype == np.uint8
    assert 2 <= len(used) <= 3  # 2 or 3 garments, each photograph used once
    assert set(np.unique(label)) - {0} <= {1 + int(classes[k]) for k in used}
    assert (label > 0).sum() > 0 and (label == 0).sum() > 0
    assert (image[label > 0] >= FOREGROUND).all()  # a garment pixel keeps its (bright) grey level
    assert image[label == 0].max() < 120  # background: the dark gradient and noise, never a garment pixel


def test_canvases_repeat_exactly_from_the_seed():
    photos, classes = _photos()
    first = canvas(np.random.default_rng(7), photos, classes, list(range(6)), 48)
    again = canvas(np.random.default_rng(7), photos, classes, list(range(6)), 48)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
