"""A small DDP job for tests/mgd/engine/test_spawn.py: ``python launch_job.py SCENARIO DIR [launch flags]``.

Two gloo workers start through :func:`mgd.engine.launch` under :func:`mgd.engine.run_cli`, as the training
scripts do; SCENARIO says how rank 1 (or the job) goes wrong. Each worker writes its pid to DIR/ready-RANK
once it has joined the group and finished a first all-reduce, so that a test can signal the job (or one
worker) at a known point. ``--stop-grace S`` shortens the launcher's STOP_GRACE_S; ``--sigint-while-starting``
sends the launcher a SIGINT of its own once its workers have started, before it installs its handler.
"""
import argparse
import importlib
import os
import pathlib
import signal
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mgd.engine import UserError, launch, run_cli, setup_process, worker_guard  # noqa: E402
from mgd.engine.args import add_launch_arguments  # noqa: E402


class NoImages(torch.utils.data.Dataset):
    """A dataset that finds a user error when read, in a DataLoader worker process."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise UserError("rank 1 found no images")


def train(args, rank: int) -> None:
    """Steps of all-reduces until a signal stops the job."""
    while True:
        dist.all_reduce(torch.ones(8))
        time.sleep(0.01)


def train_with_loader(args, rank: int) -> None:
    """Steps that read a DataLoader with a worker process, a new one each epoch (always starting up)."""
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 8)), num_workers=1)
    while True:
        for (batch,) in loader:
            dist.all_reduce(batch)
            time.sleep(0.01)


def save_on_interrupt(args, rank: int) -> None:
    """Sleeps until Ctrl-C, then takes a second to 'write a checkpoint' (a second SIGINT arrives meanwhile)."""
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        time.sleep(1.0)
        (pathlib.Path(args.dir) / f"saved-{rank}").touch()
        raise


def deaf(args, rank: int) -> None:
    """Ignores SIGINT (as a process stuck in native code does): only the grace period's SIGKILL ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        time.sleep(0.05)


def rank1_fails(failure):
    def scenario(args, rank: int) -> None:
        if rank == 1:
            failure(args)
        train(args, rank)
    return scenario


def kill_self(args) -> None:
    """Killed while its DataLoader has a worker process, whose queues' semaphores are left behind."""
    batches = iter(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4)), num_workers=1))
    next(batches)
    os.kill(os.getpid(), signal.SIGKILL)


def user_error(args) -> None:
    raise UserError("rank 1 found no images")


def loader_user_error(args) -> None:
    next(iter(torch.utils.data.DataLoader(NoImages(), num_workers=1)))


def bug(args) -> None:
    {}["missing key"]


def freeze(args) -> None:
    time.sleep(120)


SCENARIOS = {"train": train, "train-loader": train_with_loader, "save": save_on_interrupt, "deaf": deaf,
             "kill": rank1_fails(kill_self), "user": rank1_fails(user_error),
             "loader-user": rank1_fails(loader_user_error), "bug": rank1_fails(bug), "freeze": rank1_fails(freeze)}


@worker_guard
def worker(local_rank: int, args) -> None:
    setup_process(local_rank, args)
    dist.all_reduce(torch.ones(1))
    (pathlib.Path(args.dir) / f"ready-{args.rank}").write_text(str(os.getpid()))
    SCENARIOS[args.scenario](args, args.rank)


def main(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("dir")
    p.add_argument("--stop-grace", type=float, default=None)
    p.add_argument("--sigint-while-starting", action="store_true")
    add_launch_arguments(p)
    args = p.parse_args(argv)
    if args.stop_grace is not None:
        # the module, not the function that mgd.engine exports under the same name
        importlib.import_module("mgd.engine.spawn").STOP_GRACE_S = args.stop_grace
    if args.sigint_while_starting:
        start_processes = torch.multiprocessing.start_processes

        def start_then_interrupt(*a, **kw):
            context = start_processes(*a, **kw)
            os.kill(os.getpid(), signal.SIGINT)
            return context
        torch.multiprocessing.start_processes = start_then_interrupt
    launch(worker, args)


if __name__ == "__main__":
    run_cli(main)
