"""seg/train.py end to end on the tiny generated folder set: every method, resume, DDP, user errors."""
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from mgd.engine import run_cli
from seg import train as seg_train
from seg.models import build_model
from seg_runs import common, distil, records, run, write_folder_set


def train_here(*argv):
    """seg/train.py's main in this process (single process: faster than a script)."""
    seg_train.main([str(a) for a in argv])


def hand_iou(data, student, num_classes=3):
    """Per-class IoU and mIoU in percent of the saved ``student`` over DATA/val, computed here from the files:
    ImageNet-normalised pixels at full size, a numpy confusion matrix without the 255 pixels, IoU =
    TP / (TP + FP + FN), the mean over the classes labelled or predicted."""
    model = build_model("deeplabv3plus_resnet18", num_classes)
    model.load_state_dict(torch.load(student, weights_only=True))
    model.eval()
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for name in sorted(os.listdir(data / "val" / "images")):
        pixels = np.asarray(Image.open(data / "val" / "images" / name).convert("RGB"), np.float32) / 255
        image = torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())[None]
        label = np.asarray(Image.open(data / "val" / "labels" / name), np.int64)
        with torch.no_grad():
            predicted = model(image).argmax(1)[0].numpy()
        keep = label != 255
        np.add.at(confusion, (label[keep], predicted[keep]), 1)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    iou = [100.0 * h / u if u else None for h, u in zip(hits, union)]
    defined = [v for v in iou if v is not None]
    return iou, sum(defined) / len(defined)


def assert_logged_miou_is_the_students(epoch, data, out):
    """The epoch's logged mIoU and per-class IoU are those of the student it saved, computed by hand."""
    iou, miou = hand_iou(data, out / "student.pth")
    assert epoch["miou"] == pytest.approx(miou, abs=1e-9)
    assert epoch["iou"] == [None if v is None else pytest.approx(v, abs=1e-4) for v in iou]


