"""A small generated COCO-format dataset (two coloured boxes per 128x96 image) and tiny-run configs for the
d2/ tests; registered once per session (tests/d2/conftest.py)."""
import json
import os
import sys

import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
D2 = os.path.join(ROOT, "d2")
if D2 not in sys.path:
    sys.path.insert(0, D2)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402

from mgd_d2 import add_mgd_config  # noqa: E402

CONFIGS = os.path.join(D2, "configs")
CONFIG = os.path.join(CONFIGS, "mgd_retinanet_R50_R18_FPN_1x.yaml")
TRAIN, VAL = "mgd_toy_train", "mgd_toy_val"


def make_coco(root, name, count, seed, register=True):
    """``count`` images under root/name and root/name.json; registered as ``name`` (replacing any earlier)."""
    gen = torch.Generator().manual_seed(seed)
    images, annotations = [], []
    os.makedirs(root / name, exist_ok=True)
    for i in range(count):
        pixels = torch.randint(0, 60, (96, 128, 3), generator=gen, dtype=torch.uint8)
        for j in range(2):
            x, y = int(torch.randint(0, 80, (1,), generator=gen)), int(torch.randint(0, 50, (1,), generator=gen))
            w, h = 24 + 8 * j, 30 - 6 * j
            pixels[y:y + h, x:x + w] = torch.tensor([220, 40, 40] if j == 0 else [40, 220, 40], dtype=torch.uint8)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": j + 1,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        Image.fromarray(pixels.numpy()).save(root / name / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 96, "width": 128})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}))
    if register:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(path), str(root / name))
    return path


#: Tiny-run settings: 96 px images, 2 images per batch, 6 iterations, checkpoints every 3, updates at 0, 2, 5.
TINY = {"MODEL.DEVICE": "cpu", "MODEL.WEIGHTS": "", "MODEL.RETINANET.NUM_CLASSES": 2,
        "MODEL.ROI_HEADS.NUM_CLASSES": 2, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 64,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN": 200, "MODEL.RPN.POST_NMS_TOPK_TEST": 100,
        "DATASETS.TRAIN": (TRAIN,), "DATASETS.TEST": (VAL,),
        "INPUT.MIN_SIZE_TRAIN": (96,), "INPUT.MAX_SIZE_TRAIN": 128, "INPUT.MIN_SIZE_TEST": 96,
        "INPUT.MAX_SIZE_TEST": 128, "SOLVER.IMS_PER_BATCH": 2, "SOLVER.BASE_LR": 0.001, "SOLVER.MAX_ITER": 6,
        "SOLVER.STEPS": (), "SOLVER.CHECKPOINT_PERIOD": 3, "SOLVER.WARMUP_ITERS": 0,
        "MGD.UPDATE_FREQ": [2, 5], "MGD.UPDATE_SLOW_STEP": [4], "MGD.UPDATE_ITER": 2, "MGD.CALIBRATION_IMAGES": 4,
        "DATALOADER.NUM_WORKERS": 0, "TEST.EVAL_PERIOD": 0, "SEED": 0}


def make_cfg(out, config=CONFIG, **overrides):
    """``config`` merged as train_net.py does, with TINY, OUTPUT_DIR ``out`` and ``overrides`` (dotted keys)."""
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(config)
    cfg.MGD.CONFIG_DIR = os.path.dirname(config)
    opts = dict(TINY, OUTPUT_DIR=str(out))
    opts.update(overrides)
    for key, value in opts.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, leaf, value)
    return cfg


def tiny_opts(out, **overrides):
    """TINY (and ``overrides``) as command-line opts for train_net.py."""
    opts = dict(TINY, OUTPUT_DIR=str(out))
    opts.update(overrides)
    return [x for k, v in opts.items() for x in (k, v if isinstance(v, str) else repr(v))]


def training_step_losses(model, cfg):
    """The losses of one training step of ``model`` (in train mode, gradients zeroed) on a batch of ``cfg``'s
    training data, and the state to restore afterwards (``model.load_state_dict(state)``)."""
    from detectron2.data import build_detection_train_loader
    from detectron2.utils.events import EventStorage
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage(0):
        return model(next(iter(build_detection_train_loader(cfg)))), state
