"""python -m mgd.sweep on a stand-in training script (tests/sweep_trainer.py: a known metric, no torch): the
table and the best command, a sweep killed mid-trial and resumed, two worker processes on one study, the
pruner, TPE, and bad input (one line, exit 2, nothing of a previous study lost). The sweep of real cls/ runs is
tests/cls/test_sweep.py."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mgd.tools.sweep import main
from mgd.tools.sweep.errors import SweepError
from mgd.tools.sweep.space import parse_grid, parse_range, point_key
from scripts import ROOT
TRAINER = os.path.join(ROOT, "tests", "sweep_trainer.py")


def top1(alpha, lr, epoch, seed=0):
    """The stand-in's metric (its docstring's formula)."""
    import math
    return 50 + 40 * alpha - 10 * abs(math.log10(lr) + 1) + epoch + seed / 10


def command(*flags):
    return ["--", "python", TRAINER, *map(str, flags)]


def table(folder):
    with open(os.path.join(folder, "results.csv")) as f:
        return list(csv.DictReader(f))


def starts(path):
    """(alpha, lr, seed) of every start of the stand-in, in order."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(line.split()) for line in f if line.strip()]


def sweep_process(*argv):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "mgd.sweep", *map(str, argv)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout=120):
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.1)


def test_a_grid_gives_the_table_the_best_command_its_config_and_the_plots(tmp_path):
    folder = tmp_path / "sweep"
    assert main([str(folder), "--grid", "alpha=0.1,0.9", "--grid", "lr=0.01,0.1", "--seeds", "0", "1",
                 *command("--epochs", 2)]) == 0
    rows = table(folder)
    assert [(r["alpha"], r["lr"], r["state"]) for r in rows] == [
        ("0.1", "0.01", "complete"), ("0.1", "0.1", "complete"), ("0.9", "0.01", "complete"),
        ("0.9", "0.1", "complete")]
    for r in rows:  # each seed's last epoch, and their mean
        a, lr = float(r["alpha"]), float(r["lr"])
        assert float(r["seed 0"]) == pytest.approx(top1(a, lr, 1, 0))
        assert float(r["seed 1"]) == pytest.approx(top1(a, lr, 1, 1))
        assert float(r["value"]) == pytest.approx((top1(a, lr, 1, 0) + top1(a, lr, 1, 1)) / 2)
    best = open(folder / "best.txt").read().splitlines()
    assert best[0].startswith("# trial 3: top1 87.05")
    assert best[1].endswith(f"{TRAINER} --epochs 2 --alpha 0.9 --lr 0.1 --seed 0")
    config = open(folder / "best.yaml").read()
    assert "alpha: 0.9  # command line" in config and "lr: 0.1  # command line" in config
    assert "sleep" not in config  # only what the command line gives
    md = open(folder / "results.md").read()
    assert "| 3 | complete | 0.9 | 0.1 | 87.00 | 87.10 | 87.05 |" in md
    for name in ("heatmap.png", "trials.png", "importance.png"):
        assert os.path.getsize(folder / name) > 5000, name
    # every run in its own folder, its log beside it
    assert sorted(os.listdir(folder / "runs")) == ["alpha=0.1,lr=0.01", "alpha=0.1,lr=0.1", "alpha=0.9,lr=0.01",
                                                  "alpha=0.9,lr=0.1"]
    assert os.path.isfile(folder / "runs" / "alpha=0.9,lr=0.1" / "seed1" / "log.jsonl")
    # the same line again runs nothing more; --report rewrites the results
    os.remove(folder / "results.md")
    assert main([str(folder), "--report"]) == 0
    assert "| 3 | complete |" in open(folder / "results.md").read()


