import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mgd
import mgd.builder
from mgd import mgd_update

from tiny_models import ProtocolResNet, protocol_copy, randomize_bn, tiny_resnet


def _pair(bottleneck_teacher=True, **kwargs):
    torch.manual_seed(0)
    teacher = randomize_bn(tiny_resnet(bottleneck_teacher))
    student = tiny_resnet(False)
    return mgd.MGDistiller(teacher, student, **kwargs)


def _data(n=8, seed=1, size=32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen)


def test_original_api_verbatim_with_protocol_models():
    torch.manual_seed(0)
    t_net = protocol_copy(randomize_bn(tiny_resnet(True)))
    s_net = protocol_copy(tiny_resnet(False))
    d_net = mgd.builder.MGDistiller(t_net, s_net, ignore_inds=[], reducer='amp', sync_bn=False,
                                    with_kd=True, preReLU=True, distributed=False, det=False)
    x = _data()
    mgd_update([(x, torch.zeros(8))], d_net)
    s_out, (loss_distill, loss_kd) = d_net(x)
    assert s_out.shape == (8, 10)
    assert [g.shape[0] for g in d_net.guided_inds] == [256, 512, 1024, 2048]  # g*sc = tc here (g = 4)
    for inds, tc in zip(d_net.guided_inds, [256, 512, 1024, 2048]):
        assert sorted(inds.tolist()) == list(range(tc))
    _, contract = d_net.forward_train(x)  # the same computation, normalised per image and by the loss factor
    assert contract["distill"].item() == pytest.approx(loss_distill.item() / 8 / 1e4, rel=1e-6)
    assert contract["kd"].item() == pytest.approx(loss_kd.item(), rel=1e-6)
    with torch.no_grad():
        t_out = t_net(x)
    expected_kd = F.kl_div(F.log_softmax(s_out / 1.5, 1), F.softmax(t_out / 1.5, 1), reduction="batchmean") * 2.25
    assert loss_kd.item() == pytest.approx(expected_kd.item(), rel=1e-5)
    assert isinstance(d_net.BNs[0], nn.BatchNorm2d)


def test_protocol_and_hooks_give_the_same_matching_and_loss():
    hooked = _pair()
    proto = mgd.MGDistiller(protocol_copy(hooked.t_net), protocol_copy(hooked.s_net))
    proto.BNs.load_state_dict(hooked.BNs.state_dict())
    x = _data()
    mgd_update([x], hooked)
    mgd_update([x], proto)
    for a, b in zip(hooked.guided_inds, proto.guided_inds):
        assert torch.equal(a, b)
    torch.testing.assert_close(hooked(x)[1], proto(x)[1])


def _reference_reduce(reducer, t, margin, inds, sc, groups):
    """The reducers written out independently: gather the matched groups, then reduce (MGD Sec. 3.3)."""
    stacked = torch.stack([t[:, inds[k * sc:(k + 1) * sc]] for k in range(groups)], 2)  # (B, sc, g, H, W)
    margins = torch.stack([margin[inds[k * sc:(k + 1) * sc]] for k in range(groups)])  # (g, sc)
    if reducer == "amp":
        return stacked.gather(2, stacked.abs().argmax(2, keepdim=True)).squeeze(2), margins.mean(0)
    if reducer == "sp":
        return stacked.max(2).values, margins.max(0).values
    if reducer == "rd":  # the same draws as the library: one group member per position, then per channel
        b, _, _, h, w = stacked.shape
        pick = torch.randint(groups, (b, 1, sc, h, w)).permute(0, 2, 1, 3, 4)
        m_pick = torch.randint(groups, (1, sc))
        return stacked.gather(2, pick).squeeze(2), margins.gather(0, m_pick).squeeze(0)
    return t[:, inds[:sc]], margin[inds[:sc]]  # sm


