"""What the engine keeps under signals and concurrent starts: the epoch's checkpoint set and its log record
together, one notice per deferred signal, SIGTERM reported as such, one run per output folder."""
import argparse
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

import mgd
from mgd.checkpoint import deferred_signals
from mgd.engine import Precision, RunLog, UserError, errors, run_cli
from mgd.engine.loop import EpochTask, fit
from mgd.engine.rundir import LOCK_NAME, check_output_dir, lock_output_dir, release_output_dir

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    errors._terminated.clear()  # this process was not really terminated: later verdicts say "interrupted"


class SavesAndIsInterrupted(EpochTask):
    """Epoch 0's save receives a Ctrl-C (as a user's, in the middle of the set of files)."""

    log_name = "test.reliability"

    def __init__(self, out):
        self.out, self.saved = out, []

    def save(self, epoch, record, is_best, best):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGINT)
        torch.save({"epoch": epoch + 1}, os.path.join(self.out, "last.pth"))
        self.saved.append(epoch)


def test_a_signal_during_the_saves_keeps_the_epochs_log_record_and_is_reported_once(tmp_path, caplog,
                                                                                  restore_signals):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    task = SavesAndIsInterrupted(str(tmp_path))
    with caplog.at_level(logging.INFO, logger="mgd"), pytest.raises(KeyboardInterrupt):
        tiny_fit(tmp_path, task)
    assert task.saved == [0]  # the set was written, then the signal acted: no epoch 1
    with open(tmp_path / "log.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [0]  # the record of the saved epoch is there
    notices = [r for r in caplog.records if "now acting on signal" in r.getMessage()]
    assert len(notices) == 1, [r.getMessage() for r in notices]


class FindsTheDiskFull(EpochTask):
    """Epoch 1's save meets a full disk the way torch.save reports one (its stream writer's RuntimeError,
    raised while handling the OSError)."""

    def __init__(self, out, model):
        self.out, self.model = out, model

    def weights(self):
        return {"the student": self.model.state_dict()}

    def save(self, epoch, record, is_best, best):
        if epoch == 1:
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        torch.save({"epoch": epoch + 1}, os.path.join(self.out, "last.pth"))


def tiny_fit(tmp_path, task, epochs=3):
    model = task.model if hasattr(task, "model") else nn.Linear(2, 2)
    distiller = mgd.build_distiller("none", None, model)
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    data = torch.utils.data.TensorDataset(torch.randn(8, model.in_features), torch.tensor([0, 1] * 4))

    def step(batch):
        loss = nn.functional.cross_entropy(distiller.s_net(batch[0]), batch[1])
        return loss, {"ce": loss.item()}, batch[0].shape[0]

    args = argparse.Namespace(epochs=epochs, seed=0, per_process_batch=4, workers=0, rank=0, world_size=1,
                              print_freq=1, output_dir=str(tmp_path), resume="")
    fit(args=args, device=torch.device("cpu"), precision=Precision(False, None, torch.device("cpu")),
        distiller=distiller, trainable=distiller, step=step, optimizer=optimizer, train_set=data,
        log=RunLog(str(tmp_path), 0), task=task)


def test_a_full_disk_is_one_line_that_says_what_was_kept_and_what_is_needed(tmp_path):
    with pytest.raises(UserError) as exc:
        tiny_fit(tmp_path, FindsTheDiskFull(str(tmp_path), nn.Linear(512, 512)))
    assert str(exc.value).startswith(f"no space left in {tmp_path} to save epoch 1: the checkpoints of the epoch "
                                     "before are kept as they were")
    assert "an epoch's checkpoints need about 5.0 MB" in str(exc.value)  # 5 x (512 x 513 float32)
    assert torch.load(tmp_path / "last.pth")["epoch"] == 1


def test_nested_deferrals_act_on_a_signal_once_after_the_outer_block(restore_signals, caplog):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    steps = []
    with caplog.at_level(logging.INFO, logger="mgd"), pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            with deferred_signals():  # an atomic write inside the set
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("inner done")
            steps.append("outer done")  # not cut short by the inner block's end
    assert steps == ["inner done", "outer done"]
    assert sum("now acting on signal SIGINT" in r.getMessage() for r in caplog.records) == 1


def test_sigterm_stops_a_script_like_ctrl_c_and_says_so(capsys, restore_signals):
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def main(argv):
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("SIGTERM did not stop main")

    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 143 and capsys.readouterr().err == "terminated (SIGTERM)\n"


# ------------------------------------------------------------------------------------------ one run per folder

def _lock_in_another_process(folder):
    code = ("import sys; from mgd.engine import UserError; from mgd.engine.rundir import lock_output_dir\n"
            "try:\n    lock_output_dir(sys.argv[1])\nexcept UserError as exc:\n    print(exc); sys.exit(2)\n")
    return subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)


def test_a_second_run_into_a_folder_in_use_is_refused_in_one_line(tmp_path):
    lock_output_dir(str(tmp_path))
    try:
        lock_output_dir(str(tmp_path))  # the same process again: re-entrant
        with open(tmp_path / LOCK_NAME) as f:
            owner = json.load(f)
        assert (owner["pid"], owner["host"]) == (os.getpid(), socket.gethostname())
        proc = _lock_in_another_process(tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout.startswith(f"--output-dir {tmp_path} is in use by another run (process {os.getpid()} on ")
        assert f"if that run is gone, delete {tmp_path / LOCK_NAME})" in proc.stdout
    finally:
        release_output_dir()
    assert not (tmp_path / LOCK_NAME).exists()
    assert _lock_in_another_process(tmp_path).returncode == 0  # free again (and released at that process's exit)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_left_by_a_killed_run_is_taken_over_and_one_of_another_host_is_not(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                  "started": "2026-01-01 00:00:00"}))
    try:
        with caplog.at_level(logging.WARNING, logger="mgd.engine"):
            check_output_dir(str(tmp_path), ("last.pth",))
        assert f"its process {int(dead.stdout)} is gone" in caplog.text
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        release_output_dir()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "another-host", "pid": 1, "started": "2026-01-01"}))
    with pytest.raises(UserError, match=r"in use by another run \(process 1 on another-host, started 2026-01-01\)"):
        check_output_dir(str(tmp_path), ("last.pth",))
    assert check_output_dir(str(tmp_path), ("last.pth",), rank=1) is None  # another node's launcher: no lock
