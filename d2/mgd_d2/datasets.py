"""Users' own COCO-format datasets, registered from the command line (``train_net.py --register-coco``)."""
from __future__ import annotations

import os
from typing import Iterable, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances


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
