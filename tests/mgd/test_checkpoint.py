"""mgd.checkpoint: atomic writes that survive a failing write, loads that refuse arbitrary objects."""
import io
import os
import pickle
import signal
import tempfile
import threading
import time
import zipfile

import pytest
import torch

from mgd.checkpoint import atomic_save, deferred_signals, remove_stale_temporaries, safe_load, strip_prefix


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


# ------------------------------------------------------------------------------------------------ formats
def _torch_bytes(**kwargs):
    buf = io.BytesIO()
    torch.save({"w": torch.arange(100)}, buf, **kwargs)
    return buf.getvalue()


def _zip_without_data_pkl():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    return buf.getvalue()


NOT_TORCH = "not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy torch.save file)"


@pytest.mark.parametrize("content, reason", [
    (b"epoch 3, top-1 71.2\n", NOT_TORCH),
    (b"", "empty file (0 bytes), " + NOT_TORCH),
    (bytes(range(7, 250)) * 3, NOT_TORCH),
    (pickle.dumps({"w": [1, 2]}), NOT_TORCH),
    (_zip_without_data_pkl(), "a zip archive without data.pkl, not a torch.save checkpoint"),
    (_torch_bytes()[:700], "truncated or corrupt torch.save zip archive (its central directory is missing: "
                           "an interrupted write or copy?)"),
    (_torch_bytes(_use_new_zipfile_serialization=False)[:40],
     "truncated torch.save file (it ends early: an interrupted write or copy?)"),
], ids=["text", "empty", "random-bytes", "plain-pickle", "other-zip", "truncated-zip", "truncated-legacy"])
def test_a_file_that_is_no_checkpoint_is_one_clear_line(tmp_path, content, reason):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    with pytest.raises(RuntimeError) as info:
        safe_load(str(path))
    assert str(info.value) == f"cannot read checkpoint {path}: {reason}"


@pytest.mark.parametrize("kwargs", [{}, {"_use_new_zipfile_serialization": False}], ids=["zip", "legacy"])
def test_both_torch_save_formats_still_load(tmp_path, kwargs):
    path = tmp_path / "model.pth"
    path.write_bytes(_torch_bytes(**kwargs))
    assert torch.equal(safe_load(str(path))["w"], torch.arange(100))


# ------------------------------------------------------------------------------------------------ signals
def _save_interrupted_by(monkeypatch, *signals):
    """torch.save that receives ``signals`` before it writes anything (as if Ctrl-C came mid-write)."""
    real_save = torch.save

    def save(obj, f):
        for sig in signals:
            os.kill(os.getpid(), sig)
        time.sleep(0.01)  # room for a handler to run, were the signal not deferred
        real_save(obj, f)
    monkeypatch.setattr(torch, "save", save)


def test_ctrl_c_during_the_save_completes_the_checkpoint_then_raises(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    seen = []

    def on_sigint(signum, frame):
        seen.append(torch.equal(safe_load(path)["w"], torch.arange(5)))  # the file is complete by then
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, on_sigint)
    _save_interrupted_by(monkeypatch, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.arange(5)}, path)
    assert seen == [True]
    assert os.listdir(tmp_path) == ["last.pth"]
    assert signal.getsignal(signal.SIGINT) is on_sigint


def test_default_sigint_handler_gives_keyboard_interrupt_after_the_write(tmp_path, monkeypatch):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    path = str(tmp_path / "last.pth")
    _save_interrupted_by(monkeypatch, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.arange(5)}, path)
    monkeypatch.undo()
    assert torch.equal(safe_load(path)["w"], torch.arange(5))
    assert os.listdir(tmp_path) == ["last.pth"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_reaches_the_previous_handler_once_after_the_rename(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    calls = []
    previous_int = signal.getsignal(signal.SIGINT)

    def on_sigterm(signum, frame):
        calls.append((signum, os.listdir(tmp_path)))
    signal.signal(signal.SIGTERM, on_sigterm)
    _save_interrupted_by(monkeypatch, signal.SIGTERM, signal.SIGTERM)
    atomic_save({"w": torch.arange(5)}, path)
    assert calls == [(signal.SIGTERM, ["last.pth"])]  # once, after the rename, no temporary left
    assert signal.getsignal(signal.SIGTERM) is on_sigterm
    assert signal.getsignal(signal.SIGINT) is previous_int


def test_a_save_outside_the_main_thread_installs_no_handler(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    handlers = []
    real_save = torch.save

    def save(obj, f):
        handlers.append(signal.getsignal(signal.SIGINT))
        real_save(obj, f)
    monkeypatch.setattr(torch, "save", save)
    errors = []
    thread = threading.Thread(target=lambda: _capture(errors, atomic_save, {"w": torch.arange(5)}, path))
    thread.start()
    thread.join()
    monkeypatch.undo()
    assert errors == []
    assert handlers == [signal.getsignal(signal.SIGINT)]  # the main thread's handler, untouched
    assert torch.equal(safe_load(path)["w"], torch.arange(5))


def _capture(errors, fn, *args):
    try:
        fn(*args)
    except BaseException as exc:  # reported to the test's thread
        errors.append(exc)


# ------------------------------------------------------------------------------------------------ stale temporaries
def test_remove_stale_temporaries_removes_only_atomic_save_temporaries(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    fd, stale = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)  # atomic_save's own naming
    os.write(fd, b"half a checkpoint")
    os.close(fd)
    atomic_save({"w": torch.arange(3)}, str(folder / "last.pth"))
    keep = [".tmp-notes.txt", "tmp-abcdefgh.pth", ".tmp-abc.pth", ".tmp-abcdefgh.pth.bak", "model.pth"]
    for name in keep:
        (folder / name).write_bytes(b"x")
    (folder / ".tmp-zzzzzzzz.pth").mkdir()  # a folder with the name is not a temporary file
    assert remove_stale_temporaries(str(folder)) == [stale]
    assert sorted(os.listdir(folder)) == sorted(keep + ["last.pth", ".tmp-zzzzzzzz.pth"])
    assert remove_stale_temporaries(str(folder)) == []
    assert remove_stale_temporaries(str(tmp_path / "missing")) == []


def test_remove_stale_temporaries_spares_recent_files_when_asked(tmp_path):
    recent = tmp_path / ".tmp-abcd1234.pth"
    old = tmp_path / ".tmp-old_5678.pth"
    recent.write_bytes(b"x")
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temporaries(str(tmp_path), min_age_s=60) == [str(old)]
    assert recent.exists()
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        remove_stale_temporaries(str(recent))
    with pytest.raises(ValueError, match="min_age_s must be >= 0"):
        remove_stale_temporaries(str(tmp_path), min_age_s=-1)


def test_a_set_of_saves_finishes_before_a_ctrl_c_that_arrives_between_them(tmp_path):
    """cls/ writes last.pth, best.pth and student.pth under one deferral: none is left stale."""
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            atomic_save({"a": torch.ones(1)}, str(tmp_path / "last.pth"))
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the two files
            atomic_save({"b": torch.ones(1)}, str(tmp_path / "best.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_atomic_save_gives_the_file_the_modes_of_torch_save_under_the_umask(tmp_path):
    import stat
    old = os.umask(0o027)
    try:
        atomic_save({"x": torch.zeros(1)}, str(tmp_path / "a.pth"))
        torch.save({"x": torch.zeros(1)}, tmp_path / "b.pth")
    finally:
        os.umask(old)
    modes = [stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("a.pth", "b.pth")]
    assert modes == [0o640, 0o640]  # not mkstemp's 0600
