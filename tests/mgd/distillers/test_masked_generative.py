"""Masked Generative Distillation (Yang et al., ECCV 2022), ``masked_generative``: the loss by hand and against a
float64 transcription of the paper's equations, the authors' settings per task, float32 under autocast, the
masks' reproducibility (seed, step, resume), the contract on torchvision pairs, gradients to the student and to
the generation blocks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import mgd
from mgd.distillers.masked_generative import SETTINGS, MaskedGenerativeDistiller
from mgd.losses.masked_generative import masked_generative_loss, random_mask

from tiny_models import randomize_bn


def identity_generation(channels=1):
    """A generation block whose convs copy their input (a centred 1 per channel, no bias): G(x) = relu(x)."""
    block = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3,
                                                                                            padding=1))
    with torch.no_grad():
        for conv in (block[0], block[2]):
            conv.weight.zero_()
            conv.bias.zero_()
            for c in range(channels):
                conv.weight[c, c, 1, 1] = 1.0
    return block


class Tiny(nn.Module):
    """Two conv stages (stride 1 then 2) whose outputs are the stage positions."""

    def __init__(self, width, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.stage1 = nn.Conv2d(3, width, 3, padding=1)
        self.stage2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * width, 3)

    def forward(self, x):
        x = self.stage2(torch.relu(self.stage1(x)))
        return self.fc(torch.relu(x).mean((2, 3)))


def tiny_pair(**options):
    teacher, student = Tiny(8, 0), Tiny(4, 1)
    d = mgd.build_distiller("masked_generative", teacher, student, teacher_layers=["stage1", "stage2"],
                            student_layers=["stage1", "stage2"], teacher_channels=[8, 16],
                            student_channels=[4, 8], **options)
    return teacher, student, d


def images(n=3, size=8, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ the loss
def test_loss_by_hand():
    """One 2x2 map: the mask hides the 3 (and keeps the -2, which the generation's ReLU then zeroes);
    generated [[1, 0], [0, 4]] against the teacher [[0, 1], [1, 1]]: 1 + 1 + 1 + 9 = 12, times alpha 2, / N 1."""
    s = torch.tensor([[[[1.0, -2.0], [3.0, 4.0]]]])
    t = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 1.0]]]])
    assert masked_generative_loss(s, t, mask, identity_generation(), alpha=2.0).item() == pytest.approx(24.0)
    # two images: the sum over both, divided by N = 2
    s2, t2, m2 = torch.cat([s, s]), torch.cat([t, t + 1]), torch.cat([mask, torch.ones_like(mask)])
    # second image: nothing masked, relu(s) = [[1, 0], [3, 4]] against [[1, 2], [2, 2]]: 0 + 4 + 1 + 4 = 9
    assert masked_generative_loss(s2, t2, m2, identity_generation(), alpha=2.0).item() == pytest.approx(
        2.0 * (12 + 9) / 2)
    with pytest.raises(ValueError, match="one shape"):
        masked_generative_loss(s, torch.zeros(1, 2, 2, 2), mask, identity_generation())


def test_masks_follow_the_authors_comparisons():
    """spatial: (N, 1, H, W), 0 where the draw exceeds 1 - lambda (det/seg code); channel: (N, C, 1, 1), 0 where the
    draw is below lambda (cls code); about lambda of the entries are 0."""
    gen = torch.Generator().manual_seed(4)
    draw = torch.rand((2, 1, 5, 6), generator=torch.Generator().manual_seed(4))
    spatial = random_mask((2, 7, 5, 6), 0.65, "spatial", gen)
    assert spatial.shape == (2, 1, 5, 6) and spatial.dtype == torch.float32
    assert torch.equal(spatial, (draw <= 0.35).float())
    draw = torch.rand((2, 7, 1, 1), generator=torch.Generator().manual_seed(5))
    channel = random_mask((2, 7, 5, 6), 0.15, "channel", torch.Generator().manual_seed(5))
    assert channel.shape == (2, 7, 1, 1) and torch.equal(channel, (draw >= 0.15).float())
    big = random_mask((4, 3, 100, 100), 0.65, "spatial", torch.Generator().manual_seed(0))
    assert 1 - big.mean().item() == pytest.approx(0.65, abs=0.01)
    big = random_mask((400, 100, 1, 1), 0.15, "channel", torch.Generator().manual_seed(0))
    assert 1 - big.mean().item() == pytest.approx(0.15, abs=0.01)
    for bad in (dict(ratio=1.0, kind="spatial"), dict(ratio=0.5, kind="pixel")):
        with pytest.raises(ValueError):
            random_mask((1, 1, 2, 2), **bad)


def float64_transcription(d, s_feats, t_feats, step):
    """Eq. 1-4 of the paper in float64 with the distiller's weights and the step's masks: per distilled stage
    alpha / N * sum (T - W2 * relu(W1 * (align(S) * M) + b1) + b2)^2."""
    shapes = []
    for i in d.stages:
        shapes.append(t_feats[i].shape)
    masks = d.stage_masks(shapes, step)
    total = 0.0
    for mask, i in zip(masks, d.stages):
        s, t = s_feats[i].double(), t_feats[i].double()
        align = d.align[i]
        if isinstance(align, nn.Conv2d):
            s = F.conv2d(s, align.weight.double(), align.bias.double())
        g1, g2 = d.generation[i][0], d.generation[i][2]
        x = s * mask.double()
        x = F.conv2d(torch.relu(F.conv2d(x, g1.weight.double(), g1.bias.double(), padding=1)), g2.weight.double(),
                     g2.bias.double(), padding=1)
        total += d.alpha * ((t - x) ** 2).sum().item() / t.shape[0]
    return total


@pytest.mark.parametrize("mask", ["spatial", "channel"])
def test_the_distillers_terms_are_the_float64_transcription(mask):
    teacher, student, d = tiny_pair(ignore_inds=[], mask=mask, mask_seed=7)
    gen = torch.Generator().manual_seed(1)
    s_feats = [torch.randn(2, 4, 6, 6, generator=gen), torch.randn(2, 8, 3, 3, generator=gen)]
    t_feats = [torch.randn(2, 8, 6, 6, generator=gen), torch.randn(2, 16, 3, 3, generator=gen)]
    d.train()
    for step in range(3):  # each training step its own masks, as the transcription draws them
        got = d.compute_terms(student_features=s_feats, teacher_features=t_feats)["masked_generative"]
        assert got.item() == pytest.approx(float64_transcription(d, s_feats, t_feats, step), rel=1e-5)
    assert int(d.mask_step) == 3
    d.close()


def test_defaults_are_the_authors_per_task_and_given_values_win():
    """classification (yzd-v/MGD's cls configs: 7e-5, 0.15, channel); det=True / detection (RetinaNet: 2e-5, 0.65,
    spatial); segmentation (2e-5, 0.75, spatial)."""
    assert (SETTINGS["classification"].alpha, SETTINGS["classification"].mask_ratio) == (7e-5, 0.15)
    for options, want in (({}, (7e-5, 0.15, "channel")), ({"det": True}, (2e-5, 0.65, "spatial")),
                          ({"task": "detection"}, (2e-5, 0.65, "spatial")),
                          ({"task": "segmentation"}, (2e-5, 0.75, "spatial")),
                          ({"det": True, "alpha": 5e-7, "mask_ratio": 0.45}, (5e-7, 0.45, "spatial")),
                          ({"mask": "spatial"}, (7e-5, 0.15, "spatial"))):
        _, _, d = tiny_pair(**options)
        assert (d.alpha, d.mask_ratio, d.mask) == want, options
        d.close()
    for bad, match in (({"mask_ratio": 1.0}, "mask_ratio"), ({"task": "ocr"}, "task"), ({"mask": "pixel"}, "mask"),
                       ({"alpha": -1.0}, "alpha")):
        with pytest.raises(ValueError, match=match):
            tiny_pair(**bad)


def test_stages_align_and_generation_blocks():
    """Default: the last stage only (the authors' last backbone feature), an align conv where the widths differ, a
    generation block (3x3, ReLU, 3x3) at the teacher's width; ignore_inds [] (d2's): every stage."""
    _, _, d = tiny_pair()
    assert d.stages == [1] and isinstance(d.align[0], nn.Identity) and isinstance(d.generation[0], nn.Identity)
    align, gen = d.align[1], d.generation[1]
    assert (align.in_channels, align.out_channels, align.kernel_size, align.bias is not None) == (8, 16, (1, 1), True)
    assert [type(m) for m in gen] == [nn.Conv2d, nn.ReLU, nn.Conv2d]
    assert all((c.in_channels, c.out_channels, c.kernel_size, c.padding) == (16, 16, (3, 3), (1, 1))
               for c in (gen[0], gen[2]))
    d.close()
    _, _, d = tiny_pair(ignore_inds=[])
    assert d.stages == [0, 1] and isinstance(d.align[0], nn.Conv2d)
    d.close()
    teacher, student = Tiny(8, 0), Tiny(8, 1)  # equal widths: no align conv
    d = mgd.build_distiller("masked_generative", teacher, student, teacher_layers=["stage2"],
                            student_layers=["stage2"], teacher_channels=[16], student_channels=[16])
    assert isinstance(d.align[0], nn.Identity) and d.stages == [0]
    d.close()


def test_the_student_features_are_relud_stage_outputs_and_maps_of_two_sizes_are_pooled():
    teacher, student, d = tiny_pair(mask_seed=0)
    x = images()
    d.eval()
    with torch.no_grad():
        t_feats, _, s_feats, _ = d.run_networks(x)
        assert torch.equal(s_feats[1], torch.relu(student.stage2(torch.relu(student.stage1(x)))))
    assert d.preReLU is False and tiny_pair(relu=False)[2].preReLU is True
    # a teacher map twice the student's: average-pooled to it
    big = [t_feats[0], F.interpolate(t_feats[1], scale_factor=2.0)]
    with torch.no_grad():
        got = d.compute_terms(student_features=s_feats, teacher_features=big)["masked_generative"]
        want = d.compute_terms(student_features=s_feats, teacher_features=[t_feats[0], F.avg_pool2d(big[1], 2)])
    torch.testing.assert_close(got, want["masked_generative"])
    d.close()


# ------------------------------------------------------------------------------------ masks: seed, steps, resume
def test_masks_are_drawn_per_step_from_the_seed_and_a_resume_continues_them():
    x = images()
    _, _, d = tiny_pair(mask_seed=11)
    d.train()
    first = [d.forward_train(x)[1]["masked_generative"] for _ in range(2)]
    state = {k: v.clone() for k, v in d.own_state_dict().items()}  # as a checkpoint holds it (buffers move in place)
    assert int(state["mask_step"]) == 2 and int(state["mask_seed"]) == 11
    third = d.forward_train(x)[1]["masked_generative"]
    d.close()
    # a fresh distiller with another seed and the same weights, given the state: the third step's masks again
    _, _, fresh = tiny_pair(mask_seed=99)
    fresh.load_own_state_dict(state)
    fresh.train()
    assert torch.equal(fresh.forward_train(x)[1]["masked_generative"], third)
    assert int(fresh.mask_step) == 3
    fresh.close()
    assert not torch.equal(first[0], first[1])  # the networks are the same: only the masks moved
    masks = d.stage_masks([(3, 16, 4, 4)], 0), d.stage_masks([(3, 16, 4, 4)], 1)
    assert not torch.equal(masks[0][0], masks[1][0])


def seeded(seed):
    """The distiller built after torch.manual_seed(seed) (as the applications seed before building it)."""
    teacher, student = Tiny(8, 0), Tiny(4, 1)
    torch.manual_seed(seed)
    return mgd.build_distiller("masked_generative", teacher, student, teacher_layers=["stage1", "stage2"],
                               student_layers=["stage1", "stage2"], teacher_channels=[8, 16], student_channels=[4, 8])


def test_the_seed_comes_from_the_global_generator_and_eval_moves_no_mask():
    a, b, c = seeded(3), seeded(3), seeded(4)
    assert int(a.mask_seed) == int(b.mask_seed) != int(c.mask_seed)
    x = images()
    a.eval()
    with torch.no_grad():
        values = [a.forward_train(x)[1]["masked_generative"] for _ in range(2)]
    assert torch.equal(values[0], values[1]) and int(a.mask_step) == 0
    for d in (a, b, c):
        d.close()


# ------------------------------------------------------------------------------------ precision, contract, gradients
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_under_cpu_autocast(dtype):
    """Features under autocast are low precision; the term is computed in float32 from them: equal to the float32
    computation on the same values (the same masks: eval mode's fixed stream)."""
    teacher, student, d = tiny_pair(ignore_inds=[])
    x = images()
    d.eval()
    with torch.autocast("cpu", dtype=dtype):
        t_feats, _, s_feats, _ = d.run_networks(x)
        got = d.compute_terms(student_features=s_feats, teacher_features=t_feats)["masked_generative"]
    assert s_feats[1].dtype == dtype and got.dtype == torch.float32 and torch.isfinite(got)
    want = d.compute_terms(student_features=[f.float() for f in s_feats],
                           teacher_features=[f.float() for f in t_feats])["masked_generative"]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    d.close()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_loss_itself_computes_in_float32_from_low_precision_features(dtype):
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 3, 4, 4, generator=gen).to(dtype), torch.randn(2, 3, 4, 4, generator=gen).to(dtype)
    mask = random_mask(s.shape, 0.5, "spatial", gen)
    block = identity_generation(3)
    with torch.no_grad():
        block[0].weight.add_(0.1 * torch.randn(block[0].weight.shape, generator=gen))
    with torch.autocast("cpu", dtype=dtype):
        got = masked_generative_loss(s, t, mask, block, alpha=1.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, masked_generative_loss(s.float(), t.float(), mask, block, alpha=1.0))


def _generation_and_align(d):
    return [p for i in d.stages for module in (d.align[i], d.generation[i]) for p in module.parameters()]


@pytest.mark.parametrize("student_arch", ["resnet18", "mobilenet_v2"])
def test_no_option_on_torchvision_resnet50_to(student_arch):
    """mgd.build_distiller("masked_generative", teacher, student) with no option: the contract's step, float32,
    gradients to the student, the align conv and the generation block and none to the teacher; the own state
    restores it; close() leaves no hook."""
    torch.manual_seed(0)
    teacher = randomize_bn(torchvision.models.resnet50(num_classes=4))
    student = getattr(torchvision.models, student_arch)(num_classes=4)
    d = mgd.build_distiller("masked_generative", teacher, student)
    assert isinstance(d, MaskedGenerativeDistiller) and d.stages == [3] and d.task == "classification"
    assert d.align[3].out_channels == 2048 and d.generation[3][0].in_channels == 2048
    x, y = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.arange(2)
    d.train()
    out, losses = d.forward_train(x, y)
    assert set(losses) == {"masked_generative"} and d.task_weight == 1.0
    term = losses["masked_generative"]
    assert term.dim() == 0 and term.dtype == torch.float32 and torch.isfinite(term) and term > 0
    (F.cross_entropy(out, y) + term).backward()
    first = next(p for p in student.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _generation_and_align(d))
    assert all(p.grad is None for p in teacher.parameters())
    learnable = {id(p) for p in d.get_learnable_parameters()}
    assert {id(p) for p in _generation_and_align(d)} <= learnable
    assert not {id(p) for p in teacher.parameters()} & learnable
    state = d.own_state_dict()
    assert not any(k.startswith(("t_net.", "s_net.")) for k in state) and int(state["mask_step"]) == 1
    d.eval()
    with torch.no_grad():
        before = d.forward_train(x, y)[1]["masked_generative"]
    d.close()
    fresh = mgd.build_distiller("masked_generative", teacher, student)
    fresh.load_own_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.forward_train(x, y)[1]["masked_generative"], before)
    fresh.close()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in (*teacher.modules(), *student.modules())
               ) == 0


