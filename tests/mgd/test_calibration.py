"""mgd.calibrate_loss_factor and loss_factor="auto": the distillation term starts at the asked multiple of
the task loss, the same on every rank, and a resumed run keeps its factor."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import mgd
from mgd.calibration import calibrate_loss_factor

from tiny_models import randomize_bn, tiny_resnet


class KnownRatio(nn.Module):
    """A stand-in distiller whose raw distillation term is 40 per image and whose cross-entropy is log(4)
    (uniform logits over 4 classes): the factor for ratio r is 40 / (r log 4)."""
    factor_terms = ("distill",)

    def __init__(self):
        super().__init__()
        self.s_net = nn.BatchNorm1d(4)
        self.register_buffer("anchor", torch.zeros(()))
        self.loss_factor = 7.0

    def forward_train(self, images, target):
        self.s_net(images.flatten(1)[:, :4])  # moves the running statistics, which calibration restores
        logits = torch.zeros(images.shape[0], 4)
        return logits, {"distill": torch.tensor(40.0) / self.loss_factor, "kd": torch.tensor(1e9)}


def _batches(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen)) for _ in range(n)]


def test_the_factor_makes_the_distillation_term_start_at_ratio_times_the_task_loss():
    d = KnownRatio()
    before = d.s_net.running_mean.clone()
    factor = calibrate_loss_factor(d, _batches(), ratio=0.5)
    assert factor == pytest.approx(40 / (0.5 * math.log(4)), rel=1e-6)  # "kd" (not factor-scaled) ignored
    assert d.loss_factor == 7.0 and torch.equal(d.s_net.running_mean, before)  # nothing left changed
    assert calibrate_loss_factor(d, _batches(), ratio=2.0, max_images=4) == pytest.approx(40 / (2 * math.log(4)))
    with pytest.raises(ValueError, match="saw no images"):
        calibrate_loss_factor(d, [], ratio=1.0)
    with pytest.raises(ValueError, match="ratio must be a positive number"):
        calibrate_loss_factor(d, _batches(), ratio=0)


def test_another_task_loss_or_measurement():
    d = KnownRatio()
    twice_ce = calibrate_loss_factor(d, _batches(), ratio=0.5,
                                     task_loss=lambda out, y: 2 * nn.functional.cross_entropy(out, y))
    assert twice_ce == pytest.approx(40 / (0.5 * 2 * math.log(4)), rel=1e-6)
    seen = []

    def measure(batch):  # a detector-style measurement: (distillation term, task loss, images) per batch
        seen.append(d.loss_factor)
        return 3.0, 1.5, batch[0].shape[0]
    assert calibrate_loss_factor(d, _batches(), ratio=0.5, measure=measure) == pytest.approx(4.0)
    assert seen == [1.0, 1.0, 1.0] and d.loss_factor == 7.0  # measured at factor 1, then put back


def test_calibration_leaves_the_distillers_own_norm_statistics_alone():
    """OFD's connectors (conv + BN on the student side) run in training mode during the measurement; their
    running statistics, like the student's, are put back, and so is every other state but the factor."""
    torch.manual_seed(0)
    loader = [(x, y) for x, y in zip(torch.randn(2, 8, 3, 32, 32), torch.randint(0, 10, (2, 8)))]
    d = mgd.build_distiller("ofd", randomize_bn(tiny_resnet(True)), tiny_resnet(False), loss_factor="auto",
                            calibration_task_loss=lambda out, y: nn.functional.cross_entropy(out, y) + 1.0)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    d.prepare(loader, epoch=0)
    after = d.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["calibrated_loss_factor"] and any("running_mean" in k for k in before if "connector" in k)


@pytest.mark.parametrize("name", ["mgd", "ofd"])
def test_auto_is_measured_by_prepare_and_kept_in_the_state(name):
    torch.manual_seed(0)
    teacher = randomize_bn(tiny_resnet(True))
    loader = [(x, y) for x, y in zip(torch.randn(2, 8, 3, 32, 32), torch.randint(0, 10, (2, 8)))]
    d = mgd.build_distiller(name, teacher, tiny_resnet(False), loss_factor="auto", loss_ratio=0.25)
    assert d.prepare_due(0) and d.needs_calibration
    with pytest.raises(RuntimeError, match="not calibrated yet" if name == "ofd" else "no channel matching yet"):
        d.forward_train(*loader[0])
    d.prepare(loader, epoch=0)
    assert not d.needs_calibration and math.isfinite(d.loss_factor) and d.loss_factor > 0
    assert d.prepare_summary()["loss_factor"] == d.loss_factor
    d.train()
    distill, ce = [], []
    with torch.no_grad():
        for images, target in loader:  # the images it was measured on, at the factor it found
            logits, terms = d.forward_train(images, target)
            distill.append(terms[d.factor_terms[0]].item())
            ce.append(nn.functional.cross_entropy(logits, target).item())
    assert sum(distill) / sum(ce) == pytest.approx(0.25, rel=1e-4)  # the term starts at 0.25 x the CE
    resumed = mgd.build_distiller(name, teacher, tiny_resnet(False), loss_factor="auto", loss_ratio=0.25)
    resumed.load_own_state_dict(d.own_state_dict())
    assert resumed.loss_factor == d.loss_factor and not resumed.needs_calibration  # not measured again
    fixed = mgd.build_distiller(name, teacher, tiny_resnet(False), loss_factor=1e4)
    assert not fixed.needs_calibration and fixed.prepare_due(0) == (name == "mgd")  # MGD: only its matching
    with pytest.raises(ValueError, match="positive number or 'auto'"):
        mgd.build_distiller(name, teacher, tiny_resnet(False), loss_factor="big")


def _rank(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        mine = _batches(n=1 + rank, seed=rank)  # other data and another number of images on each rank
        torch.save(calibrate_loss_factor(KnownRatio(), mine, task_loss=_task_loss(rank), ratio=1.0),
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _task_loss(rank):
    return lambda logits, target: torch.tensor(1.0 + rank)  # rank 0: 1 on 4 images, rank 1: 2 on 8 images


def test_every_rank_gets_the_same_factor_from_all_their_images(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    factors = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert factors[0] == factors[1] == pytest.approx(40 / ((1 * 4 + 2 * 8) / 12))
