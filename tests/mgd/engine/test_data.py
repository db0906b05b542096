"""mgd.engine.data: permutations that depend only on (seed, epoch), padded training shards, exact
evaluation shards, augmentations seeded per sample, unreadable images."""
import logging
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from mgd.engine import UserError
from mgd.engine.data import (SkipUnreadable, UnreadableImage, epoch_loader, epoch_order, eval_loader, image_folder,
                             prepare_loader, read_rgb_image)


def test_epoch_order_is_a_padded_partition_that_depends_only_on_seed_and_epoch():
    parts = [epoch_order(10, epoch=3, seed=1, rank=r, world_size=3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # ceil(10 / 3), padded as DistributedSampler pads
    flat = sum(parts, [])
    assert sorted(set(flat)) == list(range(10)) and flat[10:] == flat[:2]
    assert parts == [epoch_order(10, epoch=3, seed=1, rank=r, world_size=3) for r in range(3)]
    assert parts != [epoch_order(10, epoch=4, seed=1, rank=r, world_size=3) for r in range(3)]
    assert epoch_order(10, 3, 1, 0, 1) != epoch_order(10, 3, 1, 0, 1, salt=7)


def test_epoch_loader_keeps_the_last_smaller_batch_unless_asked():
    data = [torch.tensor(i) for i in range(10)]
    sizes = [len(b) for b in epoch_loader(data, 4, 0, epoch=0, seed=0, rank=0, world_size=1)]
    assert sizes == [4, 4, 2]
    sizes = [len(b) for b in epoch_loader(data, 4, 0, epoch=0, seed=0, rank=0, world_size=1, drop_last=True)]
    assert sizes == [4, 4]


def test_eval_and_prepare_shards_are_disjoint_and_complete():
    data = list(range(11))
    shards = [sum((b.tolist() for b in eval_loader(data, 3, 0, rank=r, world_size=2)), []) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == data and not set(shards[0]) & set(shards[1])
    prep = [sum((b.tolist() for b in prepare_loader(data, 3, 0, epoch=2, seed=0, rank=r, world_size=2)), [])
            for r in range(2)]
    assert [sorted(p) for p in prep] == [sorted(s) for s in shards]  # the same shards, in a seeded order
    assert prep[0] != shards[0]


class RandomCrops(torch.utils.data.Dataset):
    """Every item drawn with the global torch and Python RNGs, as torchvision's random transforms do."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return torch.tensor([index, torch.randint(0, 10 ** 6, ()).item(), random.randrange(10 ** 6)])


def test_augmentations_depend_on_seed_epoch_and_sample_not_on_workers_or_processes():
    def batches(workers, rank=0, world_size=1, epoch=1):
        return torch.cat(list(epoch_loader(RandomCrops(), 4, workers, epoch, 3, rank, world_size)))
    single = batches(0)
    assert torch.equal(single, batches(2))  # -j 0 and -j 2: the same crops
    by_index = {int(row[0]): row for row in single}
    for rank in range(2):  # and each sample the same crop when two processes share the epoch
        for row in batches(1, rank, 2):
            assert torch.equal(row, by_index[int(row[0])])
    assert not torch.equal(single[:, 1:], batches(0, epoch=2)[:, 1:])  # a new epoch, new crops
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    batches(0)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG stream is left as it was


def _image_folder(root, broken):
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / f"{i}.png")
    data = (root / "1.png").read_bytes()
    (root / "1.png").write_bytes(data[: len(data) // 2] if broken == "truncated" else b"not an image")


@pytest.mark.parametrize("broken", ["truncated", "garbage"])
def test_an_unreadable_image_is_named_or_skipped_with_a_warning(broken, tmp_path, caplog):
    _image_folder(tmp_path, broken)
    paths = sorted(str(p) for p in tmp_path.iterdir())

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return torch.as_tensor(list(read_rgb_image(paths[i]).getpixel((0, 0))))
    with pytest.raises(UnreadableImage, match=f"cannot read image {paths[1]}: .*--skip-bad-images"):
        list(eval_loader(Images(), 4, 0, rank=0, world_size=1))
    with caplog.at_level(logging.WARNING, logger="mgd.engine"):
        for _ in range(2):
            batches = list(eval_loader(SkipUnreadable(Images()), 4, 0, rank=0, world_size=1))
            assert [b[:, 0].tolist() for b in batches] == [[0, 80, 80, 120]]  # replaced by the next readable
    assert len(caplog.records) == 2  # one warning per file, per dataset (each epoch's loader in a process)
    assert caplog.records[0].getMessage().startswith(f"skipped (replaced by the next readable image): cannot read "
                                                     f"image {paths[1]}: ")
    assert issubclass(UnreadableImage, UserError)
    for p in paths:
        Path(p).write_bytes(b"nothing")
    with pytest.raises(UserError, match="no readable image in a dataset of 4"):
        list(eval_loader(SkipUnreadable(Images()), 1, 0, rank=0, world_size=1))


def test_an_image_folder_without_class_folders_or_images_is_one_line(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "0.png")
    with pytest.raises(UserError, match="cannot read the image folder .*flat: Couldn't find any class folder"):
        image_folder(str(tmp_path / "flat"))
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "b").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "tree" / "a" / "0.png")
    with pytest.raises(UserError, match=r"no images in the class folder\(s\) b of .*tree \(image files end in"):
        image_folder(str(tmp_path / "tree"))
