"""cls/main_mgd.py --distiller fitnet / cwd on the tiny generated ImageFolder: one epoch trains (a positive, finite
term beside the cross-entropy), and a run stopped after it and resumed ends bit-exact with the uninterrupted one
(the student, and the regressor's or the connectors' weights and BatchNorm statistics)."""
import math

import pytest

from cls_runs import differing_tensors, full_and_resumed, records

#: method -> (flags, its term, the distiller's own state after the run: key -> shape)
METHODS = {
    # cifar_resnet8_w8 (8-16-32 channels) guided at layer2 (16) by cifar_resnet8_w16's layer2 (32): mdistiller's
    # HINT_LAYER 2
    "fitnet": (["--distiller", "fitnet"], "fitnet",
               {"regressor.0.weight": (32, 16, 1, 1), "regressor.0.bias": (32,), "regressor.1.running_mean": (32,)}),
    # the three stages, each through a 1x1 connector (8 -> 16, 16 -> 32, 32 -> 64 channels)
    "cwd": (["--distiller", "cwd"], "cwd",
            {"connectors.0.weight": (16, 8, 1, 1), "connectors.1.weight": (32, 16, 1, 1),
             "connectors.2.weight": (64, 32, 1, 1), "connectors.2.bias": (64,)}),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_epoch_trains_and_a_resumed_run_ends_bit_exact(method, image_folder, teacher_weights, tmp_path):
    flags, term, state = METHODS[method]
    a, b, full, part = full_and_resumed(image_folder, teacher_weights, tmp_path, 2, *flags)
    assert a["epoch"] == b["epoch"] == 2
    assert differing_tensors(a, b) == []
    for key, shape in state.items():
        assert tuple(a["distiller"][key].shape) == shape, key
    epochs = [r for r in records(full) if "epoch" in r]
    assert len(epochs) == 2
    for r in epochs:
        assert r[f"train_{term}"] > 0 and math.isfinite(r[f"train_{term}"]) and r["train_ce"] > 0
    assert [r[f"train_{term}"] for r in epochs] == [r[f"train_{term}"] for r in records(part) if "epoch" in r]
