"""End-to-end runs of cls/main_base.py and cls/main_mgd.py on a tiny generated ImageFolder."""
import argparse
import math
import os

import pytest
import torch

from cls.models import build_model
from cls_runs import (STUDENT, TEACHER, common, differing_tensors, full_and_resumed, mgd_args, records, run,
                      run_here)
from mgd.engine import UserError
from scripts import run_script
from tiny_models import randomize_bn

def test_base_trains_one_epoch_and_exports_a_plain_state_dict(image_folder, tmp_path):
    out = tmp_path / "base"
    run_here("main_base.py", *common(image_folder, out))
    epochs = [r for r in records(out) if "epoch" in r]
    assert len(epochs) == 1 and 0 <= epochs[0]["top1"] <= 100 and epochs[0]["train_ce"] > 0
    run_here("main_base.py", *common(image_folder, out), "--overwrite")  # a fresh run into the same folder: its own log
    assert len([r for r in records(out) if "epoch" in r]) == 1
    aside = [f for f in os.listdir(out) if f.startswith("previous-")]  # the first run, moved aside
    assert len(aside) == 1 and {"last.pth", "log.jsonl", "student.pth"} <= set(os.listdir(out / aside[0]))
    build_model(STUDENT, 3).load_state_dict(torch.load(out / "student.pth", weights_only=True), strict=True)


def test_mgd_one_epoch_single_process(image_folder, teacher_weights, tmp_path):
    out = tmp_path / "mgd"
    proc = run("main_mgd.py", *mgd_args(image_folder, out, teacher_weights), "--tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tb"))
    recs = records(out)
    matching = [r for r in recs if r.get("event") == "matching"]
    epochs = [r for r in recs if "epoch" in r]
    assert [m["num_updates"] for m in matching] == [1] and matching[0]["ranks_agree"]
    assert len(epochs) == 1 and epochs[0]["train_distill"] > 0 and epochs[0]["train_ce"] > 0
    assert "solved in" in proc.stdout and "first step: cross-entropy" in proc.stdout
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert {"student", "distiller", "optimizer", "lr_scheduler", "epoch", "best_acc1", "args"} <= set(ckpt)
    assert ckpt["epoch"] == 1 and ckpt["args"]["arch"] == STUDENT
    assert ckpt["distiller"]["guided_inds3"].numel() == 64  # g * sc = 2 * 32
    assert sorted(ckpt["distiller"]["guided_inds3"].tolist()) == list(range(64))
    build_model(STUDENT, 3).load_state_dict(torch.load(out / "student.pth", weights_only=True), strict=True)


def test_mgd_ddp_two_gloo_processes_agree_on_the_matching(image_folder, teacher_weights, tmp_path):
    out = tmp_path / "ddp"
    run("main_mgd.py", *mgd_args(image_folder, out, teacher_weights, epochs=2), "--multiprocessing-distributed",
        "--dist-backend", "gloo", "--nproc-per-node", 2)
    recs = records(out)
    matching = [r for r in recs if r.get("event") == "matching"]
    assert [m["num_updates"] for m in matching] == [1, 2]
    assert all(m["ranks"] == 2 and m["ranks_agree"] for m in matching)
    assert len([r for r in recs if "epoch" in r]) == 2


