"""mgd.engine.launch: the one-line user-error convention, the launch modes, process set-up and seeding."""
import argparse
import logging
import os
import subprocess
import sys

import pytest
import torch

from mgd.engine import UserError, launch, run_cli, seed_everything, setup_process
from mgd.engine.args import add_launch_arguments

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def namespace(*argv):
    p = argparse.ArgumentParser()
    add_launch_arguments(p)
    return p.parse_args(list(argv))


def test_run_cli_turns_a_user_error_into_one_line_and_exit_code_2(capsys):
    def main(argv):
        raise UserError("--lr must be positive")
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: --lr must be positive\n"


def test_run_cli_lets_programming_errors_show_their_traceback():
    def main(argv):
        raise KeyError("bug")
    with pytest.raises(KeyError):
        run_cli(main, [])


def test_single_process_launch_runs_the_worker_in_this_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    seen = []
    args = namespace("--gpu", "3")
    launch(lambda local_rank, a: seen.append((local_rank, a.distributed, a.world_size, a.nprocs)), args)
    assert seen == [(3, False, 1, 1)]


def test_torchrun_environment_means_env_init(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    seen = []
    args = namespace()
    launch(lambda local_rank, a: seen.append((local_rank, a.distributed, a.dist_url)), args)
    assert seen == [(1, True, "env://")]


def test_several_nodes_need_an_explicit_dist_url():
    args = namespace("--multiprocessing-distributed", "--world-size", "2", "--nproc-per-node", "1")
    with pytest.raises(UserError, match="--dist-url"):
        launch(lambda *a: None, args)


def test_setup_process_single_picks_the_cpu_seeds_and_logs(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = namespace("--seed", "5")
    args.distributed, args.nprocs = False, 1
    device = setup_process(0, args)
    assert device == torch.device("cpu") and (args.rank, args.world_size) == (0, 1)
    assert torch.get_num_threads() == 1 and logging.getLogger().level == logging.INFO
    first = torch.rand(3)
    seed_everything(5)
    assert torch.equal(torch.rand(3), first)


WORKER = """
import sys
sys.path.insert(0, {root!r})
from mgd.engine import UserError, launch, run_cli, worker_guard
from mgd.engine.args import add_launch_arguments
import argparse

@worker_guard
def worker(local_rank, args):
    from mgd.engine import setup_process
    setup_process(local_rank, args)
    if args.rank == 1:
        raise UserError("rank 1 found no images")

def main(argv):
    p = argparse.ArgumentParser()
    add_launch_arguments(p)
    launch(worker, p.parse_args(argv))

if __name__ == "__main__":
    run_cli(main)
"""


def test_a_user_error_in_a_spawned_worker_is_one_line_and_exit_code_2(tmp_path):
    script = tmp_path / "w.py"
    script.write_text(WORKER.format(root=ROOT))
    proc = subprocess.run([sys.executable, str(script), "--multiprocessing-distributed", "--nproc-per-node", "2",
                           "--dist-backend", "gloo"], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr
    assert "error: rank 1 found no images" in proc.stderr and "Traceback" not in proc.stderr
