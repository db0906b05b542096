"""configs/: every recipe parses through its script's own flags and round-trips through --print-config; every
classification row trains one tiny epoch with its method, pair and options as they are; README's recipes
table is the one configs/table.py generates."""
import math
import os
import subprocess
import sys

import pytest
import torch

from cls.models import build_model
from cls_runs import records
from recipes import TeacherWeights, all_configs, row_id, rows
from scripts import ROOT

CLS_ROWS = rows("cls")


def parser_for(path):
    folder = os.path.basename(os.path.dirname(path))
    if folder == "cls":
        from cls import main_mgd
        return main_mgd.get_parser(), ["DATA"]
    if folder == "seg":
        from seg import train
        return train.get_parser(), ["DATA"]
    from unsup import main_moco_mgd
    return main_moco_mgd.get_parser(), ["DATA", "--teacher-resume", "T"]


def test_there_are_recipes_for_each_application_and_every_paper():
    folders = {os.path.basename(os.path.dirname(c)) for c in all_configs()}
    assert folders == {"cls", "seg", "unsup"}
    families = {row_id(c).split("_")[0] for c in CLS_ROWS}
    assert families == {"kd", "kdpp", "dist", "distpp", "dkd", "dkdpp", "reviewkd", "reviewkdpp", "crd", "ofd",
                        "mgd", "framework"}
    # the KD++ table: 6 CIFAR pairs x 8 methods, 2 ImageNet pairs x 7 and 2 ViT teachers x 4
    assert len([c for c in CLS_ROWS if "_cifar100_" in c and not row_id(c).startswith(("ofd", "framework"))]) == 48
    assert len([c for c in CLS_ROWS if "_imagenet_vit" in c]) == 8


@pytest.mark.parametrize("path", all_configs(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_parses_and_its_printed_settings_give_the_same_run(path, tmp_path, capsys):
    parser, argv = parser_for(path)
    args = parser.parse_args([*argv, "--config", path])
    with pytest.raises(SystemExit) as exc:
        parser_for(path)[0].parse_args([*argv, "--config", path, "--print-config"])
    assert exc.value.code == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    again = parser_for(path)[0].parse_args([*argv, "--config", str(printed)])
    assert {**vars(args), "config": None} == {**vars(again), "config": None}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return TeacherWeights(tmp_path_factory.mktemp("teachers"), lambda arch: build_model(arch, 3))


def few(args):
    """Whether a row's tiny run takes the few images (CIFAR rows, and ViT teachers at 224 px), or the 48 of
    image_folder (the ImageNet CNN rows: their random deep teachers make one step too large for 12 images)."""
    return args.input_size == 32 or args.teacher_arch.startswith("timm/vit")


def tiny_run_flags(args):
    """What a tiny run overrides: the data, the size of the run and nothing of the method's recipe (CRD's
    negatives are bounded by the training images; a ViT teacher takes 224 px only). It trains the second epoch
    (``--start-epoch 1``), where every warm-up counted from 0 already gives its term a weight."""
    vit = args.teacher_arch.startswith("timm/vit")
    flags = ["--dataset", "imagefolder", "--input-size", "224" if vit else "16", "-b", "6" if few(args) else "16",
             "--start-epoch", "1", "--epochs", "2", "--warmup", "0", "-j", "0", "--seed", "0"]
    if args.distiller in ("mgd", "sm"):
        flags += ["--mgd-update-images", "6"]
    if args.distiller == "crd":
        flags += ["--crd-num-negatives", "4"]
    return flags


@pytest.mark.parametrize("path", CLS_ROWS, ids=row_id)
def test_each_row_trains_one_tiny_epoch(path, image_folder, few_images, teachers, tmp_path):
    """The row's method, pair and options as they are; only the data, the size of the run and the teacher's
    weights are overridden (the command line wins over the file)."""
    from cls import main_mgd
    args = main_mgd.get_parser().parse_args(["DATA", "--config", path])
    out = tmp_path / "run"
    main_mgd.main([str(few_images if few(args) else image_folder), "--config", path, *tiny_run_flags(args),
                   "--teacher-resume", str(teachers[args.teacher_arch]), "--output-dir", str(out)])
    (epoch,) = [r for r in records(out) if "epoch" in r]
    terms = [k for k in epoch if k.startswith("train_") and k != "train_ce"]
    assert terms and all(math.isfinite(epoch[k]) and epoch[k] > 0 for k in terms), epoch  # the method's terms
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 2


def test_the_readme_recipes_table_is_the_generated_one():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "configs", "table.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("method", ["ofd", "mgd", "at", "reviewkd"])
def test_the_feature_methods_train_a_pair_whose_stages_reduce_differently(method, image_folder, teachers, tmp_path):
    """ResNet-32x4 -> ShuffleNet-V2 (the KD++ and CRD CIFAR row): maps of two sizes at every stage, the larger
    pooled to the smaller (mdistiller's), so every feature method trains it. The teacher is random (its
    features, and ReviewKD's first term, run to 1e6): a small learning rate keeps the one epoch finite on every
    processor (at 0.1 it diverged on an AMD EPYC and not on the machine the test was written on)."""
    from cls import main_mgd
    out = tmp_path / method
    main_mgd.main([str(image_folder), "-a", "cifar_shufflenet_v2_x1_0", "--teacher-arch", "cifar_resnet32x4",
                   "--teacher-resume", str(teachers["cifar_resnet32x4"]), "--distiller", method, "--input-size", "32",
                   "-b", "16", "--lr", "1e-4", "--epochs", "1", "-j", "0", "--seed", "0", "--output-dir", str(out),
                   *(["--mgd-update-images", "16"] if method == "mgd" else []),
                   *(["--reviewkd-warmup-epochs", "0"] if method == "reviewkd" else [])])  # epoch 0: full weight
    (epoch,) = [r for r in records(out) if "epoch" in r]
    terms = [k for k in epoch if k.startswith("train_") and k != "train_ce"]
    assert terms and all(epoch[k] > 0 for k in terms)