@pytest.mark.parametrize("reducer", ["amp", "sp", "rd", "sm"])
def test_loss_equals_reference_formula(reducer):
    d = _pair(reducer=reducer)
    x = _data()
    mgd_update([x], d)
    d.train()
    t_feats, _ = d._t_src(d.t_net, x)
    s_feats, _ = d._s_src(d.s_net, x)
    torch.manual_seed(5)
    _, loss = d(x)
    torch.manual_seed(5)
    expected = 0.0
    for i in range(4):
        picked, m = _reference_reduce(reducer, t_feats[i], d.margins[i], d.guided_inds[i], d.s_channels[i],
                                      d.groups[i])
        s = d.BNs[i](s_feats[i])
        target = torch.maximum(picked, m.view(1, -1, 1, 1))
        counted = (s > target) | (target > 0)  # OFD Eq. 4, written out
        expected = expected + ((s - target) ** 2 * counted).sum() / 2 ** (3 - i)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-3)
    if reducer == "rd":  # other draws give another loss: the draws above are what made them equal
        assert d(x)[1].item() != pytest.approx(loss.item(), rel=1e-6)


def test_forward_train_is_the_original_loss_normalised():
    d = _pair(with_kd=True, loss_factor=1e3)
    x = _data()
    d.prepare([x])
    d.train()
    _, (raw, kd) = d(x)
    logits, losses = d.forward_train(x)
    assert set(losses) == {"distill", "kd"} and d.task_weight == 1.0
    assert losses["distill"].item() == pytest.approx(raw.item() / 8 / 1e3, rel=1e-6)
    assert losses["kd"].item() == pytest.approx(kd.item(), rel=1e-6)
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in losses.values())


