"""The generated COCO-format train/val sets of the d2/ tests, made and registered once per session."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import toy  # noqa: E402


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    toy.make_coco(root, toy.TRAIN, 6, 0)
    toy.make_coco(root, toy.VAL, 3, 1)
    return root
