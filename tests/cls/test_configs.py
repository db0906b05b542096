"""configs/: every recipe parses through its script's own flags and round-trips through --print-config; the
CIFAR-scale rows train one tiny epoch; README's recipes table is the one configs/table.py generates."""
import glob
import os

import pytest
import torch

from cls.models import build_model
from cls_runs import records
from scripts import ROOT
from tiny_models import randomize_bn

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml")))
#: Rows whose teacher is small enough to write and run here (the ImageNet and PyramidNet-200 teachers are not).
TINY_RUNS = [c for c in CONFIGS if os.path.basename(c).startswith(("ofd_cifar100_", "kdpp_cifar100_",
                                                                    "dkdpp_cifar100_"))
             and not c.endswith(("_base.yaml", "_e.yaml", "_f.yaml"))]


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


def test_there_are_recipes_for_each_application():
    folders = {os.path.basename(os.path.dirname(c)) for c in CONFIGS}
    assert folders == {"cls", "seg", "unsup"} and len(TINY_RUNS) == 14


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
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
    """Random teacher weights (BN statistics like a trained network's) for every teacher the tiny rows name."""
    from cls import main_mgd
    root = tmp_path_factory.mktemp("teachers")
    paths = {}
    for path in TINY_RUNS:
        arch = main_mgd.get_parser().parse_args(["DATA", "--config", path]).teacher_arch
        if arch not in paths:
            torch.manual_seed(0)
            paths[arch] = root / f"{arch}.pth"
            torch.save(randomize_bn(build_model(arch, 3)).state_dict(), paths[arch])
    return paths


@pytest.mark.parametrize("path", TINY_RUNS, ids=os.path.basename)
def test_each_cifar_row_trains_one_tiny_epoch(path, image_folder, teachers, tmp_path):
    """The row's method, pair and options as they are; only the data, the size of the run and the teacher's
    weights are overridden (the command line wins over the file)."""
    from cls import main_mgd
    arch = main_mgd.get_parser().parse_args(["DATA", "--config", path]).teacher_arch
    out = tmp_path / "run"
    main_mgd.main([str(image_folder), "--config", path, "--dataset", "imagefolder", "--input-size", "16", "-b", "16",
                   "--epochs", "1", "-j", "0", "--seed", "0", "--teacher-resume", str(teachers[arch]),
                   "--output-dir", str(out), "--mgd-update-images", "16"])
    (epoch,) = [r for r in records(out) if "epoch" in r]
    terms = [k for k in epoch if k.startswith("train_") and k != "train_ce"]
    assert terms and all(epoch[k] == epoch[k] for k in terms)  # the method's terms, finite (not NaN)
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1


def test_the_readme_recipes_table_is_the_generated_one():
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "configs", "table.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("method", ["ofd", "mgd", "at", "reviewkd"])
def test_the_feature_methods_train_a_pair_whose_stages_reduce_differently(method, image_folder, teachers, tmp_path):
    """ResNet-32x4 -> ShuffleNet-V2 (the KD++ and CRD CIFAR row): maps of two sizes at every stage, the larger
    pooled to the smaller (mdistiller's), so every feature method trains it."""
    from cls import main_mgd
    out = tmp_path / method
    main_mgd.main([str(image_folder), "-a", "cifar_shufflenet_v2_x1_0", "--teacher-arch", "cifar_resnet32x4",
                   "--teacher-resume", str(teachers["cifar_resnet32x4"]), "--distiller", method, "--input-size", "32",
                   "-b", "16", "--epochs", "1", "-j", "0", "--seed", "0", "--output-dir", str(out),
                   "--mgd-update-images", "16"])
    (epoch,) = [r for r in records(out) if "epoch" in r]
    terms = [k for k in epoch if k.startswith("train_") and k != "train_ce"]
    assert terms and all(epoch[k] > 0 for k in terms)
