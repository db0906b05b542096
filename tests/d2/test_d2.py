"""The Detectron2 project on real detectron2 (CPU), with a small generated COCO-format dataset."""
import json
import math
import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detectron2.data import build_detection_train_loader  # noqa: E402
from detectron2.modeling.meta_arch.retinanet import RetinaNet  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import train_net  # noqa: E402
from toy import CONFIG, make_cfg  # noqa: E402


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("d2run")
    cfg = make_cfg(out)
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    yield cfg, trainer, out
    shutil.rmtree(out, ignore_errors=True)  # checkpoints hold the teacher (about 0.2 GB each): free the disk


def test_training_logs_finite_distill_loss_and_updates_on_schedule(trained):
    cfg, trainer, out = trained
    with open(out / "metrics.json") as f:
        metrics = [json.loads(line) for line in f if "loss_distill" in line]
    assert metrics and all(math.isfinite(m["loss_distill"]) and m["loss_distill"] > 0 for m in metrics)
    with open(out / "mgd_updates.jsonl") as f:
        updates = [json.loads(line) for line in f]
    # before training, every 2 iterations until 4, then every 5: iterations 0, 2, 5
    assert [u["iteration"] for u in updates] == [0, 2, 5]
    assert [u["num_updates"] for u in updates] == [1, 2, 3]
    model = trainer.model
    assert int(model.distiller.num_updates) == 3
    for inds, tc in zip(model.distiller.guided_inds, [256, 512, 1024, 2048]):
        assert sorted(inds.tolist()) == list(range(tc))  # R50 -> R18: 4 teacher channels per student channel


def _batch(cfg):
    return next(iter(build_detection_train_loader(cfg)))


def test_gradients_reach_the_student_and_its_norm_layers_not_the_teacher(trained):
    cfg, trainer, _ = trained
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage(0):  # RetinaNet's training forward writes to the event storage
        losses = model(_batch(cfg))
    assert {"loss_cls", "loss_box_reg", "loss_distill"} <= set(losses)
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not any(p.requires_grad for p in model.teacher.parameters())
    res5 = model.student.backbone.bottom_up.res5[-1].conv2.weight
    assert res5.grad is not None and res5.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.distiller.BNs.parameters())
    assert isinstance(model.distiller.BNs[0], torch.nn.GroupNorm)
    assert not model.teacher.training


def test_captured_backbone_features_are_pre_relu(trained):
    cfg, trainer, _ = trained
    model = trainer.model
    model.eval()
    images = model.student.preprocess_image(_batch(cfg))
    feats, _ = model.distiller.student_features(lambda: model.student.backbone.bottom_up(images.tensor))
    with torch.no_grad():
        bottom_up = model.student.backbone.bottom_up
        x = bottom_up.stem(images.tensor)
        x = bottom_up.res2[0](x)
        last = bottom_up.res2[1]
        manual = last.conv2(torch.relu(last.conv1(x))) + x  # the residual sum before the final ReLU
    torch.testing.assert_close(feats[0], manual)
    assert all((f < 0).any() for f in feats)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]


def test_resume_restores_the_matching(trained, dataset):
    cfg, trainer, out = trained
    saved = torch.load(out / "model_final.pth", weights_only=True)["model"]
    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6
    d = resumed.model.distiller
    assert int(d.num_updates) == 3
    for i, inds in enumerate(d.guided_inds):
        assert torch.equal(inds, saved[f"distiller.guided_inds{i + 1}"])
        assert torch.equal(inds, trainer.model.distiller.guided_inds[i])


def test_eval_only_on_the_mgd_checkpoint_reports_student_coco_ap(trained):
    """--eval-only loads model_final.pth and reports the COCO AP of its student: the same numbers as
    evaluating the trained model in the process that trained it (score threshold 0, so there are
    predictions to score and the AP is a number, not NaN)."""
    cfg, trainer, out = trained
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(out / "model_final.pth"),
         "MODEL.RETINANET.NUM_CLASSES", "2", "DATASETS.TEST", "('mgd_toy_val',)", "INPUT.MIN_SIZE_TEST", "96",
         "INPUT.MAX_SIZE_TEST", "128", "OUTPUT_DIR", str(out / "eval"), "DATALOADER.NUM_WORKERS", "0",
         "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    results = train_net.main(args)
    in_process = cfg.clone()
    in_process.defrost()
    in_process.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0
    in_process.OUTPUT_DIR = str(out / "eval_in_process")
    trained_model = train_net.Trainer.build_model(in_process)
    trained_model.load_state_dict(trainer.model.state_dict())
    expected = train_net.Trainer.test(in_process, trained_model)
    ap = results["bbox"]["AP"]
    assert math.isfinite(ap) and 0 <= ap <= 100
    for key in ("AP", "AP50", "AP75"):
        assert results["bbox"][key] == pytest.approx(expected["bbox"][key], abs=1e-9), key
    predictions = torch.load(out / "eval" / "inference" / "instances_predictions.pth", weights_only=False)
    assert len(predictions) == 3 and all(len(p["instances"]) > 0 for p in predictions)