def user_error(capsys, *argv):
    """Run through the command line's convention; the one stderr line of a UserError (exit code 2)."""
    capsys.readouterr()  # what earlier runs wrote
    with pytest.raises(SystemExit) as exit_:
        run_cli(seg_train.main, [str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_plain_run_logs_miou_and_exports_the_model(seg_folder, tmp_path, capsys):
    out = tmp_path / "plain"
    train_here(*common(seg_folder, out))
    (epoch,) = [r for r in records(out) if "epoch" in r]
    assert epoch["train_ce"] > 0 and len(epoch["iou"]) == 3
    assert_logged_miou_is_the_students(epoch, seg_folder, out)
    assert math.isfinite(epoch["val_loss"]) and epoch["lr"] == pytest.approx(0.02)
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["method"] == "none" and ckpt["num_classes"] == 3
    build_model("deeplabv3plus_resnet18", 3).load_state_dict(torch.load(out / "student.pth", weights_only=True))
    assert "holds a previous run" in user_error(capsys, *common(seg_folder, out))


#: method -> (extra flags, the loss term it adds)
METHODS = {
    "mgd-amp": (["--distiller", "mgd", "--mgd-reducer", "amp"], "distill"),
    "mgd-sp": (["--distiller", "mgd", "--mgd-reducer", "sp"], "distill"),
    "mgd-rd": (["--distiller", "mgd", "--mgd-reducer", "rd"], "distill"),
    "mgd-auto": (["--distiller", "mgd", "--loss-factor", "auto"], "distill"),
    "sm": (["--distiller", "sm"], "distill"),
    "ofd": (["--distiller", "ofd"], "ofd"),
    "kd": (["--distiller", "kd"], "kd"),
    "at": (["--distiller", "at", "--distill-positions", "backbone"], "at"),
    "sp": (["--distiller", "sp", "--distill-positions", "head"], "sp"),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_epoch_of_each_method(method, seg_folder, seg_teacher, tmp_path):
    flags, term = METHODS[method]
    out = tmp_path / method
    argv = distil(seg_folder, out, seg_teacher, "none")
    train_here(*argv[:-4], *flags)  # distil()'s "--distiller none --mgd-update-freq 1" replaced by the flags
    recs = records(out)
    (epoch,) = [r for r in recs if "epoch" in r]
    assert epoch[f"train_{term}"] > 0 and math.isfinite(epoch[f"train_{term}"]) and epoch["train_ce"] > 0
    assert_logged_miou_is_the_students(epoch, seg_folder, out)
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["method"] == flags[1] and isinstance(ckpt["distiller"], dict)
    if flags[1] in ("mgd", "sm"):
        (matching,) = [r for r in recs if r.get("event") == "matching"]
        assert matching["ranks_agree"] and ckpt["distiller"]["guided_inds6"].numel() == 256
    if method == "mgd-auto":  # measured with the segmentation loss (255 ignored), kept in the checkpoint
        assert float(ckpt["distiller"]["calibrated_loss_factor"]) > 0


def test_resumed_run_equals_uninterrupted(seg_folder, seg_teacher, tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    argv = distil(seg_folder, full, seg_teacher, "mgd", epochs=3) + ["--mgd-reducer", "rd"]
    train_here(*argv)
    from mgd.engine import loop
    real = loop.train_one_epoch

    def interrupted(step, loader, optimizer, precision, epoch, *rest, **kw):  # Ctrl-C during the third epoch
        if epoch == 2:
            raise KeyboardInterrupt
        return real(step, loader, optimizer, precision, epoch, *rest, **kw)
    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    argv[argv.index("--output-dir") + 1] = part
    with pytest.raises(KeyboardInterrupt):
        train_here(*argv)
    assert torch.load(part / "last.pth", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(loop, "train_one_epoch", real)
    train_here(*argv, "--resume", part / "last.pth")  # the poly LR depends on --epochs: the same 3 here
    a, b = torch.load(full / "last.pth", weights_only=True), torch.load(part / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in ("student", "distiller"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    assert [r["miou"] for r in records(full) if "epoch" in r] == [r["miou"] for r in records(part) if "epoch" in r]


def test_two_gloo_processes_train_and_count_every_image_once(seg_folder, seg_teacher, tmp_path):
    out = tmp_path / "ddp"
    run(*distil(seg_folder, out, seg_teacher, "mgd"), "--multiprocessing-distributed", "--dist-backend", "gloo",
        "--nproc-per-node", 2, "-b", 4)
    recs = records(out)
    (matching,) = [r for r in recs if r.get("event") == "matching"]
    assert matching["ranks"] == 2 and matching["ranks_agree"]
    (epoch,) = [r for r in recs if "epoch" in r]
    # the 3 validation images, split 2 + 1 over the processes, give the single-process mIoU of the same model
    single = run(seg_folder, "--dataset", "folder", "-j", 0, "--model", "deeplabv3plus_resnet18", "--evaluate",
                 "--resume", out / "student.pth")
    miou = float(re.search(r"mIoU ([0-9.]+)", single.stdout).group(1))
    assert "(3 images)" in single.stdout and miou == pytest.approx(epoch["miou"], abs=0.006)


def test_user_errors_are_one_line_with_exit_code_2(seg_folder, seg_teacher, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "folder not found" in user_error(capsys, *common(empty, tmp_path / "o1"))
    assert "data directory not found" in user_error(capsys, *common(tmp_path / "missing", tmp_path / "o1"))
    assert "unknown position" in user_error(capsys, *common(seg_folder, tmp_path / "o2"), "--distill-positions", "x")
    narrow = distil(seg_folder, tmp_path / "o3", seg_teacher, "mgd")
    narrow[narrow.index("--model") + 1] = "deeplabv3plus_mobilenet_v2"
    line = user_error(capsys, *narrow)
    assert "teacher 64 channels < student 144" in line and "--distill-positions stage4,aspp,decoder" in line
    assert "--teacher-resume" in user_error(capsys, *common(seg_folder, tmp_path / "o4"), "--distiller", "ofd")


@pytest.mark.parametrize("case", ["size", "range"])
def test_bad_labels_stop_a_script_with_one_line(case, tmp_path):
    data = write_folder_set(tmp_path / "d", train=2, val=1)
    bad = np.zeros((5, 5), np.uint8) if case == "size" else np.full((40, 48), 9, np.uint8)
    Image.fromarray(bad).save(data / "train" / "labels" / "0.png")
    argv = common(data, tmp_path / "o", epochs=1) + ["--num-classes", 3]
    argv[argv.index("-j") + 1] = 1  # the error comes from a DataLoader worker process
    proc = run(*argv, check=False)
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bar of the epoch it stopped
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and last.startswith("error: label "), proc.stderr
    assert "0.png" in last and ("is 5x5 but its image" if case == "size" else "value(s) 9 outside [0, 3)") in last


def test_a_dense_method_registered_outside_mgd_trains_at_the_paired_positions(seg_folder, seg_teacher, tmp_path):
    """seg/train.py offers every registered method whose dense_outputs is true, at its paired positions."""
    import mgd
    from plugin_method import StageL2
    mgd.register_distiller("stage_l2")(StageL2)
    try:
        assert "stage_l2" in seg_train.dense_methods() and "nd" not in seg_train.dense_methods()
        assert "--stage-l2-weight STAGE_L2_WEIGHT [stage_l2: default 1]" in " ".join(seg_train.get_parser().format_help().split())
        out = tmp_path / "stage_l2"
        train_here(*distil(seg_folder, out, seg_teacher, "stage_l2"), "--distill-positions", "backbone")
    finally:
        mgd.unregister_distiller("stage_l2")
    (epoch,) = [r for r in records(out) if "epoch" in r]
    assert epoch["train_stage_l2"] > 0 and epoch["train_ce"] > 0
    assert torch.load(out / "last.pth", weights_only=True)["method"] == "stage_l2"
