"""Every segmentation row of configs/seg trains one tiny epoch with its models, method, positions and options
as they are: only the data (the generated folder set), the crop, the batch and the teacher's weights are
overridden."""
import math

import pytest
import torch

from recipes import TeacherWeights, row_id, rows
from seg import train as seg_train
from seg.models import build_model
from seg_runs import records


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return TeacherWeights(tmp_path_factory.mktemp("segteachers"), lambda name: build_model(name, 3))


@pytest.mark.parametrize("path", rows("seg"), ids=row_id)
def test_each_row_trains_one_tiny_epoch(path, seg_folder, teachers, tmp_path):
    args = seg_train.get_parser().parse_args(["DATA", "--config", path])
    out = tmp_path / "run"
    seg_train.main([str(seg_folder), "--config", path, "--dataset", "folder", "--crop-size", "32", "-b", "2",
                    "-j", "0", "--seed", "0", "--epochs", "1", "--mgd-update-images", "4",
                    "--teacher-resume", str(teachers[args.teacher_model]), "--output-dir", str(out)])
    (epoch,) = [r for r in records(out) if "epoch" in r]
    term = epoch[f"train_{args.distiller}" if args.distiller == "ofd" else "train_distill"]
    assert term > 0 and math.isfinite(term) and math.isfinite(epoch["train_ce"])
    assert 0 <= epoch["miou"] <= 100 and torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
