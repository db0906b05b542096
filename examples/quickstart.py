"""Library quick start on GENERATED data (random images, random labels): shows the API, not accuracy.

A torchvision ResNet-50-style teacher (one bottleneck per stage) distils a ResNet-18-style student
(one basic block per stage) with MGD-AMP + KD: one matching update before training, a few SGD steps with
the loss parts printed, and a second matching update. Runs in seconds on a CPU.
"""
import logging
import time

import torch
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import mgd


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.manual_seed(0)
    teacher = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)  # stages 256-512-1024-2048 channels
    student = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)  # stages 64-128-256-512 channels
    images = torch.randn(64, 3, 64, 64)
    labels = torch.randint(0, 10, (64,))
    loader = [(images[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]

    distiller = mgd.MGDistiller(teacher, student, reducer="amp", with_kd=True)
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.01, momentum=0.9)
    loss_factor = 1e4  # the original's value at 224 px; pick it so the distill term starts near the task loss
    mgd.mgd_update(loader, distiller)
    start = time.time()
    for step in range(12):
        x, y = loader[step % len(loader)]
        distiller.train()
        logits, (loss_distill, loss_kd) = distiller(x)
        ce = torch.nn.functional.cross_entropy(logits, y)
        distill = loss_distill / x.shape[0] / loss_factor
        loss = ce + loss_kd + distill
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 3 == 0:
            print(f"step {step:2d}  cross-entropy {ce.item():.3f}  kd {loss_kd.item():.3f}  "
                  f"distill {distill.item():.3f}")
        if step == 5:
            mgd.mgd_update(loader, distiller)  # the periodic re-matching (every N epochs in real training)
    print(f"done in {time.time() - start:.1f} s; matching updated {int(distiller.num_updates)} times; "
          f"stage-3 guided indices (first 8): {distiller.guided_inds[3][:8].tolist()}")
    print("This run used generated data. For real data see the README (classification, detection, MoCo).")


if __name__ == "__main__":
    main()