def test_prepare_schedule_follows_update_freq_and_epochs():
    d = _pair(update_freq=3, update_images=4)
    assert d.prepare_due(5)  # never matched: due whatever the epoch
    d.prepare([_data(4, seed=i) for i in range(5)], epoch=5)
    assert int(d.num_updates) == 1 and int(d.prepared_epoch) == 5 and d.num_tracked_imgs == 0
    assert [e for e in range(5, 13) if d.prepare_due(e)] == [6, 9, 12]
    listed = _pair(update_epochs=[1, 2, 6])
    listed.prepare([_data()], epoch=0)
    assert [e for e in range(0, 10) if listed.prepare_due(e)] == [1, 2, 6]
    state = listed.own_state_dict()
    assert int(state["prepared_epoch"]) == 0
    for bad in ({"update_freq": 0}, {"update_images": -1}, {"loss_factor": 0}, {"loss_factor": float("nan")},
                {"kd_temperature": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _pair(**bad)


def test_gradients_reach_student_and_norm_layers_not_teacher():
    d = _pair()
    x = _data()
    mgd_update([x], d)
    d.train()
    assert not d.t_net.training  # the teacher stays in eval mode
    out, loss = d(x)
    (loss + out.sum()).backward()
    assert all(p.grad is None for p in d.t_net.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.BNs.parameters())
    assert d.s_net.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert len(d.get_learnable_parameters()) == len(list(d.s_net.parameters())) + 8


def test_state_dict_round_trip_reproduces_the_loss_without_update():
    d = _pair()
    x = _data()
    mgd_update([x], d)
    mgd_update([x], d)
    state = d.state_dict()
    assert int(state["num_updates"]) == 2 and "guided_inds4" in state and "margin1" in state
    fresh = _pair()
    with torch.no_grad():  # scrambled norm layers: the load must restore them too
        for p in fresh.BNs.parameters():
            p.normal_()
    fresh.load_state_dict(state)
    d.eval(); fresh.eval()
    for a, b in zip(d.guided_inds, fresh.guided_inds):
        assert torch.equal(a, b)
    torch.testing.assert_close(d(x)[1], fresh(x)[1])


def test_margins_follow_teacher_weights_loaded_later():
    d = _pair()
    other = randomize_bn(tiny_resnet(True), seed=7)
    before = d.margins[0].clone()
    d.t_net.load_state_dict(other.state_dict())
    expected = mgd.get_margin_from_BN(other.layer1[-1].bn3)
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(d.margins[0], expected)


def test_update_restores_modes_and_caps_images(caplog):
    d = _pair()
    d.train()
    seen = []

    class Loader:
        def __iter__(self):
            for i in range(10):
                seen.append(i)
                yield _data(4, seed=i), torch.zeros(4)

    with caplog.at_level(logging.INFO, logger="mgd"):
        mgd_update(Loader(), d, max_images=8)
    assert seen == [0, 1]
    assert d.training and d.s_net.training and d.BNs[0].training and not d.t_net.training
    assert "solved in" in caplog.text and "mean matched cost" in caplog.text and "512x2048" in caplog.text


def test_forward_before_update_says_what_to_call():
    with pytest.raises(RuntimeError, match="mgd_update"):
        _pair()(_data())


def test_empty_loader_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        mgd_update([], _pair())


def test_non_finite_features_keep_the_previous_matching():
    d = _pair()
    x = _data()
    mgd_update([x], d)
    before = [g.clone() for g in d.guided_inds]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(RuntimeError, match="non-finite"):
        mgd_update([_data(seed=3), bad], d)
    assert all(torch.equal(a, b) for a, b in zip(before, d.guided_inds))
    assert int(d.num_updates) == 1


def test_bad_configurations_fail_early_with_clear_messages():
    teacher, student = tiny_resnet(True), tiny_resnet(False)
    with pytest.raises(ValueError, match="unknown reducer"):
        mgd.MGDistiller(teacher, student, reducer="avg")
    with pytest.raises(ValueError, match="4 stages but the student has 3"):
        mgd.MGDistiller(teacher, student, student_layers=["layer1", "layer2", "layer3"],
                        student_channels=[64, 128, 256])
    with pytest.raises(ValueError, match="student has 256 channels but the teacher only 64"):
        mgd.MGDistiller(tiny_resnet(False), tiny_resnet(True))
    with pytest.raises(ValueError, match="not found"):
        mgd.MGDistiller(teacher, student, teacher_layers=["layer1", "nope", "layer3", "layer4"],
                        teacher_bns=["layer1.0.bn3"] * 4)
    with pytest.raises(TypeError, match="BatchNorm"):
        mgd.MGDistiller(teacher, student, teacher_layers=["layer1", "layer2", "layer3", "layer4"],
                        teacher_bns=["layer1.0.conv3", "layer2.0.bn3", "layer3.0.bn3", "layer4.0.bn3"],
                        teacher_channels=[256, 512, 1024, 2048])
    with pytest.raises(ValueError, match="channel count"):
        mgd.MGDistiller(teacher, student, teacher_layers=["layer1", "layer2", "layer3", "layer4"],
                        teacher_bns=["layer1.0.bn3", "layer2.0.bn3", "layer3.0.bn3", "layer4.0.bn3"],
                        student_layers=["layer1", "layer2", "layer3", "layer4"])
    with pytest.raises(TypeError, match="nn.Module"):
        mgd.MGDistiller("resnet50", student)
    with pytest.raises(ValueError, match="out of range"):
        mgd.MGDistiller(teacher, student, ignore_inds=[4])
    with pytest.raises(ValueError, match="no stage positions found .*name its pre-ReLU stage layers"):
        mgd.MGDistiller(nn.Sequential(nn.Conv2d(3, 3, 1)), student)


def test_a_stage_of_another_size_is_matched_and_distilled_on_the_pooled_maps():
    """Stage 3's student map (layer3) is twice the teacher's (layer4) in each dimension: both the matching and
    the loss compare the student map average-pooled to the teacher's size."""
    d = mgd.MGDistiller(randomize_bn(tiny_resnet(True)), tiny_resnet(False),
                        student_layers=["layer1", "layer2", "layer3", "layer3"],
                        student_channels=[64, 128, 256, 256])
    mgd_update([_data()], d)
    assert int(d.num_updates) == 1
    t_feats, _, s_feats, _ = d.run_networks(_data())
    assert s_feats[3].shape[-1] == 2 * t_feats[3].shape[-1]
    pooled = list(s_feats)
    pooled[3] = torch.nn.functional.adaptive_avg_pool2d(s_feats[3], t_feats[3].shape[-2:])
    torch.testing.assert_close(d.distill_loss(s_feats, t_feats), d.distill_loss(pooled, t_feats))
    d.close()


def test_sparse_matching_is_the_originals_padded_square_assignment():
    """The original's sparse matching pads the (sc, tc) cost with rows of a huge cost to a (tc, tc) square, solves
    it and keeps the first sc rows' teacher channels: one teacher channel per student channel. Solved that way
    here with scipy, from the saved costs, it gives SMDistiller's indices."""
    from scipy.optimize import linear_sum_assignment

    sm = mgd.builder.SMDistiller(randomize_bn(tiny_resnet(True)), tiny_resnet(False))
    mgd_update([_data(size=64)], sm)  # 64 px: no 1x1 stage, whose costs are all ties
    artifacts = sm.prepare_artifacts()
    assert [g.numel() for g in sm.guided_inds] == [64, 128, 256, 512]
    for stage, (inds, tc) in enumerate(zip(sm.guided_inds, [256, 512, 1024, 2048])):
        cost = artifacts[f"stage{stage}_cost"].double().numpy()
        sc = cost.shape[0]
        square = np.vstack([cost, np.full((tc - sc, tc), 1e6)])
        rows, cols = linear_sum_assignment(square)
        original = cols[np.argsort(rows)][:sc]
        assert inds.tolist() == original.tolist(), stage
    with pytest.raises(ValueError, match="sm"):
        mgd.builder.SMDistiller(sm.t_net, sm.s_net, reducer="amp")


def test_detection_mode_adds_loss_to_the_student_dict_and_uses_group_norm():
    class DetStudent(ProtocolResNet):
        def extract_feature(self, x, preReLU=False):
            feats, out = super().extract_feature(x, preReLU)
            return feats, {"loss_cls": out.mean()}

    teacher = protocol_copy(randomize_bn(tiny_resnet(True)))
    student = protocol_copy(tiny_resnet(False))
    det_student = DetStudent(type(student.layer1[0]), [1, 1, 1, 1], num_classes=10)
    d = mgd.MGDistiller(teacher, det_student, det=True)
    assert isinstance(d.BNs[0], nn.GroupNorm) and d.BNs[0].num_groups == 32
    assert d.stage_weights == pytest.approx([1 / 5e7, 1 / 5e7, 1 / 5e6, 1 / 5e6])
    x = _data()
    mgd_update([x], d)
    losses, loss = d(x)
    assert set(losses) == {"loss_cls", "loss_distill"} and losses["loss_distill"] is loss


def test_mgd_update_accepts_the_original_third_argument_as_its_cap_of_20000_images(monkeypatch):
    """The original's mgd_update(loader, model, args) stopped its tracking pass after 20000 images ("break for
    ImageNet-1K"); the third argument means that cap, whatever the args hold. Measured with the cap lowered to 8
    (4-image batches: 2 of the 10 are tracked), and the constant is the original's."""
    from mgd.matching import update

    class Args:
        batch_size = 4

    assert update.LEGACY_MAX_IMAGES == 20000
    monkeypatch.setattr(update, "LEGACY_MAX_IMAGES", 8)
    seen = []

    def loader():
        for i in range(10):
            seen.append(i)
            yield _data(4, seed=i)

    d = _pair()
    mgd_update(loader(), d, Args())
    assert seen == [0, 1] and int(d.num_updates) == 1
    seen.clear()
    mgd_update(loader(), d)  # no cap: the whole loader
    assert seen == list(range(10)) and int(d.num_updates) == 2


def test_torchvision_pair_without_arguments():
    import torchvision
    d = mgd.MGDistiller(randomize_bn(torchvision.models.resnet50()), torchvision.models.mobilenet_v2())
    assert d.ignore_inds == [0] and d.s_channels == [144, 192, 384, 960]
    x = torch.randn(2, 3, 224, 224)
    mgd_update([x], d)
    out, loss = d(x)
    assert out.shape == (2, 1000) and torch.isfinite(loss)
    loss.backward()
    assert isinstance(d.BNs[0], nn.Identity)  # the ignored stage has no norm parameters left without gradient
    own = [p for p in d.get_learnable_parameters() if not any(p is q for q in d.s_net.parameters())]
    assert len(own) == 6 and all(p.grad is not None for p in own)


def test_sync_bn_when_distributed_and_plain_bn_otherwise():
    synced = _pair(sync_bn=True, distributed=True)
    assert all(isinstance(bn, nn.SyncBatchNorm) for bn in synced.BNs)
    single = _pair(sync_bn=True)
    assert all(type(bn) is nn.BatchNorm2d for bn in single.BNs)


def test_extra_distributed_sampler_gives_every_rank_the_same_order():
    from mgd.sampler import ExtraDistributedSampler
    data = list(range(10))
    a = ExtraDistributedSampler(data, num_replicas=2, rank=0)
    b = ExtraDistributedSampler(data, num_replicas=2, rank=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and sorted(a) == data and len(a) == 10
    b.set_epoch(4)
    assert list(a) != list(b)


def test_own_state_dict_excludes_networks_and_round_trips():
    d = _pair()
    x = _data()
    mgd_update([x], d)
    state = d.own_state_dict()
    assert not any(k.startswith(("t_net.", "s_net.")) for k in state)
    assert {"margin1", "guided_inds4", "num_updates", "BNs.0.weight"} <= set(state)
    fresh = _pair()
    fresh.load_own_state_dict(state)
    d.eval(); fresh.eval()
    torch.testing.assert_close(d(x)[1], fresh(x)[1])
    with pytest.raises(RuntimeError, match="missing"):
        fresh.load_own_state_dict({k: v for k, v in state.items() if k != "guided_inds2"})


def test_trainable_view_holds_student_and_norms_only():
    d = _pair()
    view = mgd.builder.TrainableDistiller(d)
    params = {id(p) for p in view.parameters()}
    assert params == {id(p) for p in d.get_learnable_parameters()}
    assert not params & {id(p) for p in d.t_net.parameters()}
    mgd_update([_data()], d)
    out, losses = view(_data())  # the contract: forward_train
    assert out.shape == (8, 10) and list(losses) == ["distill"]
    torch.testing.assert_close(losses["distill"], d(_data())[1] / 8 / 1e4)


def test_max_images_must_be_a_count():
    d = _pair()
    with pytest.raises(TypeError, match="max_images"):
        mgd_update([_data()], d, max_images="all")
    with pytest.raises(ValueError, match="positive"):
        mgd_update([_data()], d, max_images=0)
    mgd_update([_data()], d, max_images=8.0)
    assert int(d.num_updates) == 1


def _conv_pair(teacher_widths=(32, 64), **kwargs):
    """Two-stage conv nets (student 16-32 channels) named by layer: fast, and any widths."""
    def net(c1, c2, seed):
        torch.manual_seed(seed)
        return randomize_bn(nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c2, 4)), seed)
    return mgd.build_distiller("mgd", net(*teacher_widths, 0), net(16, 32, 100), teacher_layers=["1", "4"],
                               teacher_bns=["1", "4"], student_layers=["1", "4"], **kwargs)


def _matched(d):
    d.prepare([torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))])
    return d


