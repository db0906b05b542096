"""Several training processes on a CPU-only machine. Detectron2 0.6's ``launch`` asserts CUDA for more than
one process (NCCL, one GPU per process) and its ``create_ddp_model`` passes ``device_ids=[local rank]``, which
DistributedDataParallel refuses for a CPU model. Here the processes are spawned and joined over gloo the way
``launch`` sets them up (global process group, then detectron2's ``comm`` local process group of the
machine, then a barrier), and DDP wraps a CPU model without device ids. With CUDA, detectron2's own
``launch`` runs unchanged."""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import detectron2.engine.defaults as d2_defaults
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from mgd.engine.launch import free_port

__all__ = ["launch", "cpu_ddp"]

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


def launch(main_func: Callable, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: Optional[str] = None, args: Sequence = (), device: str = "cuda",
           timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> None:
    """Detectron2's ``launch``, or, for ``device`` "cpu" with several processes, ``num_processes`` spawned
    processes on this machine joined over gloo ("auto" or None: a free local port)."""
    if device != "cpu" or num_processes * num_machines <= 1:
        d2_launch(main_func, num_processes, num_machines=num_machines, machine_rank=machine_rank,
                  dist_url=dist_url, args=tuple(args), timeout=timeout)
        return
    if num_machines != 1:
        raise ValueError("several CPU processes are supported on one machine only (--num-machines 1)")
    if dist_url in (None, "auto"):
        dist_url = f"tcp://127.0.0.1:{free_port()}"
    mp.start_processes(_cpu_worker, nprocs=num_processes, start_method="spawn", daemon=False,
                       args=(main_func, num_processes, dist_url, tuple(args), timeout))


def _cpu_worker(local_rank: int, main_func: Callable, world_size: int, dist_url: str, args: Sequence,
                timeout: datetime.timedelta) -> None:
    if "OMP_NUM_THREADS" not in os.environ:  # processes x threads within the cores, not above them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group("gloo", init_method=dist_url, world_size=world_size, rank=local_rank, timeout=timeout)
    try:
        # detectron2's local process group: the ranks of this machine (all of them), as launch sets it
        comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
        comm.synchronize()
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs) -> torch.nn.Module:
    """Detectron2's ``create_ddp_model`` for a model on the CPU: no ``device_ids``."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cpu":
        kwargs.pop("device_ids", None)
        return DistributedDataParallel(model, **kwargs)
    return _D2_CREATE_DDP_MODEL(model, fp16_compression=fp16_compression, **kwargs)


_D2_CREATE_DDP_MODEL = d2_defaults.create_ddp_model


@contextlib.contextmanager
def cpu_ddp() -> Iterator[None]:
    """Within the block, ``DefaultTrainer.__init__`` wraps a CPU model in DDP without device ids."""
    d2_defaults.create_ddp_model = _create_ddp_model
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = _D2_CREATE_DDP_MODEL
