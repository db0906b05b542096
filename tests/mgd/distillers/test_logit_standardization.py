"""Logit standardization (Sun et al., CVPR 2024) as a modifier of the logit methods (``--logit-standardize``):
the z-score by hand, the methods' terms against float64 transcriptions of the paper's pre-process and of each
method's equation, the authors' weights and base temperatures when it is on, float32 under autocast, and, off,
exactly today's terms."""
import math

import numpy as np
import pytest
import torch
import torchvision

import mgd
from mgd.losses import dist_loss, dkd_loss, kd_loss
from mgd.losses.logit_standardization import standardize_logits

from tiny_models import randomize_bn

CLASSES = 5


def logits(seed, n=6, k=CLASSES, scale=3.0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=gen, dtype=torch.float64) * scale).to(dtype)


class Linear(torch.nn.Module):
    """A classifier small enough to read its logits off by hand: one linear layer on flattened 2x2 images."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(12, CLASSES)

    def forward(self, x):
        return self.fc(x.flatten(1))


def pair():
    return Linear(0), Linear(1)


def terms(name, s, t, y=None, **options):
    """The method's terms on given logits (the networks are not run)."""
    d = mgd.build_distiller(name, *pair(), **options)
    d.set_epoch(100)  # past every warm-up
    return d, d.compute_terms(student_logits=s, teacher_logits=t, target=y)


# ------------------------------------------------------------------------------------ float64 transcriptions
def z_score(x):
    """The paper's pre-process as the authors' code computes it, in numpy float64: (x - mean) / (1e-7 + std),
    std over the classes with K - 1 (torch.std)."""
    x = np.asarray(x, np.float64)
    return (x - x.mean(1, keepdims=True)) / (1e-7 + x.std(1, ddof=1, keepdims=True))


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kd64(s, t, temperature):
    """T^2 * mean over samples of KL(softmax(t / T) || softmax(s / T))."""
    p, q = softmax(t / temperature), softmax(s / temperature)
    return temperature ** 2 * float(np.mean(np.sum(p * (np.log(p) - np.log(q)), 1)))


def dkd64(s, t, y, alpha, beta, temperature):
    """DKD's Eq. 7: alpha TCKD (the binary target / rest KL) + beta NCKD (the KL over the non-target classes)."""
    p_t, p_s = softmax(t / temperature), softmax(s / temperature)
    rows = np.arange(len(y))
    b_t = np.stack([p_t[rows, y], 1 - p_t[rows, y]], 1)
    b_s = np.stack([p_s[rows, y], 1 - p_s[rows, y]], 1)
    tckd = np.sum(b_t * (np.log(b_t) - np.log(b_s))) / len(y)
    keep = np.ones_like(p_t, bool)
    keep[rows, y] = False
    n_t = p_t[keep].reshape(len(y), -1)
    n_s = p_s[keep].reshape(len(y), -1)
    n_t, n_s = n_t / n_t.sum(1, keepdims=True), n_s / n_s.sum(1, keepdims=True)
    nckd = np.sum(n_t * (np.log(n_t) - np.log(n_s))) / len(y)
    return temperature ** 2 * (alpha * tckd + beta * nckd)


def pearson_rows(a, b):
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)


def dist64(s, t, beta, gamma, tau):
    y_s, y_t = softmax(s / tau), softmax(t / tau)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.T, y_t.T).mean()
    return tau ** 2 * (beta * inter + gamma * intra)


# ------------------------------------------------------------------------------------ the z-score
def test_standardize_by_hand():
    """[1, 2, 3]: mean 2, unbiased std 1 -> [-1, 0, 1] / (1 + 1e-7); [0, 0, 3]: mean 1, std sqrt(3)."""
    got = standardize_logits(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]))
    root3 = math.sqrt(3.0)
    want = torch.tensor([[-1 / (1 + 1e-7), 0.0, 1 / (1 + 1e-7)],
                         [-1 / (1e-7 + root3), -1 / (1e-7 + root3), 2 / (1e-7 + root3)]])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # a constant row: zeros, not NaN (the 1e-7); fewer than two classes: no standard deviation
    assert torch.equal(standardize_logits(torch.full((1, 4), 3.0)), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="K >= 2"):
        standardize_logits(torch.ones(3, 1))


def test_standardize_is_the_float64_z_score_and_dense_logits_are_standardised_per_position():
    x = logits(0, n=7, k=11)
    np.testing.assert_allclose(standardize_logits(x).numpy(), z_score(x.double().numpy()), rtol=1e-5, atol=1e-6)
    dense = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(2)) * 4
    flat = dense.permute(0, 2, 3, 1).reshape(-1, 4).double().numpy()
    want = z_score(flat).reshape(2, 3, 5, 4).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(standardize_logits(dense).numpy(), want, rtol=1e-5, atol=1e-6)


