"""mgd.checkpoint: atomic writes that survive a failing write, loads that refuse arbitrary objects."""
import os
import pickle

import pytest
import torch

from mgd.checkpoint import atomic_save, safe_load, strip_prefix


def test_atomic_save_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "last.pth"
    atomic_save({"w": torch.arange(3)}, str(path))
    atomic_save({"w": torch.arange(5)}, str(path))
    assert torch.equal(safe_load(str(path))["w"], torch.arange(5))
    assert os.listdir(path.parent) == ["last.pth"]  # no temporary file left behind


def test_a_failing_write_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    atomic_save({"epoch": torch.tensor(1)}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        atomic_save({"epoch": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(safe_load(path)["epoch"]) == 1
    assert os.listdir(tmp_path) == ["last.pth"]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_safe_load_refuses_arbitrary_objects_and_names_the_file(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": Payload()}, evil)
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*evil.pth.*weights_only"):
        safe_load(str(evil))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(pickle.dumps("not torch") + b"garbage")
    with pytest.raises(RuntimeError, match="cannot read checkpoint .*junk.pth"):
        safe_load(str(junk))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        safe_load(str(tmp_path / "missing.pth"))


def test_strip_prefix_removes_only_the_wrapper_prefix():
    state = {"module.conv.weight": 1, "fc.bias": 2, "module.module.x": 3}
    assert strip_prefix(state) == {"conv.weight": 1, "fc.bias": 2, "module.x": 3}
