"""2-process gloo: each rank tracks its own shard; all ranks end with the single-process matching."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mgd

from tiny_models import randomize_bn, tiny_resnet

WORLD = 2


def _distiller():
    torch.manual_seed(0)
    return mgd.MGDistiller(randomize_bn(tiny_resnet(True)), tiny_resnet(False))


def _batches():
    gen = torch.Generator().manual_seed(11)
    return [torch.randn(4, 3, 32, 32, generator=gen) for _ in range(4)]


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        d = _distiller()
        shard = _batches()[rank::WORLD]  # different data on each rank
        if rank == 1:
            shard = shard[:1]  # and a different number of batches
        mgd.mgd_update(shard, d)
        torch.save([g.clone() for g in d.guided_inds], os.path.join(out_dir, f"rank{rank}.pt"))
        try:  # an empty loader on every rank fails on every rank, nobody hangs
            mgd.mgd_update([], d)
        except ValueError as exc:
            torch.save(str(exc), os.path.join(out_dir, f"error{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_ranks_agree_with_single_process_over_all_data(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    single = _distiller()
    batches = _batches()
    mgd.mgd_update([batches[0], batches[2], batches[1]], single)  # exactly what the two ranks saw together
    for a, b, s in zip(ranks[0], ranks[1], single.guided_inds):
        assert torch.equal(a, b)
        assert torch.equal(a, s)
    alone = _distiller()  # rank 0's shard alone matches differently: the all-reduce is what made them agree
    mgd.mgd_update([batches[0], batches[2]], alone)
    assert any(not torch.equal(a, s) for a, s in zip(alone.guided_inds, single.guided_inds))
    for r in range(WORLD):
        assert "empty" in torch.load(tmp_path / f"error{r}.pt")
