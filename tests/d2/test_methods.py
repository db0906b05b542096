"""Every method on every meta-architecture (real detectron2, CPU, the generated COCO-format set): a few
training iterations, gradients, resume, --eval-only, export; the original's ENABLE_STAGE_LAST_NORM; configs."""
import glob
import json
import math
import os
import re
import shutil
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm  # noqa: E402
from detectron2.modeling.backbone.resnet import build_resnet_backbone  # noqa: E402
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN  # noqa: E402
from detectron2.modeling.meta_arch.retinanet import RetinaNet  # noqa: E402

import export_student  # noqa: E402
import train_net  # noqa: E402
from mgd_d2 import add_mgd_config, enable_stage_last_norm, feature_methods, teacher_config  # noqa: E402
from mgd_d2.config import check_method  # noqa: E402
from toy import CONFIGS, make_cfg, tiny_opts, training_step_losses  # noqa: E402

# (meta-architecture, method, config): the R50 -> R18 configs; KD and DKD on the Faster R-CNN one; MGD and OFD on
# the MobileNetV2 pair.
RUNS = [("retinanet", "mgd", "mgd_retinanet_R50_R18_FPN_1x.yaml"),
        ("retinanet", "mgd", "mgd_retinanet_MV2_MV2x0.5_FPN_1x.yaml"),
        ("retinanet", "ofd", "mgd_retinanet_MV2_MV2x0.5_FPN_1x.yaml"),
        ("retinanet", "ofd", "ofd_retinanet_R50_R18_FPN_1x.yaml"),
        ("faster_rcnn", "mgd", "mgd_faster_rcnn_R50_R18_FPN_1x.yaml"),
        ("faster_rcnn", "ofd", "ofd_faster_rcnn_R50_R18_FPN_1x.yaml"),
        ("faster_rcnn", "kd", "mgd_faster_rcnn_R50_R18_FPN_1x.yaml"),
        ("faster_rcnn", "dkd", "mgd_faster_rcnn_R50_R18_FPN_1x.yaml")]
TERM = {"mgd": "loss_distill", "ofd": "loss_distill", "kd": "loss_kd", "dkd": "loss_dkd"}
# score threshold 0: predictions to score even for a barely trained student, so the AP is a number
EVAL = {"MODEL.RETINANET.SCORE_THRESH_TEST": 0.0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0}


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _deepest_conv(bottom_up):
    """A conv before the last distilled position: a ResNet's res5 or a MobileNetV2's features[17] depthwise conv."""
    return bottom_up.net.features[17].conv[1][0] if hasattr(bottom_up, "net") else bottom_up.res5[-1].conv2


@pytest.fixture(scope="module", params=RUNS, ids=["-".join(r[:2]) + ("-MV2" if "MV2" in r[2] else "") for r in RUNS])
def run(request, dataset, tmp_path_factory):
    arch, method, config = request.param
    out = tmp_path_factory.mktemp(f"{arch}_{method}")
    cfg = make_cfg(out, os.path.join(CONFIGS, config), **{"MGD.DISTILLER": method, "SOLVER.MAX_ITER": 3,
                                                          "SOLVER.CHECKPOINT_PERIOD": 2, "MGD.UPDATE_FREQ": [2, 2]})
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = _unwrap(trainer.model)
    initial = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("student.")}
    trainer.train()
    yield arch, method, config, cfg, trainer, out, initial
    shutil.rmtree(out, ignore_errors=True)  # checkpoints hold the teacher (about 0.5 GB a run): free the disk


def test_training_logs_a_finite_positive_distillation_term(run):
    arch, method, _, cfg, trainer, out, _ = run
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f]
    logged = [m for m in metrics if TERM[method] in m]
    assert len(logged) >= 1
    for m in logged:
        assert math.isfinite(m[TERM[method]]) and m[TERM[method]] > 0
        assert math.isfinite(m["total_loss"])
    expected = {"retinanet": {"loss_cls", "loss_box_reg"},
                "faster_rcnn": {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}}[arch]
    assert expected <= set(logged[-1])
    model = _unwrap(trainer.model)
    assert model.method == method and model.distiller.needs_features == (method in feature_methods())
    if method == "mgd":
        assert int(model.distiller.num_updates) == 2  # before training and at iteration 2
    if method == "ofd":  # LOSS_FACTOR auto in the OFD configs: measured once
        assert model.distiller.loss_factor > 0 and math.isfinite(model.distiller.loss_factor)


def test_gradients_reach_the_student_and_the_distiller_not_the_teacher(run):
    arch, method, _, cfg, trainer, _, _ = run
    model = _unwrap(trainer.model)
    losses, before = training_step_losses(model, cfg)
    assert TERM[method] in losses
    losses[TERM[method]].backward()  # the distillation term alone
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not model.teacher.training
    if method in feature_methods():  # the backbone and the distiller's own layers (norms, connectors)
        grad = _deepest_conv(model.student.backbone.bottom_up).weight.grad
        own = [p for p in model.distiller.parameters()]
        assert own and all(p.grad is not None and p.grad.abs().sum() > 0 for p in own)
    else:  # the box head's classifier (and, through it, the backbone)
        grad = model.student.roi_heads.box_predictor.cls_score.weight.grad
        assert model.student.backbone.bottom_up.res5[-1].conv2.weight.grad.abs().sum() > 0
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.load_state_dict(before)  # the forward moved BN statistics (OFD's connectors): the other tests read them


