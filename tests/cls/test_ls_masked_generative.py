"""cls/main_mgd.py end to end with Masked Generative Distillation (``--distiller masked_generative``) and with logit
standardization (``--logit-standardize 1`` on kd and dkd): a tiny epoch trains, and an interrupted run resumed
from its checkpoint ends bit-equal to the uninterrupted one (the masks' seed and step count, the generation
blocks, the warm-up)."""
import math

import pytest
import torch

from cls_runs import differing_tensors, full_and_resumed, records

RUNS = {"masked_generative": (["--distiller", "masked_generative"], "train_masked_generative"),
        "kd+ls": (["--distiller", "kd", "--logit-standardize", 1], "train_kd"),
        "dkd+ls": (["--distiller", "dkd", "--logit-standardize", 1, "--dkd-warmup-epochs", 2], "train_dkd")}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_trains_and_resumes_bit_exact(run, image_folder, teacher_weights, tmp_path):
    flags, term = RUNS[run]
    a, b, full, part = full_and_resumed(image_folder, teacher_weights, tmp_path, 2, *flags)
    assert differing_tensors(a, b) == []
    assert a["epoch"] == b["epoch"] == 2
    epochs = [r for r in records(full) if "epoch" in r]
    assert len(epochs) == 2 and all(math.isfinite(r[term]) and r[term] > 0 for r in epochs), epochs
    assert [r[term] for r in epochs] == [r[term] for r in records(part) if "epoch" in r]
    if run == "masked_generative":
        steps = int(a["distiller"]["mask_step"])
        assert steps > 0 and steps == int(b["distiller"]["mask_step"])
        assert any(k.startswith("generation.") for k in a["distiller"])
    else:
        assert a["args"]["logit_standardize"] == 1


def test_logit_standardization_changes_what_kd_trains(image_folder, teacher_weights, tmp_path):
    """The same seeded run with and without --logit-standardize: another KD term (9 T^2 KL at T 2 of z-scores)."""
    from cls_runs import mgd_args, run_here

    outs = {}
    for label, flags in (("plain", []), ("ls", ["--logit-standardize", 1])):
        outs[label] = tmp_path / label
        run_here("main_mgd.py", *mgd_args(image_folder, outs[label], teacher_weights), "--distiller", "kd", *flags)
    plain, ls = ([r for r in records(outs[k]) if "epoch" in r][0] for k in ("plain", "ls"))
    assert plain["train_kd"] != pytest.approx(ls["train_kd"], rel=1e-3)
    a = torch.load(outs["plain"] / "last.pth", weights_only=True)
    b = torch.load(outs["ls"] / "last.pth", weights_only=True)
    assert differing_tensors(a, b, keys=("student",))  # another loss: another student
