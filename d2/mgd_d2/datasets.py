"""Users' own COCO-format datasets, registered from the command line (``train_net.py --register-coco``)."""
from __future__ import annotations

import json
import logging
import os
from typing import Iterable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

logger = logging.getLogger("detectron2")


def register_coco_datasets(entries: Iterable[Sequence[str]]) -> None:
    """Register each (NAME, JSON, IMAGE_DIR) with detectron2's ``register_coco_instances``; run in every
    process before the config is used. A name registered again with the same files is left as it is (a
    second call in one process); another dataset under a taken name, or a missing file, is a ValueError."""
    for entry in entries:
        if len(entry) != 3:
            raise ValueError(f"--register-coco takes NAME JSON IMAGE_DIR, got {list(entry)}")
        name, json_file, image_root = entry
        if not os.path.isfile(json_file):
            raise ValueError(f"--register-coco {name}: annotation file not found: {json_file}")
        if not os.path.isdir(image_root):
            raise ValueError(f"--register-coco {name}: image folder not found: {image_root}")
        json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if getattr(meta, "json_file", None) == json_file and getattr(meta, "image_root", None) == image_root:
                continue
            raise ValueError(f"--register-coco: the name {name!r} is already registered (to other files); "
                             "choose another name")
        register_coco_instances(name, {}, json_file, image_root)


def check_coco_file(name: str, json_file: str, image_root: str) -> None:
    """What detectron2 would otherwise find in the middle of a run (a KeyError, a missing file): ValueError for
    a file that is not JSON, without images / annotations / categories, an annotation of an unknown category,
    an image that is not in ``image_root``; a warning naming the boxes of zero size or outside their image
    (detectron2 trains on them as they are). Run once, in the launching process."""
    where = f"--register-coco {name}: {json_file}"
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{where} has no {', '.join(missing)} list (a COCO instances file has all three)")
    categories = {c.get("id") for c in data["categories"]}
    bad = [a for a in data["annotations"] if a.get("category_id") not in categories]
    if bad:
        raise ValueError(f"{where}: {len(bad)} annotation(s) of unknown categories (first: id {bad[0].get('id')} "
                         f"with category_id {bad[0].get('category_id')}; the categories: "
                         f"{sorted(categories, key=str)[:10]})")
    absent = [im.get("file_name") for im in data["images"]
              if not os.path.isfile(os.path.join(image_root, str(im.get("file_name"))))]
    if absent:
        raise ValueError(f"{where}: {len(absent)} image(s) not found in {image_root} (first: {absent[0]})")
    sizes = {im.get("id"): (im.get("width"), im.get("height")) for im in data["images"]}
    odd = []
    for a in data["annotations"]:
        x, y, w, h = (list(a.get("bbox") or []) + [0, 0, 0, 0])[:4]
        width, height = sizes.get(a.get("image_id"), (None, None))
        outside = width is not None and height is not None and (x < -1 or y < -1 or x + w > width + 1
                                                                or y + h > height + 1)
        if w <= 0 or h <= 0 or outside:
            odd.append(a.get("id"))
    if odd:
        logger.warning("%s: %d box(es) of zero size or outside their image (first: annotation %s); detectron2 "
                       "trains on them as they are", where, len(odd), odd[0])


def check_datasets_registered(names: Iterable[str], what: str) -> None:
    """ValueError naming a dataset of the config (DATASETS.TRAIN / TEST) that no one registered."""
    known = set(DatasetCatalog.list())
    for name in names:
        if name not in known:
            raise ValueError(f"{what} names {name!r}, which is not a registered dataset: register yours with "
                             "--register-coco NAME JSON IMAGE_DIR (detectron2's builtin ones need their files "
                             "under $DETECTRON2_DATASETS)")
