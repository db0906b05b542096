"""How the cls/ tests run the scripts: the tiny models, the flags every run shares, the run log."""
import json
import os

from scripts import run_script

STUDENT, TEACHER = "cifar_resnet8_w8", "cifar_resnet8_w16"


def run(script, *argv, check=True):
    return run_script(os.path.join("cls", script), *argv, check=check)


def run_here(script, *argv):
    """The script's ``main`` in this process (no interpreter start-up: a few seconds less a run); a UserError
    propagates. For runs that need no process of their own (no spawned workers, no signals)."""
    import importlib
    importlib.import_module(f"cls.{script[:-3]}").main([str(a) for a in argv])


def common(data, out, epochs=1):
    return [data, "--input-size", 16, "-b", 8, "--lr", 0.05, "-j", 0, "--seed", 0, "--epochs", epochs,
            "--output-dir", out, "-a", STUDENT]


def mgd_args(data, out, teacher, epochs=1):
    return common(data, out, epochs) + ["--teacher-arch", TEACHER, "--teacher-resume", teacher,
                                        "--mgd-update-freq", 1, "--mgd-update-images", 24]


def records(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def full_and_resumed(data, teacher, tmp_path, epochs, *flags):
    """main_mgd.py with ``flags`` trained for ``epochs`` at once, and for ``epochs - 1`` then resumed to
    ``epochs``: (the two last.pth checkpoints, the two run folders)."""
    import torch
    full, part = tmp_path / "full", tmp_path / "part"
    launch = run if "--multiprocessing-distributed" in flags else run_here  # spawned workers: a process of its own
    launch("main_mgd.py", *mgd_args(data, full, teacher, epochs=epochs), *flags)
    launch("main_mgd.py", *mgd_args(data, part, teacher, epochs=epochs - 1), *flags)
    launch("main_mgd.py", *mgd_args(data, part, teacher, epochs=epochs), *flags, "--resume", part / "last.pth")
    return (torch.load(full / "last.pth", weights_only=True), torch.load(part / "last.pth", weights_only=True),
            full, part)


def differing_tensors(a, b, keys=("student", "distiller")):
    """The names of the tensors of two checkpoints' ``keys`` that are not bit-equal."""
    import torch
    return [f"{key}.{name}" for key in keys for name, value in a[key].items() if not torch.equal(value, b[key][name])]
