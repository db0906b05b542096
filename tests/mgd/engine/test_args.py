"""mgd.engine.args: method options from flags with no per-method code; number checks."""
import argparse
import re

import pytest

from mgd.engine.args import distiller_options_from_args, positive_float, positive_int


def cls_args(*argv):
    from cls import main_mgd
    return main_mgd.get_parser().parse_args(["DATA", *argv])


def test_each_method_reads_its_own_flags_and_the_shared_ones():
    args = cls_args("--loss-factor", "1e3", "--mgd-reducer", "sp", "--mgd-with-kd", "1", "--kd-alpha", "0.5",
                    "--nd-weight", "3", "--sp-gamma", "2", "--sync-bn", "1")
    args.distributed = True
    assert distiller_options_from_args("mgd", args) == {
        "loss_factor": 1e3, "sync_bn": 1, "distributed": True, "reducer": "sp", "with_kd": 1}
    assert distiller_options_from_args("kd", cls_args("--kd-alpha", "0.5")) == {"alpha": 0.5}
    assert distiller_options_from_args("kd", args) == {"alpha": 0.5, "nd_weight": 3.0}  # --nd-weight: KD++
    dkd = cls_args("--dkd-beta", "2", "--dkd-warmup-epochs", "1", "--kd-warmup-epochs", "10", "--nd-weight", "3")
    assert distiller_options_from_args("dkd", dkd) == {"beta": 2.0, "nd_weight": 3.0, "warmup_epochs": 1}
    assert distiller_options_from_args("nd", args) == {"alpha": 0.5, "nd_weight": 3.0}  # KD++ reads KD's flags
    assert distiller_options_from_args("sp", args) == {"gamma": 2.0}
    assert distiller_options_from_args("ofd", args) == {"loss_factor": 1e3}
    assert distiller_options_from_args("sm", args) == {"loss_factor": 1e3, "sync_bn": 1, "distributed": True,
                                                       "with_kd": 1}  # MGD's flags, never its reducer


def test_given_options_go_only_to_methods_that_take_them():
    layers = ["layer1", "layer2"]
    assert distiller_options_from_args("at", cls_args(), teacher_layers=layers, num_classes=3) == {
        "teacher_layers": layers}
    assert distiller_options_from_args("nd", cls_args(), num_classes=3)["num_classes"] == 3


def test_flags_are_typed_by_the_options_annotations():
    args = cls_args("--loss-factor", "auto", "--mgd-update-epochs", "0", "3", "--crd-memory", "queue",
                    "--ofd-teacher-train-mode", "1", "--reviewkd-mid-channels", "64")
    assert (args.loss_factor, args.mgd_update_epochs, args.crd_memory) == ("auto", [0, 3], "queue")
    assert (args.ofd_teacher_train_mode, args.reviewkd_mid_channels) == (1, 64)
    for argv in (["--mgd-reducer", "max"], ["--crd-memory", "ring"], ["--loss-factor", "-1"],
                 ["--crd-feat-dim", "0"], ["--kd-alpha", "x"], ["--ofd-teacher-train-mode", "2"]):
        with pytest.raises(SystemExit) as exc:
            cls_args(*argv)
        assert exc.value.code == 2, argv


def test_a_flag_the_method_does_not_read_is_named_in_a_warning(capsys):
    from mgd.engine.args import check_method_flags
    from mgd.registry import registered_methods

    methods = registered_methods()
    assert check_method_flags("kd", cls_args("--kd-alpha", "0.5", "--nd-weight", "1"), methods) == []
    assert capsys.readouterr().err == ""
    assert check_method_flags("at", cls_args("--kd-alpha", "0.5", "--mgd-reducer", "rd"), methods) == [
        "--kd-alpha", "--mgd-reducer"]
    assert capsys.readouterr().err == ("warning: --kd-alpha, --mgd-reducer have no meaning for --distiller at, "
                                       "ignored (its options: --at-beta)\n")


def test_an_applications_own_default_is_used_and_shown():
    from seg import train as seg_train

    parser = seg_train.get_parser()
    assert distiller_options_from_args("ofd", parser.parse_args(["DATA"]))["loss_factor"] == 1e5
    assert distiller_options_from_args("ofd", parser.parse_args(["DATA", "--loss-factor", "7"]))["loss_factor"] == 7
    assert "loss_factor" not in distiller_options_from_args("at", parser.parse_args(["DATA"]))
    assert "[default here 100000 (mgd, ofd, sm: default 10000)]" in " ".join(parser.format_help().split())


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


def test_momenta_outside_the_unit_interval_are_refused():
    from unsup import main_moco_mgd
    with pytest.raises(SystemExit) as exc:
        main_moco_mgd.get_parser().parse_args(["DATA", "--teacher-resume", "T", "--moco-m", "2"])
    assert exc.value.code == 2
    import mgd
    from tiny_models import tiny_resnet
    teacher, student = tiny_resnet(True), tiny_resnet(False)
    with pytest.raises(ValueError, match=r"crd momentum must be in \[0, 1\]"):
        mgd.build_distiller("crd", teacher, student, num_samples=100, num_negatives=8, momentum=5)
