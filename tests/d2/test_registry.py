"""d2/ names no method: MGD.DISTILLER is any registered method of the right capabilities, logit methods are the
registry's own (the same numbers as d2's former KD / DKD), and a method defined in this test module, unknown to
d2/ and mgd/, trains through train_net.py."""
import json
import math
import os
import pathlib
import shutil
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detectron2.data import build_detection_train_loader  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import mgd  # noqa: E402
import train_net  # noqa: E402
from mgd.losses import dkd_loss, kd_loss  # noqa: E402
from mgd_d2 import feature_methods, logit_methods  # noqa: E402
from mgd_d2.config import check_method  # noqa: E402
from mgd_d2.logit_distill import build_logit_distiller, method_options  # noqa: E402
from plugin_method import StageL2  # noqa: E402
from toy import CONFIGS, ROOT, make_cfg  # noqa: E402

PLUGIN = "stage_l2"


def test_the_two_paths_are_capabilities_of_the_registered_methods():
    assert feature_methods() == ["at", "cwd", "fitnet", "masked_generative", "mgd", "ofd", "sm", "sp"]
    assert logit_methods() == ["dist", "dkd", "kd"]  # not nd (KD++ needs the embeddings), nor deit (two heads)
    cfg = make_cfg("unused", os.path.join(CONFIGS, "mgd_faster_rcnn_R50_R18_FPN_1x.yaml"), **{"MGD.DISTILLER": "nd"})
    with pytest.raises(ValueError, match=r"MGD.DISTILLER 'nd' is not valid for DistillGeneralizedRCNN; valid: at, "
                                         r"cwd, fitnet, masked_generative, mgd, ofd, sm, sp, dist, dkd, kd$"):
        check_method(cfg, box_logits=True)
    cfg.MGD.DISTILLER, cfg.MGD.LOSS_FACTOR = "at", "auto"
    with pytest.raises(ValueError, match="at has none .*leave it empty"):
        check_method(cfg, box_logits=True)


def _logits(seed, rows=40, classes=3):
    gen = torch.Generator().manual_seed(seed)
    s, t = torch.randn(rows, classes, generator=gen) * 3, torch.randn(rows, classes, generator=gen) * 3
    return s.requires_grad_(), t, torch.randint(0, classes, (rows,), generator=gen)


@pytest.mark.parametrize("settings", [{}, {"MGD.KD.WEIGHT": 0.5, "MGD.KD.TEMPERATURE": 2.0}])
def test_kd_through_the_registry_is_the_former_box_head_term_bit_for_bit(settings):
    """The former d2 code: loss_kd = WEIGHT * kd_loss(s, t, TEMPERATURE), the detector's losses at weight 1."""
    cfg = make_cfg("unused", os.path.join(CONFIGS, "kd_faster_rcnn_R101_R50_FPN_1x.yaml"), **settings)
    d, weight = build_logit_distiller(cfg, nn.Linear(2, 3), nn.Linear(2, 3))
    assert type(d) is mgd.DISTILLERS["kd"] and d.alpha == 1.0 and not d.needs_features
    s, t, gt = _logits(0)
    terms = d.compute_terms(student_logits=s, teacher_logits=t, target=gt)
    expected = float(cfg.MGD.KD.WEIGHT) * kd_loss(s, t, float(cfg.MGD.KD.TEMPERATURE))
    assert terms.keys() == {"kd"} and torch.equal(weight * terms["kd"], expected)


@pytest.mark.parametrize("settings", [{}, {"MGD.DKD.BETA": 2.0, "MGD.DKD.TEMPERATURE": 4.0}])
def test_dkd_through_the_registry_is_the_former_box_head_term_bit_for_bit(settings):
    """The former d2 code: loss_dkd = dkd_loss(s, t, gt, ALPHA, BETA, TEMPERATURE), no warm-up (d2 announces no
    epoch: the registry's 20-epoch default would otherwise be in force)."""
    cfg = make_cfg("unused", os.path.join(CONFIGS, "dkd_faster_rcnn_R101_R50_FPN_1x.yaml"), **settings)
    d, weight = build_logit_distiller(cfg, nn.Linear(2, 3), nn.Linear(2, 3))
    assert d.warmup_epochs == 0 and weight == 1.0
    s, t, gt = _logits(1)
    terms = d.compute_terms(student_logits=s, teacher_logits=t, target=gt)
    k = cfg.MGD.DKD
    expected = dkd_loss(s, t, gt, alpha=float(k.ALPHA), beta=float(k.BETA), temperature=float(k.TEMPERATURE))
    assert terms.keys() == {"dkd"} and torch.equal(weight * terms["dkd"], expected)


def test_a_method_section_key_that_is_no_option_is_one_clear_error():
    cfg = make_cfg("unused", os.path.join(CONFIGS, "dkd_faster_rcnn_R101_R50_FPN_1x.yaml"))
    cfg.MGD.DKD.GAMMA = 3.0
    with pytest.raises(ValueError, match="MGD.DKD.GAMMA is not an option of dkd; its options: .*BETA"):
        method_options(cfg, "dkd")


@pytest.fixture
def plugin():
    """StageL2, defined in tests/plugin_method.py, registered for this test only."""
    mgd.register_distiller(PLUGIN)(StageL2)
    try:
        yield PLUGIN
    finally:
        mgd.unregister_distiller(PLUGIN)


def test_a_feature_method_of_a_test_module_trains_through_train_net(plugin, dataset, tmp_path):
    """A dense stage-feature method that neither d2/ nor mgd/ names: offered for both detectors, trained for 3
    iterations on the R18 -> R18 RetinaNet pair (equal widths at C2-C5, as its plain MSE needs), its term
    logged as loss_distill and reaching the student's backbone; the hook has nothing to prepare for it."""
    assert plugin in feature_methods()
    cfg = make_cfg(tmp_path, **{"MGD.DISTILLER": plugin, "MGD.TEACHER.CONFIG_FILE": "retinanet_R18_FPN_1x_tv.yaml",
                                "SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 100})
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model
    assert type(model.distiller) is StageL2 and model.method == plugin
    with open(tmp_path / "metrics.json") as f:
        logged = [m for m in map(json.loads, f) if "loss_distill" in m]
    assert logged and all(math.isfinite(m["loss_distill"]) and m["loss_distill"] > 0 for m in logged)
    assert not (tmp_path / "mgd_updates.jsonl").exists()

    model.train()
    model.zero_grad(set_to_none=True)
    batch = next(iter(build_detection_train_loader(cfg)))
    with EventStorage(0):
        losses = model(batch)
    feats = model.distiller.teacher_features(
        lambda: model.teacher.backbone.bottom_up(model.teacher.preprocess_image(batch).tensor))[0]
    s_feats = model.distiller.student_features(
        lambda: model.student.backbone.bottom_up(model.student.preprocess_image(batch).tensor))[0]
    expected = sum(torch.nn.functional.mse_loss(s, t) for s, t in zip(s_feats, feats)) * len(batch) / 2
    torch.testing.assert_close(losses["loss_distill"], expected)  # IMS_PER_BATCH 2, this batch 2 images
    losses["loss_distill"].backward()
    grad = model.student.backbone.bottom_up.res5[-1].conv2.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_no_file_of_d2_or_mgd_names_the_test_method():
    root = pathlib.Path(ROOT)
    for folder in ("d2", "mgd"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            assert PLUGIN not in text and "StageL2" not in text, path
