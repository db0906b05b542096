"""seg/train.py with Masked Generative Distillation (``--distiller masked_generative``): DeepLabV3+ ResNet-101 ->
ResNet-18 on the tiny generated folder set, at the authors' position (the backbone's last feature, stage4) with
their segmentation setting (seg/'s default task), one epoch, then a resume."""
import math

import pytest
import torch

from seg import train as seg_train
from seg.models import build_model
from seg_runs import common, records
from tiny_models import randomize_bn


@pytest.fixture(scope="module")
def r101_teacher(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("r101") / "teacher.pth"
    torch.save(randomize_bn(build_model("deeplabv3plus_resnet101", 3)).state_dict(), path)
    return path


def argv(data, out, teacher, epochs=1):
    return [*common(data, out, epochs), "--teacher-model", "deeplabv3plus_resnet101", "--teacher-resume", teacher,
            "--distiller", "masked_generative", "--distill-positions", "backbone"]


#: A ResNet-101 with random weights and BNs has stage4 values around 1e4 (a trained one about 1): the authors' alpha
#: 2e-5 would make the term ~1e7 here, so the runs scale it down to start near the cross-entropy.
TINY_ALPHA = ["--masked-generative-alpha", "1e-12"]


def test_one_epoch_r101_to_r18_then_a_resume(seg_folder, r101_teacher, tmp_path):
    out = tmp_path / "mgen"
    seg_train.main([str(a) for a in argv(seg_folder, out, r101_teacher) + TINY_ALPHA])
    (epoch,) = [r for r in records(out) if "epoch" in r]
    assert math.isfinite(epoch["train_masked_generative"]) and epoch["train_masked_generative"] > 0
    assert epoch["train_ce"] > 0 and math.isfinite(epoch["miou"])
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert ckpt["method"] == "masked_generative"
    own = ckpt["distiller"]
    # the last backbone position (stage4, index 3 of stage1..4) only: a 512 -> 2048 align conv and a 2048-wide
    # generation block; 4 training images in batches of 2: two steps of masks
    assert own["align.3.weight"].shape == (2048, 512, 1, 1) and own["generation.3.0.weight"].shape[:2] == (2048, 2048)
    assert not any(k.startswith(("align.0", "generation.0")) for k in own)
    assert int(own["mask_step"]) == 2
    seg_train.main([str(a) for a in argv(seg_folder, out, r101_teacher, epochs=2) + TINY_ALPHA]
                   + ["--resume", str(out / "last.pth")])
    assert [r["epoch"] for r in records(out) if "epoch" in r] == [0, 1]
    assert int(torch.load(out / "last.pth", weights_only=True)["distiller"]["mask_step"]) == 4


def test_the_segmentation_setting_is_the_default_here(seg_folder, r101_teacher):
    """seg/'s default task: the authors' segmentation setting (alpha 2e-5, lambda 0.75, a spatial mask)."""
    args = seg_train.get_parser().parse_args([str(a) for a in argv(seg_folder, "unused", r101_teacher)])
    teacher, student = build_model("deeplabv3plus_resnet101", 3), build_model("deeplabv3plus_resnet18", 3)
    d = seg_train.build_distiller(args, teacher, student)
    assert (d.task, d.alpha, d.mask_ratio, d.mask, d.stages) == ("segmentation", 2e-5, 0.75, "spatial", [3])
    d.close()
