"""DKD, DIST, ReviewKD's HCL and CRD's NCE against independent numpy formulas (float64), with their edge
cases: a target logit ahead by 100, a batch of one for DIST's intra term, a 1x1 map for HCL."""
import math

import numpy as np
import pytest
import torch

from mgd.losses import dist_loss, dkd_loss, hcl_loss, nce_loss


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _kl(q, p):
    return float(np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / p), 0.0)))


def dkd_numpy(s, t, y, alpha, beta, T):
    """The paper's Eq. 2-3 written out with probabilities."""
    ps, pt = _softmax(s / T), _softmax(t / T)
    tckd = nckd = 0.0
    for i, c in enumerate(y):
        bs = np.array([ps[i, c], 1 - ps[i, c]])
        bt = np.array([pt[i, c], 1 - pt[i, c]])
        tckd += _kl(bt, bs)
        others = [k for k in range(s.shape[1]) if k != c]
        nckd += _kl(pt[i, others] / pt[i, others].sum(), ps[i, others] / ps[i, others].sum())
    return (alpha * tckd + beta * nckd) / len(y) * T * T


def test_dkd_loss_against_the_papers_formula():
    gen = np.random.default_rng(0)
    s, t = gen.normal(size=(5, 7)) * 3, gen.normal(size=(5, 7)) * 3
    y = np.array([0, 3, 6, 2, 2])
    got = dkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha=1.5, beta=8.0, temperature=4.0)
    assert got.item() == pytest.approx(dkd_numpy(s, t, y, 1.5, 8.0, 4.0), rel=1e-5)
    got = dkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), alpha=1.0, beta=0.5, temperature=1.0)
    assert got.item() == pytest.approx(dkd_numpy(s, t, y, 1.0, 0.5, 1.0), rel=1e-5)


def test_dkd_loss_is_finite_when_the_target_dominates_by_100():
    s = torch.tensor([[100.0, 0.0, -1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.0, 100.0, 2.0], [0.0, 300.0, 0.0]])  # the teacher rules classes out (p underflows to 0)
    loss = dkd_loss(s, t, torch.tensor([0, 1]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(s.grad).all()
    # where nothing underflows (float64), the same formula
    s64, t64 = np.array([[10.0, 0.0, -1.0]]), np.array([[0.0, 3.0, 2.0]])
    expected = dkd_numpy(s64, t64, [0], 1.0, 8.0, 1.0)
    assert dkd_loss(torch.tensor(s64), torch.tensor(t64), torch.tensor([0]), temperature=1.0).item() == \
        pytest.approx(expected, rel=1e-5)


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8))


def test_dist_loss_against_pearson_correlations():
    gen = np.random.default_rng(1)
    s, t = gen.normal(size=(4, 6)), gen.normal(size=(4, 6))
    tau = 2.0
    ys, yt = _softmax(s / tau), _softmax(t / tau)
    inter = 1 - np.mean([_pearson(ys[i], yt[i]) for i in range(4)])
    intra = 1 - np.mean([_pearson(ys[:, j], yt[:, j]) for j in range(6)])
    got = dist_loss(torch.tensor(s), torch.tensor(t), beta=1.0, gamma=2.0, tau=tau)
    assert got.item() == pytest.approx(tau ** 2 * (inter + 2.0 * intra), rel=1e-6)


def test_dist_intra_term_of_a_batch_of_one_is_the_constant_one():
    s = torch.tensor([[1.0, 2.0, 0.5]], requires_grad=True)
    t = torch.tensor([[0.0, 1.0, 3.0]])
    intra_only = dist_loss(s, t, beta=0.0, gamma=1.0)
    intra_only.backward()
    assert intra_only.item() == pytest.approx(1.0) and s.grad.abs().max() == 0
    ys, yt = _softmax(s.detach().numpy()), _softmax(t.numpy())
    assert dist_loss(s, t, beta=1.0, gamma=0.0).item() == pytest.approx(1 - _pearson(ys[0], yt[0]), rel=1e-6)


def _pool(x, k):
    n, c, h, w = x.shape
    return x.reshape(n, c, k, h // k, k, w // k).mean(axis=(3, 5))


def test_hcl_loss_by_hand():
    gen = np.random.default_rng(2)
    s8, t8 = gen.normal(size=(2, 3, 8, 8)), gen.normal(size=(2, 3, 8, 8))
    s4, t4 = gen.normal(size=(2, 3, 4, 4)), gen.normal(size=(2, 3, 4, 4))
    s1, t1 = gen.normal(size=(2, 5, 1, 1)), gen.normal(size=(2, 5, 1, 1))

    def mse(a, b):
        return float(((a - b) ** 2).mean())
    # 8x8: itself, 4x4 (1/2), 2x2 (1/4), 1x1 (1/8); 4x4: itself, 2x2 (1/2), 1x1 (1/4); 1x1: itself only
    l8 = (mse(s8, t8) + mse(_pool(s8, 4), _pool(t8, 4)) / 2 + mse(_pool(s8, 2), _pool(t8, 2)) / 4
          + mse(_pool(s8, 1), _pool(t8, 1)) / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    l4 = (mse(s4, t4) + mse(_pool(s4, 2), _pool(t4, 2)) / 2 + mse(_pool(s4, 1), _pool(t4, 1)) / 4) / 1.75
    l1 = mse(s1, t1)
    got = hcl_loss([torch.tensor(s8), torch.tensor(s4), torch.tensor(s1)],
                   [torch.tensor(t8), torch.tensor(t4), torch.tensor(t1)])
    assert got.item() == pytest.approx(l8 + l4 + l1, rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        hcl_loss([torch.zeros(1, 2, 4, 4)], [torch.zeros(1, 3, 4, 4)])


def test_nce_loss_against_the_authors_formula():
    """CRD's ContrastLoss: -(log(P_pos / (P_pos + m Pn + eps)) + sum log(m Pn / (P_neg + m Pn + eps))) / B."""
    gen = np.random.default_rng(3)
    scores = np.exp(gen.normal(size=(3, 1 + 8)))  # exp(<u, v> / tau) / Z
    n_data, m, eps = 100, 8, 1e-7
    pn = 1.0 / n_data
    expected = -(np.log(scores[:, 0] / (scores[:, 0] + m * pn + eps)).sum()
                 + np.log(m * pn / (scores[:, 1:] + m * pn + eps)).sum()) / 3
    got = nce_loss(torch.tensor(np.log(scores)), n_data)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    far = nce_loss(torch.tensor([[200.0, -200.0, 300.0]]), 10)  # scores overflow exp in float32: still finite
    assert math.isfinite(far.item())
