"""cls/main_mgd.py with a DeiT student (timm's distillation-token ViT) and a CNN teacher: it trains through
``--distiller deit``, evaluates on the mean of its two heads, and resumes bit-exact, also as DeiT++."""
import pytest
import torch

from cls.models import build_model
from cls_runs import differing_tensors, records, run_here
from recipes import TeacherWeights

STUDENT, TEACHER = "timm/deit_tiny_distilled_patch16_224", "timm/regnety_016"


@pytest.fixture(scope="module")
def regnet(tmp_path_factory):
    return TeacherWeights(tmp_path_factory.mktemp("regnet"), lambda arch: build_model(arch, 3))[TEACHER]


def deit_args(data, out, teacher, epochs, *flags):
    return [data, "-a", STUDENT, "--teacher-arch", TEACHER, "--teacher-resume", teacher, "--distiller", "deit",
            "--input-size", 224, "-b", 6, "--lr", 0.01, "-j", 0, "--seed", 0, "--epochs", epochs,
            "--output-dir", out, *flags]


@pytest.mark.parametrize("flags", [[], ["--nd-weight", 1.5, "--deit-kd-weight", 0.5]], ids=["deit", "deit++"])
def test_a_deit_student_trains_evaluates_and_resumes_bit_exact(flags, few_images, regnet, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_here("main_mgd.py", *deit_args(few_images, full, regnet, 2, *flags))
    run_here("main_mgd.py", *deit_args(few_images, part, regnet, 1, *flags))
    run_here("main_mgd.py", *deit_args(few_images, part, regnet, 2, *flags), "--resume", part / "last.pth")
    epochs = [r for r in records(full) if "epoch" in r]
    assert len(epochs) == 2 and all(e["train_deit"] > 0 and 0 <= e["top1"] <= 100 for e in epochs)
    assert ("train_nd" in epochs[0]) == bool(flags)
    a, b = (torch.load(p / "last.pth", weights_only=True) for p in (full, part))
    assert a["epoch"] == b["epoch"] == 2 and differing_tensors(a, b) == []
