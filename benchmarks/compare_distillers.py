"""Compare distillers on Fashion-MNIST on the same footing: student alone, KD, AT, SP, OFD, KD++ (ND), DKD,
DIST, ReviewKD and their "++", CRD, FitNet, CWD, Masked GD, KD+LS, DKD+LS, MGD-AMP and MGD-AMP + KD, over
several seeds; prints and writes a markdown table of mean +- std top-1.

    python benchmarks/compare_distillers.py --source <folder with the Fashion-MNIST *-ubyte.gz files>

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
import os
import statistics
import sys
import time
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cls.demo import STUDENT, TEACHER, common, ensure_teacher, final_top1, prepare_data, schedule, start, wait  # noqa: E402
from mgd.engine import UserError, run_cli  # noqa: E402

METHODS = {
    "student alone": ("main_base.py", []),
    "KD": ("main_mgd.py", ["--distiller", "kd"]),
    "AT": ("main_mgd.py", ["--distiller", "at"]),
    "SP": ("main_mgd.py", ["--distiller", "sp"]),
    "OFD": ("main_mgd.py", ["--distiller", "ofd"]),
    "KD++ (ND)": ("main_mgd.py", ["--distiller", "nd", "--kd-warmup-epochs", "1"]),
    "DKD": ("main_mgd.py", ["--distiller", "dkd", "--dkd-warmup-epochs", "1"]),
    "DKD++": ("main_mgd.py", ["--distiller", "dkd", "--dkd-warmup-epochs", "1", "--nd-weight", "1"]),
    "DIST": ("main_mgd.py", ["--distiller", "dist"]),
    "DIST++": ("main_mgd.py", ["--distiller", "dist", "--nd-weight", "1"]),
    "ReviewKD": ("main_mgd.py", ["--distiller", "reviewkd", "--reviewkd-warmup-epochs", "1"]),
    "ReviewKD++": ("main_mgd.py", ["--distiller", "reviewkd", "--reviewkd-warmup-epochs", "1", "--nd-weight", "1"]),
    # 4096 negatives: the paper's 16384 are more than the 15,000 training images of this budget
    "CRD": ("main_mgd.py", ["--distiller", "crd", "--crd-num-negatives", "4096"]),
    "FitNet": ("main_mgd.py", ["--distiller", "fitnet"]),
    "CWD": ("main_mgd.py", ["--distiller", "cwd"]),
    "Masked GD": ("main_mgd.py", ["--distiller", "masked_generative"]),
    "KD+LS": ("main_mgd.py", ["--distiller", "kd", "--logit-standardize", "1"]),
    "DKD+LS": ("main_mgd.py", ["--distiller", "dkd", "--dkd-warmup-epochs", "1", "--logit-standardize", "1"]),
    "MGD-AMP": ("main_mgd.py", ["--distiller", "mgd", "--mgd-reducer", "amp"]),
    "MGD-AMP + KD": ("main_mgd.py", ["--distiller", "mgd", "--mgd-reducer", "amp", "--mgd-with-kd", "1"]),
    # the loss factor's evidence (README, "--loss-factor auto"): fixed factors against the calibrated one
    "MGD-AMP, factor 1e2": ("main_mgd.py", ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "1e2"]),
    "MGD-AMP, factor 1e3": ("main_mgd.py", ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "1e3"]),
    "MGD-AMP, factor 1e4": ("main_mgd.py", ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "1e4"]),
    "MGD-AMP, factor 1e5": ("main_mgd.py", ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "1e5"]),
    "MGD-AMP, factor auto": ("main_mgd.py", ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor", "auto"]),
    "MGD-AMP, factor auto, ratio 2": ("main_mgd.py", ["--distiller", "mgd", "--mgd-reducer", "amp", "--loss-factor",
                                                      "auto", "--loss-ratio", "2"]),
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


def main(argv=None) -> None:
    args = parse(argv)
    begin = time.time()
    prepare_data(args)
    teacher_dir, teacher_weights = ensure_teacher(args)
    queue = []
    # runs (and the results file) of another size or subset than the default's are kept apart
    size_tag = ((f"-{args.input_size}px" if args.input_size != 28 else "")
                + (f"-{args.train_subset}" if args.train_subset != 15000 else ""))
    for seed in args.seeds:
        for method in args.methods:
            script, extra = METHODS[method]
            if script == "main_mgd.py":
                extra = extra + ["--teacher-arch", TEACHER, "--teacher-resume", teacher_weights,
                                 "--mgd-update-freq", "1", "--mgd-update-images", "5000"]
                if "--loss-factor" not in extra:
                    extra += ["--loss-factor", str(args.loss_factor)]
            slug = "".join(c for c in method.lower().replace("+", "-").replace(",", "-") if c.isalnum() or c in "-.")
            out = os.path.join(args.results, f"{slug}-seed{seed}{size_tag}")
            args.seed = seed
            argv_run = common(args) + schedule(args.epochs) + ["-a", STUDENT, "--output-dir", out, "--overwrite"]
            argv_run += extra
            queue.append((method, seed, script, argv_run, out))
    os.makedirs(args.results, exist_ok=True)
    by_seed = {m: {} for m in args.methods}  # method -> seed -> top-1 (runs finish in any order)
    running = []
    while queue or running:
        while queue and len(running) < args.jobs:
            method, seed, script, argv_run, out = queue.pop(0)
            if os.path.isfile(os.path.join(out, "log.jsonl")) and final_top1(out)["epochs"] == args.epochs:
                by_seed[method][seed] = final_top1(out)["last"]  # finished in an earlier invocation
                continue
            log = out + ".log"
            running.append((method, seed, out, log, start(f"{method} s{seed}", script, argv_run, 1, log)))
        for item in list(running):
            method, seed, out, log, proc = item
            if proc.poll() is not None:
                try:
                    wait(proc, f"{method} seed {seed}", log)
                    by_seed[method][seed] = final_top1(out)["last"]
                except UserError as exc:  # e.g. a loss factor so small that the run diverges: a result too
                    print(f"failed: {exc}", flush=True)
                    by_seed[method][seed] = float("nan")
                print(f"done: {method} seed {seed}: {by_seed[method][seed]:.2f}  ({time.time() - begin:.0f} s)",
                      flush=True)
                running.remove(item)
        time.sleep(1)

    results = {m: [by_seed[m][seed] for seed in args.seeds] for m in args.methods}  # in seed order
    teacher = final_top1(teacher_dir)["last"]
    lines = ["| model | top-1 (%), mean ± std over seeds " + " ".join(map(str, args.seeds)) + " |", "| --- | --- |",
             f"| teacher {TEACHER} (seed 0) | {teacher:.2f} |"]
    for method in args.methods:
        vals = results[method]
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        lines.append(f"| {method} ({STUDENT}) | {statistics.mean(vals):.2f} ± {std:.2f} |")
    alone = results.get("student alone")
    if alone and len(alone) == len(args.seeds):  # paired: the same seed, data order and initial student
        lines[0] += " paired difference to the student alone, per seed |"
        lines[1] += " --- |"
        lines[2] += " |"
        for i, method in enumerate(args.methods):
            diffs = [v - a for v, a in zip(results[method], alone)]
            lines[3 + i] += " " + ", ".join(f"{d:+.2f}" for d in diffs) + " |"
    table = "\n".join(lines)
    note = (f"Fashion-MNIST at {args.input_size} px, {args.train_subset} training images, full test set, "
            f"{args.epochs} epochs, "
            f"measured {date.today().isoformat()} in {time.time() - begin:.0f} s with "
            f"`python benchmarks/compare_distillers.py --seeds {' '.join(map(str, args.seeds))}`")
    print("\n" + table + "\n\n" + note)
    with open(os.path.join(args.results, f"results{size_tag}.md"), "w") as f:
        f.write(table + "\n\n" + note + "\n\nper seed: " +
                "; ".join(f"{m}: {', '.join(f'{v:.2f}' for v in results[m])}" for m in args.methods) + "\n")


if __name__ == "__main__":
    run_cli(main)