def test_a_killed_sweep_resumes_without_rerunning_what_finished(tmp_path):
    """SIGKILL while trial 1 trains its second seed: on resume the orphaned run is stopped, trial 0 and trial
    1's first seed are kept, trial 1's point runs again from its second seed, trial 2 runs once."""
    folder, log = tmp_path / "sweep", tmp_path / "starts.txt"
    argv = [folder, "--grid", "alpha=0.1,0.5,0.9", "--seeds", 0, 1,
            *command("--epochs", 3, "--sleep", 0.5, "--starts", log)]
    proc = sweep_process(*argv)
    wait_for(lambda: len(starts(log)) == 4)  # trial 1, seed 1 has started
    time.sleep(0.7)  # in the middle of its epochs
    proc.kill()
    proc.wait()
    done = subprocess.run([sys.executable, "-m", "mgd.sweep", str(folder)], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trial 1 was interrupted: running again" in done.stdout
    assert "trial 3 alpha=0.5 seed 0: finished earlier, reused" in done.stdout
    assert starts(log) == [("0.1", "0.1", "0"), ("0.1", "0.1", "1"), ("0.5", "0.1", "0"), ("0.5", "0.1", "1"),
                           ("0.9", "0.1", "0"), ("0.9", "0.1", "1"), ("0.5", "0.1", "1")]
    rows = table(folder)
    assert [(r["trial"], r["alpha"], r["state"]) for r in rows] == [
        ("0", "0.1", "complete"), ("1", "0.5", "interrupted"), ("2", "0.9", "complete"), ("3", "0.5", "complete")]
    assert float(rows[3]["value"]) == pytest.approx((top1(0.5, 0.1, 2, 0) + top1(0.5, 0.1, 2, 1)) / 2)
    # the resumed run of seed 1 started afresh: one record per epoch
    with open(folder / "runs" / "alpha=0.5" / "seed1" / "log.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [0, 1, 2]


def test_two_worker_processes_on_one_study_run_every_point_once(tmp_path):
    folder, log = tmp_path / "sweep", tmp_path / "starts.txt"
    argv = [folder, "--grid", "alpha=0.1,0.3,0.5,0.7", "--grid", "lr=0.1,1", "--seeds", 0,
            *command("--epochs", 2, "--sleep", 0.2, "--starts", log)]
    workers = [sweep_process(*argv) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    ran = starts(log)
    assert sorted(ran) == sorted((a, lr, "0") for a in ("0.1", "0.3", "0.5", "0.7") for lr in ("0.1", "1"))
    assert all(re.search(r"^trial \d+ alpha=", out, re.M) for out in outputs), outputs  # both workers trained
    rows = table(folder)
    assert len(rows) == 8 and {r["state"] for r in rows} == {"complete"}


def test_the_median_pruner_stops_a_hopeless_trial_before_its_last_epoch(tmp_path):
    folder = tmp_path / "sweep"
    assert main([str(folder), "--grid", "alpha=0.9,0.8,0.0", "--pruner", "median", "--prune-after-trials", "2",
                 *command("--epochs", 4, "--sleep", 0.6)]) == 0
    rows = table(folder)
    assert [(r["alpha"], r["state"]) for r in rows] == [("0.9", "complete"), ("0.8", "complete"),
                                                        ("0.0", "pruned")]
    with open(folder / "runs" / "alpha=0.0" / "seed0" / "log.jsonl") as f:
        assert len(f.readlines()) < 4


def test_tpe_samples_the_ranges_for_the_trials_asked(tmp_path):
    folder = tmp_path / "sweep"
    assert main([str(folder), "--sampler", "tpe", "--trials", "4", "--range", "lr=0.001:1:log", "--grid",
                 "alpha=0.2,0.8", *command("--epochs", 1)]) == 0
    rows = table(folder)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"complete"}
    for r in rows:
        assert 0.001 <= float(r["lr"]) <= 1 and r["alpha"] in ("0.2", "0.8")
        assert float(r["value"]) == pytest.approx(top1(float(r["alpha"]), float(r["lr"]), 0))
    # continued with more trials: the four are kept
    assert main([str(folder), "--sampler", "tpe", "--trials", "5", "--range", "lr=0.001:1:log", "--grid",
                 "alpha=0.2,0.8", *command("--epochs", 1)]) == 0
    assert [r["lr"] for r in table(folder)[:4]] == [r["lr"] for r in rows] and len(table(folder)) == 5


def test_two_tpe_workers_propose_different_points_and_stop_at_the_trials_asked(tmp_path):
    folder = tmp_path / "sweep"
    assert main([str(folder), "--sampler", "tpe", "--trials", "4", "--jobs", "2", "--range", "lr=0.001:1:log",
                 *command("--epochs", 1)]) == 0
    rows = table(folder)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"complete"}
    assert len({r["lr"] for r in rows}) == 4  # seeded alike, the two samplers would propose the same points


def test_a_failing_trial_records_its_error_and_the_sweep_goes_on(tmp_path):
    folder, log = tmp_path / "sweep", tmp_path / "starts.txt"
    argv = [str(folder), "--grid", "lr=0.1,-1,1", *command("--epochs", 1, "--starts", log)]
    assert main(argv) == 0
    rows = table(folder)
    assert [(r["lr"], r["state"], r["error"]) for r in rows] == [
        ("0.1", "complete", ""), ("-1", "failed", "error: --lr must be positive"), ("1", "complete", "")]
    assert main(argv) == 0  # resumed: a failed point is not run again by default
    assert len(table(folder)) == 3
    assert main(argv[:1] + ["--retry", "failed"]) == 0  # unless asked
    assert [(r["lr"], r["state"]) for r in table(folder)] == [
        ("0.1", "complete"), ("-1", "failed"), ("1", "complete"), ("-1", "failed")]
    assert [s[1] for s in starts(log)] == ["0.1", "1"]  # the failing runs stop before their start line


def test_an_sqlite_storage_holds_the_study(tmp_path):
    folder = tmp_path / "sweep"
    assert main([str(folder), "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--grid", "alpha=0.1,0.2",
                 *command("--epochs", 1)]) == 0
    assert os.path.getsize(tmp_path / "study.db") > 0 and not os.path.exists(folder / "study.journal")
    assert [r["state"] for r in table(folder)] == ["complete", "complete"]
    assert main([str(folder), "--report"]) == 0  # the storage is remembered


@pytest.mark.parametrize("argv, message", [
    (["--grid", "alpah=0.1,0.5"], "--alpah (the space's alpah) is no flag of"),
    (["--grid", "alpha="], "--grid alpha: the grid is empty: give at least one value"),
    (["--grid", "alpha=0.1,0.1"], "--grid alpha: 0.1 given twice"),
    (["--range", "lr=1:0.1"], "--range lr: the low end 1 must be below the high end 0.1"),
    (["--range", "lr=0.01:1:log"], "the grid sampler needs values, not ranges (lr): use --sampler tpe"),
    (["--grid", "lr=0.1", "--storage", "sqlite:////nonexistent/folder/study.db"],
     "--storage sqlite:////nonexistent/folder/study.db: cannot open it:"),
    (["--grid", "lr=0.1", "--storage", "/nonexistent/folder/study.journal"],
     "--storage /nonexistent/folder/study.journal: the folder /nonexistent/folder does not exist"),
    (["--grid", "seed=1,2"], "--seed is set by the space's seed and by --seeds"),
    (["--grid", "epochs=1,2"], "--epochs is in the command and set by the space's epochs"),
])
def test_bad_input_is_one_line_and_exit_2_and_the_previous_study_stays(tmp_path, capsys, argv, message):
    folder = tmp_path / "sweep"
    first = [str(folder), "--grid", "alpha=0.1", *command("--epochs", 1)]
    assert main(first) == 0
    journal = open(folder / "study.journal", "rb").read()
    capsys.readouterr()
    assert main([str(folder) + "-other", *argv, *command("--epochs", 1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mgd.sweep: error: ") and message in err, err
    # the same mistakes aimed at the first sweep's folder leave its study as it was
    assert main([str(folder), *argv, *command("--epochs", 1)]) == 2
    assert open(folder / "study.journal", "rb").read() == journal
    assert main([str(folder), "--report"]) == 0 and table(folder)[0]["state"] == "complete"


def test_a_command_that_fails_at_once_stops_the_sweep(tmp_path, capsys):
    assert main([str(tmp_path / "a"), "--grid", "alpha=0.1,0.2", *command("--lr", -1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the command fails: error: --lr must be positive" in err, err
    assert main([str(tmp_path / "b"), "--grid", "alpha=0.1", "--", "python", "no_such_script.py"]) == 2
    assert "the command fails:" in capsys.readouterr().err
    assert main([str(tmp_path / "c"), "--grid", "alpha=0.1", *command("--epochs", 1)]) == 0  # a good one runs


def test_another_sweep_into_the_same_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "sweep"
    assert main([str(folder), "--grid", "alpha=0.1", *command("--epochs", 1)]) == 0
    assert main([str(folder), "--grid", "alpha=0.2", *command("--epochs", 1)]) == 2
    assert "holds another sweep (space:" in capsys.readouterr().err
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no sweep: give its space and the command after --" in capsys.readouterr().err


def test_space_parsing():
    assert parse_grid("--kd-alpha=0.1, 0.9").values == ("0.1", "0.9")
    r = parse_range("epochs=2:8")
    assert (r.low, r.high, r.integer, r.log) == (2, 8, True, False)
    assert parse_range("lr=1e-3:1:log").log and not parse_range("lr=1e-3:1:log").integer
    with pytest.raises(SweepError, match="write NAME=LOW:HIGH"):
        parse_range("lr=0.1")
    with pytest.raises(SweepError, match="is no flag name"):
        parse_grid("a b=1")
    dims = [parse_grid("a=x y,x/y"), parse_grid("b=1")]
    assert point_key(dims, {"a": "x y", "b": "1"}).startswith("a=x_y~") and \
        point_key(dims, {"a": "x y", "b": "1"}).endswith(",b=1")
    assert point_key(dims, {"a": "x y", "b": "1"}) != point_key(dims, {"a": "x/y", "b": "1"})  # never one folder


def test_ctrl_c_stops_the_running_trial_and_marks_it_interrupted(tmp_path):
    folder, log = tmp_path / "sweep", tmp_path / "starts.txt"
    proc = sweep_process(folder, "--grid", "alpha=0.1,0.5", *command("--epochs", 20, "--sleep", 0.5, "--starts",
                                                                     log))
    wait_for(lambda: len(starts(log)) == 1)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "interrupted: stopping the running trials" in out
    assert [r["state"] for r in table(folder)] == ["interrupted", "waiting"]  # the queue shows what is left
