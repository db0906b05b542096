"""The tiny generated segmentation set and teacher every seg/ test shares (generated once per session)."""
import pytest
import torch

from seg.models import build_model
from seg_runs import write_folder_set
from tiny_models import randomize_bn


@pytest.fixture(scope="session")
def seg_folder(tmp_path_factory):
    return write_folder_set(tmp_path_factory.mktemp("segdata"))


@pytest.fixture(scope="session")
def seg_teacher(tmp_path_factory):
    """A DeepLabV3+ ResNet-18 with trained-looking BNs (3 classes), saved as a state dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("segteacher") / "teacher.pth"
    torch.save(randomize_bn(build_model("deeplabv3plus_resnet18", 3)).state_dict(), path)
    return path
