"""Overhead of one MGD training step over plain "teacher forward + student training step".

    python benchmarks/bench_train_step.py [--batch 8 --size 224 --repeat 5]

Teacher ResNet-50, student MobileNet-V1 (cls/models), CPU. Baseline: the teacher's no-grad forward (which
distillation needs anyway, e.g. for KD) plus the student's forward, cross-entropy, backward and SGD step.
MGD: the same through MGDistiller (hook capture, student-side BN, AMP reduction, partial L2 on 4 stages).
"""
import argparse
import os
import sys

import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import best_of  # noqa: E402

import mgd  # noqa: E402
from cls.models import build_model, stage_specs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = torchvision.models.resnet50().eval()
    student = build_model("mobilenet_v1", 1000)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    distiller = mgd.MGDistiller(teacher, student, student_layers=stage_specs(student))
    mgd.mgd_update([x], distiller)
    distiller.train()
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()

    def baseline():
        with torch.no_grad():
            teacher(x)
        loss = criterion(student(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def with_mgd():
        out, loss_distill = distiller(x)
        loss = criterion(out, y) + loss_distill / args.batch / 1e4
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.size} px, ResNet-50 -> MobileNet-V1")
    times = {}
    for _ in range(2):  # interleaved rounds: both sides see the same machine state
        times.setdefault("base", []).append(best_of(baseline, args.repeat))
        times.setdefault("mgd", []).append(best_of(with_mgd, args.repeat))
    base, ours = min(times["base"]), min(times["mgd"])
    print(f"teacher no-grad forward + student step  {base * 1e3:8.1f} ms")
    print(f"MGD step (all of the above + MGD)       {ours * 1e3:8.1f} ms")
    print(f"overhead ratio {ours / base:.3f}  (target <= 1.10, goal <= 1.05)")


if __name__ == "__main__":
    main()
