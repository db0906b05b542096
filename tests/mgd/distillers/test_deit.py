"""``deit``: DeiT's distillation token (hard and soft) and DeiT++ (KD++'s ND on that token's embedding)."""
import pytest
import timm
import torch
import torch.nn.functional as F

from mgd import build_distiller
from mgd.losses import deit_distillation_loss
from tiny_models import randomize_bn, tiny_resnet


def tiny_deit(num_classes=10):
    """timm's DeiT-tiny with a distillation token, on 32 px inputs (2 x 2 patches) so that it runs in a test."""
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=num_classes,
                             img_size=32)


def test_hard_distillation_is_the_cross_entropy_to_the_teachers_argmax_class():
    dist = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    teacher = torch.tensor([[0.1, 3.0, 0.2], [0.0, 0.0, 4.0]])  # arg-max classes 1 and 2
    by_hand = (-(0.0 - torch.logsumexp(dist[0], 0)) - (0.0 - torch.logsumexp(dist[1], 0))) / 2
    torch.testing.assert_close(deit_distillation_loss(dist, teacher, "hard"), by_hand)
    torch.testing.assert_close(by_hand, torch.tensor(2.0671), atol=1e-4, rtol=0)  # log(e^2 + 1 + 1/e), log(e^.5 + e^1.5 + 1)


def test_soft_distillation_equals_a_float64_transcription_of_deits_loss():
    """DeiT losses.py: tau^2 * sum KL(softmax(t / tau) || softmax(s / tau)) / (batch x classes)."""
    torch.manual_seed(0)
    s, t, tau = torch.randn(4, 7), torch.randn(4, 7) * 3, 2.0
    p_t = torch.softmax(t.double() / tau, 1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s.double() / tau, 1))).sum() * tau ** 2 / s.numel()
    torch.testing.assert_close(deit_distillation_loss(s, t, "soft", tau).double(), expected)
    for dtype in (torch.bfloat16, torch.float16):  # half-precision logits: the term is computed in float32
        with torch.autocast("cpu", dtype=dtype):
            value = deit_distillation_loss(s.to(dtype), t.to(dtype), "soft", tau)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), expected, rtol=2e-2, atol=1e-3)
    with pytest.raises(ValueError, match="'hard' or 'soft'"):
        deit_distillation_loss(s, t, "medium")


def test_the_class_head_learns_from_labels_the_distillation_head_from_the_teacher_and_eval_averages_them():
    teacher, student = randomize_bn(tiny_resnet(False)).eval(), tiny_deit()
    d = build_distiller("deit", teacher, student)  # every option at DeiT's default: hard, alpha 0.5
    assert d.task_weight == 0.5 and student.distilled_training
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    d.train()
    logits, terms = d.forward_train(x, y)
    torch.manual_seed(0)
    with torch.no_grad():
        t_logits = teacher(x)
    cls_head, dist_head = student(x)  # the same weights, dropout-free: the same heads
    torch.testing.assert_close(logits, cls_head)
    torch.testing.assert_close(terms["deit"], 0.5 * F.cross_entropy(dist_head, t_logits.argmax(1)))
    terms["deit"].backward()
    assert student.head_dist.weight.grad.abs().sum() > 0 and student.head.weight.grad is None  # only its head
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(student(x), (cls_head + dist_head).detach() / 2)  # DeiT's evaluation
    d.close()


def test_deit_plus_plus_adds_nd_on_the_distillation_tokens_embedding_with_kdpps_soft_term():
    teacher, student = randomize_bn(tiny_resnet(False)).eval(), tiny_deit()
    d = build_distiller("deit", teacher, student, nd_weight=1.5, kd_weight=0.5, warmup_epochs=5)
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10)
    d.prepare([(x, y)])
    assert d.task_weight == 1.0 and d.projection.in_features == 192 and d.projection.out_features == 512
    d.set_epoch(2)  # KD++'s ramp: min(1, 2 / 5), 0-based epochs
    d.train()
    _, terms = d.forward_train(x, y)
    with torch.no_grad():
        t_logits = teacher(x)
    _, dist_head = student(x)
    from mgd.losses import kd_loss
    torch.testing.assert_close(terms["deit"], 0.4 * 0.5 * kd_loss(dist_head, t_logits, 1.0))
    assert set(terms) == {"deit", "nd"} and terms["nd"] > 0
    d.close()


def test_close_gives_the_student_back_as_it_was():
    student = tiny_deit()
    d = build_distiller("deit", randomize_bn(tiny_resnet(False)), student)
    assert student.distilled_training
    d.close()
    assert not student.distilled_training


def test_a_student_without_a_distillation_token_is_one_clear_error():
    with pytest.raises(ValueError, match="deit needs a student with a distillation token"):
        build_distiller("deit", tiny_resnet(False), tiny_resnet(False))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_the_terms_are_float32_under_autocast_and_match_the_float32_computation(dtype):
    teacher, student = randomize_bn(tiny_resnet(False)).eval(), tiny_deit()
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    for options in ({}, {"distillation_type": "soft", "tau": 2.0}):
        d = build_distiller("deit", teacher, student, **options).train()
        _, exact = d.forward_train(x, y)
        with torch.autocast("cpu", dtype=dtype):
            _, half = d.forward_train(x, y)
        assert half["deit"].dtype == torch.float32
        assert half["deit"].item() == pytest.approx(exact["deit"].item(), rel=5e-2)  # the networks in half
        d.close()
