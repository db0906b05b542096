"""--config FILE and --print-config: a recipe is a command line written down, the command line overrides it,
and the printed settings are themselves a config that gives the same run."""
import re

import pytest

from mgd.engine import UserError


def parser():
    from cls import main_mgd
    return main_mgd.get_parser()


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_file_sets_flags_by_their_names_and_the_command_line_wins(tmp_path):
    path = write(tmp_path, "# a recipe\ndata: /data/imagenet\narch: mobilenet_v1\nmgd-update-freq: 1\n"
                           "mgd_reducer: sp\nlr: 0.05\nlr-drop-epochs: [3, 6]\namp: true\nseed: null\n")
    args = parser().parse_args(["--config", str(path), "--lr", "0.2"])
    assert (args.data, args.arch, args.mgd_update_freq, args.mgd_reducer) == ("/data/imagenet", "mobilenet_v1", 1, "sp")
    assert (args.lr, args.lr_drop_epochs, args.amp, args.seed) == (0.2, [3, 6], True, None)
    assert parser().parse_args(["OTHER", "--config", str(path)]).data == "OTHER"  # the positional, overridden


def test_print_config_says_where_each_value_came_from_and_round_trips(tmp_path, capsys):
    path = write(tmp_path, "data: /d\narch: mobilenet_v1\nmgd-update-freq: 1\nlr-drop-epochs: [3, 6]\n")
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["--config", str(path), "--lr", "0.2", "--print-config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert f"arch: mobilenet_v1  # from {path}\n" in printed and "lr: 0.2  # command line\n" in printed
    assert "momentum: 0.9  # default\n" in printed and f"lr-drop-epochs: [3, 6]  # from {path}\n" in printed
    again = write(tmp_path, printed, "printed.yaml")
    with pytest.raises(SystemExit):
        parser().parse_args(["--config", str(again), "--print-config"])
    reprinted = capsys.readouterr().out

    def values(text):
        return [re.sub(r"  # .*", "", line) for line in text.splitlines()[1:]]
    assert values(reprinted) == values(printed)
    first = parser().parse_args(["--config", str(path), "--lr", "0.2"])
    second = parser().parse_args(["--config", str(again)])
    assert {**vars(first), "config": None} == {**vars(second), "config": None}  # all but the file's own name


@pytest.mark.parametrize("text, message", [
    ("lrr: 3\n", "(did you mean lr?)"),
    ("lr: -3\n", "--lr/--learning-rate -3: '-3' must be a positive number"),
    ("mgd-reducer: max\n", "--mgd-reducer 'max' is not one of amp, sp, rd, sm"),
    ("amp: 1\n", "--amp is a switch: give true or false, got 1"),
    ("lr: [1, 2]\n", "--lr/--learning-rate takes one value, got [1, 2]"),
    ("- lr\n", "must map flag names to values, got a list"),
    ("lr: [\n", "is not valid YAML (line 2)"),
])
def test_a_bad_key_or_value_is_one_line_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as exc:
        parser().parse_args(["DATA", "--config", str(path)])
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_a_config_extends_its_bases_in_order_and_only_its_own_meta_is_kept(tmp_path):
    from mgd.engine.config import load_yaml
    write(tmp_path, "_meta_: {paper: schedule}\nlr: 0.1\nepochs: 240\nwd: 0.0005\n", "schedule.yaml")
    write(tmp_path, "_meta_: {paper: method}\ndistiller: dkd\ndkd-beta: 8.0\nlr: 0.05\n", "method.yaml")
    row = write(tmp_path, "_base_: [schedule.yaml, method.yaml]\n_meta_: {paper: row}\ndkd-beta: 2.0\n")
    assert load_yaml(str(row)) == {"lr": 0.05, "epochs": 240, "wd": 0.0005, "distiller": "dkd", "dkd-beta": 2.0,
                                   "_meta_": {"paper": "row"}}  # the later base wins, the row over both
    args = parser().parse_args(["DATA", "--config", str(row)])
    assert (args.lr, args.epochs, args.distiller, args.dkd_beta) == (0.05, 240, "dkd", 2.0)
    write(tmp_path, "_base_: recipe.yaml\nlr: 0.2\n", "loop.yaml")
    write(tmp_path, "_base_: loop.yaml\n")
    with pytest.raises(UserError, match="is its own _base_"):
        load_yaml(str(tmp_path / "recipe.yaml"))
    write(tmp_path, "_base_: [schedule.yaml, missing.yaml]\n")
    with pytest.raises(UserError, match=r"missing.yaml not found \(the _base_ of"):
        load_yaml(str(tmp_path / "recipe.yaml"))
