"""cls/ under faults and bad input: nothing a previous run wrote is lost, a diverged model is never saved,
and every user error is one line on stderr with exit code 2 (no traceback)."""
import os
import shutil

import pytest
import torch

from cls.models import build_model
from cls_runs import STUDENT, TEACHER, common, mgd_args, records, run


def one_line_error(proc, expect):
    """The process ended with exit code 2 and one stderr line besides the progress bars, holding ``expect``."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("epoch ")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(image_folder, teacher_weights, tmp_path_factory):
    """A finished 1-epoch main_base.py run and a finished 1-epoch main_mgd.py run."""
    root = tmp_path_factory.mktemp("finished")
    run("main_base.py", *common(image_folder, root / "base"))
    run("main_mgd.py", *mgd_args(image_folder, root / "mgd", teacher_weights))
    return root


def test_a_fresh_run_into_a_finished_runs_folder_is_refused_then_overwritten_only_when_asked(image_folder, finished,
                                                                                              tmp_path):
    out = tmp_path / "base"
    shutil.copytree(finished / "base", out)
    before = {name: (out / name).read_bytes() for name in ("last.pth", "best.pth", "student.pth")}
    proc = run("main_base.py", *common(image_folder, out), check=False)
    line = one_line_error(proc, f"{out} holds a previous run (best.pth, last.pth, student.pth)")
    assert f"--resume {out / 'last.pth'}" in line and "--overwrite" in line
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    stale = out / ".tmp-k1ll3d_x.pth"  # what a write killed with kill -9 leaves
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "base-copy"
    other.mkdir()
    (other / "best.pth").write_bytes(before["best.pth"])
    (other / "last.pth").write_bytes(before["last.pth"])
    proc = run("main_base.py", *common(image_folder, other, epochs=2), "--overwrite", "--lr", 1e-9)
    assert "--overwrite: the previous run's best.pth, last.pth moved to" in proc.stdout
    assert torch.load(other / "last.pth", weights_only=True)["epoch"] == 2
    aside = [p for p in other.iterdir() if p.is_dir() and p.name.startswith("previous-")]
    assert len(aside) == 1 and (aside[0] / "best.pth").read_bytes() == before["best.pth"]  # nothing lost
    run("main_base.py", *common(image_folder, out, epochs=2), "--resume", out / "last.pth")  # asked: continues
    assert not stale.exists() and [r["epoch"] for r in records(out) if "epoch" in r] == [0, 1]


@pytest.mark.parametrize("batch,cause", [(48, "is not finite, so nothing was saved"), (24, "the loss is nan")])
def test_a_diverging_step_is_never_checkpointed(batch, cause, image_folder, tmp_path):
    """One step per epoch (48 images, -b 48): the last step of epoch 1 diverges and the loss before it was
    finite; two steps (-b 24): the second step's loss is not finite. Either way epoch 0's checkpoint stays."""
    out = tmp_path / "div"
    argv = common(image_folder, out, epochs=2) + ["-b", batch, "--lr-drop-epochs", 1, "--lr-drop-ratio", 1e38]
    proc = run("main_base.py", *argv, check=False)
    line = one_line_error(proc, "training diverged in epoch 1: ")
    assert cause in line and f"the last good checkpoint is {out / 'last.pth'}" in line
    for name in ("last.pth", "best.pth"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["student"].values()
                                          if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in torch.load(out / "student.pth", weights_only=True).values()
               if v.is_floating_point())
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_an_unreadable_image_is_named_and_can_be_skipped(image_folder, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "valid"):
        for c in range(3):
            (data / split / f"class{c}").mkdir(parents=True)
            for f in sorted((image_folder / split / f"class{c}").iterdir()):
                (data / split / f"class{c}" / f.name).write_bytes(f.read_bytes())
    broken = data / "train" / "class1" / "3.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated mid-image
    argv = common(data, tmp_path / "out") + ["-b", 48]
    one_line_error(run("main_base.py", *argv, check=False), f"cannot read image {broken}: ")
    proc = run("main_base.py", *argv, "--skip-bad-images", "--overwrite")
    assert proc.stdout.count(f"skipped (replaced by the next readable image): cannot read image {broken}") == 1
    assert len([r for r in records(tmp_path / "out") if "epoch" in r]) == 1


def _bad(case, image_folder, teacher_weights, finished, tmp):
    """(script, argv, expected text) of each bad input."""
    base, mgd = common(image_folder, tmp / "out"), mgd_args(image_folder, tmp / "out", teacher_weights)

    def swap(argv, flag, value):
        argv = list(argv)
        argv[argv.index(flag) + 1] = value
        return argv
    if case == "empty class folder":
        data = tmp / "data"
        for split, count in (("train", 2), ("valid", 1)):
            for c in ("a", "b"):
                (data / split / c).mkdir(parents=True)
        for f in ("train/a/0.png", "train/a/1.png", "valid/a/0.png", "valid/b/0.png"):
            (data / f).write_bytes((image_folder / "train" / "class0" / "0.png").read_bytes())
        return "main_base.py", [data] + base[1:], f"no images in the class folder(s) b of {data / 'train'}"
    if case == "output dir is a file":
        (tmp / "file").write_text("x")
        return "main_base.py", swap(base, "--output-dir", tmp / "file"), "is a file, not a folder"
    if case == "output dir under a file":
        (tmp / "file").write_text("x")
        return "main_base.py", swap(base, "--output-dir", tmp / "file" / "run"), f"{tmp / 'file'} is a file"
    if case in ("--lr", "--momentum", "--input-size", "--epochs"):
        value = 0 if case in ("--input-size", "--epochs") else -1
        argv = swap(base, case, value) if case in base else base + [case, value]
        return "main_base.py", argv, f"argument {case}"
    if case == "resume with another class count":
        state = torch.load(finished / "base" / "last.pth", weights_only=True)
        state["student"] = build_model(STUDENT, 5).state_dict()
        state["num_classes"] = 5
        torch.save(state, tmp / "five.pth")
        return "main_base.py", base + ["--resume", tmp / "five.pth", "--epochs", 2], \
            "was written with 5 classes, this run has 3 classes"
    if case == "main_base resumes a main_mgd checkpoint":
        return "main_base.py", base + ["--resume", finished / "mgd" / "last.pth"], "is a main_mgd.py checkpoint"
    if case == "main_mgd resumes a main_base checkpoint":
        return "main_mgd.py", mgd + ["--resume", finished / "base" / "last.pth"], "is a main_base.py checkpoint"
    if case == "another reducer":
        return "main_mgd.py", mgd + ["--resume", finished / "mgd" / "last.pth", "--epochs", 2, "--mgd-reducer", "rd"], \
            "was written with --mgd-reducer amp, this run has --mgd-reducer rd"
    if case == "pretrained backbone of another architecture":
        torch.save(build_model(TEACHER, 3).state_dict(), tmp / "other.pth")
        return "main_base.py", base + ["--pretrained-backbone", tmp / "other.pth"], "does not fit"
    if case == "nothing left to train":
        argv = swap(base, "--output-dir", finished / "base") + ["--resume", finished / "base" / "last.pth"]
        return "main_base.py", argv, "has already trained 1 epochs and --epochs is 1: nothing left to train"
    if case == "--overwrite would move an input":
        argv = swap(base, "--output-dir", finished / "base") + ["--overwrite", "--student-resume",
                                                                 finished / "base" / "student.pth"]
        return "main_base.py", argv, "--overwrite would move"
    if case == "--start-epoch past --epochs":
        return "main_base.py", base + ["--start-epoch", 3], "--start-epoch 3 is at or past --epochs 1"
    if case == "text file as checkpoint":
        (tmp / "notes.pth").write_text("these are not weights\n")
        return "main_base.py", base + ["--resume", tmp / "notes.pth"], "not a PyTorch checkpoint"
    raise AssertionError(case)


BAD = ["empty class folder", "output dir is a file", "output dir under a file", "--lr", "--momentum", "--input-size",
       "--epochs", "resume with another class count", "main_base resumes a main_mgd checkpoint",
       "main_mgd resumes a main_base checkpoint", "another reducer", "pretrained backbone of another architecture",
       "nothing left to train", "text file as checkpoint", "--overwrite would move an input",
       "--start-epoch past --epochs"]


@pytest.mark.parametrize("case", BAD)
def test_every_bad_input_is_one_line_and_exit_code_2(case, image_folder, teacher_weights, finished, tmp_path):
    script, argv, expect = _bad(case, image_folder, teacher_weights, finished, tmp_path)
    one_line_error(run(script, *argv, check=False), expect)


def test_a_main_base_checkpoint_from_before_the_none_method_still_resumes(image_folder, tmp_path):
    """main_base.py's checkpoints had no 'method' nor 'distiller' before plain training became the 'none' method:
    such a checkpoint resumes (as none) and trains its next epoch."""
    out = tmp_path / "old"
    run("main_base.py", *common(image_folder, out))
    state = torch.load(out / "last.pth", weights_only=True)
    assert state.pop("method") == "none" and state.pop("distiller") == {}
    torch.save(state, out / "last.pth")
    run("main_base.py", *common(image_folder, out, epochs=2), "--resume", out / "last.pth")
    assert [r["epoch"] for r in records(out) if "epoch" in r] == [0, 1]
