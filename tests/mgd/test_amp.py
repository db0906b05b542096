"""Mixed precision: every distillation loss is computed and summed in float32 whatever the autocast dtype,
and its gradient reaches the student in the student's dtype (CPU autocast, float16 and bfloat16)."""
import inspect

import pytest
import torch

import mgd
import mgd.distillers
from mgd.distillers import build_distiller
from mgd.losses.ofd import distillation_loss

from tiny_models import randomize_bn, tiny_resnet

DTYPES = [torch.float16, torch.bfloat16]
#: every method with a term to compute (plain training, "none", has none) on a CNN student (DeiT's two-headed
#: ViT student: tests/mgd/distillers/test_deit.py)
DISTILLING = sorted(name for name, cls in mgd.DISTILLERS.items() if cls.needs_teacher and cls.student_heads == 1)


#: the options a method cannot do without (CRD's memory bank has a row per training sample)
OPTIONS = {"crd": {"num_samples": 32, "num_negatives": 8}}


def indices(d):
    """What forward_train takes besides images and labels: the samples' indices for CRD's memory bank."""
    return {"indices": torch.arange(4)} if d.needs_indices else {}


def prepared(name):
    torch.manual_seed(0)
    d = build_distiller(name, randomize_bn(tiny_resnet(True, 4)), randomize_bn(tiny_resnet(False, 4), seed=1),
                        **OPTIONS.get(name, {}))
    d.set_epoch(30)  # past every warm-up
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.arange(4)
    if d.prepare_due(0):
        d.prepare([(x, y)])
    return d.train(), x, y


def cast(value, dtype, grad=False):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().to(dtype).requires_grad_(grad)
    if isinstance(value, (list, tuple)):
        return [cast(v, dtype, grad) for v in value]
    return value  # None (no features)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", DISTILLING)