def _refusal(load):
    """The first line of the RuntimeError ``load()`` raises (what the applications show)."""
    with pytest.raises(RuntimeError) as info:
        load()
    return str(info.value).splitlines()[0]


def test_a_state_saved_with_a_stage_ignored_is_refused_before_it_breaks_the_forward():
    """With parameterless student norms nothing else tells the states apart: the unset indices of the ignored
    stage used to load silently and the first forward failed with "INDICES element is out of DATA bounds"."""
    norm = dict(student_norm=lambda c: nn.InstanceNorm2d(c))
    saved = _matched(_conv_pair(ignore_inds=[0], **norm))
    d = _matched(_conv_pair(ignore_inds=[], **norm))
    before = [g.clone() for g in d.guided_inds]
    expected = ("stage 0: the loaded state has no matching for this stage (its 32 guided indices are unset: the "
                "stage was ignored when saved), this distiller distils it (ignore_inds []; saved with other "
                "ignore_inds?)")
    assert _refusal(lambda: d.load_own_state_dict(saved.own_state_dict())) == expected
    assert _refusal(lambda: d.load_state_dict(saved.state_dict())) == expected
    assert _refusal(lambda: d.load_state_dict(saved.state_dict(), strict=False)) == expected
    assert all(torch.equal(a, b) for a, b in zip(before, d.guided_inds))  # refused before anything is copied
    d.forward_train(torch.randn(2, 3, 16, 16))  # and still usable


