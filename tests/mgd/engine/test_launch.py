"""mgd.engine.launch: the one-line user-error convention, the launch modes, process set-up and seeding."""
import argparse
import datetime
import logging
import signal

import pytest
import torch
import torch.distributed as dist

from mgd.engine import UserError, launch, run_cli, seed_everything, setup_process
from mgd.engine.args import add_launch_arguments
from mgd.engine.errors import user_message


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


class NoImages(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise UserError("no images in /data/train")


def test_run_cli_prints_only_the_message_of_a_user_error_raised_in_a_dataloader_worker(capsys):
    def main(argv):
        batches = iter(torch.utils.data.DataLoader(NoImages(), num_workers=1))
        try:
            next(batches)
        except UserError as exc:  # the same exception, without the frames that keep the loader's worker alive
            del batches           # (shut down when the exception is collected, that takes 5 s)
            raise exc.with_traceback(None)
    with pytest.raises(UserError) as wrapped:  # what torch re-raises: the worker's whole traceback in the text
        main([])
    assert str(wrapped.value).startswith("Caught UserError in DataLoader worker process 0.\nOriginal Traceback")
    assert user_message(wrapped.value) == "no images in /data/train"
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: no images in /data/train\n"


def test_run_cli_reports_ctrl_c_as_interrupted_and_exit_code_130(capsys):
    def main(argv):
        raise KeyboardInterrupt
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exc:
            run_cli(main, [])
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a second Ctrl-C cannot cut the report
    finally:
        signal.signal(signal.SIGINT, handler)
    assert exc.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_single_process_launch_runs_the_worker_in_this_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    seen = []
    args = namespace()
    launch(lambda local_rank, a: seen.append((local_rank, a.distributed, a.world_size, a.nprocs)), args)
    assert seen == [(0, False, 1, 1)]


@pytest.mark.parametrize("argv, message", [
    (["--world-size", "2", "--rank", "0"], "--world-size 2 without --multiprocessing-distributed starts one process"),
    (["--dist-url", "foo://bar"], "--dist-url 'foo://bar': use tcp://HOST:PORT"),
    (["--dist-backend", "nccl"], "--dist-backend nccl needs CUDA GPUs"),
    (["--gpu", "3"], "--gpu 3: this machine has 0 CUDA GPU(s)"),
    (["--world-size", "-5"], "--world-size -5: the number of nodes"),
])
def test_launch_mistakes_are_one_user_error_before_any_process_starts(monkeypatch, argv, message):
    for name in ("WORLD_SIZE", "RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UserError) as exc:
        launch(lambda *a: pytest.fail("the worker must not start"), namespace(*argv))
    assert str(exc.value).startswith(message)


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


def test_dist_timeout_is_a_positive_number_of_minutes_30_by_default(capsys):
    assert namespace().dist_timeout == 30.0
    assert namespace("--dist-timeout", "0.05").dist_timeout == 0.05
    for bad in ("0", "-1", "inf", "soon"):
        with pytest.raises(SystemExit):
            namespace("--dist-timeout", bad)
    assert "--dist-timeout" in capsys.readouterr().err


@pytest.mark.parametrize("flags, minutes", [(("--dist-timeout", "0.5"), 0.5), ((), 30.0), (None, 30.0)])
def test_setup_process_passes_the_dist_timeout_to_init_process_group(monkeypatch, flags, minutes):
    """None: a namespace built without add_launch_arguments' --dist-timeout still works."""
    seen = {}
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = namespace(*(flags or ()))
    if flags is None:
        del args.dist_timeout
    args.distributed, args.nprocs, args.node_rank, args.world_size = True, 2, 0, 2
    args.dist_url, args.dist_backend = "tcp://127.0.0.1:1", "gloo"
    setup_process(1, args)
    assert seen == dict(backend="gloo", init_method="tcp://127.0.0.1:1", world_size=2, rank=1,
                        timeout=datetime.timedelta(minutes=minutes))
    assert (args.rank, args.world_size) == (1, 2)


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