def test_every_loss_in_float32_on_the_same_half_precision_input(name, dtype, monkeypatch):
    """forward_train under autocast, handed what autocast makes of the networks' outputs (float16 / bfloat16
    tensors), gives the float32 computation on the same values: finite and within 1 % (in fact 1e-4)."""
    d, x, y = prepared(name)
    with torch.no_grad():
        outputs = d.run_networks(x)  # (teacher feats, teacher out, student feats, student out)
    half = [cast(v, dtype, grad=i >= 2) for i, v in enumerate(outputs)]  # the student's carry gradients
    exact = [cast(v, torch.float32, grad=i >= 2) for i, v in enumerate(half)]  # the same values, in float32
    if not d.replica_safe:
        d.eval()  # CRD's memory, masked_generative's mask count move at every training step: both computations
        # must see the same one
    monkeypatch.setattr(d, "run_networks", lambda images: exact)
    torch.manual_seed(4)
    _, reference = d.forward_train(x, y, **indices(d))
    monkeypatch.setattr(d, "run_networks", lambda images: half)
    torch.manual_seed(4)
    with torch.autocast("cpu", dtype=dtype):
        _, losses = d.forward_train(x, y, **indices(d))
    assert set(losses) == set(reference)
    for k, v in losses.items():  # within 1 % is the requirement; in fact within 1e-4
        assert v.dtype == torch.float32 and torch.isfinite(v), (k, v)
        assert v.item() == pytest.approx(reference[k].item(), rel=1e-4), k
    sum(losses.values()).backward()
    sum(reference.values()).backward()
    student = [(h, e) for h, e in zip((half[2] or []) + [half[3]], (exact[2] or []) + [exact[3]]) if h.grad is not None]
    assert student  # features (None for logit methods) and output
    for h, e in student:  # the float32 gradient, rounded once to the student's dtype
        assert h.grad.dtype == dtype and torch.isfinite(h.grad).all()
        torch.testing.assert_close(h.grad.float(), e.grad.to(dtype).float(), rtol=0, atol=1e-6 * float(e.grad.abs().max()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", DISTILLING)
def test_forward_train_under_autocast_is_finite_and_sends_half_precision_gradients(name, dtype):
    d, x, y = prepared(name)
    with torch.autocast("cpu", dtype=dtype):
        logits, losses = d.forward_train(x, y, **indices(d))
        loss = torch.nn.functional.cross_entropy(logits, y) + sum(losses.values())
    assert logits.dtype == dtype
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    loss.backward()
    grads = [p.grad for p in d.get_learnable_parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_feature_losses_under_autocast_stay_within_one_percent_of_float32(dtype):
    """End to end (networks in half precision too): the partial-L2 methods stay within 1 %."""
    for name in ("mgd", "ofd", "sm"):
        d, x, y = prepared(name)
        _, full = d.forward_train(x, y)
        with torch.autocast("cpu", dtype=dtype):
            _, mixed = d.forward_train(x, y)
        for k in full:
            assert mixed[k].item() == pytest.approx(full[k].item(), rel=1e-2), (name, k)


def test_summed_partial_l2_of_an_ordinary_stage_does_not_overflow_float16():
    """One stage of 32 x 256 x 14 x 14 values of order 1: the sum (~1.6e6) is far above float16's 65504."""
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(32, 256, 14, 14, generator=gen) * 2).half().requires_grad_()
    teacher = torch.randn(32, 256, 14, 14, generator=gen).half()
    margin = -torch.rand(256, generator=gen)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = distillation_loss(student, teacher, margin)
    reference = distillation_loss(student.detach().float().requires_grad_(), teacher.float(), margin)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and loss.item() > 1e6
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    loss.backward()
    assert student.grad.dtype == torch.float16 and torch.isfinite(student.grad).all()
    naive = ((student.detach() - torch.maximum(teacher, margin.half().view(1, -1, 1, 1))) ** 2).sum()
    assert not torch.isfinite(naive)  # what summing in float16 would have given


def _small_conv_pair(track_in_autocast=None, name="mgd"):
    """Two-stage conv nets (teacher 32-64, student 16-32 channels) with random BNs."""
    def net(c1, c2, seed):
        torch.manual_seed(seed)
        return randomize_bn(torch.nn.Sequential(
            torch.nn.Conv2d(3, c1, 3, padding=1), torch.nn.BatchNorm2d(c1), torch.nn.ReLU(),
            torch.nn.Conv2d(c1, c2, 3, stride=2, padding=1), torch.nn.BatchNorm2d(c2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c2, 4)), seed)
    options = {} if track_in_autocast is None else {"track_in_autocast": track_in_autocast}
    return build_distiller(name, net(32, 64, 0), net(16, 32, 100), teacher_layers=["1", "4"],
                           teacher_bns=["1", "4"], student_layers=["1", "4"], **options)


def _tracked_dtypes(d, x, monkeypatch, dtype=None, **update):
    """(the dtypes of the features the matching statistics were computed from, the guided indices) after one
    matching update, inside the caller's autocast of ``dtype`` (None: none)."""
    from mgd.matching import cost as matching
    seen, cost_sum = [], matching.batch_cost_sum
    monkeypatch.setattr(matching, "batch_cost_sum", lambda s, t: seen.append((s.dtype, t.dtype)) or cost_sum(s, t))
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        mgd.mgd_update([x], d, **update) if update else d.prepare([x])
    monkeypatch.setattr(matching, "batch_cost_sum", cost_sum)
    return set(seen), [g.clone() for g in d.guided_inds]


def test_the_matching_pass_runs_in_float32_under_the_callers_autocast(monkeypatch):
    """Half-precision features change which channels match (ResNet-50 -> MobileNetV2 under bfloat16: 53, 152 and
    440 teacher channels of the three stages got another student, README), so the pass switches autocast off
    unless asked: the statistics come from float32 features and give the float32 matching exactly."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    d = _small_conv_pair()
    assert d.track_in_autocast is False
    full = (torch.float32, torch.float32)
    dtypes, reference = _tracked_dtypes(d, x, monkeypatch)
    assert dtypes == {full}
    dtypes, under_bf16 = _tracked_dtypes(d, x, monkeypatch, torch.bfloat16)
    assert dtypes == {full} and all(torch.equal(a, b) for a, b in zip(reference, under_bf16))
    kept = _small_conv_pair(track_in_autocast=True)  # the caller's autocast: bfloat16 features
    assert _tracked_dtypes(kept, x, monkeypatch, torch.bfloat16)[0] == {(torch.bfloat16, torch.bfloat16)}
    dtypes, overridden = _tracked_dtypes(kept, x, monkeypatch, torch.bfloat16, track_in_autocast=False)
    assert dtypes == {full}  # the call's keyword overrides the distiller's setting
    assert all(torch.equal(a, b) for a, b in zip(reference, overridden))


def test_track_in_autocast_is_an_option_of_both_mgd_calls():
    assert {"track_in_autocast"} <= mgd.distillers.distiller_options("mgd")
    assert {"track_in_autocast"} <= mgd.distillers.distiller_options("sm")
    assert mgd.distillers.option_default("mgd", "track_in_autocast") is False
    param = inspect.signature(mgd.MGDistiller.__init__).parameters["track_in_autocast"]
    assert param.kind is param.KEYWORD_ONLY and param.default is False
    assert _small_conv_pair(track_in_autocast=True, name="sm").track_in_autocast is True