def test_a_state_of_other_networks_or_reducer_names_the_stage_and_the_sizes():
    d = _conv_pair()
    wider = _matched(_conv_pair(teacher_widths=(64, 64)))
    assert _refusal(lambda: d.load_own_state_dict(wider.own_state_dict())) == (
        "stage 0: the loaded matching has 64 guided indices for 64 teacher channels, this distiller expects 32 "
        "indices for 32 teacher channels (saved with other ignore_inds, reducer or networks?)")
    sparse = _matched(_conv_pair(reducer="sm"))
    assert _refusal(lambda: d.load_state_dict(sparse.state_dict())) == (
        "stage 0: the loaded matching has 16 guided indices for 32 teacher channels, this distiller expects 32 "
        "indices for 32 teacher channels (saved with other ignore_inds, reducer or networks?)")
    state = _matched(_conv_pair()).own_state_dict()
    state["margin2"] = torch.zeros(48)
    assert _refusal(lambda: d.load_own_state_dict(state)) == (
        "stage 1: the loaded state has margins for 48 teacher channels, this distiller's teacher has 64 channels "
        "at this stage (saved with other networks?)")
    state = _matched(_conv_pair()).own_state_dict()
    state["guided_inds2"] = state["guided_inds2"] + 1
    assert _refusal(lambda: d.load_own_state_dict(state)) == (
        "stage 1: the loaded matching has guided indices in [1, 64], this distiller expects 64 indices in [0, 63] "
        "for 64 teacher channels (saved with other networks?)")


