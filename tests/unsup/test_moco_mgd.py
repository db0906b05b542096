"""MoCo-v2 against its definitions, and the MoCo + MGD script end to end (2 gloo processes)."""
import json
import logging
import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from mgd.engine import UnreadableImage
from mgd.engine import data as engine_data
from mgd.engine import loop as engine_loop
from mgd.engine.data import epoch_order
from recipes import row_id, rows
from scripts import run_script
from unsup import main_moco_mgd
from unsup.moco import MoCo



def _moco(K=16, m=0.9, mlp=True):
    torch.manual_seed(0)
    return MoCo(torchvision.models.resnet18, dim=8, K=K, m=m, T=0.2, mlp=mlp)


def test_key_encoder_starts_as_query_encoder_and_follows_by_momentum():
    moco = _moco()
    for q, k in zip(moco.encoder_q.parameters(), moco.encoder_k.parameters()):
        assert torch.equal(q, k) and not k.requires_grad
    with torch.no_grad():
        for q in moco.encoder_q.parameters():
            q.add_(1.0)
    before = [k.clone() for k in moco.encoder_k.parameters()]
    moco.momentum_update_key_encoder()
    for q, k, k0 in zip(moco.encoder_q.parameters(), moco.encoder_k.parameters(), before):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q)


def test_queue_is_first_in_first_out():
    moco = _moco(K=6)
    keys1, keys2 = F.normalize(torch.randn(3, 8), dim=1), F.normalize(torch.randn(3, 8), dim=1)
    old = moco.queue.clone()
    moco.dequeue_and_enqueue(keys1)
    assert int(moco.queue_ptr) == 3
    torch.testing.assert_close(moco.queue[:, :3], keys1.t())
    torch.testing.assert_close(moco.queue[:, 3:], old[:, 3:])
    moco.dequeue_and_enqueue(keys2)
    assert int(moco.queue_ptr) == 0  # wrapped around
    torch.testing.assert_close(moco.queue, torch.cat([keys1, keys2]).t())
    with pytest.raises(ValueError, match="multiple"):
        moco.dequeue_and_enqueue(torch.randn(4, 8))


def test_logits_and_labels_follow_infonce():
    moco = _moco(K=16).eval()
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    queue = moco.queue.clone()
    logits, labels = moco(im_q, im_k)
    assert logits.shape == (4, 17) and labels.tolist() == [0, 0, 0, 0]
    with torch.no_grad():
        q = F.normalize(moco.encoder_q(im_q), dim=1)
        k = F.normalize(moco.encoder_k(im_k), dim=1)
    torch.testing.assert_close(logits[:, 0], (q * k).sum(1) / 0.2)
    torch.testing.assert_close(logits[:, 1:], q @ queue / 0.2)
    torch.testing.assert_close(moco.queue[:, :4], k.t())  # this step's keys entered the queue


def test_contrastive_loss_is_infonce_with_no_side_effect():
    """What --loss-factor auto weighs the distillation term against: the InfoNCE of a training step, without
    the step's momentum update, enqueue nor key-encoder BN statistics."""
    moco = _moco(K=16)
    im_q, im_k = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    state = {k: v.clone() for k, v in moco.state_dict().items()}
    with torch.no_grad():
        loss = moco.contrastive_loss(moco.encoder_q(im_q), im_k)
    for key, value in moco.encoder_k.state_dict().items():
        assert torch.equal(value, state["encoder_k." + key]), key
    assert torch.equal(moco.queue, state["queue"]) and int(moco.queue_ptr) == 0
    logits, labels = moco(im_q, im_k)  # the training step (its momentum update changes nothing yet: k = q)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert loss > math.log(17) / 2  # InfoNCE over 1 + K candidates starts near log(17)


# ---------------------------------------------------------------------------------------------- the script

