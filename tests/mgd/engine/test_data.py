"""mgd.engine.data: permutations that depend only on (seed, epoch), padded training shards, exact
evaluation shards."""
import torch

from mgd.engine.data import epoch_loader, epoch_order, eval_loader, prepare_loader


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
