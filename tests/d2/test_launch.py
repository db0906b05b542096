"""train_net.py's process set-up: 2 CPU processes over gloo (detectron2 0.6's launch asserts CUDA) agreeing on
the matching and the weights, and --register-coco."""
import json
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

import toy  # noqa: E402
from mgd_d2 import register_coco_datasets  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_NET = os.path.join(toy.D2, "train_net.py")


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)


def test_two_cpu_processes_over_gloo_agree_on_the_matching_and_the_weights(dataset, tmp_path):
    """`--num-gpus 2 MODEL.DEVICE cpu`: two processes (DDP over gloo, each its half of the batch, the datasets
    registered by --register-coco in each) end with the same trainable parameters and the same matching, for a
    feature method with a matching (MGD, RetinaNet), one with connectors and a calibrated factor (OFD,
    Faster R-CNN) and a logit method (DKD)."""
    opts = toy.tiny_opts(tmp_path, **{"SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 100,
                                      "MGD.UPDATE_FREQ": [2, 2], "DATASETS.TRAIN": ("ddp_train",),
                                      "DATASETS.TEST": ("ddp_val",)})
    runs = "mgd_retinanet_R50_R18_FPN_1x.yaml:mgd,ofd_faster_rcnn_R50_R18_FPN_1x.yaml:ofd," \
           "mgd_faster_rcnn_R50_R18_FPN_1x.yaml:dkd"
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "ddp_ranks.py"), "--num-gpus", "2", "--config-file", toy.CONFIG,
         "--register-coco", "ddp_train", str(dataset / f"{toy.TRAIN}.json"), str(dataset / toy.TRAIN),
         "--register-coco", "ddp_val", str(dataset / f"{toy.VAL}.json"), str(dataset / toy.VAL)] + opts,
        env=_env(MGD_D2_RUNS=runs), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for method in ("mgd", "ofd", "dkd"):
        ranks = [torch.load(tmp_path / method / f"rank{r}.pth", weights_only=True) for r in (0, 1)]
        assert all(int(s["world_size"]) == 2 and bool(s["ddp"]) for s in ranks)
        assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 50
        for key, value in ranks[0].items():
            assert torch.equal(value, ranks[1][key]), f"{method}: {key} differs between the ranks"
        with open(tmp_path / method / "metrics.json") as f:
            metrics = [json.loads(line) for line in f]
        assert [m["iteration"] for m in metrics if "total_loss" in m][-1] == 2  # 3 steps (0, 1, 2)
        assert (tmp_path / method / "inference" / "coco_instances_results.json").is_file()  # evaluated on ddp_val
    mgd_state = torch.load(tmp_path / "mgd" / "rank0.pth", weights_only=True)
    assert int(mgd_state["distiller.num_updates"]) == 2
    for i, tc in enumerate([256, 512, 1024, 2048]):
        assert sorted(mgd_state[f"distiller.guided_inds{i + 1}"].tolist()) == list(range(tc))
    ofd_state = torch.load(tmp_path / "ofd" / "rank0.pth", weights_only=True)
    assert float(ofd_state["distiller.calibrated_loss_factor"]) > 0
    assert any(k.startswith("distiller.connectors.") for k in ofd_state)


def test_register_coco_registers_once_and_refuses_clashes(dataset, tmp_path):
    json_file, images = str(dataset / f"{toy.VAL}.json"), str(dataset / toy.VAL)
    try:
        register_coco_datasets([("reg_test", json_file, images)])
        register_coco_datasets([("reg_test", json_file, images)])  # the same again: kept (another call, one process)
        assert len(DatasetCatalog.get("reg_test")) == 3
        assert MetadataCatalog.get("reg_test").thing_classes == ["red", "green"]
        other = toy.make_coco(tmp_path, "other", 2, 5, register=False)
        with pytest.raises(ValueError, match="'reg_test' is already registered"):
            register_coco_datasets([("reg_test", str(other), str(tmp_path / "other"))])
        with pytest.raises(ValueError, match="annotation file not found: nope.json"):
            register_coco_datasets([("x", "nope.json", images)])
    finally:
        DatasetCatalog.remove("reg_test")
        MetadataCatalog.remove("reg_test")


def test_a_bad_dataset_on_the_command_line_is_one_line_and_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, TRAIN_NET, "--config-file", toy.CONFIG, "--register-coco", "x",
                           str(tmp_path / "missing.json"), str(tmp_path)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: --register-coco x: annotation file not found: " \
                                                   f"{tmp_path / 'missing.json'}"
    assert "Traceback" not in proc.stderr


