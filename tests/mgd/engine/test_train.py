"""mgd.engine: one training epoch, the prepare step, mixed precision state, run logs, the wrappers."""
import json
import math

import pytest
import torch
from torch import nn

import mgd
from mgd.distillers.base import TrainableDistiller
from mgd.engine import (Diverged, Meter, Precision, ReplicaStep, RunLog, UserError, prepare_if_due, train_one_epoch,
                        wrap_for_training)

from tiny_models import randomize_bn, tiny_resnet


def test_train_one_epoch_averages_parts_and_stops_on_a_non_finite_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    precision = Precision(False, None, torch.device("cpu"))
    batches = [torch.ones(2, 3), torch.ones(4, 3)]

    def step(x):
        loss = model(x).pow(2).mean()
        return loss, {"size": float(x.shape[0])}, x.shape[0]
    stats = train_one_epoch(step, batches, optimizer, precision, 0, torch.device("cpu"), show_progress=False)
    assert stats["size"] == pytest.approx((2 * 2 + 4 * 4) / 6)  # weighted by the batch sizes
    assert model.weight.grad is not None

    def diverging(x):
        return torch.tensor(float("nan"), requires_grad=True), {"distill": math.inf}, 1
    before = model.weight.detach().clone()
    with pytest.raises(Diverged, match="diverged in epoch 4: the loss is nan.*distill inf.*--lr.*; resume here"):
        train_one_epoch(diverging, batches, optimizer, precision, 4, torch.device("cpu"), show_progress=False,
                        last_good="resume here")
    assert torch.equal(model.weight, before)  # stopped before the update
    assert issubclass(Diverged, UserError)  # one line and exit code 2 in the scripts


def test_precision_scaler_only_with_float16_and_its_state_round_trips():
    cpu = torch.device("cpu")
    assert not Precision(True, None, cpu).scaler.is_enabled()  # bfloat16 on the CPU: no scaler needed
    assert Precision(True, None, cpu).dtype == torch.bfloat16
    fp16 = Precision(True, "float16", cpu)
    assert fp16.scaler.is_enabled() and fp16.describe() == "autocast float16 with GradScaler"
    fp16.scaler.scale(torch.tensor(1.0))  # the scale exists once used
    fp16.scaler.update(1024.0)
    other = Precision(True, "float16", cpu)
    other.load_state_dict(fp16.state_dict())
    assert other.scaler.get_scale() == 1024.0
    with pytest.raises(ValueError, match="float16, bfloat16"):
        Precision(True, "float8", cpu)
    with Precision(True, "bfloat16", cpu).autocast():
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    x = Precision(False, None, cpu, channels_last=True).to_device(torch.zeros(2, 3, 4, 4))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_prepare_step_runs_when_due_checks_agreement_and_logs(tmp_path):
    torch.manual_seed(0)
    d = mgd.build_distiller("mgd", randomize_bn(tiny_resnet(True)), tiny_resnet(False), update_freq=2)
    log = RunLog(str(tmp_path), rank=0)
    batches = [torch.randn(4, 3, 32, 32)]
    calls = []

    def loader(epoch):
        calls.append(epoch)
        return batches
    for epoch in range(4):
        prepare_if_due(d, epoch, loader, log)
    assert calls == [0, 2] and int(d.num_updates) == 2
    records = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["before_epoch"] for r in records] == [0, 2]
    assert all(r["event"] == "matching" and r["ranks_agree"] and r["ranks"] == 1 for r in records)
    assert {"num_updates", "stage3_matched_cost"} <= set(records[-1])
    for record in records:  # what matching buys, how much it moved, how long it took
        for i in range(4):
            assert 0 <= record[f"stage{i}_matched_cost"] < record[f"stage{i}_random_cost"] <= 4
            assert record[f"stage{i}_solve_seconds"] >= 0
        assert record["track_seconds"] >= 0
    assert records[0]["stage3_changed"] is None and records[1]["stage3_changed"] == 0.0  # the same images
    saved = torch.load(tmp_path / "matching_last.pth", weights_only=True)
    assert torch.equal(saved["stage3_guided_inds"], d.guided_inds[3]) and saved["stage3_cost"].shape == (512, 2048)
    kd = mgd.build_distiller("kd", d.t_net, d.s_net)
    assert prepare_if_due(kd, 0, loader, log) == {} and calls == [0, 2]  # KD derives nothing from data
    assert kd.prepare_artifacts() == {}