def test_kd_ls_by_hand():
    """s = [1, 2, 3], t = [0, 0, 3]: z_s = [-1, 0, 1], z_t = [-1, -1, 2] / sqrt(3) (up to the 1e-7); KD+LS is
    9 * 2^2 * KL(softmax(z_t / 2) || softmax(z_s / 2)) and the cross-entropy keeps weight 1."""
    s, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 3.0]])
    z_s = [-1.0, 0.0, 1.0]
    z_t = [-1 / math.sqrt(3), -1 / math.sqrt(3), 2 / math.sqrt(3)]
    e_s, e_t = [math.exp(v / 2) for v in z_s], [math.exp(v / 2) for v in z_t]
    p = [v / sum(e_t) for v in e_t]
    q = [v / sum(e_s) for v in e_s]
    want = 9 * 4 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    d = mgd.build_distiller("kd", torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), logit_standardize=True)
    got = d.compute_terms(student_logits=s, teacher_logits=t)["kd"]
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert d.task_weight == 1.0


# ------------------------------------------------------------------------------------ each method, on and off
@pytest.mark.parametrize("name", ["kd", "dkd", "dist"])
def test_off_the_terms_are_todays_bit_for_bit(name):
    """Without the option (and with it explicitly 0) every method computes what it computed before it existed:
    the same loss call with the same weights, bit for bit, and the same share of the cross-entropy."""
    s, t, y = logits(1), logits(2), torch.tensor([0, 1, 2, 3, 4, 0])
    today = {"kd": lambda: 0.9 * kd_loss(s, t, 4.0),
             "dkd": lambda: 1.0 * dkd_loss(s, t, y, 1.0, 8.0, 4.0),
             "dist": lambda: 1.0 * 2.0 * dist_loss(s, t, 1.0, 1.0, 1.0)}[name]()
    task_weight = {"kd": 0.1, "dkd": 1.0, "dist": 1.0}[name]
    for options in ({}, {"logit_standardize": False}):
        d, out = terms(name, s, t, y, **options)
        assert torch.equal(out[name], today), options
        assert d.task_weight == pytest.approx(task_weight) and not d.logit_standardize


def test_kd_ls_is_the_transcription_with_the_authors_weights():
    """KD+LS: CE (1) + 9 * T^2 KL of the standardised logits at the base temperature 2 (the authors' tools/train.py
    --base-temp 2 --kd-weight 9), against the float64 transcription; given values are kept."""
    s, t = logits(3), logits(4, scale=6.0)
    d, out = terms("kd", s, t, logit_standardize=True)
    assert (d.temperature, d.kd_weight, d.task_weight) == (2.0, 9.0, 1.0)
    want = 9.0 * kd64(z_score(s.numpy()), z_score(t.numpy()), 2.0)
    assert out["kd"].item() == pytest.approx(want, rel=1e-5)
    assert torch.equal(out["kd"], 9.0 * kd_loss(standardize_logits(s), standardize_logits(t), 2.0))
    assert out["kd"].item() != pytest.approx(terms("kd", s, t)[1]["kd"].item(), rel=1e-2)  # it does change the loss
    d, out = terms("kd", s, t, logit_standardize=True, temperature=3.0, kd_weight=1.5)
    assert out["kd"].item() == pytest.approx(1.5 * kd64(z_score(s.numpy()), z_score(t.numpy()), 3.0), rel=1e-5)


