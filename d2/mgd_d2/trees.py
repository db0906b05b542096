"""A real detection set that ships inside a package, offline: the aerial tree images of PyPI ``deepforest``
(2.1.0, MIT; install it with ``pip install --no-deps deepforest==2.1.0``, which ``make`` does). Four RGB images
carry Pascal VOC annotations of 951 tree crowns. This module only reads those files (deepforest itself is not
imported: its dependencies are not needed), cuts the images into tiles and registers COCO-format datasets:

* ``trees_train``: every tile of ``2019_YELL_2_528000_4978000_image_crop2`` (2299 x 2472 px, 574 trees),
  ``OSBS_029`` (400 x 400, 61) and ``SOAP_061`` (400 x 400, 37; its "Alive"/"Dead" labels become "tree");
* ``trees_val``: every tile of the held-out image ``2019_YELL_2_541000_4977000_image_crop`` (1249 x 1035,
  279 trees), never seen in training (the same site, YELL, as the largest training image, another scene).

Tiles are ``TILE`` x ``TILE`` windows on a grid of stride ``TILE``; the last row and column are moved back to
end at the image border (so every tile is full size and the whole image is covered; those edge tiles overlap
their neighbours). A box is clipped to each tile it meets and kept where at least half of its area lies
inside (``MIN_VISIBLE``), so a tree cut by a tile border counts in the tile that holds most of it.
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Sequence, Tuple

from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from mgd.engine import UserError, package_file

TILE = 400
MIN_VISIBLE = 0.5
TRAIN_IMAGES = ("2019_YELL_2_528000_4978000_image_crop2", "OSBS_029", "SOAP_061")
VAL_IMAGES = ("2019_YELL_2_541000_4977000_image_crop",)
INSTALL = "pip install --no-deps deepforest==2.1.0 (or make venv)"

Box = Tuple[float, float, float, float]


def deepforest_data_dir() -> str:
    """deepforest's ``data`` folder; UserError saying how to install it when the package or a file is missing."""
    path = package_file("deepforest", "data", f"the aerial tree images ship with it: {INSTALL}")
    missing = [n for n in TRAIN_IMAGES + VAL_IMAGES if not os.path.isfile(os.path.join(path, n + ".xml"))]
    if missing:
        raise UserError(f"deepforest's data folder {path} lacks {missing}: {INSTALL}")
    return path


def read_voc(xml_path: str) -> List[Box]:
    """(x0, y0, x1, y1) of every object of a Pascal VOC file, whatever its label."""
    boxes = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        b = obj.find("bndbox")
        boxes.append(tuple(float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def tile_origins(length: int, tile: int = TILE) -> List[int]:
    """Start of each tile along one side: a stride-``tile`` grid whose last tile ends at the border."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile))
    return starts + [length - tile]


def clip_boxes(boxes: Sequence[Box], x0: int, y0: int, w: int, h: int) -> List[Box]:
    """Boxes in the window's coordinates, clipped to it; those with less than MIN_VISIBLE of their area inside
    are dropped."""
    out = []
    for bx0, by0, bx1, by1 in boxes:
        cx0, cy0 = max(bx0, x0), max(by0, y0)
        cx1, cy1 = min(bx1, x0 + w), min(by1, y0 + h)
        area = (bx1 - bx0) * (by1 - by0)
        if cx1 <= cx0 or cy1 <= cy0 or area <= 0 or (cx1 - cx0) * (cy1 - cy0) < MIN_VISIBLE * area:
            continue
        out.append((cx0 - x0, cy0 - y0, cx1 - x0, cy1 - y0))
    return out


def _image_file(data: str, stem: str) -> str:
    for ext in (".png", ".tif", ".jpg"):
        if os.path.isfile(os.path.join(data, stem + ext)):
            return os.path.join(data, stem + ext)
    raise FileNotFoundError(f"no image for {stem} in {data}")


def write_tiles(stems: Sequence[str], out_dir: str, name: str, data: str) -> Dict[str, int]:
    """Tile ``stems`` into ``out_dir/name/*.png`` and ``out_dir/name.json`` (COCO, one category "tree"), once: the
    JSON is written last and records the recipe, so a later call (another run, reading the tiles meanwhile) finds
    them complete and rewrites nothing."""
    recipe = {"stems": list(stems), "tile": TILE, "min_visible": MIN_VISIBLE}
    done = os.path.join(out_dir, name + ".json")
    if os.path.isfile(done):
        with open(done) as f:
            coco = json.load(f)
        if coco.get("info", {}).get("recipe") == recipe:
            return {"images": len(coco["images"]), "boxes": len(coco["annotations"])}
    os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    images, annotations = [], []
    for stem in stems:
        image = Image.open(_image_file(data, stem)).convert("RGB")
        boxes = read_voc(os.path.join(data, stem + ".xml"))
        width, height = image.size
        for y0 in tile_origins(height):
            for x0 in tile_origins(width):
                w, h = min(TILE, width), min(TILE, height)
                file_name = f"{stem}_{x0}_{y0}.png"
                image.crop((x0, y0, x0 + w, y0 + h)).save(os.path.join(out_dir, name, file_name))
                image_id = len(images) + 1
                images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
                for bx0, by0, bx1, by1 in clip_boxes(boxes, x0, y0, w, h):
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                        "bbox": [bx0, by0, bx1 - bx0, by1 - by0], "area": (bx1 - bx0) * (by1 - by0),
                                        "iscrowd": 0})
    with open(done + ".tmp", "w") as f:
        json.dump({"info": {"recipe": recipe}, "images": images, "annotations": annotations,
                   "categories": [{"id": 1, "name": "tree"}]}, f)
    os.replace(done + ".tmp", done)
    return {"images": len(images), "boxes": len(annotations)}


def register_trees(out_dir: str) -> Dict[str, Dict[str, int]]:
    """Write the tiles (once; kept in ``out_dir``) and register ``trees_train`` and ``trees_val``; returns the
    number of tiles and boxes of each."""
    data = deepforest_data_dir()
    counts = {}
    for name, stems in (("trees_train", TRAIN_IMAGES), ("trees_val", VAL_IMAGES)):
        counts[name] = write_tiles(stems, out_dir, name, data)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, os.path.join(out_dir, name + ".json"), os.path.join(out_dir, name))
    return counts
