"""How the applications run: processes (single, spawned DDP workers, torchrun), devices, seeds, and the
command line's conventions (:mod:`mgd.engine.errors`).

Shared by cls/, unsup/ and any script built on mgd, so that no application imports another. ``launch`` and
``setup_process`` read these fields of an argparse namespace (see :func:`mgd.engine.args.add_launch_arguments`):
``multiprocessing_distributed``, ``nproc_per_node``, ``world_size``, ``rank``, ``dist_url`` ("auto" picks
env:// under torchrun or a free local port), ``dist_backend``, ``dist_timeout`` (minutes), ``gpu``, ``seed``,
``deterministic``. Spawned jobs are supervised by :mod:`mgd.engine.spawn`.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import logging
import os
import random
import signal
import socket
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .. import distributed as mdist
from .errors import EXIT_USER, UserError, ignore_sigint, interruption, sigterm_stops_like_ctrl_c, user_message
from .rundir import release_output_dir
from .spawn import WORKER, end_worker, run_spawned

__all__ = ["UserError", "run_cli", "launch", "free_port", "worker_guard", "setup_process", "setup_logging", "seed_everything",
           "user_message"]


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> None:
    """Run a script's ``main``: a UserError becomes "error: ..." and exit code 2, Ctrl-C "interrupted" and
    exit code 130, SIGTERM "terminated (SIGTERM)" and 143 (it stops the run as Ctrl-C does); programming
    errors keep their traceback."""
    if getattr(signal.getsignal(signal.SIGINT), "__module__", None) == "__main__":
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the script's start-up handler: ours from now
    sigterm_stops_like_ctrl_c()
    try:
        main(argv)
    except UserError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        sys.exit(EXIT_USER)
    except KeyboardInterrupt:
        ignore_sigint()  # a second Ctrl-C must not interrupt the report with a traceback
        code, line = interruption()
        print(line, file=sys.stderr)
        sys.exit(code)


def free_port() -> int:
    """A TCP port free on this machine now, for a single-machine job's rendezvous (tcp://127.0.0.1:PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------------ launch

def check_launch(args: argparse.Namespace, torchrun: bool) -> None:
    """The launch flags, checked before any process starts: each mistake one UserError, not a traceback from
    the rendezvous."""
    url = args.dist_url
    if url != "auto" and not url.startswith(("tcp://", "env://", "file://")):
        raise UserError(f"--dist-url {url!r}: use tcp://HOST:PORT, env:// (torchrun's variables) or file://PATH")
    if args.dist_backend == "nccl" and not torch.cuda.is_available():
        raise UserError("--dist-backend nccl needs CUDA GPUs and none is available here: use gloo (the default "
                        "without CUDA)")
    if args.gpu is not None and (not torch.cuda.is_available() or args.gpu >= torch.cuda.device_count()):
        raise UserError(f"--gpu {args.gpu}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if args.world_size == 0 or args.world_size < -1:
        raise UserError(f"--world-size {args.world_size}: the number of nodes (or processes) is 1 or more")
    if (not args.multiprocessing_distributed and not torchrun and args.world_size > 1 and url in ("auto", "env://")
            and "MASTER_ADDR" not in os.environ):
        raise UserError(f"--world-size {args.world_size} without --multiprocessing-distributed starts one process "
                        "of a larger job: run it under torchrun, give each process --rank and --dist-url "
                        "tcp://HOST:PORT, or use --multiprocessing-distributed --nproc-per-node N on one machine")


def launch(worker: Callable[[int, argparse.Namespace], None], args: argparse.Namespace) -> None:
    """Run ``worker(local_rank, args)``: spawned processes with --multiprocessing-distributed, one
    process under torchrun (env://), or a plain single process. The --output-dir lock this process holds
    (:func:`mgd.engine.rundir.lock_output_dir`) is released when the job ends."""
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    try:
        check_launch(args, torchrun)
        _launch(worker, args, torchrun)
    finally:
        release_output_dir()


def _launch(worker: Callable[[int, argparse.Namespace], None], args: argparse.Namespace, torchrun: bool) -> None:
    if args.multiprocessing_distributed:
        nprocs = args.nproc_per_node or max(torch.cuda.device_count(), 1)
        nodes = max(args.world_size, 1)
        args.nprocs = nprocs
        args.world_size = nprocs * nodes
        args.node_rank = max(args.rank, 0)
        if args.dist_url == "auto":
            if nodes > 1:
                raise UserError("--dist-url is required with several nodes")
            args.dist_url = f"tcp://127.0.0.1:{free_port()}"
        args.distributed = True
        run_spawned(worker, args, nprocs)
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
    """In a spawned worker, any error ends the process at once with its outcome reported to the parent
    (:func:`launch`), which prints the job's one line: a UserError is that line, exit code 2. Ending at once
    skips ``destroy_process_group``, which can block when a peer is gone. Elsewhere errors propagate (to
    :func:`run_cli`). (functools.wraps keeps the worker's name, so torch.multiprocessing can pickle it.)"""
    @functools.wraps(fn)
    def wrapped(local_rank: int, args: argparse.Namespace) -> None:
        try:
            fn(local_rank, args)
        except BaseException as exc:
            if getattr(args, "multiprocessing_distributed", False):
                WORKER.ending = True  # first statement: a late SIGINT must not raise inside this handler
                end_worker(exc)
            raise
        finally:
            if mdist.is_distributed():
                dist.destroy_process_group()
    return wrapped


# --------------------------------------------------------------------------------------------- process set-up

def setup_process(local_rank: int, args: argparse.Namespace) -> torch.device:
    """Join the process group if distributed, pick the device, set threads and logging. A collective that
    waits longer than --dist-timeout minutes for another rank fails (rather than hanging for gloo's 30)."""
    if args.distributed:
        if args.dist_url == "env://":
            rank, world = int(os.environ.get("RANK", args.rank)), int(os.environ.get("WORLD_SIZE", args.world_size))
        else:
            rank = getattr(args, "node_rank", max(args.rank, 0)) * args.nprocs + local_rank
            world = args.world_size
        backend = args.dist_backend or mdist.default_backend()
        timeout = datetime.timedelta(minutes=getattr(args, "dist_timeout", None) or 30)
        dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=world, rank=rank,
                                timeout=timeout)
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