def test_a_norm_layer_for_a_stage_this_distiller_ignores_is_refused_in_strict_loads():
    saved = _matched(_conv_pair(ignore_inds=[]))
    d = _conv_pair(ignore_inds=[0])
    expected = ("stage 0: the loaded state has a student norm layer for this stage, this distiller does not "
                "distil it (ignore_inds [0], stage weight 0.5; saved with other ignore_inds or stage_weights?)")
    assert _refusal(lambda: d.load_own_state_dict(saved.own_state_dict())) == expected
    assert _refusal(lambda: d.load_state_dict(saved.state_dict())) == expected
    weighted = _conv_pair(ignore_inds=[], stage_weights=[0, 1])
    assert _refusal(lambda: weighted.load_own_state_dict(saved.own_state_dict())) == (
        "stage 0: the loaded state has a student norm layer for this stage, this distiller does not distil it "
        "(ignore_inds [], stage weight 0; saved with other ignore_inds or stage_weights?)")
    assert _refusal(lambda: saved.load_own_state_dict(weighted.own_state_dict())) == (
        "stage 0: the loaded state has no student norm layer for this stage, this distiller distils it "
        "(ignore_inds [], stage weight 0.5; saved with other ignore_inds or stage_weights?)")


def test_a_distiller_inside_a_larger_model_checks_its_keys_under_its_prefix():
    """The detection layout: a model holds both networks and the distiller (own_networks=False) and loads
    checkpoints non-strictly; a state without distiller keys (pretrained weights) still loads."""
    class Holder(nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            d = _conv_pair(own_networks=False, **kwargs)
            self.teacher, self.student, self.distiller = d.t_net, d.s_net, d

    saved = Holder(ignore_inds=[0], student_norm=lambda c: nn.InstanceNorm2d(c))
    _matched(saved.distiller)
    model = Holder(student_norm=lambda c: nn.InstanceNorm2d(c))
    assert _refusal(lambda: model.load_state_dict(saved.state_dict(), strict=False)).startswith(
        "stage 0: the loaded state has no matching for this stage")
    weights = {k: v for k, v in saved.state_dict().items() if not k.startswith("distiller.")}
    result = model.load_state_dict(weights, strict=False)
    assert result.unexpected_keys == [] and "distiller.guided_inds1" in result.missing_keys
    assert torch.equal(model.student[0].weight, saved.student[0].weight)
    same = Holder(ignore_inds=[0], student_norm=lambda c: nn.InstanceNorm2d(c))
    same.load_state_dict(saved.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(same.distiller.guided_inds, saved.distiller.guided_inds))
