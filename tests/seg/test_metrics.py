"""mIoU, pixel accuracy and per-class IoU against hand-computed values; exact across 2 gloo processes."""
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seg.evaluate import evaluate
from seg.losses import seg_cross_entropy
from seg.metrics import ConfusionMatrix


def test_confusion_matrix_by_hand():
    # 4 classes; class 3 is neither labelled nor predicted; class 2 is predicted but never labelled
    target = torch.tensor([[0, 0, 1, 1], [1, 255, 0, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 3, 0, 0]])  # the 255 pixels' predictions must not count
    m = ConfusionMatrix(4)
    m.update(target, pred)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[1, 2] = 2, 1, 2, 1
    assert torch.equal(m.mat, expected)
    # IoU 0: 2 / (3 + 2 - 2) = 2/3; class 1: 2 / (3 + 3 - 2) = 1/2; class 2: 0 / (0 + 1 - 0) = 0; class 3: undefined
    iou = m.per_class_iou()
    assert iou[:3] == pytest.approx([2 / 3, 1 / 2, 0.0]) and math.isnan(iou[3])
    stats = m.compute()
    assert stats["miou"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
    assert stats["pixel_acc"] == pytest.approx(100 * 4 / 6)
    assert stats["iou"][3] is None and stats["iou"][0] == pytest.approx(66.6667, abs=1e-3)


def test_updates_accumulate_and_ignore_out_of_range_labels():
    m = ConfusionMatrix(2)
    m.update(torch.tensor([0, 1, 7]), torch.tensor([0, 0, 1]))
    m.update(torch.tensor([1]), torch.tensor([1]))
    assert m.mat.tolist() == [[1, 0], [1, 1]]


def test_cross_entropy_ignores_255_and_survives_an_all_ignored_crop():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[0, 255], [2, 255]]])
    expected = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert seg_cross_entropy(logits, target).item() == pytest.approx(expected.item())
    empty = seg_cross_entropy(logits, torch.full((1, 2, 2), 255))
    assert empty.item() == 0.0
    empty.backward()
    assert torch.isfinite(logits.grad).all()


def _model():
    torch.manual_seed(3)
    return torch.nn.Conv2d(3, 3, 3, padding=1)


def _dataset():
    gen = torch.Generator().manual_seed(5)
    items = []
    for h in (6, 7, 8, 9, 10):  # 5 images of different sizes: shards of 3 and 2 images
        target = torch.randint(0, 3, (h, 8), generator=gen)
        target[0, 0] = 255
        items.append((torch.randn(3, h, 8, generator=gen), target))
    return items


def _worker(rank, init_file, out):
    from mgd.engine import eval_loader
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        loader = eval_loader(_dataset(), 1, 0, rank, 2)
        torch.save(evaluate(_model(), loader, torch.device("cpu"), 3), os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_two_gloo_processes_give_the_single_process_miou(tmp_path):
    from mgd.engine import eval_loader
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = evaluate(_model(), eval_loader(_dataset(), 1, 0, 0, 1), torch.device("cpu"), 3)
    half = evaluate(_model(), eval_loader(_dataset(), 1, 0, 0, 2), torch.device("cpu"), 3)  # rank 0's shard alone
    for rank in range(2):
        stats = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert stats["images"] == single["images"] == 5
        assert stats["miou"] == pytest.approx(single["miou"], abs=1e-9)
        assert stats["pixel_acc"] == pytest.approx(single["pixel_acc"], abs=1e-9)
        assert stats["loss"] == pytest.approx(single["loss"], rel=1e-9)
    assert half["images"] == 3 and half["miou"] != pytest.approx(single["miou"])  # the all-reduce matters
