"""How the applications run: processes (single, spawned DDP workers, torchrun), devices, seeds, and the
command-line convention that a user error is one line on stderr and exit code 2.

Shared by cls/, unsup/ and any script built on mgd, so that no application imports another. ``launch`` and
``setup_process`` read these fields of an argparse namespace (see :func:`mgd.engine.args.add_launch_arguments`):
``multiprocessing_distributed``, ``nproc_per_node``, ``world_size``, ``rank``, ``dist_url`` ("auto" picks
env:// under torchrun or a free local port), ``dist_backend``, ``gpu``, ``seed``, ``deterministic``.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import random
import socket
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .. import distributed as mdist

__all__ = ["UserError", "run_cli", "launch", "worker_guard", "setup_process", "setup_logging", "seed_everything"]


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, no traceback."""


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> None:
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker: Callable[[int, argparse.Namespace], None], args: argparse.Namespace) -> None:
    """Run ``worker(local_rank, args)``: spawned processes with --multiprocessing-distributed, one
    process under torchrun (env://), or a plain single process."""
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if args.multiprocessing_distributed:
        nprocs = args.nproc_per_node or max(torch.cuda.device_count(), 1)
        nodes = max(args.world_size, 1)
        args.nprocs = nprocs
        args.world_size = nprocs * nodes
        args.node_rank = max(args.rank, 0)
        if args.dist_url == "auto":
            if nodes > 1:
                raise UserError("--dist-url is required with several nodes")
            args.dist_url = f"tcp://127.0.0.1:{_free_port()}"
        args.distributed = True
        import torch.multiprocessing as mp
        try:
            mp.spawn(worker, args=(args,), nprocs=nprocs, join=True)
        except mp.ProcessExitedException as exc:  # a worker reported a user error and exited with 2
            sys.exit(exc.exit_code if exc.exit_code else 1)
    elif torchrun or args.world_size > 1:
        args.distributed = True
        args.nprocs = 1
        if args.dist_url == "auto":
            args.dist_url = "env://"
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        worker(local_rank, args)
    else:
        args.distributed = False
        args.nprocs = 1
        args.world_size = 1
        worker(args.gpu if args.gpu is not None else 0, args)


def worker_guard(fn: Callable[[int, argparse.Namespace], None]) -> Callable[[int, argparse.Namespace], None]:
    """In a spawned worker, a UserError becomes one line on stderr and exit code 2. (functools.wraps keeps
    the worker's name, so torch.multiprocessing can pickle it.)"""
    @functools.wraps(fn)
    def wrapped(local_rank: int, args: argparse.Namespace) -> None:
        try:
            fn(local_rank, args)
        except UserError as exc:
            if getattr(args, "multiprocessing_distributed", False):
                print(f"error: {exc}", file=sys.stderr)
                sys.stderr.flush()
                os._exit(2)
            raise
        finally:
            if mdist.is_distributed():
                dist.destroy_process_group()
    return wrapped


def setup_process(local_rank: int, args: argparse.Namespace) -> torch.device:
    """Join the process group if distributed, pick the device, set threads and logging."""
    if args.distributed:
        if args.dist_url == "env://":
            rank, world = int(os.environ.get("RANK", args.rank)), int(os.environ.get("WORLD_SIZE", args.world_size))
        else:
            rank = getattr(args, "node_rank", max(args.rank, 0)) * args.nprocs + local_rank
            world = args.world_size
        backend = args.dist_backend or mdist.default_backend()
        dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=world, rank=rank)
        args.rank, args.world_size = rank, world
    else:
        args.rank, args.world_size = 0, 1
    if torch.cuda.is_available() and (args.distributed or args.gpu is not None):
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
        cores = os.cpu_count() or 1
        per_process = max(1, cores // max(args.nprocs, 1))
        if "OMP_NUM_THREADS" in os.environ:
            per_process = min(per_process, int(os.environ["OMP_NUM_THREADS"]))
        torch.set_num_threads(per_process)
    setup_logging(args.rank)
    if args.seed is not None:  # same initial weights on every rank and in every run
        seed_everything(args.seed)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def setup_logging(rank: int) -> None:
    """INFO lines from this script and the library on rank 0, warnings only elsewhere."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout,
                        force=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