def test_resume_restores_the_matching_or_connectors(run):
    arch, method, _, cfg, trainer, out, _ = run
    saved = torch.load(out / "model_final.pth", weights_only=True)["model"]
    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    model, trained = _unwrap(resumed.model), _unwrap(trainer.model)
    if method in feature_methods():
        own = model.distiller.own_state_dict()
        assert own and own.keys() == trained.distiller.own_state_dict().keys()
        for k, v in own.items():
            assert torch.equal(v, saved[f"distiller.{k}"]) and torch.equal(v, trained.distiller.own_state_dict()[k]), k
        if method == "mgd":
            assert int(model.distiller.num_updates) == 2 and int(model.distiller.guided_inds[3].min()) >= 0
        else:
            assert any(k.startswith("connectors.") for k in own)
            assert model.distiller.loss_factor == trained.distiller.loss_factor
            assert not model.distiller.needs_calibration
    for k, v in model.student.state_dict().items():
        assert torch.equal(v, trained.student.state_dict()[k]), k


def test_eval_only_reports_the_students_ap_equal_to_the_exported_student(run, tmp_path):
    """--eval-only on the distillation checkpoint evaluates the student alone: the same COCO numbers as the
    exported student in a plain detector built from the student's own config."""
    arch, method, config, cfg, trainer, out, _ = run
    args = train_net.argument_parser().parse_args(
        ["--config-file", os.path.join(CONFIGS, config), "--eval-only"]
        + tiny_opts(tmp_path / "eval", **EVAL,
                    **{"MGD.DISTILLER": method, "MODEL.WEIGHTS": str(out / "model_final.pth")}))
    results = train_net.main(args)
    ap = results["bbox"]["AP"]
    assert math.isfinite(ap) and 0 <= ap <= 100
    exported = tmp_path / "student.pth"
    export_student.main([str(out / "model_final.pth"), "-o", str(exported)])
    plain = make_cfg(tmp_path / "plain", os.path.join(CONFIGS, config), **EVAL)
    plain.MODEL.META_ARCHITECTURE = {"retinanet": "RetinaNet", "faster_rcnn": "GeneralizedRCNN"}[arch]
    model = train_net.Trainer.build_model(plain)
    model.load_state_dict(torch.load(exported, weights_only=True)["model"], strict=True)
    expected = train_net.Trainer.test(plain, model)
    for key in ("AP", "AP50", "AP75"):
        assert results["bbox"][key] == pytest.approx(expected["bbox"][key], abs=1e-9), key


def test_stage_last_norms_are_trainable_groupnorms_trained_and_exported(run, tmp_path):
    """ENABLE_STAGE_LAST_NORM (the student configs): every norm of the last block of res2-res5 is a trainable
    GroupNorm(32), moved by training, in the exported student; the teacher keeps its FrozenBN."""
    arch, method, config, cfg, trainer, out, initial = run
    if "MV2" in config:
        pytest.skip("ENABLE_STAGE_LAST_NORM is an option of the ResNet backbones")
    model = _unwrap(trainer.model)
    bottom_up = model.student.backbone.bottom_up
    names = [f"res{s}.1.conv{c}.norm" for s in (2, 3, 4, 5) for c in (1, 2)]
    for name in names:
        norm = bottom_up.get_submodule(name)
        assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 32
        assert norm.weight.requires_grad and norm.bias.requires_grad
        key = f"student.backbone.bottom_up.{name}.weight"
        assert not torch.equal(initial[key], norm.weight.detach()), f"{name} did not train"
    assert isinstance(bottom_up.res5[0].conv1.norm, FrozenBatchNorm2d)  # only the last block
    assert isinstance(model.teacher.backbone.bottom_up.res5[-1].conv3.norm, FrozenBatchNorm2d)
    exported = tmp_path / "student.pth"
    export_student.main([str(out / "model_final.pth"), "-o", str(exported)])
    state = torch.load(exported, weights_only=True)["model"]
    assert torch.equal(state["backbone.bottom_up.res5.1.conv2.norm.weight"], bottom_up.res5[1].conv2.norm.weight)
    assert "backbone.bottom_up.res5.1.conv2.norm.running_mean" not in state


