"""cls/utils.py: the original scripts' flags with their meanings, and the original LR schedules."""
import pytest
import torch

from cls import main_base, main_mgd
from cls.utils import finish_args, make_scheduler


def lr_factors(args, epochs):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = make_scheduler(optimizer, args)
    factors = []
    for _ in range(epochs):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_the_original_readme_commands_parse_with_their_meanings():
    args = main_mgd.get_parser().parse_args(
        ["DATA", "--arch", "mobilenet_v1", "--epochs", "120", "--print-freq", "10", "--batch-size", "256",
         "--learning-rate", "0.1", "--distiller", "mgd", "--mgd-reducer", "amp", "--mgd-update-freq", "1",
         "--warmup", "1", "--sync-bn", "1", "--mgd-with-kd", "1", "--use-pretrained", "0", "--pretrained",
         "--world-size", "1", "--rank", "0", "--dist-url", "tcp://localhost:10001", "--multiprocessing-distributed",
         "--teacher-resume", "t.pth", "--student-resume", "s.pth", "--evaluate"])
    assert (args.warmup, args.sync_bn, args.mgd_with_kd, args.pretrained, args.nesterov) == (1, 1, 1, True, 1)
    finish_args(args, tag="mgd.amp")
    assert args.epochs == 130 and args.lr_drop_epochs == [41, 71, 91]  # warm-up epochs come on top
    assert args.use_pretrained == 1 and args.output_dir.endswith("DATA.mobilenet_v1.mgd.amp")
    base = main_base.get_parser().parse_args(["DATA", "--arch", "mobilenet_v1", "--teacher-resume", "t.pth",
                                              "--student-resume", "s.pth", "--evaluate"])
    assert base.nesterov == 0 and base.lr_drop_epochs == [31, 61, 81] and base.warmup_epochs == 10


def test_multistep_schedule_drops_at_the_original_epochs():
    args = finish_args(main_base.get_parser().parse_args(["DATA"]), tag=None)
    factors = lr_factors(args, 90)
    assert factors[30] == 1.0 and factors[31] == pytest.approx(0.1) and factors[61] == pytest.approx(0.01)
    assert factors[81] == pytest.approx(0.001) and factors[80] == pytest.approx(0.01)


def test_warmup_is_the_original_linear_warmup_multistep():
    args = finish_args(main_base.get_parser().parse_args(["DATA", "--warmup", "1", "--lr-drop-epochs", "3"]),
                       tag=None)
    factors = lr_factors(args, 15)
    # WarmupMultiStepLR(warmup_factor=0.1, warmup_iters=10, linear): 0.1 (1 - e/10) + e/10, then the drops
    expected = [0.1 * (1 - e / 10) + e / 10 for e in range(10)] + [1.0, 1.0, 1.0, 0.1, 0.1]
    assert factors == pytest.approx(expected)
