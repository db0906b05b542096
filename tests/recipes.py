"""The configs/ folder as the tests see it: each application's rows (files with a ``_meta_``; the ``_base_``
files they extend are not runs), their settings as the script parses them, and random teacher weights for
the teachers they name (BN statistics like a trained network's), saved once per session in half precision."""
import glob
import os

import torch

from scripts import ROOT
from tiny_models import randomize_bn

CONFIG_DIR = os.path.join(ROOT, "configs")


def all_configs():
    return sorted(glob.glob(os.path.join(CONFIG_DIR, "*", "*.yaml")))


def rows(folder):
    """The row files of ``configs/<folder>/`` (not the ``*_base.yaml`` recipes they extend)."""
    return [c for c in all_configs() if os.path.basename(os.path.dirname(c)) == folder
            and not c.endswith("_base.yaml")]


def row_id(path):
    return os.path.basename(path)


class TeacherWeights:
    """arch -> a saved state dict of a freshly built, BN-randomised teacher (built at most once per arch)."""

    def __init__(self, root, build):
        self.root, self.build, self.paths = root, build, {}

    def __getitem__(self, arch):
        if arch not in self.paths:
            torch.manual_seed(0)
            path = self.root / (arch.replace("/", "_") + ".pth")
            state = randomize_bn(self.build(arch)).state_dict()
            torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
            self.paths[arch] = path
        return self.paths[arch]
