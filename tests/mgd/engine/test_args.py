"""mgd.engine.args: method options from flags with no per-method code; number checks."""
import argparse
import re

import pytest

from mgd.engine.args import distiller_options_from_args, positive_float, positive_int


def flags(**values):
    base = dict(loss_factor=None, sync_bn=0, distributed=True, mgd_reducer=None, mgd_update_freq=2,
                mgd_update_images=None, mgd_with_kd=1, mgd_solver=None, kd_alpha=0.5, kd_temperature=None,
                at_beta=None, sp_gamma=2.0, nd_weight=3.0, ofd_teacher_train_mode=None, seed=7, rank=0)
    base.update(values)
    return argparse.Namespace(**base)


def test_each_method_reads_its_own_flags_and_the_shared_ones():
    args = flags(loss_factor=1e3, mgd_reducer="sp")
    assert distiller_options_from_args("mgd", args) == {
        "loss_factor": 1e3, "sync_bn": 0, "distributed": True, "reducer": "sp", "update_freq": 2, "with_kd": 1}
    assert distiller_options_from_args("kd", flags(nd_weight=None)) == {"alpha": 0.5}  # seed / rank: not KD's
    assert distiller_options_from_args("kd", args) == {"alpha": 0.5, "nd_weight": 3.0}  # --nd-weight: KD++
    assert distiller_options_from_args("dkd", flags(dkd_beta=2.0, dkd_warmup_epochs=1, warmup_epochs=10)) == {
        "beta": 2.0, "nd_weight": 3.0, "warmup_epochs": 1}  # DKD++ with its own flags and the shared ones
    assert distiller_options_from_args("nd", args) == {"alpha": 0.5, "nd_weight": 3.0}  # KD++ reads KD's flags
    assert distiller_options_from_args("sp", args) == {"gamma": 2.0}
    assert distiller_options_from_args("ofd", args) == {"loss_factor": 1e3}
    assert distiller_options_from_args("sm", flags()) == {"sync_bn": 0, "distributed": True, "update_freq": 2,
                                                          "with_kd": 1}


def test_given_options_go_only_to_methods_that_take_them():
    layers = ["layer1", "layer2"]
    assert distiller_options_from_args("at", flags(), teacher_layers=layers, num_classes=3) == {
        "teacher_layers": layers}
    assert distiller_options_from_args("nd", flags(), num_classes=3)["num_classes"] == 3


def test_number_types_reject_what_makes_no_sense():
    assert positive_int("3") == 3 and positive_float("1e4") == 1e4
    for parse, text in ((positive_int, "0"), (positive_int, "-2"), (positive_float, "-1"), (positive_float, "inf"),
                        (positive_float, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


def test_the_scripts_share_the_methods_default_for_the_matchings_image_count():
    """--mgd-update-images had drifted (2000 in seg/, 20000 elsewhere); every script now leaves it to MGD's own
    default, whatever the script's parser, and --help says which."""
    from cls import main_mgd
    from mgd.registry import option_default
    from seg import train as seg_train
    from unsup import main_moco_mgd

    default = option_default("mgd", "update_images")
    assert default == 20000  # the original's "break for ImageNet-1K"
    for parser, argv in ((main_mgd.get_parser(), ["DATA"]), (seg_train.get_parser(), ["DATA"]),
                         (main_moco_mgd.get_parser(), ["DATA", "--teacher-resume", "T"])):
        args = parser.parse_args(argv)
        given = distiller_options_from_args("mgd", args).get("update_images", default)
        assert given == default, parser.prog
        help_text = " ".join(parser.format_help().split())
        assert re.search(rf"--mgd-update-images MGD_UPDATE_IMAGES [^-]*default:? {default}\b", help_text), parser.prog