def test_updates_do_not_disturb_the_training_stream(dataset, tmp_path):
    def consumed(freq, out):
        cfg = make_cfg(out, **{"SOLVER.MAX_ITER": 3, "MGD.UPDATE_FREQ": [freq, freq], "SOLVER.CHECKPOINT_PERIOD": 100})
        seed_all_rng(0)  # what default_setup does with cfg.SEED: both runs start from the same state
        trainer = train_net.Trainer(cfg)
        trainer.resume_or_load(resume=False)
        seen = []
        inner = trainer._trainer
        stream = inner._data_loader_iter

        def recording():
            for batch in stream:
                seen.append([(x["file_name"], x["image"].shape[1:], float(x["image"][..., :16].float().mean()))
                             for x in batch])  # the left strip: changes with a random flip
                yield batch
        inner._data_loader_iter = recording()
        trainer.train()
        return seen, trainer
    often, t1 = consumed(1, tmp_path / "often")
    rarely, t2 = consumed(1000, tmp_path / "rarely")
    assert int(t1.model.distiller.num_updates) == 3 and int(t2.model.distiller.num_updates) == 1
    assert often == rarely


def test_merge_and_export_scripts(trained, tmp_path):
    import export_student
    import merge_weights
    import torchvision
    cfg, trainer, out = trained
    teacher_file = tmp_path / "teacher.pth"
    torch.save({"model": trainer.model.teacher.state_dict()}, teacher_file)
    tv_file = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), tv_file)
    merged_file = tmp_path / "init.pth"
    merge_weights.main(["--teacher", str(teacher_file), "--student", str(tv_file), "-o", str(merged_file)])
    merged = torch.load(merged_file, weights_only=True)["model"]
    assert "teacher.head.cls_score.weight" in merged and "student.backbone.bottom_up.res5.1.conv2.norm.weight" in merged
    student_backbone = trainer.model.student.backbone.bottom_up.state_dict()
    converted = {k[len("student.backbone.bottom_up."):] for k in merged if k.startswith("student.")}
    assert set(student_backbone) <= converted  # every student tensor has its torchvision counterpart
    # ... and the only torchvision tensors left over are the running statistics of the BNs that
    # ENABLE_STAGE_LAST_NORM turned into GroupNorm (the last block of res2-res5: affine kept, statistics not)
    assert sorted(converted - set(student_backbone)) == sorted(
        f"res{s}.1.conv{c}.norm.{b}" for s in (2, 3, 4, 5) for c in (1, 2) for b in ("running_mean", "running_var"))
    exported = tmp_path / "student.pth"
    export_student.main([str(out / "model_final.pth"), "-o", str(exported)])
    plain = make_cfg(tmp_path)
    plain.MODEL.META_ARCHITECTURE = "RetinaNet"
    model = RetinaNet(plain)
    model.load_state_dict(torch.load(exported, weights_only=True)["model"], strict=True)


def test_loss_factor_auto_is_measured_once_and_kept_by_a_resume(dataset, tmp_path):
    """MGD.LOSS_FACTOR auto: one global factor, measured after the first matching so that loss_distill is
    LOSS_RATIO x the detector's losses on the measured images, logged, checkpointed, not re-measured."""
    cfg = make_cfg(tmp_path, **{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 100, "MGD.LOSS_FACTOR": "auto",
                                "MGD.LOSS_RATIO": 2.0, "MGD.CALIBRATION_IMAGES": 4, "MGD.UPDATE_FREQ": [100, 100]})
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    assert trainer.model.distiller.needs_calibration
    trainer.train()
    with open(tmp_path / "mgd_updates.jsonl") as f:
        records = [json.loads(line) for line in f]
    factors = [r for r in records if "loss_factor" in r]
    assert len(factors) == 1 and factors[0]["iteration"] == 0
    factor = factors[0]["loss_factor"]
    assert math.isfinite(factor) and factor > 0 and trainer.model.distiller.loss_factor == factor
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert float(saved["distiller.calibrated_loss_factor"]) == pytest.approx(factor)

    model, batches = trainer.model, [_batch(cfg), _batch(cfg)]
    with EventStorage(0):
        import mgd
        measured = mgd.calibrate_loss_factor(model.distiller, batches, ratio=2.0, measure=model.calibration_losses)
        model.distiller.set_loss_factor(measured)
        terms = [model.calibration_losses(b) for b in batches]  # the factor now applies
    distill, task = sum(t[0] * t[2] for t in terms), sum(t[1] * t[2] for t in terms)
    assert distill / task == pytest.approx(2.0, rel=1e-4)

    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 3
    resumed = train_net.Trainer(cfg)
    resumed.resume_or_load(resume=True)
    distiller = resumed.model.distiller
    assert not distiller.needs_calibration and distiller.loss_factor == pytest.approx(factor)
    resumed.train()
    with open(tmp_path / "mgd_updates.jsonl") as f:
        assert len([r for r in map(json.loads, f) if "loss_factor" in r]) == 1
