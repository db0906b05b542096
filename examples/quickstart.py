"""Library quick start on GENERATED data (random images, random labels): shows the API, not accuracy.

A torchvision ResNet-50-style teacher (one bottleneck per stage) distils a ResNet-18-style student
(one basic block per stage) with MGD-AMP + KD through the one contract every mgd method keeps: the
matching is solved when the method asks for it (before epoch 0 and every second epoch here), and each
step adds the method's normalised loss terms to the cross-entropy. Runs in seconds on a CPU.
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

    # loss_factor: the original's 1e4 is for 224 px; pick it so the distill term starts near the task loss
    distiller = mgd.build_distiller("mgd", teacher, student, reducer="amp", with_kd=True, update_freq=2,
                                    loss_factor=1e4)
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), lr=0.01, momentum=0.9)
    start = time.time()
    for epoch in range(3):
        distiller.set_epoch(epoch)  # what warm-ups ramp on (DKD, ReviewKD, KD++); harmless for MGD
        if distiller.prepare_due(epoch):
            distiller.prepare(loader, epoch=epoch)  # MGD: the channel matching
        distiller.train()
        for x, y in loader:
            logits, losses = distiller.forward_train(x, y)
            ce = torch.nn.functional.cross_entropy(logits, y)
            loss = distiller.task_weight * ce + sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch}  cross-entropy {ce.item():.3f}  " +
              "  ".join(f"{k} {v.item():.4f}" for k, v in losses.items()))
    print(f"done in {time.time() - start:.1f} s; matching solved {int(distiller.num_updates)} times; "
          f"stage-3 guided indices (first 8): {distiller.guided_inds[3][:8].tolist()}")
    distiller.close()  # hooks off: the two networks are as they were
    print("This run used generated data. For real data see docs/applications/ (classification, detection, MoCo).")


if __name__ == "__main__":
    main()
