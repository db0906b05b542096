"""The offline demo (`make demo`): on Fashion-MNIST, a teacher, the student alone, and the student
distilled with MGD on the same budget; prints a table of top-1 accuracies.

Budget (chosen to finish in about 6 minutes on a 2-core CPU, installs excluded): a fixed random subset of
15,000 training images, the full 10,000-image test set, 28 px inputs, 4 epochs for each network.
Teacher: cifar_resnet8_w32 (stages of 32-64-128 channels, 0.31 M parameters); student:
cifar_resnet8_w8 (8-16-32 channels, 20 k parameters), so each student channel is matched to 4 teacher
channels. The teacher is trained once and cached in the output folder; the two students then train at
the same time, one CPU core each, with the same seed, data order and schedule. One seed on a small
budget: differences of a few tenths of a percent are within run-to-run noise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cls.data import FASHION_FILES, prepare_fashion_mnist  # noqa: E402
from mgd.engine import UserError, run_cli  # noqa: E402
from mgd.engine.runs import start_script, wait_script  # noqa: E402

TEACHER, STUDENT = "cifar_resnet8_w32", "cifar_resnet8_w8"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default=None, help="folder with the Fashion-MNIST *-ubyte.gz files to prepare from")
    p.add_argument("--data", default=os.path.join(ROOT, "data", "fashion-mnist"))
    p.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    p.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if missing")
    p.add_argument("--train-subset", type=int, default=15000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--loss-factor", type=float, default=1e4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def common(args) -> List[str]:
    """Flags every run shares: the same data, input size (28 px unless ``args.input_size``), batch, optimizer
    (SGD with Nesterov momentum for all, although the original main_base.py used plain momentum) and seed."""
    size = str(getattr(args, "input_size", 28))
    return [args.data, "--dataset", "fashion-mnist", "--input-size", size, "-b", "128", "--lr", "0.1",
            "--wd", "5e-4", "--nesterov", "1", "-j", "0", "--seed", str(args.seed), "--train-subset",
            str(args.train_subset), "-p", "20"] + (["--download"] if args.download else [])


def schedule(epochs: int) -> List[str]:
    """Constant LR, divided by 10 for the last epoch."""
    return ["--epochs", str(epochs), "--lr-drop-epochs", str(max(1, epochs - 1))]


def start(name: str, script: str, argv: List[str], threads: int, log_path: str) -> subprocess.Popen:
    return start_script(name, os.path.join(ROOT, "cls", script), argv, threads, log_path)


wait = wait_script


def final_top1(output_dir: str) -> Dict[str, float]:
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        epochs = [r for r in map(json.loads, f) if "epoch" in r]
    return {"last": epochs[-1]["top1"], "best": epochs[-1]["best_top1"], "epochs": len(epochs)}


def ensure_teacher(args) -> tuple:
    """(folder, weights) of the teacher for this budget, trained once and cached under args.output."""
    os.makedirs(args.output, exist_ok=True)
    size = getattr(args, "input_size", 28)
    teacher_dir = os.path.join(args.output, f"teacher-{TEACHER}-{args.train_subset}-{args.teacher_epochs}ep"
                               + (f"-{size}px" if size != 28 else ""))
    teacher_weights = os.path.join(teacher_dir, "student.pth")
    if os.path.isfile(teacher_weights) and final_top1(teacher_dir)["epochs"] == args.teacher_epochs:
        print(f"teacher: cached in {teacher_dir}", flush=True)
        return teacher_dir, teacher_weights
    print(f"teacher: training {TEACHER} for {args.teacher_epochs} epochs on {args.train_subset} images "
          "(2 threads; cached for the next run)", flush=True)
    log = os.path.join(args.output, "teacher.log")
    proc = start("teacher", "main_base.py", common(args) + schedule(args.teacher_epochs) +
                 ["-a", TEACHER, "--output-dir", teacher_dir, "--seed", "0", "--overwrite"], 2,
                 log)  # one teacher for all seeds
    wait(proc, "teacher training", log)
    return teacher_dir, teacher_weights


def prepare_data(args) -> None:
    raw = os.path.join(args.data, "FashionMNIST", "raw")
    if not all(os.path.isfile(os.path.join(raw, f)) for f in FASHION_FILES):
        if args.source and os.path.isdir(args.source):
            prepare_fashion_mnist(args.source, args.data)
        elif not args.download:
            raise UserError("Fashion-MNIST not found: install the Debian package dataset-fashion-mnist and pass "
                            "--source <its folder>, or pass --download (needs internet)")


def main(argv=None) -> None:
    args = parse(argv)
    begin = time.time()
    prepare_data(args)
    teacher_dir, teacher_weights = ensure_teacher(args)

    runs = {
        "student": ("main_base.py", ["-a", STUDENT]),
        "student+MGD": ("main_mgd.py", ["-a", STUDENT, "--teacher-arch", TEACHER, "--teacher-resume",
                                        teacher_weights, "--mgd-reducer", "amp", "--mgd-update-freq", "1",
                                        "--mgd-update-images", "5000", "--loss-factor", str(args.loss_factor)]),
    }
    print(f"students: {STUDENT} alone and with MGD-AMP, {args.epochs} epochs each, in parallel (1 thread each)",
          flush=True)
    procs = {}
    for name, (script, extra) in runs.items():
        out = os.path.join(args.output, name.replace("+", "-"))
        log = os.path.join(args.output, f"{name.replace('+', '-')}.log")
        procs[name] = (start(name, script, common(args) + schedule(args.epochs) + extra +
                             ["--output-dir", out, "--overwrite"], 1, log), log, out)
    for name, (proc, log, _) in procs.items():
        wait(proc, name, log)

    rows = [("teacher " + TEACHER, final_top1(teacher_dir))] + \
           [(f"{name} {STUDENT}", final_top1(out)) for name, (_, _, out) in procs.items()]
    lines = ["| model | top-1 (last epoch) | best top-1 |", "| --- | --- | --- |"]
    lines += [f"| {name} | {r['last']:.2f} | {r['best']:.2f} |" for name, r in rows]
    table = "\n".join(lines)
    summary = (f"Fashion-MNIST test set (10,000 images), {args.train_subset} training images, "
               f"{args.epochs} student epochs, seed {args.seed}; total {time.time() - begin:.0f} s")
    print("\n" + table + "\n\n" + summary)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table + "\n\n" + summary + "\n")


if __name__ == "__main__":
    run_cli(main)
