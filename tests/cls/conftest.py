"""The data and teacher every cls/ test module shares: generated once per test session."""
import shutil

import pytest
import torch
from PIL import Image

from cls.models import build_model
from cls_runs import TEACHER
from tiny_models import randomize_bn

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """3 classes, 16 training and 4 validation 16x16 images each; the colour tells the class."""
    root = tmp_path_factory.mktemp("imgs")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 16), ("valid", 4)):
        for c, color in enumerate(COLORS):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(-40, 40, (16, 16, 3), generator=gen)
                pixels = (torch.tensor(color).view(1, 1, 3) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def teacher_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pth"
    state = randomize_bn(build_model(TEACHER, 3)).state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return path


@pytest.fixture(scope="session")
def few_images(image_folder, tmp_path_factory):
    """The first four training and one validation image of each class: two steps of 6 images per tiny run."""
    root = tmp_path_factory.mktemp("few")
    for split, count in (("train", 4), ("valid", 1)):
        for folder in sorted((image_folder / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, root / split / folder.name / image.name)
    return root
