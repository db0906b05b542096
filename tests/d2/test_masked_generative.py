"""Masked Generative Distillation (``MGD.DISTILLER masked_generative``) in d2/ through its feature-method path (no
d2 code names it): RetinaNet and Faster R-CNN students train a few iterations with ``loss_distill``, the
detection setting (d2 passes det=True) on every listed level, gradients reach the student's backbone and the
generation blocks, and a resume restores the blocks and the masks' seed and step count."""
import json
import math
import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


import train_net  # noqa: E402
from mgd_d2 import feature_methods  # noqa: E402
from toy import CONFIGS, make_cfg, training_step_losses  # noqa: E402

METHOD = "masked_generative"
# (meta-architecture, config, levels skipped): the R50 -> R18 pairs without C5 (a 2048-wide generation block holds
# 75 M parameters: too much for a CPU test's checkpoints), the MobileNetV2 pair on every level
RUNS = [("retinanet", "mgd_retinanet_R50_R18_FPN_1x.yaml", [3]),
        ("faster_rcnn", "mgd_faster_rcnn_R50_R18_FPN_1x.yaml", [3]),
        ("retinanet", "mgd_retinanet_MV2_MV2x0.5_FPN_1x.yaml", [])]


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@pytest.fixture(scope="module", params=RUNS, ids=[f"{r[0]}-{'MV2' if 'MV2' in r[1] else 'R50-R18'}" for r in RUNS])
def run(request, dataset, tmp_path_factory):
    arch, config, ignore = request.param
    out = tmp_path_factory.mktemp(f"{arch}_{METHOD}")
    cfg = make_cfg(out, os.path.join(CONFIGS, config), **{
        "MGD.DISTILLER": METHOD, "MGD.IGNORE_INDS": ignore, "MGD.LOSS_FACTOR": "", "SOLVER.MAX_ITER": 3,
        "SOLVER.CHECKPOINT_PERIOD": 2})
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    yield arch, config, ignore, cfg, trainer, out
    shutil.rmtree(out, ignore_errors=True)


def test_it_is_a_feature_method_of_d2():
    assert METHOD in feature_methods()


def test_training_logs_a_finite_positive_distillation_term_with_the_detection_setting(run):
    arch, config, ignore, cfg, trainer, out = run
    with open(out / "metrics.json") as f:
        logged = [m for m in map(json.loads, f) if "loss_distill" in m]
    assert logged and all(math.isfinite(m["loss_distill"]) and m["loss_distill"] > 0 for m in logged)
    d = _unwrap(trainer.model).distiller
    assert (d.task, d.alpha, d.mask_ratio, d.mask) == ("detection", 2e-5, 0.65, "spatial")
    assert d.stages == [i for i in range(4) if i not in ignore]
    assert int(d.mask_step) == 3  # one draw per training iteration (no calibration: no loss factor)


def test_gradients_reach_the_backbone_and_the_generation_blocks_not_the_teacher(run):
    arch, config, ignore, cfg, trainer, out = run
    model = _unwrap(trainer.model)
    losses, before = training_step_losses(model, cfg)
    losses["loss_distill"].backward()
    assert all(p.grad is None for p in model.teacher.parameters()) and not model.teacher.training
    own = list(model.distiller.parameters())
    assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    stem = next(p for p in model.student.backbone.bottom_up.parameters() if p.requires_grad)
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.load_state_dict(before)  # the forward moved the mask count: the next test reads the trained state


def test_resume_restores_the_generation_blocks_and_the_mask_state(run):
    arch, config, ignore, cfg, trainer, out = run
    saved = torch.load(out / "model_final.pth", weights_only=True)["model"]
    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    model, trained = _unwrap(resumed.model), _unwrap(trainer.model)
    own = model.distiller.own_state_dict()
    assert any(k.startswith("generation.") for k in own) and int(own["mask_step"]) == 3
    for k, v in own.items():
        assert torch.equal(v, saved[f"distiller.{k}"]) and torch.equal(v, trained.distiller.own_state_dict()[k]), k
    assert model.distiller._mask_step == 3 and model.distiller._mask_seed == int(own["mask_seed"])
