"""One MGD-AMP stage forward and the cost tracking: mgd vs the original formulation, side by side.

    python benchmarks/bench_reducer.py [--batch 32 --sc 512 --tc 1024 --size 14]

Stage forward = student-side BN + channel reduction + partial L2 loss, with autograd on (training).
The baseline is the original's: a Python loop over the groups, torch.stack, argmax over the group
dimension and gather; the loss with mse_loss, a float mask and a sum. Cost tracking: the original's
(B, sc, tc) bmm + sum over the batch versus one GEMM.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from common import Results, add_save_argument, best_of, report  # noqa: E402

from mgd.matching import batch_cost_sum  # noqa: E402
from mgd.builder import stage_loss  # noqa: E402
from mgd.matching.reducers import amp  # noqa: E402


def original_amp(t_feat, margins, guided, sc):
    b, tc, h, w = t_feat.shape
    groups = tc // sc
    t, m = [], []
    for c in range(0, tc, sc):
        t.append(t_feat[:, guided[c:c + sc], :, :])
        m.append(margins[:, guided[c:c + sc], :, :])
    t = torch.stack(t, dim=2).reshape(b, sc, groups, -1)
    m = torch.stack(m, dim=2).reshape(1, sc, groups, -1)
    inds = torch.argmax(torch.abs(t), dim=2)
    t = t.gather(2, inds.unsqueeze(2))
    return t.reshape(b, sc, h, w), m.mean(dim=2).reshape(1, sc, 1, 1)


def original_loss(source, target, margin):
    target = torch.max(target, margin)
    loss = F.mse_loss(source, target, reduction="none")
    loss = loss * ((source > target) | (target > 0)).float()
    return loss.sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sc", type=int, default=512)
    parser.add_argument("--tc", type=int, default=1024)
    parser.add_argument("--size", type=int, default=14)
    parser.add_argument("--repeat", type=int, default=7)
    add_save_argument(parser)
    args = parser.parse_args()
    results = Results(["what", "original formulation", "mgd", "speed-up"])
    b, sc, tc, hw = args.batch, args.sc, args.tc, args.size
    print(f"threads {torch.get_num_threads()}, B={b}, sc={sc}, tc={tc}, {hw}x{hw}")
    s_feat = torch.randn(b, sc, hw, hw, requires_grad=True)
    t_feat = torch.randn(b, tc, hw, hw)
    margin = -torch.rand(tc)
    guided = torch.randperm(tc)
    bn = nn.BatchNorm2d(sc)

    def baseline():
        s = bn(s_feat)
        with torch.no_grad():
            t, m = original_amp(t_feat, margin.view(1, -1, 1, 1), guided, sc)
        return original_loss(s, t.detach(), m)

    def ours():
        return stage_loss(bn, s_feat, t_feat, margin, guided, sc, amp)

    torch.testing.assert_close(ours(), baseline(), rtol=1e-4, atol=1e-2)
    report("MGD-AMP stage forward (BN + reduce + loss)", best_of(baseline, args.repeat),
           best_of(ours, args.repeat), target=8, results=results)

    def forward_backward(fn):
        return lambda: fn().backward()
    report("same, forward + backward", best_of(forward_backward(baseline), args.repeat),
           best_of(forward_backward(ours), args.repeat), results=results)

    s_n, t_n = torch.randn(b, sc, hw, hw), torch.randn(b, tc, hw, hw)

    def original_tracking():
        s = F.normalize(s_n.reshape(b, sc, -1), p=2, dim=2)
        t = F.normalize(t_n.reshape(b, tc, -1), p=2, dim=2)
        return (2 - 2 * torch.bmm(s, t.transpose(1, 2))).sum(dim=0).cpu().numpy()

    torch.testing.assert_close(batch_cost_sum(s_n, t_n).float(), torch.from_numpy(original_tracking()),
                               rtol=1e-4, atol=1e-2)
    report("cost tracking (one GEMM vs bmm + sum)", best_of(original_tracking, args.repeat),
           best_of(lambda: batch_cost_sum(s_n, t_n), args.repeat), target=2, results=results)
    results.save(args, f"B={b}, {sc} <- {tc} channels, {hw}x{hw}")


if __name__ == "__main__":
    main()
