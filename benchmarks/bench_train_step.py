"""Overhead of one MGD training step over plain "teacher forward + student training step".

    python benchmarks/bench_train_step.py [--batch 8 --size 224 --repeat 5 --amp bfloat16]

Teacher ResNet-50, student MobileNet-V1 (cls/models), CPU. Baseline: the teacher's no-grad forward (which
distillation needs anyway, e.g. for KD) plus the student's forward, cross-entropy, backward and SGD step.
MGD: the same through the one contract (``forward_train``: hook capture, student-side BN, AMP reduction,
partial L2 on 4 stages in float32). ``--amp`` runs both sides under autocast with that dtype (on the CPU:
bfloat16, or float16 with a GradScaler), as cls/main_mgd.py --amp does; the default prints float32 and
bfloat16 one after the other.
"""
import argparse
import os
import sys

import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Results, add_save_argument, best_of  # noqa: E402

import mgd  # noqa: E402
from cls.models import build_model, stage_specs  # noqa: E402
from mgd.engine import Precision  # noqa: E402


def measure(args, amp_dtype):
    torch.manual_seed(0)
    teacher = torchvision.models.resnet50().eval()
    student = build_model("mobilenet_v1", 1000)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    distiller = mgd.build_distiller("mgd", teacher, student, student_layers=stage_specs(student))
    distiller.prepare([x])
    distiller.train()
    precision = Precision(amp_dtype is not None, amp_dtype, torch.device("cpu"))
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()

    def baseline():
        with precision.autocast():
            with torch.no_grad():
                teacher(x)
            loss = criterion(student(x).float(), y)
        precision.backward_step(loss, optimizer)

    def with_mgd():
        with precision.autocast():
            out, losses = distiller.forward_train(x, y)
            loss = criterion(out.float(), y) + sum(losses.values())
        precision.backward_step(loss, optimizer)

    times = {}
    for _ in range(2):  # interleaved rounds: both sides see the same machine state
        times.setdefault("base", []).append(best_of(baseline, args.repeat))
        times.setdefault("mgd", []).append(best_of(with_mgd, args.repeat))
    distiller.close()
    return min(times["base"]), min(times["mgd"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--amp", nargs="*", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"], help="precisions to measure")
    add_save_argument(parser)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.size} px, ResNet-50 -> MobileNet-V1")
    results = Results(["threads", "precision", "teacher forward + student step", "MGD step", "overhead ratio"])
    results.header()
    for name in args.amp:
        base, ours = measure(args, None if name == "float32" else name)
        results.add(torch.get_num_threads(), name, f"{base * 1e3:.1f} ms", f"{ours * 1e3:.1f} ms", f"{ours / base:.3f}")
    results.save(args, f"ResNet-50 -> MobileNet-V1, batch {args.batch}, {args.size} px; goal: overhead ratio <= 1.05")


if __name__ == "__main__":
    main()
