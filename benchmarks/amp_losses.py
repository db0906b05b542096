"""Every method's loss in float32, and under float16 / bfloat16 autocast, on the same input batch.

    python benchmarks/amp_losses.py [--batch 8 --size 224]

Teacher ResNet-50 (random weights with randomised BN statistics, as a trained network has), student
ResNet-18, one batch of random images, CPU autocast. Two comparisons per method and dtype:

* "same input": the networks' outputs rounded to the dtype, handed to the losses under autocast, against
  the float32 computation of exactly those values: what the losses themselves do in mixed precision;
* "end to end": the whole forward_train under autocast (networks in half precision too) against float32.

It also prints what summing one stage's partial L2 in float16 gives (the overflow mgd's losses avoid).
"""
import argparse
import os
import sys

import torch
import torchvision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import mgd  # noqa: E402
from mgd.losses.ofd import distillation_loss  # noqa: E402
from common import Results, add_save_argument  # noqa: E402
from tiny_models import randomize_bn  # noqa: E402

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
#: What a method needs on this pair of classifiers: CRD a memory without the training set's size (a queue).
PAIR_OPTIONS = {"crd": {"memory": "queue"}}


def rounded(value, dtype, grad):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(dtype).requires_grad_(grad)
    if isinstance(value, (list, tuple)):
        return [rounded(v, dtype, grad) for v in value]
    return value


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    add_save_argument(p)
    args = p.parse_args()
    torch.manual_seed(0)
    classes = args.batch  # one image of every class: KD++'s class means need them all
    teacher = randomize_bn(torchvision.models.resnet50(num_classes=classes))
    student = randomize_bn(torchvision.models.resnet18(num_classes=classes), seed=1)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.arange(args.batch)
    print(f"ResNet-50 -> ResNet-18, batch {args.batch}, {args.size} px, CPU autocast; relative differences to float32")
    results = Results(["method", "term", "float32", "float16 same input", "float16 end to end",
                       "bfloat16 same input", "bfloat16 end to end"])
    results.header()
    for name in sorted(n for n, cls in mgd.DISTILLERS.items() if cls.needs_teacher):  # none has no term
        try:
            d = mgd.build_distiller(name, teacher, student, **PAIR_OPTIONS.get(name, {}))
        except ValueError as exc:  # a method for other networks (deit: a ViT student)
            results.note(f"{name}: not on this pair ({exc}).")
            continue
        if d.prepare_due(0):
            d.prepare([(x, y)])
        d.train()
        with torch.no_grad():
            outputs = d.run_networks(x)
            _, full = d.forward_train(x, y)
        cells = {}
        for label, dtype in DTYPES.items():
            half = [rounded(v, dtype, False) for v in outputs]
            exact = [rounded(v, torch.float32, False) for v in half]
            run = d.run_networks
            with torch.no_grad():
                d.run_networks = lambda images: exact
                torch.manual_seed(4)
                _, reference = d.forward_train(x, y)
                d.run_networks = lambda images: half
                torch.manual_seed(4)
                with torch.autocast("cpu", dtype=dtype):
                    _, same = d.forward_train(x, y)
                d.run_networks = run
                with torch.autocast("cpu", dtype=dtype):
                    _, e2e = d.forward_train(x, y)
            for k in full:
                cells.setdefault(k, []).extend([same[k].item() / reference[k].item() - 1,
                                                e2e[k].item() / full[k].item() - 1])
        for k, (s16, e16, sb, eb) in cells.items():
            results.add(name, k, f"{full[k].item():.6g}", f"{s16:+.1e}", f"{e16:+.1e}", f"{sb:+.1e}", f"{eb:+.1e}")
        d.close()
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(32, 256, 14, 14, generator=gen) * 2).half()
    t = torch.randn(32, 256, 14, 14, generator=gen).half()
    m = -torch.rand(256, generator=gen)
    target = torch.maximum(t, m.half().view(1, -1, 1, 1))
    naive = (((s - target) ** 2) * ((s > target) | (target > 0))).sum()
    results.note(f"One 32x256x14x14 stage: partial L2 summed in float16 = {naive.item()}; mgd (float32 sum) = "
                 f"{distillation_loss(s, t, m).item():.6g}; float32 inputs = "
                 f"{distillation_loss(s.float(), t.float(), m).item():.6g}.")
    results.save(args, f"ResNet-50 -> ResNet-18, batch {args.batch}, {args.size} px, CPU autocast; relative "
                       "differences to float32")


if __name__ == "__main__":
    main()
