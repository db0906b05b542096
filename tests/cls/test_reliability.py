"""Runs of cls/ under concurrency and 2-process resume: nothing of a running job lost to a second start, and a
2-process MGD run resumed bit-exact although its matching is re-solved after the resume point."""
import os
import subprocess
import sys
import time

import pytest
import torch

from cls_runs import common, differing_tensors, full_and_resumed, mgd_args, records, run
from scripts import ROOT, script_env


#: Enough epochs for the first run to outlast the second one's start (its imports take seconds, an epoch ~0.1 s).
EPOCHS = 60


def test_a_second_run_started_into_the_same_folder_is_refused_and_the_first_keeps_its_files(image_folder,
                                                                                          tmp_path):
    out = tmp_path / "x"
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "cls", "main_base.py"),
                              *map(str, common(image_folder, out, epochs=EPOCHS))], cwd=ROOT, env=script_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "run.lock").exists():
            assert first.poll() is None and time.time() < deadline, "the first run never took the folder"
            time.sleep(0.05)
        second = run("main_base.py", *common(image_folder, out, epochs=2), "--lr", 0.01, check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith(
            f"error: --output-dir {out} is in use by another run (process {first.pid} on ")
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert [r["epoch"] for r in records(out) if "epoch" in r] == list(range(EPOCHS))  # one run's, not interleaved
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == EPOCHS
    assert not (out / "run.lock").exists()  # released at the end


def test_two_process_mgd_resume_is_exact_when_the_matching_is_solved_again_after_it(image_folder,
                                                                                   teacher_weights, tmp_path):
    """Each rank's last step leaves it its own BatchNorm statistics, and the checkpoint holds rank 0's: the
    engine gives every rank rank 0's after each epoch, so the next matching (solved in eval mode from both ranks'
    features, --mgd-update-freq 1) reads the same statistics in the uninterrupted and in the resumed run."""
    a, b, full, part = full_and_resumed(image_folder, teacher_weights, tmp_path, 3, "--multiprocessing-distributed",
                                        "--dist-backend", "gloo", "--nproc-per-node", 2)
    assert a["epoch"] == b["epoch"] == 3
    assert differing_tensors(a, b) == []
    assert [r["train_ce"] for r in records(full) if "epoch" in r] == \
        [r["train_ce"] for r in records(part) if "epoch" in r]


def test_a_new_lr_on_resume_rescales_the_saved_schedule():
    """The divergence message advises a lower --lr and a resume: the resumed run's rates are the saved
    schedule's times new / saved lr, at the point where it stopped and from there on."""
    import argparse

    from cls.trainer import rescale_lr
    from cls.utils import make_scheduler

    args = argparse.Namespace(warmup=0, warmup_epochs=0, lr_drop_epochs=[2], lr_drop_ratio=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = make_scheduler(optimizer, args)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    state = (optimizer.state_dict(), scheduler.state_dict())
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)  # the resumed run's --lr 0.05
    scheduler = make_scheduler(optimizer, args)
    optimizer.load_state_dict(state[0])
    scheduler.load_state_dict(state[1])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # the saved 0.5 x 0.1, not --lr's
    rescale_lr(optimizer, scheduler, 0.5, 0.05)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005) and scheduler.base_lrs == [pytest.approx(0.05)]
    rescale_lr(optimizer, scheduler, 0.05, 0.05)  # the same --lr: nothing changes
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.005)


def test_a_teacher_that_cannot_take_the_input_size_is_one_line_before_training(image_folder, tmp_path):
    timm = pytest.importorskip("timm")
    teacher = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=3).state_dict(), teacher)
    argv = common(image_folder, tmp_path / "vit") + ["--teacher-arch", "timm/vit_tiny_patch16_224",
                                                     "--teacher-resume", teacher, "--distiller", "kd",
                                                     "--input-size", 32]
    argv[argv.index("-a") + 1] = "timm/resnet10t"
    proc = run("main_mgd.py", *argv, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("error: the teacher timm/vit_tiny_patch16_224 cannot take the training images (3x32x32): ")
    assert last.endswith("; choose another --input-size or another architecture")
    assert not (tmp_path / "vit" / "last.pth").exists()


def test_ctrl_c_during_the_start_up_imports_is_one_word_and_exit_code_130(image_folder, tmp_path):
    import signal
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "cls", "main_base.py"),
                             *map(str, common(image_folder, tmp_path / "x"))], cwd=ROOT, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # past the interpreter's start, inside the imports of torch (which take seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (130, "interrupted\n")


def test_a_resume_with_other_teacher_weights_of_the_same_architecture_is_refused(image_folder, teacher_weights,
                                                                                  tmp_path):
    from cls.models import build_model
    from cls_runs import TEACHER
    from tiny_models import randomize_bn

    other = tmp_path / "other_teacher.pth"
    torch.save(randomize_bn(build_model(TEACHER, 3), seed=5).state_dict(), other)
    out = tmp_path / "kd"
    run("main_mgd.py", *mgd_args(image_folder, out, teacher_weights), "--distiller", "kd")
    argv = mgd_args(image_folder, out, other, epochs=2)
    proc = run("main_mgd.py", *argv, "--distiller", "kd", "--resume", out / "last.pth", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith(f"error: --resume: {out / 'last.pth'} was written with the teacher weights of "
                           "fingerprint ") and ", this run has the teacher weights of fingerprint " in last and last.endswith(": resume with the same setting, or start a new run")


def test_a_batch_of_one_at_a_1x1_batchnorm_is_one_line_and_a_last_batch_of_one_is_dropped(image_folder,
                                                                                          tmp_path):
    """MobileNetV2 at 32 px ends in 1x1 maps under a BatchNorm, which cannot train on one image."""
    argv = common(image_folder, tmp_path / "b1") + ["--input-size", 32]
    argv[argv.index("-a") + 1] = "mobilenet_v2"
    argv[argv.index("-b") + 1] = 1
    proc = run("main_base.py", *argv, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last == ("error: a BatchNorm layer sees one value per channel in training (a batch of one image per "
                    "process reaching a 1x1 feature map): raise -b (the batch size over all processes) to at "
                    "least 2 per process")
    argv[argv.index("-b") + 1] = 47  # 48 images: a last batch of one
    argv[argv.index("--output-dir") + 1] = tmp_path / "b47"
    proc = run("main_base.py", *argv)
    assert "the last batch of each epoch would hold 1 image (48 per process, batches of 47): it is dropped" in \
        proc.stdout + proc.stderr
    assert [r["epoch"] for r in records(tmp_path / "b47") if "epoch" in r] == [0]


def test_an_empty_output_dir_is_named_as_such(image_folder):
    argv = common(image_folder, "")
    proc = run("main_base.py", *argv, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == "error: --output-dir is empty: name a folder"