def test_run_log_gives_event_records_tensorboard_scalars_at_their_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = RunLog(str(tmp_path), rank=0, tensorboard=True)
    log.write({"event": "matching", "before_epoch": 2, "ranks": 2, "ranks_agree": True, "stage1_matched_cost": 0.5,
               "stage1_changed": None, "note": "text"})
    log.write({"epoch": 2, "top1": 50.0})
    log.write({"event": "matching", "stage1_matched_cost": 0.25})  # no step: JSON only
    log.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["matching/stage1_matched_cost", "top1"]
    assert [(e.step, e.value) for e in events.Scalars("matching/stage1_matched_cost")] == [(2, 0.5)]
    assert len(open(tmp_path / "log.jsonl").readlines()) == 3


def test_run_log_writes_json_lines_and_meter_weights_by_count(tmp_path):
    log = RunLog(str(tmp_path), rank=0)
    log.write({"epoch": 0, "top1": 50.0})
    RunLog(str(tmp_path), rank=1).write({"epoch": 0, "top1": 1.0})  # other ranks write nothing
    log.write({"epoch": 1, "val_loss": math.nan, "parts": [math.inf, 1.0]})
    text = open(tmp_path / "log.jsonl").read()
    lines = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in log.jsonl")) for line in
             text.splitlines()]  # strict JSON: no bare NaN/Infinity
    assert len(lines) == 2 and lines[0]["top1"] == 50.0 and "time" in lines[0]
    assert lines[1]["val_loss"] is None and lines[1]["parts"] == [None, 1.0]
    meter = Meter()
    meter.update(2, loss=1.0)
    meter.add_counts(2, loss=6.0)
    assert meter.averages(torch.device("cpu")) == {"loss": 2.0}


def test_wrappers_call_forward_train_and_hold_no_teacher():
    torch.manual_seed(0)
    d = mgd.build_distiller("kd", randomize_bn(tiny_resnet(True)), tiny_resnet(False))
    wrapped = wrap_for_training(d, torch.device("cpu"), distributed=False)
    assert isinstance(wrapped, TrainableDistiller)
    assert not {id(p) for p in wrapped.parameters()} & {id(p) for p in d.t_net.parameters()}
    x = torch.randn(2, 3, 32, 32)
    logits, losses = wrapped(x)
    assert logits.shape == (2, 10) and set(losses) == {"kd"}
    plain = nn.Linear(2, 2)
    assert wrap_for_training(plain, torch.device("cpu"), distributed=False) is plain


def test_a_failing_prepare_is_a_user_error_naming_the_epoch(tmp_path):
    torch.manual_seed(0)
    nd = mgd.build_distiller("nd", randomize_bn(tiny_resnet(True)), tiny_resnet(False))
    loader = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))]  # 8 of the 10 classes have no image
    with pytest.raises(UserError, match="class_means before epoch 3 failed: no training image of class"):
        prepare_if_due(nd, 3, lambda epoch: loader, RunLog(str(tmp_path), rank=0))


def test_data_parallel_replicas_re_enter_the_runs_autocast_and_keep_the_teacher_in_eval():
    """DataParallel's threads inherit whether autocast is on, not its dtype: the replica step re-enters it."""
    linear = nn.Linear(2, 2)
    step = ReplicaStep(linear, Precision(True, "bfloat16", torch.device("cpu")))
    with torch.autocast("cpu", dtype=torch.float16):  # what a worker thread would see
        assert step(torch.ones(1, 2)).dtype == torch.bfloat16
    torch.manual_seed(0)
    d = mgd.build_distiller("kd", randomize_bn(tiny_resnet(True)), tiny_resnet(False))
    replica = ReplicaStep(d)
    d.t_net.train()
    replica.train()
    assert not d.t_net.training and d.s_net.training
    logits, losses = replica(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and set(losses) == {"kd"}