def _resnet_cfg(**resnets):
    cfg = make_cfg("unused", os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x_tv.yaml"))
    for k, v in resnets.items():
        setattr(cfg.MODEL.RESNETS, k, v)
    return cfg


def test_stage_last_norm_keeps_frozen_stages_and_offers_syncbn():
    from detectron2.layers import ShapeSpec
    cfg = _resnet_cfg()
    cfg.MODEL.BACKBONE.FREEZE_AT = 2  # stem and res2 frozen
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    replaced = enable_stage_last_norm(resnet, "SyncBN")
    assert replaced == [f"res{s}.1.conv{c}.norm" for s in (3, 4, 5) for c in (1, 2)]
    assert isinstance(resnet.res2[1].conv1.norm, FrozenBatchNorm2d)
    assert isinstance(resnet.res3[1].conv1.norm, NaiveSyncBatchNorm) and resnet.res3[1].conv1.norm.weight.requires_grad
    with pytest.raises(ValueError, match="STAGE_LAST_NORM must be one of GN, SyncBN"):
        enable_stage_last_norm(resnet, "LN")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "*_FPN_1x.yaml"))),
                         ids=lambda p: os.path.basename(p))
def test_every_distillation_config_names_its_method_pair_and_teacher(path):
    """Each distillation config: a valid method for its meta-architecture, the teacher's config found and of
    the student's detector, the depths its name says, the original's student settings."""
    from detectron2.config import get_cfg
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(path)
    cfg.MGD.CONFIG_DIR = CONFIGS
    match = re.fullmatch(r"(mgd|ofd|kd|dkd)_(retinanet|faster_rcnn)_(R\d+|MV2)_(R\d+|MV2x0\.5)_FPN_1x\.yaml",
                         os.path.basename(path))
    assert match, path
    method, arch, teacher, student = match[1], match[2], match[3], match[4]
    assert cfg.MGD.DISTILLER == method
    detector = {"retinanet": "RetinaNet", "faster_rcnn": "GeneralizedRCNN"}[arch]
    meta = {"retinanet": ("MGDRetinaNet", "DistillRetinaNet"), "faster_rcnn": ("DistillGeneralizedRCNN",)}[arch]
    assert cfg.MODEL.META_ARCHITECTURE in meta
    check_method(cfg, box_logits=arch == "faster_rcnn")
    t_cfg = teacher_config(cfg, detector)
    if teacher == "MV2":  # torchvision's MobileNetV2, width 1.0 -> 0.5; the student from scratch, BN trainable
        assert "mobilenet_v2" in t_cfg.MODEL.BACKBONE.NAME and "mobilenet_v2" in cfg.MODEL.BACKBONE.NAME
        assert (t_cfg.MODEL.MOBILENET_V2.WIDTH_MULT, cfg.MODEL.MOBILENET_V2.WIDTH_MULT) == (1.0, 0.5)
        assert cfg.MODEL.MOBILENET_V2.NORM == "BN" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
        return
    assert t_cfg.MODEL.RESNETS.DEPTH == int(teacher[1:])
    assert cfg.MODEL.RESNETS.DEPTH == int(student[1:])
    assert cfg.MODEL.RESNETS.ENABLE_STAGE_LAST_NORM and cfg.MODEL.BACKBONE.FREEZE_AT == 1
    assert not t_cfg.MODEL.RESNETS.ENABLE_STAGE_LAST_NORM


def test_bad_method_for_the_architecture_is_one_clear_error(dataset, tmp_path):
    cfg = make_cfg(tmp_path, **{"MGD.DISTILLER": "kd"})  # a RetinaNet has no box head
    with pytest.raises(ValueError, match=r"MGD.DISTILLER 'kd' is not valid for MGDRetinaNet; valid: at, cwd, fitnet, "
                                         r"masked_generative, mgd, ofd, sm, sp \(dist, dkd, kd need a Faster "
                                         r"R-CNN\)$"):
        train_net.Trainer.build_model(cfg)
    cfg = make_cfg(tmp_path, os.path.join(CONFIGS, "mgd_faster_rcnn_R50_R18_FPN_1x.yaml"),
                   **{"MGD.DISTILLER": "dkd", "MGD.LOSS_FACTOR": "auto"})
    with pytest.raises(ValueError, match="leave it empty"):
        train_net.Trainer.build_model(cfg)
    cfg = make_cfg(tmp_path, **{"MGD.TEACHER.CONFIG_FILE": "faster_rcnn_R50_FPN_1x_tv.yaml"})
    with pytest.raises(ValueError, match="the teacher must be a RetinaNet like the student"):
        train_net.Trainer.build_model(cfg)


def test_plain_detectors_build_from_the_student_configs():
    """The exported students' plain forms: a RetinaNet / GeneralizedRCNN with the pre-ReLU backbones."""
    for name, cls in (("retinanet_R18_FPN_1x_tv.yaml", RetinaNet), ("faster_rcnn_R18_FPN_1x_tv.yaml", GeneralizedRCNN)):
        cfg = make_cfg("unused", os.path.join(CONFIGS, name))
        model = train_net.Trainer.build_model(cfg)
        assert type(model) is cls and hasattr(model.backbone.bottom_up.res5[1], "out_relu")

