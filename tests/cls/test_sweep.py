"""python -m mgd.sweep over real cls/main_mgd.py runs: a 2x2 grid of KD's alpha and temperature, one tiny epoch
each, in the embedded journal storage; the table holds each run's logged top-1, the best command and config
reproduce the best point, and the plots are written."""
import csv
import json
import os
import sys

from cls_runs import STUDENT, TEACHER
from mgd.tools.sweep import main
from scripts import ROOT, run_script


def test_a_2x2_grid_of_kd_runs(few_images, teacher_weights, tmp_path):
    folder = tmp_path / "sweep"
    base = [sys.executable, os.path.join(ROOT, "cls", "main_mgd.py"), str(few_images), "--input-size", "16", "-b",
            "6", "--lr", "0.05", "-j", "0", "--epochs", "1", "-a", STUDENT, "--teacher-arch", TEACHER,
            "--teacher-resume", str(teacher_weights), "--distiller", "kd"]
    assert main([str(folder), "--grid", "kd-alpha=0.1,0.9", "--grid", "kd-temperature=1,4", "--jobs", "2",
                 "--threads", "1", "--", *base]) == 0
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["kd-alpha"], r["kd-temperature"]) for r in rows) == [("0.1", "1"), ("0.1", "4"), ("0.9", "1"),
                                                                          ("0.9", "4")]
    for r in rows:
        assert r["state"] == "complete"
        run = folder / "runs" / f"kd-alpha={r['kd-alpha']},kd-temperature={r['kd-temperature']}" / "seed0"
        with open(run / "log.jsonl") as f:
            epochs = [rec for rec in map(json.loads, f) if "epoch" in rec]
        assert float(r["value"]) == epochs[-1]["top1"] and float(r["seed 0"]) == epochs[-1]["top1"]
    best = max(rows, key=lambda r: float(r["value"]))
    command = open(folder / "best.txt").read().splitlines()[1]
    assert command.endswith(f"--kd-alpha {best['kd-alpha']} --kd-temperature {best['kd-temperature']} --seed 0")
    config = folder / "best.yaml"
    assert f"kd-alpha: {best['kd-alpha']}  # command line" in open(config).read()
    # the config is the best point: the script reads it back to the same settings
    shown = run_script(os.path.join("cls", "main_mgd.py"), "--config", config, "--print-config").stdout
    assert f"kd-alpha: {best['kd-alpha']}  # from {config}" in shown
    assert f"kd-temperature: {float(best['kd-temperature'])}  # from {config}" in shown
    assert f"teacher-arch: {TEACHER}  # from {config}" in shown
    for name in ("heatmap.png", "trials.png", "importance.png"):
        assert os.path.getsize(folder / name) > 5000, name