def test_flags_read_well_and_never_collide_with_mgd():
    from cls import main_mgd
    from mgd.engine.args import distiller_options_from_args, option_flag

    assert mgd.DISTILLERS["masked_generative"] is MaskedGenerativeDistiller
    assert mgd.DISTILLERS["mgd"] is not MaskedGenerativeDistiller
    flags = {option_flag("masked_generative", o) for o in MaskedGenerativeDistiller.cli_options}
    assert flags == {"--masked-generative-alpha", "--masked-generative-mask-ratio", "--masked-generative-mask",
                     "--masked-generative-task", "--masked-generative-relu"}
    args = main_mgd.get_parser().parse_args(["DATA", "--masked-generative-alpha", "2e-5",
                                             "--masked-generative-mask", "spatial"])
    assert distiller_options_from_args("masked_generative", args) == {"alpha": 2e-5, "mask": "spatial"}
    assert "alpha" not in distiller_options_from_args("mgd", args)


def test_seg_takes_the_segmentation_setting_by_default():
    from mgd.engine.args import distiller_options_from_args
    from seg import train as seg_train

    parser = seg_train.get_parser()
    assert distiller_options_from_args("masked_generative", parser.parse_args(["DATA"]))["task"] == "segmentation"
    args = parser.parse_args(["DATA", "--masked-generative-task", "classification"])
    assert distiller_options_from_args("masked_generative", args)["task"] == "classification"
    assert "task" not in distiller_options_from_args("ofd", parser.parse_args(["DATA"]))


def test_det_setting_reaches_the_distiller_through_the_options_d2_passes():
    """d2 passes det=True and ignore_inds (MGD.IGNORE_INDS) to every method that takes them: the detection setting
    on every level."""
    _, _, d = tiny_pair(det=True, ignore_inds=[])
    assert (d.task, d.alpha, d.mask_ratio, d.mask, d.stages) == ("detection", 2e-5, 0.65, "spatial", [0, 1])
    d.close()


def test_replicas_are_refused_like_crds():
    assert MaskedGenerativeDistiller.replica_safe is False and MaskedGenerativeDistiller.dense_outputs is True
    assert np.isclose(SETTINGS["segmentation"].mask_ratio, 0.75)