def run(*argv, check=True):
    return run_script(os.path.join("unsup", "main_moco_mgd.py"), *argv, check=check)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unsup")
    gen = torch.Generator().manual_seed(0)
    for c in range(3):
        folder = root / "train" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(16):
            pixels = torch.randint(0, 255, (40, 40, 3), generator=gen, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{i}.png")
    torch.manual_seed(0)
    teacher = MoCo(torchvision.models.resnet34, dim=128, K=64, mlp=True)
    torch.save({"epoch": 200, "arch": "resnet34",
                "state_dict": {"module." + k: v for k, v in teacher.state_dict().items()}}, root / "teacher.pth.tar")
    return root


def args_for(data, out, epochs=1):
    return [data, "-a", "resnet18", "--teacher-arch", "resnet34", "--teacher-resume", data / "teacher.pth.tar",
            "--input-size", 32, "-b", 8, "--moco-k", 64, "--mlp", "--aug-plus", "--cos", "--moco-t", 0.2,
            "-j", 0, "--seed", 0, "--epochs", epochs, "--mgd-update-images", 16, "--output-dir", out]


def test_two_epochs_ddp_two_processes_then_resume(data, tmp_path):
    out = tmp_path / "run"
    run(*args_for(data, out, epochs=2), "--multiprocessing-distributed", "--dist-backend", "gloo",
        "--nproc-per-node", 2, "--loss-factor", "auto", "--loss-ratio", 2)
    with open(out / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    matching = [r for r in records if r.get("event") == "matching"]
    epochs = [r for r in records if "epoch" in r]
    assert [m["before_epoch"] for m in matching] == [0, 1]  # before training, and after epoch 1 (1-based)
    assert all(m["ranks"] == 2 and m["ranks_agree"] for m in matching)  # the ranks agree on the factor too
    factor = matching[0]["loss_factor"]
    assert math.isfinite(factor) and factor > 0 and matching[1]["loss_factor"] == factor  # measured once
    assert [m["num_updates"] for m in matching] == [1, 2]
    assert len(epochs) == 2 and all(e["loss_contrastive"] > 0 and e["loss_distill"] > 0 for e in epochs)
    assert all(math.isfinite(e["loss_contrastive"]) and math.isfinite(e["loss_distill"]) for e in epochs)
    assert 0 <= epochs[0]["instance_top1"] <= 100
    ckpt = torch.load(out / "checkpoint_last.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 2 and int(ckpt["distiller"]["num_updates"]) == 2
    assert int(ckpt["distiller"]["prepared_epoch"]) == 1
    assert float(ckpt["distiller"]["calibrated_loss_factor"]) == pytest.approx(factor, rel=1e-6)
    assert {"encoder_q.conv1.weight", "encoder_k.conv1.weight", "queue", "queue_ptr"} <= set(ckpt["state_dict"])
    # student_backbone.pth is the trained query encoder without its projection head: a plain resnet18 lacks only
    # its classifier (fc) and gets the checkpoint's encoder_q weights, not the key encoder's
    backbone = torch.load(out / "student_backbone.pth", weights_only=True)
    plain = torchvision.models.resnet18()
    result = plain.load_state_dict(backbone, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    for key, value in plain.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, ckpt["state_dict"]["encoder_q." + key]), key
    assert not all(torch.equal(value, ckpt["state_dict"]["encoder_k." + key]) for key, value in backbone.items())
    run(*args_for(data, out, epochs=3), "--resume", out / "checkpoint_last.pth.tar", "--mgd-update-epochs", 5,
        "--amp", "--loss-factor", "auto", "--loss-ratio", 2)
    with open(out / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["epoch"] for r in records if "epoch" in r] == [0, 1, 2]
    assert len([r for r in records if r.get("event") == "matching"]) == 2  # resumed: no new update due
    last = torch.load(out / "checkpoint_last.pth.tar", weights_only=True)
    assert last["epoch"] == 3 and last["args"]["amp"]
    assert float(last["distiller"]["calibrated_loss_factor"]) == pytest.approx(factor, rel=1e-6)  # not re-measured
    assert math.isfinite([r for r in records if "epoch" in r][-1]["loss_distill"])


def test_teacher_with_the_wrong_layout_is_one_line_and_exit_2(data, tmp_path):
    bad = tmp_path / "plain.pth"
    torch.save(torchvision.models.resnet34().state_dict(), bad)
    argv = args_for(data, tmp_path / "x")
    argv[argv.index("--teacher-resume") + 1] = bad
    proc = run(*argv, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no 'state_dict'" in lines[0] and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    run(*args_for(data, out))
    return out


@pytest.mark.parametrize("change,expect", [
    ({}, "holds a previous run (checkpoint_0000.pth.tar, checkpoint_last.pth.tar, student_backbone.pth)"),
    ({"-a": "resnet34"}, "was written with --arch resnet18, this run has --arch resnet34"),
    ({"--moco-k": 128}, "was written with --moco-k 64, this run has --moco-k 128"),
    ({"--mlp": None}, "was written with --mlp, this run has no --mlp"),
    ({"--epochs": 1}, "has already trained 1 epochs and --epochs is 1: nothing left to train"),
    ({"--epochs": 0}, "argument --epochs: '0' must be a positive integer"),
])
def test_a_finished_run_is_never_overwritten_nor_resumed_with_other_settings(change, expect, data, finished):
    argv = args_for(data, finished, epochs=2)
    if change:
        argv += ["--resume", finished / "checkpoint_last.pth.tar"]
    for flag, value in change.items():
        if value is None:
            argv.remove(flag)
        else:
            argv[argv.index(flag) + 1] = value
    before = (finished / "checkpoint_last.pth.tar").read_bytes()
    proc = run(*argv, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expect in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert (finished / "checkpoint_last.pth.tar").read_bytes() == before


def test_skip_bad_images_keeps_every_batch_full_for_the_queue(data, tmp_path, monkeypatch, capsys):
    """Without --skip-bad-images a truncated file stops the run with one line naming it; with it, every training
    batch stays full (the 48 images give 6 batches of 8: a dropped image would leave 5 under drop_last) because
    each unreadable sample is replaced by the next readable image of the folder: two broken files in a row
    (c1/3.png, c1/4.png) are both read as c1/5.png, in their own slots of the epoch's order, and warned once."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    broken = copy / "train" / "c1" / "3.png"
    broken.write_bytes(broken.read_bytes()[:80])
    argv = args_for(copy, tmp_path / "out")
    argv[argv.index("--teacher-resume") + 1] = data / "teacher.pth.tar"
    proc = run(*argv, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("epoch ")]
    assert proc.returncode == 2 and lines == [f"error: cannot read image {broken}: image file is truncated "
                                              "(--skip-bad-images skips such files with a warning)"], proc.stderr
    also = copy / "train" / "c1" / "4.png"  # the file after it in the folder's order: the next readable is 5.png
    also.write_bytes(also.read_bytes()[:80])
    paths = [path for path, _ in torchvision.datasets.ImageFolder(copy / "train").samples]
    assert paths.index(str(also)) == paths.index(str(broken)) + 1

    reads, sizes, training = [], [], [False]  # (file, decoded) of every read during training; the batch sizes
    real_read, real_train = engine_data.read_rgb_image, engine_loop.train_one_epoch

    def recording_read(path):
        try:
            image = real_read(path)
        except UnreadableImage:
            if training[0]:
                reads.append((path, False))
            raise
        if training[0]:
            reads.append((path, True))
        return image

    def recording_train(step, loader, *rest, **kw):
        def counted(batch):
            (im_q, im_k), _ = batch
            sizes.append((im_q.shape[0], im_k.shape[0]))
            return step(batch)
        training[0] = True
        try:
            return real_train(counted, loader, *rest, **kw)
        finally:
            training[0] = False
    monkeypatch.setattr(engine_data, "read_rgb_image", recording_read)
    monkeypatch.setattr(engine_loop, "train_one_epoch", recording_train)
    root = logging.getLogger()  # the script's logging setup writes to this test's captured stdout: undone after
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    capsys.readouterr()
    main_moco_mgd.main([str(a) for a in argv] + ["--skip-bad-images", "--overwrite"])  # in this process
    out = capsys.readouterr().out
    assert sizes == [(8, 8)] * 6  # MoCo's queue needs full batches: replaced, not dropped
    expected = []  # the epoch's order (seed 0, epoch 0, one process), each broken file followed to the next one
    for index in epoch_order(len(paths), 0, 0, 0, 1):
        while paths[index] in (str(broken), str(also)):
            expected.append((paths[index], False))
            index += 1
        expected.append((paths[index], True))
    assert reads == expected
    assert [p for p, ok in reads if ok].count(paths[paths.index(str(also)) + 1]) == 3  # its own slot and two more
    for bad in (broken, also):
        assert out.count(f"skipped (replaced by the next readable image): cannot read image {bad}") == 1, out
    assert torch.load(tmp_path / "out" / "checkpoint_last.pth.tar", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("method, term", [("ofd", "loss_ofd"), ("at", "loss_at"), ("sm", "loss_distill")])
def test_every_feature_method_pretrains_and_resumes_under_its_own_name(method, term, data, tmp_path):
    """--distiller takes any registered feature method, not only MGD: its term is logged and checkpointed under
    its name, and a resume with another method is one line."""
    out = tmp_path / method
    main_moco_mgd.main([str(a) for a in args_for(data, out)] + ["--distiller", method])  # in this process
    with open(out / "log.jsonl") as f:
        (epoch,) = [r for r in map(json.loads, f) if "epoch" in r]
    assert epoch[term] > 0 and {k for k in epoch if k.startswith("loss_")} == {"loss_contrastive", term}
    assert ("matching_updates" in epoch) == (method == "sm")  # the matchings solved so far, for MGD's
    ckpt = torch.load(out / "checkpoint_last.pth.tar", weights_only=True)
    assert ckpt["method"] == method and ckpt["args"]["distiller"] == method
    other = run(*args_for(data, out, epochs=2), "--resume", out / "checkpoint_last.pth.tar", check=False)
    assert other.returncode == 2 and f"was written with --distiller {method}, this run has --distiller mgd" in \
        other.stderr, other.stderr


@pytest.mark.parametrize("path", rows("unsup"), ids=row_id)
def test_each_recipe_row_pretrains_one_tiny_epoch(path, data, tmp_path):
    """configs/unsup: the row's student, teacher, method and MoCo-v2 settings as they are; the data, the input
    size, the batch, the queue and the teacher's (random) weights overridden."""
    args = main_moco_mgd.get_parser().parse_args(["DATA", "--config", path, "--teacher-resume", "T"])
    torch.manual_seed(0)
    teacher = MoCo(getattr(torchvision.models, args.teacher_arch), dim=128, K=64, mlp=args.mlp)
    weights = tmp_path / "teacher.pth.tar"
    torch.save({"epoch": 200, "arch": args.teacher_arch,
                "state_dict": {"module." + k: v for k, v in teacher.state_dict().items()}}, weights)
    out = tmp_path / "run"
    main_moco_mgd.main([str(data), "--config", path, "--teacher-resume", str(weights), "--input-size", "32",
                        "-b", "8", "--moco-k", "64", "-j", "0", "--seed", "0", "--epochs", "1",
                        "--mgd-update-images", "16", "--output-dir", str(out)])
    with open(out / "log.jsonl") as f:
        (epoch,) = [r for r in map(json.loads, f) if "epoch" in r]
    assert epoch["loss_contrastive"] > 0 and epoch["loss_distill"] > 0 and math.isfinite(epoch["loss_distill"])
