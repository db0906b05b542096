"""seg/train.py --distiller cwd on the tiny generated folder set: by default the output logit maps (the authors'
segmentation setting: tau 4, weight 3, no connector for the same classes), and with --cwd-maps features the paired
positions; one epoch each, the term positive and finite, the maps it compared those of the setting."""
import math

import pytest
import torch

import mgd.distillers.cwd as cwd_module
from seg import train as seg_train
from seg_runs import distil, records


def train_here(*argv):
    seg_train.main([str(a) for a in argv])


@pytest.fixture
def compared(monkeypatch):
    """(student shape, teacher shape, tau) of every cwd_loss the distiller computes during the run."""
    seen = []
    real = cwd_module.cwd_loss

    def spy(student, teacher, tau):
        seen.append((tuple(student.shape), tuple(teacher.shape), tau))
        return real(student, teacher, tau)
    monkeypatch.setattr(cwd_module, "cwd_loss", spy)
    return seen


def _one_epoch(out):
    (epoch,) = [r for r in records(out) if "epoch" in r]
    assert epoch["train_cwd"] > 0 and math.isfinite(epoch["train_cwd"]) and epoch["train_ce"] > 0
    assert 0 <= epoch["miou"] <= 100
    return torch.load(out / "last.pth", weights_only=True)


def test_cwd_distils_the_logit_maps_by_default(seg_folder, seg_teacher, tmp_path, compared):
    assert "cwd" in seg_train.dense_methods()
    out = tmp_path / "cwd"
    train_here(*distil(seg_folder, out, seg_teacher, "cwd"))
    ckpt = _one_epoch(out)
    assert ckpt["method"] == "cwd" and ckpt["distiller"] == {}  # the logit maps of 3 classes: nothing of its own
    # 4 training images in batches of 2, 32 px crops: the logits at the crops' size, the authors' tau 4
    assert compared == [((2, 3, 32, 32), (2, 3, 32, 32), 4.0)] * 2


def test_cwd_maps_features_distils_the_named_positions(seg_folder, seg_teacher, tmp_path, compared):
    out = tmp_path / "cwd_features"
    train_here(*distil(seg_folder, out, seg_teacher, "cwd"), "--cwd-maps", "features", "--cwd-tau", 2,
               "--distill-positions", "stage3,stage4")
    ckpt = _one_epoch(out)
    # the teacher here is a ResNet-18 like the student: the same widths, so no connector (an Identity)
    assert ckpt["method"] == "cwd" and ckpt["distiller"] == {}
    # ResNet-18's layer3 and (dilated, output stride 16) layer4 at 32 px: 2x2 maps of 256 and 512 channels
    assert compared == [((2, 256, 2, 2), (2, 256, 2, 2), 2.0), ((2, 512, 2, 2), (2, 512, 2, 2), 2.0)] * 2
