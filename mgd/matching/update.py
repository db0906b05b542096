"""mgd_update: the periodic tracking pass and solve (MGD Alg. 1, lines "update matching")."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from .. import distributed as mdist
from ..features import unwrap
from ..losses.precision import float32_region

__all__ = ["mgd_update"]

logger = logging.getLogger("mgd")

#: The original stopped its tracking pass after about this many images ("break for ImageNet-1K").
LEGACY_MAX_IMAGES = 20000


def _images(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(f"the loader must yield image tensors or (images, targets) pairs, got {type(batch).__name__}")


def mgd_update(loader: Iterable, distiller: nn.Module, max_images: Optional[int] = None,
               track: Optional[Callable[[nn.Module, Any], int]] = None, *,
               track_in_autocast: Optional[bool] = None) -> None:
    """Track teacher/student statistics over ``loader`` and solve a new matching.

    The distiller is in eval mode during the pass (the previous train/eval modes are restored after).
    ``max_images`` caps the images tracked over all ranks together (each rank tracks its share of its own
    shard); None tracks the whole loader. In a process group every rank must call this; the statistics
    are all-reduced and every rank ends with the same guided indices. On error (empty loader, non-finite
    features) the previous matching is kept. The original's third argument (``args``) is accepted and
    means its fixed cap of 20000 images.

    ``track(distiller, batch) -> number of images`` replaces the default per-batch step (move the images
    to the distiller's device, ``distiller.extract_feature(images)``) for batches of another form, e.g.
    detection inputs; it should call ``distiller.track_running_stats(teacher_feats, student_feats)``.

    The networks run with autocast switched off (float32) during the pass, even when the caller is inside
    an enabled ``torch.autocast``: half-precision features change which channels match (measured under
    bfloat16: 53, 152 and 440 teacher channels of the three distilled stages of ResNet-50 -> MobileNetV2
    got another student), so the matching would depend on the training's precision flags. ``track_in_autocast=True`` keeps the caller's autocast (faster, other indices); None
    takes the distiller's ``track_in_autocast`` setting (False unless it was built with True).
    """
    d = unwrap(distiller)
    if not all(hasattr(d, name) for name in ("init_flow", "extract_feature", "update_flow")):
        raise TypeError(f"mgd_update needs an MGDistiller, got {type(d).__name__}")
    if isinstance(max_images, float) and max_images.is_integer():
        max_images = int(max_images)
    elif max_images is not None and not isinstance(max_images, int):
        if not hasattr(max_images, "__dict__"):
            raise TypeError(f"max_images must be an int or None, got {type(max_images).__name__}")
        max_images = LEGACY_MAX_IMAGES  # the original's mgd_update(loader, model, args)
    if max_images is not None and max_images <= 0:
        raise ValueError(f"max_images must be positive or None, got {max_images}")
    per_rank = None if max_images is None else math.ceil(max_images / mdist.get_world_size())
    device = next(iter(d.buffers())).device
    if track_in_autocast is None:
        track_in_autocast = bool(getattr(d, "track_in_autocast", False))
    precision = contextlib.nullcontext() if track_in_autocast else float32_region(device)
    # the networks too, when the distiller does not own them (own_networks=False)
    modules = {m for root in (d, d.t_net, d.s_net) for m in root.modules()}
    modes = {m: m.training for m in modules}
    start = time.perf_counter()
    for m in modules:
        m.training = False
    d.init_flow()
    seen = 0
    try:
        with torch.no_grad(), precision:
            for batch in loader:
                if track is None:
                    images = _images(batch).to(device, non_blocking=True)
                    d.extract_feature(images)
                    seen += images.shape[0]
                else:
                    seen += int(track(d, batch))
                if d.tracking_failed and not mdist.is_distributed():
                    break  # the update will fail anyway; ranks of a group keep going to stay in step
                if per_rank is not None and seen >= per_rank:
                    break
        seconds = time.perf_counter() - start
        logger.info("mgd update: tracked %d images on rank %d in %.1f s", seen, mdist.get_rank(), seconds)
        d.track_seconds = seconds  # reported with the matching it leads to (prepare_summary)
        d.update_flow()
    finally:
        for m, mode in modes.items():
            m.training = mode
