"""Process-group helpers shared by the library and every application.

The library only needs "am I distributed, which rank, all-reduce, broadcast" (the applications set the group
up in mgd.engine). Everything here is a no-op in a single process, so code calls it unconditionally.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "any_rank", "is_distributed", "get_rank", "get_world_size", "is_main_process", "all_reduce_sum", "broadcast",
    "default_backend", "same_on_all_ranks", "all_gather_cat",
]


def is_distributed() -> bool:
    """True when torch.distributed is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (identity in a single process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


@torch.no_grad()
def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0, in rank order (no gradient; ``tensor`` itself in a
    single process). The ranks may hold different numbers of rows (a last, smaller batch)."""
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(rows) for _ in range(world)]
    dist.all_gather(sizes, rows)
    longest = max(int(s) for s in sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:int(n)] for part, n in zip(parts, sizes)])


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (``flag`` itself in a single process): so
    that all ranks take the same branch, e.g. all stop when one of them diverged."""
    if not is_distributed():
        return bool(flag)
    return all_reduce_sum(torch.tensor([float(bool(flag))], device=device)).item() > 0


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` with rank ``src``'s copy (identity in a single process) and return it."""
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def same_on_all_ranks(tensors) -> bool:
    """True when every rank holds the same values (compared through a position-weighted checksum's
    all-reduced min and max); always True in a single process."""
    if not is_distributed():
        return True
    device = tensors[0].device
    checksum = sum(((t.double().flatten() + 1) * torch.arange(1, t.numel() + 1, device=device,
                                                               dtype=torch.float64)).sum() for t in tensors)
    lo, hi = checksum.clone().view(1), checksum.clone().view(1)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(lo.item() == hi.item())


def default_backend() -> str:
    """nccl when CUDA is usable, gloo otherwise (CPU runs and tests)."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