def _with_previous_run(out):
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"the previous run's weights")
    (out / "last_checkpoint").write_text("model_final.pth")
    (out / "log.txt").write_text("the previous run's log\n")


def test_a_finished_run_is_not_overwritten_without_resume_or_overwrite(tmp_path):
    """As in cls/ and seg/: a re-run into an OUTPUT_DIR that holds model_final.pth stops with one line (exit 2)
    before any process starts, and leaves the previous run's files as they were."""
    out = tmp_path / "run"
    _with_previous_run(out)
    proc = subprocess.run([sys.executable, TRAIN_NET, "--config-file", toy.CONFIG, "OUTPUT_DIR", str(out),
                           "MODEL.DEVICE", "cpu"], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {out} holds a previous run (last_checkpoint, model_final.pth): pass --resume "
        f"{out / 'last_checkpoint'} to continue it, --overwrite to start afresh (the previous run is moved to a "
        "previous-<time> folder), or another OUTPUT_DIR")
    assert (out / "model_final.pth").read_bytes() == b"the previous run's weights"
    assert not (out / "run.lock").exists()


def test_overwrite_moves_the_previous_run_aside_and_resume_keeps_it(tmp_path):
    import train_net

    out = tmp_path / "run"
    _with_previous_run(out)
    parser = train_net.argument_parser()
    cfg = toy.make_cfg(out)
    train_net.check_output(parser.parse_args(["--resume"]), cfg)  # continues: nothing moves
    assert sorted(p.name for p in out.iterdir()) == ["last_checkpoint", "log.txt", "model_final.pth", "run.lock"]
    train_net.check_output(parser.parse_args(["--overwrite"]), cfg)
    (aside,) = [p for p in out.iterdir() if p.name.startswith("previous-")]
    assert sorted(p.name for p in aside.iterdir()) == ["last_checkpoint", "log.txt", "model_final.pth"]
    assert (aside / "model_final.pth").read_bytes() == b"the previous run's weights"
    from mgd.engine.rundir import release_output_dir
    release_output_dir()
    assert sorted(p.name for p in out.iterdir()) == [aside.name]


def _coco(tmp_path, mutate):
    """A one-image COCO file (and its image) changed by ``mutate(data)``; its path."""
    from PIL import Image
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (32, 24)).save(tmp_path / "images" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                             "iscrowd": 0}],
            "categories": [{"id": 1, "name": "thing"}]}
    mutate(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case, mutate, message", [
    ("invalid JSON", None, "is not valid JSON (Expecting value at line 1, column 1)"),
    ("bad category", lambda d: d["annotations"][0].update(category_id=5),
     ": 1 annotation(s) of unknown categories (first: id 7 with category_id 5; the categories: [1])"),
    ("missing image", lambda d: d["images"][0].update(file_name="gone.png"), ": 1 image(s) not found in "),
])
def test_a_broken_coco_file_is_one_line_before_any_process_starts(tmp_path, case, mutate, message):
    path = _coco(tmp_path, mutate or (lambda d: None))
    if mutate is None:
        path.write_text("not json")
    proc = subprocess.run([sys.executable, TRAIN_NET, "--config-file", toy.CONFIG, "--register-coco", "mine",
                           str(path), str(tmp_path / "images"), "DATASETS.TRAIN", "('mine',)", "MODEL.DEVICE", "cpu",
                           "OUTPUT_DIR", str(tmp_path / "out")], env=_env(), capture_output=True, text=True,
                          timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith(f"error: --register-coco mine: {path}") and message in last, last


def test_an_unregistered_dataset_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, TRAIN_NET, "--config-file", toy.CONFIG, "DATASETS.TRAIN", "('nowhere',)",
                           "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path / "out")], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: DATASETS.TRAIN names 'nowhere', which is not a registered dataset: register yours with")


def test_a_diverging_run_is_one_line_that_says_what_to_lower(dataset, tmp_path, capsys):
    import train_net
    argv = ["--config-file", toy.CONFIG, *toy.tiny_opts(tmp_path / "nan", **{"SOLVER.BASE_LR": 1e38,
                                                                             "MGD.DISTILLER": "at"})]
    with pytest.raises(SystemExit) as exc:
        train_net.run(train_net.argument_parser().parse_args(argv))
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2, last
    assert last.startswith("error: training diverged: Loss became infinite or NaN at iteration=")
    assert "(lower SOLVER.BASE_LR, or raise MGD.LOSS_FACTORS if loss_distill is the term that diverged; " in last
