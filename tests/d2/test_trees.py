"""The real tree set of benchmarks/d2_trees.py (mgd_d2/trees.py): the tiling rule, the boxes kept, the counts the
d2 README states, and a clear error without the deepforest package."""
import importlib.util
import os

import pytest
from PIL import Image

from detectron2.data import DatasetCatalog

from mgd.engine import UserError
from mgd_d2 import trees  # d2/ is on the path: tests/d2/conftest.py


def test_tiles_cover_the_image_and_the_last_ones_end_at_the_border():
    assert trees.tile_origins(1035) == [0, 400, 635]
    assert trees.tile_origins(1249) == [0, 400, 800, 849]
    assert trees.tile_origins(400) == [0] and trees.tile_origins(300) == [0]


def test_a_box_is_kept_where_at_least_half_of_it_is_inside_and_clipped():
    boxes = [(390.0, 10.0, 410.0, 20.0),   # half inside the first tile: kept there and in the next one
             (394.0, 30.0, 410.0, 40.0),   # 37.5 % inside the first tile: only in the next
             (50.0, 50.0, 60.0, 70.0)]     # wholly inside the first
    assert trees.clip_boxes(boxes, 0, 0, 400, 400) == [(390.0, 10.0, 400, 20.0), (50.0, 50.0, 60.0, 70.0)]
    assert trees.clip_boxes(boxes, 400, 0, 400, 400) == [(0, 10.0, 10.0, 20.0), (0, 30.0, 10.0, 40.0)]


def test_the_registered_sets_are_the_ones_the_readme_states(tmp_path):
    counts = trees.register_trees(str(tmp_path))
    assert counts == {"trees_train": {"images": 44, "boxes": 777}, "trees_val": {"images": 12, "boxes": 400}}
    tile = tmp_path / "trees_val" / sorted(os.listdir(tmp_path / "trees_val"))[0]
    written = tile.stat().st_mtime_ns
    assert trees.register_trees(str(tmp_path)) == counts  # the second time: read back, nothing rewritten
    assert tile.stat().st_mtime_ns == written
    records = DatasetCatalog.get("trees_val")
    assert len(records) == 12
    assert {r["file_name"].split("/")[-1].rsplit("_", 2)[0] for r in records} == set(trees.VAL_IMAGES)
    for record in records[:3]:
        assert Image.open(record["file_name"]).size == (400, 400)
        for ann in record["annotations"]:  # COCO's x, y, width, height, inside the tile
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 400 and y + h <= 400


def test_without_deepforest_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"the package deepforest is not installed; the aerial tree images ship with "
                                        r"it: pip install --no-deps deepforest==2.1.0"):
        trees.deepforest_data_dir()
