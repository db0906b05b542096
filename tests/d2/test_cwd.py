"""MGD.DISTILLER cwd on both meta-architectures (real detectron2, CPU, the generated COCO-format set): CWD on the
bottom-ups' pre-ReLU C2-C5 through 1x1 connectors (the authors' detection setting, tau 1 and weight 5), chosen by
its capabilities (no method name in d2/): a few iterations, the term, gradients, resume."""
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

RUNS = [("retinanet", "mgd_retinanet_R50_R18_FPN_1x.yaml"), ("faster_rcnn", "mgd_faster_rcnn_R50_R18_FPN_1x.yaml")]


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@pytest.fixture(scope="module", params=RUNS, ids=[r[0] for r in RUNS])
def run(request, dataset, tmp_path_factory):
    arch, config = request.param
    out = tmp_path_factory.mktemp(f"{arch}_cwd")
    cfg = make_cfg(out, os.path.join(CONFIGS, config), **{"MGD.DISTILLER": "cwd", "SOLVER.MAX_ITER": 3,
                                                          "SOLVER.CHECKPOINT_PERIOD": 2})
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    yield arch, cfg, trainer, out
    shutil.rmtree(out, ignore_errors=True)


def test_cwd_is_a_feature_method_on_c2_c5_with_the_detection_setting(run):
    arch, cfg, trainer, out = run
    assert "cwd" in feature_methods()
    d = _unwrap(trainer.model).distiller
    assert d.maps == "features" and d.needs_features and (d.tau, d.weight) == (1.0, 5.0)
    # ResNet-18's C2-C5 (64-512 channels) to ResNet-50's (256-2048)
    assert [(c.in_channels, c.out_channels) for c in d.connectors] == [(64, 256), (128, 512), (256, 1024), (512, 2048)]
    with open(out / "metrics.json") as f:
        logged = [m for m in map(json.loads, f) if "loss_distill" in m]
    assert logged and all(math.isfinite(m["loss_distill"]) and m["loss_distill"] > 0 for m in logged)
    assert {"loss_cls", "loss_box_reg"} <= set(logged[-1])


def test_gradients_reach_the_student_and_the_connectors_not_the_teacher(run):
    arch, cfg, trainer, _ = run
    model = _unwrap(trainer.model)
    losses, before = training_step_losses(model, cfg)
    losses["loss_distill"].backward()
    assert all(p.grad is None for p in model.teacher.parameters()) and not model.teacher.training
    assert model.student.backbone.bottom_up.res5[-1].conv2.weight.grad.abs().sum() > 0
    own = list(model.distiller.parameters())
    assert len(own) == 8 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(before)


def test_resume_restores_the_connectors(run):
    arch, cfg, trainer, out = run
    saved = torch.load(out / "model_final.pth", weights_only=True)["model"]
    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    model, trained = _unwrap(resumed.model), _unwrap(trainer.model)
    own = model.distiller.own_state_dict()
    assert sorted(own) == sorted(f"connectors.{i}.{p}" for i in range(4) for p in ("weight", "bias"))
    for k, v in own.items():
        assert torch.equal(v, saved[f"distiller.{k}"]) and torch.equal(v, trained.distiller.own_state_dict()[k]), k
    for k, v in model.student.state_dict().items():
        assert torch.equal(v, trained.student.state_dict()[k]), k