def test_kd_ls_is_invariant_to_the_logits_shift_and_scale():
    """What the z-score buys (the paper's point): the student matching the teacher's logits up to a shift and a
    positive scale has a zero KD+LS term, where plain KD does not."""
    t = logits(5)
    s = 0.25 * t + 3.0
    assert terms("kd", s, t, logit_standardize=True)[1]["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms("kd", s, t)[1]["kd"].item() > 0.1


def test_dkd_ls_is_the_transcription_with_the_authors_weights():
    """DKD+LS: alpha 9, beta 72 (DKD's 1 and 8 times --kd-weight 9), T 2, on the standardised logits."""
    s, t, y = logits(6), logits(7, scale=5.0), torch.tensor([4, 3, 2, 1, 0, 2])
    d, out = terms("dkd", s, t, y, logit_standardize=True)
    assert (d.alpha, d.beta, d.temperature, d.task_weight) == (9.0, 72.0, 2.0, 1.0)
    want = dkd64(z_score(s.numpy()), z_score(t.numpy()), y.numpy(), 9.0, 72.0, 2.0)
    assert out["dkd"].item() == pytest.approx(want, rel=1e-5)
    assert torch.equal(out["dkd"], dkd_loss(standardize_logits(s), standardize_logits(t), y, 9.0, 72.0, 2.0))
    d, out = terms("dkd", s, t, y, logit_standardize=True, alpha=1.0, beta=8.0, temperature=4.0)
    assert out["dkd"].item() == pytest.approx(dkd64(z_score(s.numpy()), z_score(t.numpy()), y.numpy(), 1.0, 8.0,
                                                     4.0), rel=1e-5)


def test_dkd_ls_ramps_in_as_dkd():
    s, t, y = logits(6), logits(7), torch.tensor([4, 3, 2, 1, 0, 2])
    d = mgd.build_distiller("dkd", *pair(), logit_standardize=True)
    d.set_epoch(4)  # mdistiller's 1-based min(epoch / 20, 1): 5 / 20
    got = d.compute_terms(student_logits=s, teacher_logits=t, target=y)["dkd"]
    want = dkd64(z_score(s.numpy()), z_score(t.numpy()), y.numpy(), 9.0, 72.0, 2.0) * 5 / 20
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_dist_ls_standardises_with_dists_own_weights():
    s, t = logits(8), logits(9, scale=5.0)
    d, out = terms("dist", s, t, logit_standardize=True)
    assert (d.beta, d.gamma, d.tau, d.weight, d.task_weight) == (1.0, 1.0, 1.0, 2.0, 1.0)
    want = 2.0 * dist64(z_score(s.numpy()), z_score(t.numpy()), 1.0, 1.0, 1.0)
    assert out["dist"].item() == pytest.approx(want, rel=1e-5)


def test_kd_plus_plus_with_ls_standardises_the_kd_term_only():
    """KD++ (nd_weight > 0) with LS: the KD term on standardised logits with the LS weight 9 at T 2, ramped as KD++;
    the ND term is computed on the embeddings as before."""
    torch.manual_seed(0)
    teacher, student = randomize_bn(torchvision.models.resnet18(num_classes=4)), torchvision.models.resnet18(
        num_classes=4)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    found = {}
    for label, options in (("ls", {"logit_standardize": True}), ("plain", {})):
        d = mgd.build_distiller("nd", teacher, student, warmup_epochs=0, **options)
        d.prepare([(x, y)])
        d.eval()
        with torch.no_grad():
            found[label] = d.forward_train(x, y)[1]
        if label == "ls":
            assert (d.kd_weight, d.temperature) == (9.0, 2.0)
        d.close()
    with torch.no_grad():
        s_out, t_out = student.eval()(x), teacher.eval()(x)
    want = 9.0 * kd_loss(standardize_logits(s_out), standardize_logits(t_out), 2.0)
    torch.testing.assert_close(found["ls"]["kd"], want)
    torch.testing.assert_close(found["ls"]["nd"], found["plain"]["nd"])
    assert found["plain"]["kd"].item() != pytest.approx(want.item(), rel=1e-2)


# ------------------------------------------------------------------------------------ precision, gradients, flags
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["kd", "dkd", "dist"])
def test_terms_are_float32_under_cpu_autocast(name, dtype):
    """The networks' logits under autocast are low precision; the standardised terms are computed in float32 from
    them (equal to the float32 computation on the same values)."""
    teacher, student = pair()
    d = mgd.build_distiller(name, teacher, student, logit_standardize=True)
    d.set_epoch(100)
    x, y = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.autocast("cpu", dtype=dtype):
        s_out, out = d.forward_train(x, y)
        t_out = teacher(x)
    assert s_out.dtype == dtype and out[name].dtype == torch.float32 and torch.isfinite(out[name])
    again = mgd.build_distiller(name, teacher, student, logit_standardize=True)
    again.set_epoch(100)
    want = again.compute_terms(student_logits=s_out.detach().float(), teacher_logits=t_out.float(), target=y)[name]
    torch.testing.assert_close(out[name], want, rtol=1e-6, atol=1e-7)
    out[name].backward()
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "nd"])
def test_ls_on_torchvision_resnet50_to_resnet18_trains_the_student(name):
    torch.manual_seed(0)
    teacher = randomize_bn(torchvision.models.resnet50(num_classes=4))
    student = torchvision.models.resnet18(num_classes=4)
    x, y = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.arange(4)
    d = mgd.build_distiller(name, teacher, student, logit_standardize=True)
    d.set_epoch(30)
    if d.prepare_due(0):
        d.prepare([(x, y)])
    d.train()
    out, losses = d.forward_train(x, y)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) and v > 0 for v in losses.values())
    assert d.task_weight == 1.0  # the authors' CE weight with LS (kd: not 1 - alpha)
    sum(losses.values()).backward()  # the distillation terms alone reach the student through the z-score
    assert student.conv1.weight.grad.abs().sum() > 0 and all(p.grad is None for p in teacher.parameters())
    d.close()


def test_the_flag_is_shared_bare_and_off_by_default():
    from cls import main_mgd
    from mgd.engine.args import distiller_options_from_args, option_flag
    from mgd.registry import option_default

    for name in ("kd", "dkd", "dist", "nd"):
        assert option_flag(name, "logit_standardize") == "--logit-standardize"
        assert option_default(name, "logit_standardize") is False
    parser = main_mgd.get_parser()
    args = parser.parse_args(["DATA", "--logit-standardize", "1"])
    assert distiller_options_from_args("kd", args) == {"logit_standardize": 1}
    assert distiller_options_from_args("dkd", args) == {"logit_standardize": 1}
    assert "logit_standardize" not in distiller_options_from_args("kd", parser.parse_args(["DATA"]))
    assert "--logit-standardize" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["DATA", "--logit-standardize", "2"])
