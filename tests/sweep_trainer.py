"""A stand-in training script for the sweep's tests: the training scripts' conventions (``--print-config`` as
``key: value  # source`` lines, ``--output-dir``, ``--seed``, a one-line ``error:`` with exit 2) and a
``log.jsonl`` with one record per epoch whose ``top1`` is a known function of the flags; it imports neither
torch nor mgd, so a run takes a fraction of a second (``--sleep`` slows its epochs down, so that a test can
interrupt a trial in the middle).

    top1 at epoch e = 50 + 40 * alpha - 10 * |log10(lr) + 1| + e + seed / 10

Every start appends ``alpha lr seed`` to ``--starts`` (when given), so a test can count the runs."""
import argparse
import json
import math
import os
import sys
import time


def main(argv=None):
    p = argparse.ArgumentParser(prog="sweep_trainer.py")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="out")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per epoch")
    p.add_argument("--starts", default=None, help="a file each start appends its flags to")
    p.add_argument("--print-config", action="store_true")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.print_config:
        for key, value in vars(args).items():
            if key != "print_config":
                flag = "--" + key.replace("_", "-")
                given = any(a == flag or a.startswith(flag + "=") for a in argv)
                print(f"{flag[2:]}: {value}  # {'command line' if given else 'default'}")
        return 0
    if args.lr <= 0:
        print("sweep_trainer.py: error: --lr must be positive", file=sys.stderr)
        return 2
    if args.starts:
        with open(args.starts, "a") as f:
            f.write(f"{args.alpha:g} {args.lr:g} {args.seed}\n")
    os.makedirs(args.output_dir, exist_ok=True)
    best = -math.inf
    for epoch in range(args.epochs):
        time.sleep(args.sleep)
        top1 = 50 + 40 * args.alpha - 10 * abs(math.log10(args.lr) + 1) + epoch + args.seed / 10
        best = max(best, top1)
        with open(os.path.join(args.output_dir, "log.jsonl"), "a") as f:
            f.write(json.dumps({"epoch": epoch, "top1": top1, "best_top1": best}) + "\n")
        print(f"epoch {epoch}: top1 {top1:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