def test_interrupted_and_resumed_run_equals_uninterrupted(image_folder, teacher_weights, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_here("main_mgd.py", *mgd_args(image_folder, full, teacher_weights, epochs=3), "--mgd-reducer", "rd")
    run_here("main_mgd.py", *mgd_args(image_folder, part, teacher_weights, epochs=2), "--mgd-reducer", "rd")
    resumed = mgd_args(image_folder, part, teacher_weights, epochs=3)
    resumed[resumed.index("-j") + 1] = 2  # other loader workers: the same crops (seeded per image)
    run_here("main_mgd.py", *resumed, "--mgd-reducer", "rd", "--resume", part / "last.pth")
    a = torch.load(full / "last.pth", weights_only=True)
    b = torch.load(part / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for key in ("student", "distiller"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs after resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert [r["top1"] for r in records(full) if "epoch" in r] == [r["top1"] for r in records(part) if "epoch" in r]


@pytest.mark.parametrize("method", [["--distiller", "dkd", "--dkd-warmup-epochs", 3],
                                    ["--distiller", "crd", "--crd-num-negatives", 8]])
def test_warmup_and_crd_memory_resume_exactly(method, image_folder, teacher_weights, tmp_path):
    """DKD's warm-up (the epoch is announced again after a resume) and CRD's memory bank, its normalising
    constants and its negatives (seeded per epoch) continue as if never interrupted."""
    a, b, full, _ = full_and_resumed(image_folder, teacher_weights, tmp_path, 2, *method)
    assert differing_tensors(a, b) == []
    if "crd" in method:
        assert torch.isfinite(a["distiller"]["log_z"]).all() and a["distiller"]["memory_s"].shape == (48, 128)
    train = [r for r in records(full) if "epoch" in r]
    if "dkd" in method:  # ramped in over 3 epochs: 1/3 then 2/3 of the term
        assert train[1]["train_dkd"] > train[0]["train_dkd"] > 0


def test_evaluate_reports_teacher_and_student(image_folder, teacher_weights, tmp_path):
    proc = run("main_mgd.py", *mgd_args(image_folder, tmp_path / "ev", teacher_weights), "--evaluate")
    lines = [line for line in proc.stdout.splitlines() if "top-1" in line]
    assert len(lines) == 2 and lines[0].startswith("teacher") and lines[1].startswith("student")


@pytest.mark.parametrize("case", ["missing", "empty", "arch", "unreadable", "classes", "resume"])
def test_user_errors_give_one_line_and_exit_code_2(case, image_folder, teacher_weights, tmp_path):
    args = mgd_args(image_folder, tmp_path / "err", teacher_weights)
    expect = {"missing": "not found", "empty": "no images", "arch": "valid:", "unreadable": "cannot read",
              "classes": "has 5 classes but the data has 3", "resume": "not found"}[case]
    if case == "missing":
        args[0] = tmp_path / "nowhere"
    elif case == "empty":
        for split in ("train/a", "valid/a"):
            (tmp_path / "empty" / split).mkdir(parents=True)
        args[0] = tmp_path / "empty"
    elif case == "arch":
        args[args.index("-a") + 1] = "resnet9000"
    elif case == "unreadable":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"not a checkpoint")
        args[args.index("--teacher-resume") + 1] = bad
    elif case == "classes":
        five = tmp_path / "five.pth"
        torch.save(build_model(TEACHER, 5).state_dict(), five)
        args[args.index("--teacher-resume") + 1] = five
    elif case == "resume":
        args += ["--resume", tmp_path / "none.pth"]
    proc = run("main_mgd.py", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and expect in err[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_linear_evaluation_of_a_pretrained_backbone(image_folder, tmp_path):
    torch.manual_seed(1)
    backbone = {k: v for k, v in randomize_bn(build_model(STUDENT, 3)).state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "backbone.pth")
    out = tmp_path / "lin"
    run_here("main_base.py", *common(image_folder, out), "--pretrained-backbone", tmp_path / "backbone.pth", "--linear-eval")
    trained = torch.load(out / "student.pth", weights_only=True)
    for k, v in backbone.items():
        assert torch.equal(trained[k], v), f"{k} changed during linear evaluation"
    assert trained["fc.weight"].abs().sum() > 0 and len([r for r in records(out) if "epoch" in r]) == 1


#: flags a method needs on the tiny set (48 training images: CRD draws fewer negatives than that) and in one epoch
METHOD_FLAGS = {"crd": ["--crd-num-negatives", 8], "kd++": ["--nd-weight", 1], "dkd++": ["--nd-weight", 1],
                "reviewkd": ["--reviewkd-warmup-epochs", 0]}  # its authors' ramp gives epoch 0 no weight


@pytest.mark.parametrize("method,part", [("ofd", "train_ofd"), ("kd", "train_kd"), ("at", "train_at"),
                                         ("sp", "train_sp"), ("nd", "train_nd"), ("dkd", "train_dkd"),
                                         ("dist", "train_dist"), ("reviewkd", "train_reviewkd"),
                                         ("crd", "train_crd"), ("kd++", "train_nd"), ("dkd++", "train_nd")])
def test_every_distiller_trains_one_epoch_and_resumes(method, part, image_folder, teacher_weights, tmp_path):
    out = tmp_path / method
    flags = ["--distiller", method.rstrip("+"), *METHOD_FLAGS.get(method, [])]
    run_here("main_mgd.py", *mgd_args(image_folder, out, teacher_weights), *flags)
    first = [r for r in records(out) if "epoch" in r]
    assert len(first) == 1 and first[0][part] > 0 and first[0]["train_ce"] > 0
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["method"] == method.rstrip("+")
    run_here("main_mgd.py", *mgd_args(image_folder, out, teacher_weights, epochs=2), *flags, "--resume",
             out / "last.pth")
    assert [r["epoch"] for r in records(out) if "epoch" in r] == [0, 1]
    assert not [r for r in records(out) if r.get("event") == "matching"]  # only MGD matches channels
    with pytest.raises(UserError, match="not a mgd checkpoint"):  # an MGD run cannot resume another method's
        run_here("main_mgd.py", *mgd_args(image_folder, out, teacher_weights, epochs=3), "--resume", out / "last.pth")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mgd_one_epoch_with_amp(dtype, image_folder, teacher_weights, tmp_path):
    """--amp on the CPU: autocast for the networks (float16 with a GradScaler), losses in float32."""
    out = tmp_path / dtype
    run_here("main_mgd.py", *mgd_args(image_folder, out, teacher_weights), "--amp", "--amp-dtype", dtype,
             "--channels-last", "--mgd-with-kd", "1")
    epochs = [r for r in records(out) if "epoch" in r]
    assert len(epochs) == 1
    for key in ("train_distill", "train_kd", "train_ce"):
        assert math.isfinite(epochs[0][key]) and epochs[0][key] > 0, key
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["args"]["amp"] and ckpt["args"]["amp_dtype"] == dtype
    assert bool(ckpt["scaler"]) == (dtype == "float16")  # the GradScaler's state, for exact resume
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values() if v.is_floating_point())


def test_resuming_with_other_method_options_is_one_line_and_exit_2(image_folder, teacher_weights, tmp_path):
    out = tmp_path / "first"
    run_here("main_mgd.py", *mgd_args(image_folder, out, teacher_weights))
    other_teacher = tmp_path / "t32.pth"
    torch.save(build_model("cifar_resnet8_w32", 3).state_dict(), other_teacher)
    teachers = "--teacher-arch cifar_resnet8_w16, this run has --teacher-arch cifar_resnet8_w32"
    for expect, swap in (("written with --mgd-reducer amp, this run has --mgd-reducer sm", {"--mgd-reducer": "sm"}),
                         (teachers, {"--teacher-arch": "cifar_resnet8_w32", "--teacher-resume": other_teacher})):
        argv = mgd_args(image_folder, tmp_path / "again", teacher_weights, epochs=2) + ["--resume", out / "last.pth"]
        for flag, value in swap.items():
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        proc = run("main_mgd.py", *argv, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr


def test_timm_student_and_teacher_train_with_discovered_stages(image_folder, tmp_path):
    """-a timm/<name> --teacher-arch timm/<name>: the stages come from timm's feature_info, nothing is
    downloaded (the teacher's weights are a local file)."""
    timm = pytest.importorskip("timm")
    teacher = tmp_path / "t.pth"
    torch.manual_seed(0)
    torch.save(randomize_bn(timm.create_model("resnet18", num_classes=3)).state_dict(), teacher)
    out = tmp_path / "timm"
    argv = common(image_folder, out) + ["--teacher-arch", "timm/resnet18", "--teacher-resume", teacher,
                                        "--mgd-update-images", 24, "--input-size", 32]
    argv[argv.index("-a") + 1] = "timm/mobilenetv3_small_050"
    proc = run("main_mgd.py", *argv)
    assert "mgd stage 3: teacher 512 -> student 288 channels" in proc.stdout
    epochs = [r for r in records(out) if "epoch" in r]
    assert len(epochs) == 1 and math.isfinite(epochs[0]["train_distill"]) and epochs[0]["train_distill"] > 0
    wrong = run("main_mgd.py", *argv, "-a", "timm/no_such_net", check=False)
    assert wrong.returncode == 2 and "unknown timm model 'no_such_net'" in wrong.stderr


def test_loss_factor_auto_is_measured_once_logged_and_kept_by_a_resume(image_folder, teacher_weights, tmp_path):
    out = tmp_path / "auto"
    proc = run("main_mgd.py", *mgd_args(image_folder, out, teacher_weights), "--loss-factor", "auto",
               "--loss-ratio", 0.5)
    assert proc.stdout.count("loss factor calibrated on 48 image(s)") == 1  # the whole (tiny) training set
    factor = float(torch.load(out / "last.pth", weights_only=True)["distiller"]["calibrated_loss_factor"])
    matching = [r for r in records(out) if r.get("event") == "matching"]
    assert factor > 0 and matching[0]["loss_factor"] == pytest.approx(factor)
    proc = run("main_mgd.py", *mgd_args(image_folder, out, teacher_weights, epochs=2), "--loss-factor", "auto",
               "--loss-ratio", 0.5, "--resume", out / "last.pth")
    assert "loss factor calibrated" not in proc.stdout  # the checkpoint's factor, not a new one
    assert float(torch.load(out / "last.pth", weights_only=True)["distiller"]["calibrated_loss_factor"]) == factor


def test_the_same_seed_starts_every_method_from_the_same_student(image_folder, teacher_weights, tmp_path):
    """Paired comparisons need it: main_mgd.py builds the teacher before the student, main_base.py does not."""
    from cls.trainer import build_student, build_teacher
    args = argparse.Namespace(arch=STUDENT, teacher_arch=TEACHER, teacher_resume=str(teacher_weights), seed=3,
                              student_resume="", use_pretrained=False)
    alone = build_student(args, 3).state_dict()
    build_teacher(args, 3)
    after_teacher = build_student(args, 3).state_dict()
    assert all(torch.equal(alone[k], after_teacher[k]) for k in alone)
    args.seed = 4
    assert not torch.equal(build_student(args, 3).state_dict()["conv1.weight"], alone["conv1.weight"])


def test_reviewkd_drops_a_last_batch_of_one_that_its_deepest_fusion_cannot_train(image_folder, teacher_weights,
                                                                                 tmp_path):
    """48 training images in batches of 47 leave a last batch of one. ReviewKD's deepest ABF normalises 1x1 maps
    in training mode, which a single image cannot do ("Expected more than 1 value per channel"), so its loader
    drops that batch and the epoch trains."""
    argv = common(image_folder, tmp_path / "reviewkd") + ["--teacher-arch", TEACHER, "--teacher-resume",
                                                          teacher_weights, "-b", 47, "--distiller", "reviewkd"]
    run_here("main_mgd.py", *argv)
    assert [r["epoch"] for r in records(tmp_path / "reviewkd") if "epoch" in r] == [0]


def test_a_method_of_another_installed_package_trains_through_main_mgd(image_folder, teacher_weights, tmp_path):
    """A method that mgd's files never name, from a throw-away package's mgd.distillers entry point, is one of
    main_mgd.py's --distiller choices, its option is a flag (--logit-mse-weight, here 0: a term of exactly 0 where
    the default weight 1 gives > 0) and it trains an epoch with its term logged."""
    from plugin_method import write_package
    plugin = write_package(tmp_path / "site")
    out = tmp_path / "run"
    argv = common(image_folder, out) + ["--teacher-arch", TEACHER, "--teacher-resume", teacher_weights,
                                        "--distiller", "logit_mse", "--logit-mse-weight", "0"]
    run_script(os.path.join("cls", "main_mgd.py"), *argv, path=[plugin])
    (epoch,) = [r for r in records(out) if "epoch" in r]
    assert epoch["train_logit_mse"] == 0.0 and epoch["train_ce"] > 0
    assert torch.load(out / "last.pth", weights_only=True)["method"] == "logit_mse"
    help_text = " ".join(run_script(os.path.join("cls", "main_mgd.py"), "--help", path=[plugin]).stdout.split())
    assert "--logit-mse-weight LOGIT_MSE_WEIGHT [logit_mse: default 1] weight of the mean squared error" in help_text
