"""mgd.engine.rundir and the resume checks: a folder is never silently overwritten, a diverged model never
saved, a checkpoint never resumed with settings it was not written with."""
import math
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mgd import distributed as mdist
from mgd.engine import Diverged, UserError, check_output_dir, refuse_non_finite, start_output_dir
from mgd.engine.checkpoints import check_epochs_left, check_resume_matches
from mgd.engine.rundir import first_non_finite, previous_checkpoints


NAMES = ("last.pth", "checkpoint_*.pth.tar")


def test_a_folder_with_a_previous_run_needs_resume_or_overwrite_which_moves_it_aside(tmp_path):
    out = tmp_path / "run"
    check_output_dir(str(out), NAMES)  # created
    assert out.is_dir() and previous_checkpoints(str(out), NAMES) == []
    (out / "matching_last.pth").write_bytes(b"x")  # a prepare artifact alone is no previous run
    check_output_dir(str(out), NAMES)
    for name in ("last.pth", "checkpoint_0003.pth.tar", ".tmp-abcdefgh.pth", "log.jsonl", "teacher.pth"):
        (out / name).write_bytes(b"x")
    assert previous_checkpoints(str(out), NAMES) == ["checkpoint_0003.pth.tar", "last.pth"]  # not teacher.pth
    with pytest.raises(UserError, match=f"holds a previous run .*--resume {out / 'last.pth'}.*--overwrite"):
        check_output_dir(str(out), NAMES)
    with pytest.raises(UserError, match="holds a previous run"):  # resuming another folder's checkpoint
        check_output_dir(str(out), NAMES, resume=str(tmp_path / "elsewhere" / "last.pth"))
    check_output_dir(str(out), NAMES, resume=str(out / "last.pth"))
    with pytest.raises(UserError, match=f"--overwrite would move {out / 'last.pth'} aside, but this run reads it "
                                        "\\(--student-resume\\)"):
        check_output_dir(str(out), NAMES, overwrite=True, inputs={"--student-resume": str(out / "last.pth")})
    check_output_dir(str(out), NAMES, overwrite=True, inputs={"--teacher-resume": str(out / "teacher.pth")})
    start_output_dir(str(out), NAMES, resume=False, rank=0, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["run.lock", "teacher.pth"]  # temporaries gone
    aside = [p for p in out.iterdir() if p.is_dir()]
    assert len(aside) == 1 and aside[0].name.startswith("previous-")
    assert sorted(p.name for p in aside[0].iterdir()) == ["checkpoint_0003.pth.tar", "last.pth", "log.jsonl",
                                                          "matching_last.pth"]


def test_an_output_dir_that_cannot_be_a_folder_or_written_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_dir(str(tmp_path / "file"), NAMES)
    with pytest.raises(UserError, match=f"{tmp_path / 'file'} is a file, not a folder"):
        check_output_dir(str(tmp_path / "file" / "a" / "b"), NAMES)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    with pytest.raises(UserError, match="is not writable: Permission denied"):
        check_output_dir(str(tmp_path / "ro"), NAMES)


def test_non_finite_weights_or_metrics_are_refused_before_a_save(tmp_path):
    good = {"w": torch.ones(2), "steps": torch.tensor(3)}
    refuse_non_finite({"the student": good, "the distiller": {}}, 0, str(tmp_path), val_loss=1.0)
    assert first_non_finite({**good, "b": torch.tensor([0.0, math.inf])}) == "b"
    with pytest.raises(Diverged, match="epoch 4: the distiller's b is not finite.*no checkpoint was written"):
        refuse_non_finite({"the student": good, "the distiller": {"b": torch.tensor([math.nan])}}, 4, str(tmp_path))
    (tmp_path / "last.pth").write_bytes(b"x")
    with pytest.raises(Diverged, match=f"the val loss is not finite.*last good checkpoint is {tmp_path / 'last.pth'}"):
        refuse_non_finite({"the student": good}, 4, str(tmp_path), val_loss=math.nan)


def test_resume_compares_the_settings_a_checkpoint_records():
    ckpt = {"arch": "resnet18", "num_classes": 10, "args": {"moco_k": 4096, "mlp": True, "lr": 0.1,
                                                            "mgd_reducer": None}}
    check_resume_matches(ckpt, "c.pth", arch="resnet18", num_classes=10, moco_k=4096, mlp=True, other=1,
                         mgd_reducer="amp")  # None: the flag's default, not recorded by older checkpoints
    for given, expect in (({"arch": "resnet50"}, "written with --arch resnet18, this run has --arch resnet50"),
                          ({"num_classes": 3}, "written with 10 classes, this run has 3 classes"),
                          ({"moco_k": 65536}, "--moco-k 4096, this run has --moco-k 65536"),
                          ({"mlp": False}, "written with --mlp, this run has no --mlp")):
        with pytest.raises(UserError, match=expect):
            check_resume_matches(ckpt, "c.pth", **given)
    check_epochs_left(3, 4, "c.pth")
    with pytest.raises(UserError, match="c.pth has already trained 4 epochs and --epochs is 4: nothing left"):
        check_epochs_left(4, 4, "c.pth")
    with pytest.raises(UserError, match="--start-epoch 5 is at or past --epochs 4: nothing to train"):
        check_epochs_left(5, 4)


def _diverging_rank(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        outcome = {"any": [mdist.any_rank(rank == 1, torch.device("cpu")), mdist.any_rank(False, torch.device("cpu"))]}
        bn_stats = {"bn.running_var": torch.tensor([math.nan if rank == 1 else 1.0])}  # differ between ranks
        try:
            refuse_non_finite({"the student": bn_stats}, 3, out_dir)
        except Diverged as exc:
            outcome["error"] = str(exc)
        torch.save(outcome, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_rank_stops_when_one_rank_diverged(tmp_path):
    mp.spawn(_diverging_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["any"] for r in ranks] == [[True, False], [True, False]]
    assert "epoch 3: another process's model is not finite" in ranks[0]["error"]
    assert "epoch 3: the student's bn.running_var is not finite" in ranks[1]["error"]
