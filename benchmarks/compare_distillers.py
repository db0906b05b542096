"""Compare distillers on Fashion-MNIST on the same footing: student alone, KD, AT, SP, OFD, KD++ (ND), DKD,
DIST, ReviewKD and their "++", CRD, FitNet, CWD, Masked GD, KD+LS, DKD+LS, MGD-AMP and MGD-AMP + KD, over
several seeds; prints and writes a markdown table of mean +- std top-1.

    python benchmarks/compare_distillers.py --source <folder with the Fashion-MNIST *-ubyte.gz files>

It is a sweep (``python -m mgd.sweep``, methods x seeds) on the demo's data and teacher: this script prepares
both, writes the sweep's space (one group of flags per method) into the results folder, runs the sweep, and
renders the sweep's results as the table (each method's paired difference to the student alone, per seed).
Interrupted, it continues where it was when run again (finished runs are kept); each set of methods is its own
sweep folder.

Pair: the demo's teacher cifar_resnet8_w32 (32-64-128 channels) and student cifar_resnet8_w8 (8-16-32), a
depth-8 CIFAR ResNet 4x narrower than its teacher (in the spirit of the CIFAR tables' resnet32x4 ->
resnet8x4, shrunk to fit a 2-core CPU). Budget per run: the demo's (a fixed 15,000-image training subset,
4 epochs, batch 128, lr 0.1 then 0.01 for the last epoch, 28 px), the full 10,000-image test set. The
teacher is trained once (seed 0) and shared with `make demo`'s cache. Two runs at a time, one thread each.
Each method's weights are its paper's defaults (KD alpha 0.9, T 4; AT beta 1000; SP gamma 3000; KD++: CE +
KD (T 4) + ND weight 1; DKD alpha 1, beta 8, T 4; DIST weight 2; ReviewKD weight 5; CRD weight 0.8, 4096
negatives: the paper's 16384 exceed the 15,000 training images; FitNet weight 100 on the second stage; CWD
tau 1, weight 5 on the stage features; Masked GD alpha 7e-5, lambda 0.15, channel masks on the last stage;
KD+LS weight 9 at T 2, DKD+LS alpha 9, beta 72, T 2); MGD and OFD use loss factor 1e4. The
warm-ups are scaled to the budget: the authors ramp over 20 of 240 CIFAR epochs, here over 1 of 4 (DKD
and ReviewKD at full weight from the first epoch, KD++'s KD from the second, as its 0-based ramp does).
Runs of one seed share the data order and the student's initial weights, so the table also gives each
method's paired difference to the student alone, per seed.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import sys
import time
from datetime import date

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cls.demo import STUDENT, TEACHER, common, ensure_teacher, final_top1, prepare_data, schedule  # noqa: E402
from mgd.engine import UserError, run_cli  # noqa: E402
from mgd.tools import sweep  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_save_argument, save_results  # noqa: E402

METHODS = {
    "student alone": ["--distiller", "none"],
    "KD": ["--distiller", "kd"],
    "AT": ["--distiller", "at"],
    "SP": ["--distiller", "sp"],
    "OFD": ["--distiller", "ofd"],
    "KD++ (ND)": ["--distiller", "nd", "--kd-warmup-epochs", "1"],
    "DKD": ["--distiller", "dkd", "--dkd-warmup-epochs", "1"],
    "DKD++": ["--distiller", "dkd", "--dkd-warmup-epochs", "1", "--nd-weight", "1"],
    "DIST": ["--distiller", "dist"],
    "DIST++": ["--distiller", "dist", "--nd-weight", "1"],
    "ReviewKD": ["--distiller", "reviewkd", "--reviewkd-warmup-epochs", "1"],
    "ReviewKD++": ["--distiller", "reviewkd", "--reviewkd-warmup-epochs", "1", "--nd-weight", "1"],
    # 4096 negatives: the paper's 16384 are more than the 15,000 training images of this budget
    "CRD": ["--distiller", "crd", "--crd-num-negatives", "4096"],
    "FitNet": ["--distiller", "fitnet"],
    "CWD": ["--distiller", "cwd"],
    "Masked GD": ["--distiller", "masked_generative"],
    "KD+LS": ["--distiller", "kd", "--logit-standardize", "1"],
    "DKD+LS": ["--distiller", "dkd", "--dkd-warmup-epochs", "1", "--logit-standardize", "1"],
    "MGD-AMP": ["--distiller", "mgd", "--mgd-reducer", "amp"],
    "MGD-AMP + KD": ["--distiller", "mgd", "--mgd-reducer", "amp", "--mgd-with-kd", "1"],
    # the loss factor's evidence (docs/matching.md, "The loss factor, measured"): fixed factors and the calibrated
    "MGD-AMP, factor 1e2": ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "1e2"],
    "MGD-AMP, factor 1e3": ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "1e3"],
    "MGD-AMP, factor 1e4": ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "1e4"],
    "MGD-AMP, factor 1e5": ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "1e5"],
    "MGD-AMP, factor auto": ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "auto"],
    "MGD-AMP, factor auto, ratio 2": ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "auto",
                                      "--loss-ratio", "2"],
}
#: The default comparison (the factor variants are asked for by name).
DEFAULT_METHODS = [m for m in METHODS if ", factor " not in m]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--data", default=os.path.join(ROOT, "data", "fashion-mnist"))
    p.add_argument("--output", default=os.path.join(ROOT, "output", "demo"), help="teacher cache (shared with the demo)")
    p.add_argument("--results", default=os.path.join(ROOT, "output", "compare"))
    p.add_argument("--download", action="store_true")
    add_save_argument(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--train-subset", type=int, default=15000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--loss-factor", type=float, default=1e4, help="MGD and OFD, unless the method names its own")
    p.add_argument("--input-size", type=int, default=28, help="images resized to this side (the teacher is "
                   "trained at it once and cached per size)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def sweep_space(args, teacher_weights: str) -> dict:
    """The sweep of ``args.methods`` x ``args.seeds``: the demo's command without its seed, one group of flags
    per method (with the loss factor, unless the method names its own)."""
    base = common(args)
    at = base.index("--seed")
    base = base[:at] + base[at + 2:]
    command = ["python", os.path.join(ROOT, "cls", "main_mgd.py")] + base + schedule(args.epochs) + [
        "-a", STUDENT, "--teacher-arch", TEACHER, "--teacher-resume", teacher_weights,
        "--mgd-update-freq", "1", "--mgd-update-images", "5000"]
    methods = {}
    for method in args.methods:
        flags = list(METHODS[method])
        if "--loss-factor" not in flags:
            flags += ["--loss-factor", str(args.loss_factor)]
        methods[method] = flags
    return {"command": command, "space": {"method": methods}, "seeds": list(args.seeds)}


def sweep_folder(args, space: dict) -> str:
    """One sweep folder per comparison: the hash of its space (methods, seeds, budget, teacher), so another
    budget or set of methods is a sweep of its own and running the same command again continues this one."""
    digest = hashlib.sha1(json.dumps(space, sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(args.results, f"sweep-{digest}")


def read_results(folder: str, seeds) -> dict:
    """method -> [top-1 of each seed] of the sweep's finished trials (a method that failed: NaN)."""
    with open(os.path.join(folder, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    results = {}
    for row in rows:
        if row["state"] == "complete" or row["method"] not in results:
            results[row["method"]] = [float(row[f"seed {s}"]) if row[f"seed {s}"] else float("nan") for s in seeds]
    return results


def distiller_of(method: str) -> str:
    """The registered name that a row of METHODS runs (its ``--distiller``): the documentation's method pages
    pick their rows of the saved table by it."""
    flags = METHODS[method]
    return flags[flags.index("--distiller") + 1]


def render(results: dict, methods, seeds, teacher: float) -> str:
    """The comparison table: mean +- std over seeds, and each method's paired difference to the student alone."""
    lines = ["| model | distiller | top-1 (%), mean ± std over seeds " + " ".join(map(str, seeds)) + " |",
             "| --- | --- | --- |", f"| teacher {TEACHER} (seed 0) | | {teacher:.2f} |"]
    for method in methods:
        vals = results.get(method, [float("nan")] * len(seeds))
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {method} ({STUDENT}) | {distiller_of(method)} | {statistics.mean(vals):.2f} ± {std:.2f} |")
    alone = results.get("student alone")
    if alone:  # paired: the same seed, data order and initial student
        lines[0] += " paired difference to the student alone, per seed |"
        lines[1] += " --- |"
        lines[2] += " |"
        for i, method in enumerate(methods):
            diffs = [v - a for v, a in zip(results.get(method, [float("nan")] * len(seeds)), alone)]
            lines[3 + i] += " " + ", ".join(f"{d:+.2f}" for d in diffs) + " |"
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse(argv)
    if args.save and set(args.methods) != set(DEFAULT_METHODS):
        raise UserError("--save writes the whole comparison (the documentation's table): run it with the default "
                        "--methods, or without --save")
    begin = time.time()
    prepare_data(args)
    teacher_dir, teacher_weights = ensure_teacher(args)
    space = sweep_space(args, teacher_weights)
    folder = sweep_folder(args, space)
    os.makedirs(folder, exist_ok=True)
    space_file = os.path.join(folder, "space.yaml")
    with open(space_file, "w") as f:
        yaml.safe_dump(space, f, sort_keys=False, width=120)
    code = sweep.main([folder, "--space", space_file, "--jobs", str(args.jobs), "--threads", "1"])
    if code == 130:
        raise KeyboardInterrupt
    if code != 0:
        raise UserError(f"the sweep in {folder} stopped (exit {code}): its error is above")
    table = render(read_results(folder, args.seeds), args.methods, args.seeds, final_top1(teacher_dir)["last"])
    note = (f"Fashion-MNIST at {args.input_size} px, {args.train_subset} training images, full test set, "
            f"{args.epochs} epochs, measured {date.today().isoformat()} (this invocation {time.time() - begin:.0f} s) "
            f"with `python benchmarks/compare_distillers.py --seeds {' '.join(map(str, args.seeds))}`; the sweep's "
            f"trials: {os.path.join(folder, 'results.md')}")
    print("\n" + table + "\n\n" + note)
    with open(os.path.join(folder, "table.md"), "w") as f:
        f.write(table + "\n\n" + note + "\n")
    save_results(args, table.splitlines(), f"Fashion-MNIST at {args.input_size} px, {args.train_subset} training "
                 f"images, the full test set, {args.epochs} epochs")  # the documentation's table


if __name__ == "__main__":
    run_cli(main)
