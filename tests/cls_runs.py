"""How the cls/ tests run the scripts: the tiny models, the flags every run shares, the run log."""
import json
import os

from scripts import run_script

STUDENT, TEACHER = "cifar_resnet8_w8", "cifar_resnet8_w16"


def run(script, *argv, check=True):
    return run_script(os.path.join("cls", script), *argv, check=check)


def common(data, out, epochs=1):
    return [data, "--input-size", 16, "-b", 8, "--lr", 0.05, "-j", 0, "--seed", 0, "--epochs", epochs,
            "--output-dir", out, "-a", STUDENT]


def mgd_args(data, out, teacher, epochs=1):
    return common(data, out, epochs) + ["--teacher-arch", TEACHER, "--teacher-resume", teacher,
                                        "--mgd-update-freq", 1, "--mgd-update-images", 24]


def records(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]
