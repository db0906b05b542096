"""Overhead of one MGD segmentation step over plain "teacher forward + student training step", and the peak
memory of both.

    python benchmarks/bench_seg_step.py [--batch 2 --size 513 --repeat 3 --method mgd]

OFD's segmentation setting: DeepLabV3+ ResNet-101 teacher, DeepLabV3+ ResNet-18 student (seg/models.py),
output stride 16, 513 px crops, 21 classes, batch 2, CPU. Baseline: the teacher's no-grad forward (which any
distillation needs) plus the student's forward, per-pixel cross-entropy, backward and SGD step. Distillation:
the same through the one contract (``forward_train``: hook capture at the six positions of
seg/positions.py, the student-side BNs, AMP reduction, partial L2 in float32, seg/train.py's weights and
loss factor). Times are the best of interleaved rounds (median of ``--repeat`` steps each). Peak memory: the
peak resident set size of a fresh process that builds both networks, runs one step of one kind, resets the
kernel's peak (``/proc/self/clear_refs``) and runs a second: the peak of a training step, not of the set-up
(the first matching's cost matrices, built by both sides' set-up, would otherwise set both figures; on the
CPU, torch's allocations are not visible to tracemalloc).
"""
import argparse
import json
import os
import resource
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Results, add_save_argument, best_of  # noqa: E402

import mgd  # noqa: E402
from seg.losses import seg_cross_entropy  # noqa: E402
from seg.models import build_model  # noqa: E402
from seg.positions import pair_positions, stage_weights  # noqa: E402

TEACHER, STUDENT, CLASSES = "deeplabv3plus_resnet101", "deeplabv3plus_resnet18", 21


def setup(args):
    """(baseline step, distillation step, distiller) on fresh networks."""
    torch.manual_seed(0)
    teacher, student = build_model(TEACHER, CLASSES).eval(), build_model(STUDENT, CLASSES)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, CLASSES, (args.batch, args.size, args.size))
    y[:, :8] = 255
    method = mgd.DISTILLERS[args.method]
    names, t_specs, s_specs = pair_positions(teacher, student, "all", method.wider_teacher)
    distiller = mgd.build_distiller(args.method, teacher, student, teacher_layers=t_specs, student_layers=s_specs,
                                    stage_weights=stage_weights(names), loss_factor=1e5)
    distiller.prepare([x[:1]])
    distiller.train()
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.01, momentum=0.9)

    def baseline():
        with torch.no_grad():
            teacher(x)
        loss = seg_cross_entropy(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def distil():
        out, losses = distiller.forward_train(x, y)
        loss = seg_cross_entropy(out, y) + sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return baseline, distil, distiller


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: 5 > /proc/self/clear_refs); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """VmHWM, the peak RSS since the last reset, in MiB."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def peak_memory(args, side: str) -> float:
    """Peak RSS (MiB) of a fresh process running two steps of ``side``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--batch", str(args.batch), "--size", str(args.size),
           "--method", args.method, "--memory-of", side]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ)).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if not result["step_only"]:
        print(f"note: the peak RSS could not be reset here (no /proc/self/clear_refs): the {side} figure is the "
              f"whole process's, set-up included")
    return result["peak_mib"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--method", default="mgd", choices=["mgd", "ofd"])
    parser.add_argument("--memory-of", choices=["base", "distil"], help=argparse.SUPPRESS)
    add_save_argument(parser)
    args = parser.parse_args()
    if args.memory_of:
        baseline, distil, _ = setup(args)
        step = baseline if args.memory_of == "base" else distil
        step()
        step_peak = reset_peak_rss()
        step()
        print(json.dumps({"peak_mib": peak_rss_mib() if step_peak else
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "step_only": step_peak}))
        return
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.size} px, {TEACHER} -> {STUDENT}, "
          f"{args.method} at 6 positions")
    baseline, distil, distiller = setup(args)
    times = {"base": [], "distil": []}
    for _ in range(2):  # interleaved rounds: both sides see the same machine state
        times["base"].append(best_of(baseline, args.repeat))
        times["distil"].append(best_of(distil, args.repeat))
    distiller.close()
    base, ours = min(times["base"]), min(times["distil"])
    mem_base, mem_ours = peak_memory(args, "base"), peak_memory(args, "distil")
    results = Results(["step", "time", "peak RSS"])
    results.header()
    results.add("teacher forward + student step", f"{base * 1e3:.0f} ms", f"{mem_base:.0f} MiB")
    results.add(f"{args.method} step", f"{ours * 1e3:.0f} ms", f"{mem_ours:.0f} MiB")
    results.note(f"Overhead ratio {ours / base:.3f} (target <= 1.10), memory ratio {mem_ours / mem_base:.3f}.")
    results.save(args, f"{TEACHER} -> {STUDENT}, batch {args.batch}, {args.size} px, {args.method} at 6 positions")


if __name__ == "__main__":
    main()
