import pytest
import torch

from mgd.matching import reducers


def _loop_groups(teacher, guided_inds, sc):
    g = guided_inds.numel() // sc
    return torch.stack([teacher[:, guided_inds[k * sc:(k + 1) * sc]] for k in range(g)], dim=2)  # (B, sc, g, H, W)


def _group_margins(margin, guided_inds, sc):
    g = guided_inds.numel() // sc
    return torch.stack([margin[guided_inds[k * sc:(k + 1) * sc]] for k in range(g)])  # (g, sc)


def _loop_amp(teacher, margin, guided_inds, sc):
    stacked = _loop_groups(teacher, guided_inds, sc)
    b, _, g, h, w = stacked.shape
    out = torch.empty(b, sc, h, w)
    for bi in range(b):
        for c in range(sc):
            for y in range(h):
                for x in range(w):
                    vals = stacked[bi, c, :, y, x]
                    out[bi, c, y, x] = vals[torch.argmax(vals.abs())]
    return out, _group_margins(margin, guided_inds, sc).mean(0)


def _loop_sp(teacher, margin, guided_inds, sc):
    stacked = _loop_groups(teacher, guided_inds, sc)
    return stacked.max(2).values, _group_margins(margin, guided_inds, sc).max(0).values


def _case(g, sc=3, b=2, h=3, w=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tc = g * sc + 1  # one teacher channel left unmatched
    teacher = torch.randn(b, tc, h, w, generator=gen)
    margin = -torch.rand(tc, generator=gen)
    guided = torch.randperm(tc, generator=gen)[: g * sc]
    return teacher, margin, guided, sc


@pytest.mark.parametrize("name,loop", [("amp", _loop_amp), ("sp", _loop_sp)])
@pytest.mark.parametrize("g", [1, 2, 3, 4])
def test_reducer_equals_loop(name, loop, g):
    teacher, margin, guided, sc = _case(g)
    got_t, got_m = reducers.get_reducer(name)(teacher, margin, guided, sc)
    exp_t, exp_m = loop(teacher, margin, guided, sc)
    torch.testing.assert_close(got_t, exp_t)
    torch.testing.assert_close(got_m, exp_m)


@pytest.mark.parametrize("g", [1, 2, 3, 4])
def test_rd_picks_one_group_member_per_position(g):
    teacher, margin, guided, sc = _case(g)
    gen = torch.Generator().manual_seed(3)
    got_t, got_m = reducers.rd(teacher, margin, guided, sc, generator=gen)
    stacked = _loop_groups(teacher, guided, sc)  # (B, sc, g, H, W)
    b, _, _, h, w = stacked.shape
    for bi in range(b):
        for c in range(sc):
            for y in range(h):
                for x in range(w):
                    assert got_t[bi, c, y, x] in stacked[bi, c, :, y, x]
    group_margins = _group_margins(margin, guided, sc).t()  # (sc, g)
    for c in range(sc):
        assert got_m[c] in group_margins[c]
    if g > 1:  # random: over many positions more than one member is chosen
        chosen = (got_t.unsqueeze(2) == stacked).float().argmax(2)
        assert chosen.unique().numel() > 1


def test_sm_keeps_first_matches():
    teacher, margin, guided, sc = _case(3)
    got_t, got_m = reducers.sm(teacher, margin, guided, sc)
    torch.testing.assert_close(got_t, teacher[:, guided[:sc]])
    torch.testing.assert_close(got_m, margin[guided[:sc]])


def test_unknown_reducer_lists_valid_names():
    with pytest.raises(ValueError, match="amp, rd, sm, sp"):
        reducers.get_reducer("mean")
