"""The one contract, for every registered method: build with no options, prepare when due, forward_train,
learnable parameters, own state, close; and the OFD / KD++ distillers against hand computations."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import mgd
from mgd.distillers import OFDistiller, build_distiller, distiller_options, option_default
from mgd.engine import wrap_for_training

from tiny_models import randomize_bn, tiny_resnet

CLASSES = 4
#: the loss terms each method returns, and the share of the cross-entropy it keeps
TERMS = {"mgd": ({"distill"}, 1.0), "sm": ({"distill"}, 1.0), "ofd": ({"ofd"}, 1.0), "kd": ({"kd"}, 0.1),
         "at": ({"at"}, 1.0), "sp": ({"sp"}, 1.0), "nd": ({"kd", "nd"}, 1.0), "dkd": ({"dkd"}, 1.0),
         "dist": ({"dist"}, 1.0), "reviewkd": ({"reviewkd"}, 1.0), "crd": ({"crd"}, 1.0), "none": (set(), 1.0),
         "fitnet": ({"fitnet"}, 1.0), "cwd": ({"cwd"}, 1.0), "masked_generative": ({"masked_generative"}, 1.0)}
#: the methods the torchvision pair cannot take (DeiT needs a ViT student with a distillation token: test_deit.py)
NOT_ON_TORCHVISION = ("deit",)
#: the options a method cannot do without (CRD's memory bank has a row per training sample)
OPTIONS = {"crd": {"num_samples": 64, "num_negatives": 16}}
#: the methods whose prepare step is due before the first epoch
PREPARED = ("mgd", "sm", "nd")


def torchvision_pair():
    torch.manual_seed(0)
    return (randomize_bn(torchvision.models.resnet50(num_classes=CLASSES)),
            torchvision.models.resnet18(num_classes=CLASSES))


def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(CLASSES, 3, 64, 64, generator=gen), torch.arange(CLASSES)


def hooks_of(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._state_dict_hooks)
               + len(m._load_state_dict_post_hooks) for m in model.modules())


def inplace_flags(model):
    return [m.inplace for m in model.modules() if hasattr(m, "inplace")]


def test_every_method_is_registered_with_its_terms():
    assert set(mgd.DISTILLERS) == set(TERMS) | set(NOT_ON_TORCHVISION)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_contract_with_default_options_on_torchvision_classifiers(name):
    teacher, student = torchvision_pair()
    flags_before = inplace_flags(teacher), inplace_flags(student)
    d = build_distiller(name, teacher, student, **OPTIONS.get(name, {}))
    d.set_epoch(30)  # past every warm-up: each term is on
    x, y = batch()
    terms, task_weight = TERMS[name]
    assert d.task_weight == pytest.approx(task_weight)
    assert d.prepare_due(0) == (name in PREPARED)
    if d.prepare_due(0):
        d.prepare([(x, y)], epoch=0)
        assert not d.prepare_due(0)
        assert all(t.numel() for t in d.prepared_state())
    step = wrap_for_training(d, torch.device("cpu"), distributed=False)
    teacher.train()  # whatever mode the teacher was left in, training the wrapper puts it back in eval
    step.train()
    assert (not teacher.training or not d.needs_teacher) and student.training  # none holds no teacher
    logits, losses = step(x, y, **({"indices": torch.arange(CLASSES)} if d.needs_indices else {}))
    assert logits.shape == (CLASSES, CLASSES) and set(losses) == terms
    assert all(v.dim() == 0 and v.dtype == torch.float32 and torch.isfinite(v) and v > 0 for v in losses.values())
    (d.task_weight * nn.functional.cross_entropy(logits, y) + sum(losses.values())).backward()
    assert all(p.grad is None for p in teacher.parameters()) and (not teacher.training or not d.needs_teacher)
    learnable = d.get_learnable_parameters()
    assert {id(p) for p in student.parameters()} <= {id(p) for p in learnable}
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in learnable}
    assert student.conv1.weight.grad.abs().sum() > 0
    # the own state restores the method exactly in a fresh distiller around the same networks
    state = d.own_state_dict()
    assert not any(k.startswith(("t_net.", "s_net.")) for k in state)
    d.eval()
    indices = {"indices": torch.arange(CLASSES)} if d.needs_indices else {}
    with torch.no_grad():
        torch.manual_seed(5)  # CRD draws its negatives
        before = d.forward_train(x, y, **indices)[1]
    d.close()
    fresh = build_distiller(name, teacher, student, **OPTIONS.get(name, {}))
    fresh.set_epoch(30)
    fresh.load_own_state_dict(state)
    fresh.eval()
    with torch.no_grad():
        torch.manual_seed(5)
        after = fresh.forward_train(x, y, **indices)[1]
    for k in terms:
        torch.testing.assert_close(after[k], before[k])
    fresh.close()
    assert hooks_of(teacher) == 0 and hooks_of(student) == 0
    assert (inplace_flags(teacher), inplace_flags(student)) == flags_before


def test_distillers_built_and_closed_in_a_loop_leave_the_models_as_they_were():
    teacher, student = torchvision_pair()
    flags = inplace_flags(teacher), inplace_flags(student)
    x, _ = batch()
    with torch.no_grad():
        teacher.eval(), student.eval()
        expected = teacher(x), student(x)
    for _ in range(3):
        for name in sorted(TERMS):
            build_distiller(name, teacher, student, **OPTIONS.get(name, {})).close()
    assert hooks_of(teacher) == 0 and hooks_of(student) == 0
    assert (inplace_flags(teacher), inplace_flags(student)) == flags
    with torch.no_grad():
        teacher.eval(), student.eval()
        torch.testing.assert_close(teacher(x), expected[0])
        torch.testing.assert_close(student(x), expected[1])


def test_unknown_names_and_options_are_clear_errors():
    teacher, student = torchvision_pair()
    with pytest.raises(ValueError, match="valid: at, crd, cwd, deit, dist, dkd, fitnet, kd, masked_generative, mgd, "
                                         "nd, none, ofd, reviewkd, sm, sp"):
        build_distiller("hint", teacher, student)
    with pytest.raises(TypeError, match="takes no option.*'beta'"):
        build_distiller("kd", teacher, student, beta=3)
    assert {"reducer", "loss_factor", "update_freq", "with_kd", "teacher_layers"} <= distiller_options("mgd")
    assert {"alpha", "temperature", "nd_weight", "num_classes"} <= distiller_options("nd")
    assert option_default("mgd", "reducer") == "amp" and option_default("ofd", "loss_factor") == 1e4


def test_ofd_loss_equals_manual_partial_l2_through_the_connectors():
    torch.manual_seed(0)
    teacher, student = randomize_bn(tiny_resnet(True)), tiny_resnet(False)
    d = OFDistiller(teacher, student, loss_factor=1e3)
    assert [c[0].in_channels for c in d.connectors] == [64, 128, 256, 512]
    assert [c[0].out_channels for c in d.connectors] == [256, 512, 1024, 2048]
    x = torch.randn(4, 3, 32, 32)
    d.train()
    out, losses = d.forward_train(x)
    t_feats, _ = d._t_src(d.t_net, x)
    s_feats, _ = d._s_src(d.s_net, x)
    expected = 0.0
    for i in range(4):
        target = torch.maximum(t_feats[i], d.margins[i].view(1, -1, 1, 1))
        s = d.connectors[i](s_feats[i])
        mask = (s > target) | (target > 0)
        expected = expected + ((s - target) ** 2 * mask).sum() / 2 ** (3 - i)
    torch.testing.assert_close(losses["ofd"], expected / 4 / 1e3, rtol=1e-4, atol=1e-6)
    losses["ofd"].backward()
    assert all(p.grad is None for p in d.t_net.parameters())
    assert d.connectors[0][0].weight.grad.abs().sum() > 0


def test_ofd_and_mgd_margins_follow_the_teacher_weights():
    torch.manual_seed(0)
    teacher, student = randomize_bn(tiny_resnet(True)), tiny_resnet(False)
    d = OFDistiller(teacher, student)
    other = randomize_bn(tiny_resnet(True), seed=3)
    teacher.load_state_dict(other.state_dict())
    torch.testing.assert_close(d.margins[2], mgd.get_margin_from_BN(other.layer3[-1].bn3))
    d.close()  # closed: the teacher's reload hook is gone, the margins stay
    teacher.load_state_dict(randomize_bn(tiny_resnet(True), seed=4).state_dict())
    torch.testing.assert_close(d.margins[2], mgd.get_margin_from_BN(other.layer3[-1].bn3))


def test_nd_distiller_needs_class_means_and_labels():
    torch.manual_seed(0)
    d = build_distiller("nd", randomize_bn(tiny_resnet(True)), tiny_resnet(False))
    assert d.class_means.shape == (10, 2048)  # the class count read off the teacher's classifier
    assert isinstance(d.projection, torch.nn.Linear) and d.projection.in_features == 512
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    with pytest.raises(RuntimeError, match="prepare"):
        d.forward_train(x, y)
    with pytest.raises(ValueError, match="no training image of class"):
        d.prepare([(x, y)])
    d.prepare([(x, y), (torch.randn(4, 3, 32, 32), torch.tensor([6, 7, 8, 9]))])
    assert d.prepare_summary()["images"] == 10 and not d.prepare_due(1)
    with torch.no_grad():
        d.t_net.eval()
        emb = torch.flatten(d.t_net.avgpool(d.t_net.layer4(d.t_net.layer3(d.t_net.layer2(d.t_net.layer1(
            d.t_net.maxpool(d.t_net.relu(d.t_net.bn1(d.t_net.conv1(x))))))))), 1)
    torch.testing.assert_close(d.class_means[:6], emb, rtol=1e-4, atol=1e-5)
    out, losses = d.forward_train(x, y)
    assert set(losses) == {"kd", "nd"} and d.task_weight == pytest.approx(1.0)  # KD++: the CE keeps weight 1
    with pytest.raises(ValueError, match="labels"):
        d.forward_train(x)


def _logits(d, x):
    with torch.no_grad():
        d.eval()
        return d.s_net(x), d.t_net(x)


def test_warmups_ramp_as_their_authors_count_epochs():
    """KD++'s code ramps KD with min(epoch / warmup, 1) from 0-based epochs (off in the first); DKD's
    (mdistiller) with 1-based epochs; "kd" with an ND weight trains the same recipe as "nd"."""
    from mgd.losses import dkd_loss, kd_loss
    torch.manual_seed(0)
    teacher, student = randomize_bn(tiny_resnet(True)), tiny_resnet(False)
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10)
    nd = build_distiller("nd", teacher, student, warmup_epochs=4)
    kdpp = build_distiller("kd", teacher, student, warmup_epochs=4, nd_weight=1.0)
    s, t = _logits(nd, x)
    for d in (nd, kdpp):
        d.prepare([(x, y)])
        for epoch, ramp in ((0, 0.0), (2, 0.5), (9, 1.0)):
            d.set_epoch(epoch)
            with torch.no_grad():
                terms = d.forward_train(x, y)[1]
            torch.testing.assert_close(terms["kd"], ramp * kd_loss(s, t, 4.0))
        d.close()
    dkd = build_distiller("dkd", teacher, student).eval()  # warm-up 20
    for epoch, ramp in ((0, 1 / 20), (9, 0.5), (40, 1.0)):
        dkd.set_epoch(epoch)
        with torch.no_grad():
            terms = dkd.forward_train(x, y)[1]
        torch.testing.assert_close(terms["dkd"], ramp * dkd_loss(s, t, y))
    dkdpp = build_distiller("dkd", teacher, student, nd_weight=1.0)  # DKD++: KD++'s train_cifar_dkd.py counts from 0
    dkdpp.prepare([(x, y)])
    dkdpp.eval()
    for epoch, ramp in ((0, 0.0), (10, 0.5), (40, 1.0)):
        dkdpp.set_epoch(epoch)
        with torch.no_grad():
            terms = dkdpp.forward_train(x, y)[1]
        torch.testing.assert_close(terms["dkd"], ramp * dkd_loss(s, t, y))
    full_nd = terms["nd"]  # epoch 40: past the warm-up
    ramped = build_distiller("dkd", teacher, student, nd_weight=1.0, ramp_nd=1)  # KD++'s ImageNet DKD++
    ramped.load_own_state_dict(dkdpp.own_state_dict())  # the same projection and class means
    ramped.eval()
    for epoch, ramp in ((0, 0.0), (10, 0.5), (40, 1.0)):
        ramped.set_epoch(epoch)
        with torch.no_grad():
            terms = ramped.forward_train(x, y)[1]
        torch.testing.assert_close(terms["nd"], ramp * full_nd)
    ramped.close(), dkdpp.close()


def test_reviewkd_reviews_the_students_post_relu_stages_with_student_preact_0():
    """The authors' CIFAR setting (mdistiller STU_PREACT False): the same review of the stages' ReLU."""
    torch.manual_seed(0)
    teacher, student = randomize_bn(tiny_resnet(True)), tiny_resnet(False)
    pre = build_distiller("reviewkd", teacher, student, warmup_epochs=0)
    post = build_distiller("reviewkd", teacher, student, warmup_epochs=0, student_preact=0)
    post.abfs.load_state_dict(pre.abfs.state_dict())
    pre.eval(), post.eval()
    t_feats, _, s_feats, _ = pre.run_networks(torch.randn(2, 3, 32, 32))
    relu_feats = [torch.relu(f) for f in s_feats[:-1]] + [s_feats[-1]]
    assert any((f < 0).any() for f in s_feats[:-1])  # pre-ReLU: the two settings differ
    for a, b in zip(post.review(s_feats, t_feats), pre.review(relu_feats, t_feats)):
        torch.testing.assert_close(a, b)
    pre.close(), post.close()


def test_reviewkd_ramps_its_term_in_counting_epochs_from_0_as_its_authors():
    """dvlab-research/ReviewKD CIFAR-100/train.py: min(1, epoch / kd_warm_up), epoch from 0 (KD++'s ReviewKD++
    the same), with or without the ND term."""
    torch.manual_seed(0)
    teacher, student = randomize_bn(tiny_resnet(True)), tiny_resnet(False)
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10)  # every class, for ReviewKD++'s class means
    full = build_distiller("reviewkd", teacher, student, warmup_epochs=0).eval()
    for nd_weight in (0.0, 1.0):
        d = build_distiller("reviewkd", teacher, student, nd_weight=nd_weight).eval()  # warm-up 20
        d.abfs.load_state_dict(full.abfs.state_dict())
        if nd_weight:
            d.prepare([(x, y)])
        for epoch, ramp in ((0, 0.0), (10, 0.5), (40, 1.0)):
            d.set_epoch(epoch)
            full.set_epoch(epoch)
            with torch.no_grad():
                term, expected = d.forward_train(x, y)[1]["reviewkd"], full.forward_train(x, y)[1]["reviewkd"]
            torch.testing.assert_close(term, ramp * expected)
        d.close()
    full.close()


def test_reviewkd_fuses_from_the_deepest_position_up_to_the_teachers_shapes():
    from mgd.losses import hcl_loss
    torch.manual_seed(0)
    teacher, student = randomize_bn(tiny_resnet(True)), tiny_resnet(False)
    d = build_distiller("reviewkd", teacher, student, warmup_epochs=0, weight=2.0)
    # positions: the stages and the embedding; one ABF each, deepest (the embedding, no fusion) first
    assert [abf.att_conv is None for abf in d.abfs] == [True] + [False] * (len(d.abfs) - 1)
    assert d.abfs[0].conv1[0].in_channels == 512 and d.abfs[0].conv2[0].out_channels == 2048  # the embeddings
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    d.train()
    t_feats, _, s_feats, _ = d.run_networks(x)
    teacher_maps = [f if f.dim() == 4 else f[:, :, None, None] for f in t_feats]
    student_maps = [f if f.dim() == 4 else f[:, :, None, None] for f in s_feats]
    # The review by hand (the paper's Fig. 3, the authors' ABF.forward): from the deepest position up, 1x1 conv +
    # BN; below the deepest, the previous fused map upsampled (nearest) and mixed by a 2-channel sigmoid attention
    # of both; the fused map resized to the teacher's and passed on; 3x3 conv + BN to the teacher's width.
    expected, residual = [None] * len(student_maps), None
    for position, abf in zip(reversed(range(len(student_maps))), d.abfs):
        fused = abf.conv1(student_maps[position])
        if residual is not None:
            upsampled = F.interpolate(residual, size=fused.shape[-2:], mode="nearest")
            mix = torch.sigmoid(F.conv2d(torch.cat([fused, upsampled], 1), abf.att_conv[0].weight,
                                         abf.att_conv[0].bias))
            fused = fused * mix[:, 0:1] + upsampled * mix[:, 1:2]
        residual = F.interpolate(fused, size=teacher_maps[position].shape[-2:], mode="nearest")
        expected[position] = abf.conv2(residual)
    assert [o.shape for o in expected] == [f.shape for f in teacher_maps]
    torch.testing.assert_close(d.losses(s_feats, t_feats, None, None, y)["reviewkd"],
                               2.0 * hcl_loss(expected, teacher_maps))


def test_crd_memory_moves_to_the_new_embeddings_and_contrasts_both_ways():
    torch.manual_seed(0)
    d = build_distiller("crd", randomize_bn(tiny_resnet(True)), tiny_resnet(False), num_samples=32,
                        num_negatives=8)
    assert d.memory_s.shape == d.memory_t.shape == (32, 128) and d.needs_indices
    x, y, idx = torch.randn(4, 3, 32, 32), torch.arange(4), torch.tensor([3, 7, 8, 30])
    with pytest.raises(ValueError, match="indices"):
        d.forward_train(x, y)
    old_s, old_t, untouched = d.memory_s[idx].clone(), d.memory_t[idx].clone(), d.memory_s[0].clone()
    d.train()
    _, terms = d.forward_train(x, y, indices=idx)
    t_feats, _, s_feats, _ = d.run_networks(x)
    with torch.no_grad():
        v_s = torch.nn.functional.normalize(d.embed_s(s_feats[-1]), dim=1)
        v_t = torch.nn.functional.normalize(d.embed_t(t_feats[-1]), dim=1)
    torch.testing.assert_close(d.memory_s[idx], torch.nn.functional.normalize(0.5 * old_s + 0.5 * v_s, dim=1))
    torch.testing.assert_close(d.memory_t[idx], torch.nn.functional.normalize(0.5 * old_t + 0.5 * v_t, dim=1))
    assert torch.equal(d.memory_s[0], untouched) and torch.isfinite(d.log_z).all()
    assert torch.isfinite(terms["crd"]) and terms["crd"] > 0
    negatives = d._negatives(idx)
    assert negatives.shape == (4, 8) and not (negatives == idx[:, None]).any() and negatives.max() < 32
    with pytest.raises(ValueError, match="num_samples"):
        build_distiller("crd", d.t_net, d.s_net)


@pytest.mark.parametrize("name", ["mgd", "ofd", "at"])
def test_mobilenet_v2_students_skip_the_stage_of_another_resolution_by_default(name):
    torch.manual_seed(0)
    teacher = randomize_bn(torchvision.models.resnet50(num_classes=CLASSES))
    student = torchvision.models.mobilenet_v2(num_classes=CLASSES)
    d = build_distiller(name, teacher, student)
    assert d.ignore_inds == [0] and d.stages == [1, 2, 3]
    x, y = batch()
    if d.prepare_due(0):
        d.prepare([x])
    logits, losses = d.forward_train(x, y)
    assert logits.shape == (CLASSES, CLASSES) and all(torch.isfinite(v) for v in losses.values())
    d.close()
    # stage 0 is 16x16 against the teacher's 32x32: the larger map is pooled to the smaller's size (mdistiller's
    # AT and OFD), so every stage distils, MGD's matching included
    everything = build_distiller(name, teacher, student, ignore_inds=[])
    if everything.prepare_due(0):
        everything.prepare([x])
    losses = everything.forward_train(x, y)[1]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    everything.close()


def test_a_constructor_that_fails_leaves_no_hooks_behind():
    teacher, student = torchvision_pair()
    for name, options in (("ofd", {"stage_weights": [1.0]}), ("mgd", {"ignore_inds": [0, 1, 2, 3]}),
                          ("mgd", {"reducer": "avg"}), ("at", {"ignore_inds": [7]})):
        with pytest.raises(ValueError):
            build_distiller(name, teacher, student, **options)
        assert hooks_of(teacher) == 0 and hooks_of(student) == 0, (name, options)
    with pytest.raises(ValueError, match="student has 256 channels"):
        build_distiller("mgd", student, teacher)  # a teacher narrower than its student
    assert hooks_of(teacher) == 0 and hooks_of(student) == 0


def test_without_set_epoch_warmups_give_the_full_term():
    from mgd.losses import kd_loss
    torch.manual_seed(0)
    teacher, student = randomize_bn(tiny_resnet(True)), tiny_resnet(False)
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10)
    nd = build_distiller("nd", teacher, student, warmup_epochs=4)
    nd.prepare([(x, y)])
    s, t = _logits(nd, x)
    with torch.no_grad():
        torch.testing.assert_close(nd.forward_train(x, y)[1]["kd"], kd_loss(s, t, 4.0))  # no epoch announced
    nd.close()
    assert not build_distiller("crd", teacher, student, num_samples=64, num_negatives=8).replica_safe


def test_none_is_the_students_own_training_step_behind_the_contract():
    """Plain training as a method: no teacher needed (None), the student's forward bit for bit, no term, no state
    of its own, nothing to prepare; the step ``task_weight * ce + sum(terms)`` is the plain cross-entropy."""
    torch.manual_seed(0)
    student = tiny_resnet(False)
    d = build_distiller("none", None, student)
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    d.train()
    logits, terms = d.forward_train(x, y)
    student.train()
    assert terms == {} and d.task_weight == 1.0 and torch.equal(logits, student(x))
    assert not d.prepare_due(0) and d.own_state_dict() == {} and not d.needs_teacher
    assert {id(p) for p in d.get_learnable_parameters()} == {id(p) for p in student.parameters()}
    with pytest.raises(RuntimeError, match="no teacher"):
        d.t_net(x)
