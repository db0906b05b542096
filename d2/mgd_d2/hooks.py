"""What a feature distiller derives from data (MGD's matching, the calibrated loss factor), as a Detectron2
hook on its own data stream."""
from __future__ import annotations

import itertools
import json
import logging
import os
import random
import time

import numpy as np
import torch

from detectron2.data import build_detection_train_loader
from detectron2.engine import HookBase
from detectron2.utils import comm

import mgd

logger = logging.getLogger("detectron2")


class _KeepRandomState:
    """Restore Python's, NumPy's and torch's global random states on exit, so that building and reading
    the update's data stream leaves the training stream's augmentations exactly as they would have been."""

    def __enter__(self):
        self.states = (random.getstate(), np.random.get_state(), torch.get_rng_state())

    def __exit__(self, *exc):
        random.setstate(self.states[0])
        np.random.set_state(self.states[1])
        torch.set_rng_state(self.states[2])
        return False


class MGDUpdateHook(HookBase):
    """For a distiller with a matching (MGD): re-solves it before the first step (also after a resume), then
    every MGD.UPDATE_FREQ[0] iterations until MGD.UPDATE_SLOW_STEP[0], then every MGD.UPDATE_FREQ[1]. Each
    update tracks MGD.UPDATE_ITER batches from a separate training-data loader (each process its own shard;
    the statistics are all-reduced by the library), so the trainer's data stream is neither consumed nor
    reordered. Updates are logged and appended to OUTPUT_DIR/mgd_updates.jsonl. For any feature distiller
    with MGD.LOSS_FACTOR auto (OFD too): the loss factor, measured once, after the first matching if any."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        if len(cfg.MGD.UPDATE_FREQ) != 2 or len(cfg.MGD.UPDATE_SLOW_STEP) != 1:
            raise ValueError("MGD.UPDATE_FREQ needs 2 values and MGD.UPDATE_SLOW_STEP 1")
        self._stream = None
        self.update_iters = []

    def _meta_arch(self):
        model = self.trainer.model
        return model.module if hasattr(model, "module") else model

    def _batches(self, count):
        with _KeepRandomState():
            if self._stream is None:
                self._stream = iter(build_detection_train_loader(self.cfg))
            for batch in itertools.islice(self._stream, count):
                yield batch

    def _log(self, record) -> None:
        if comm.is_main_process():
            with open(os.path.join(self.cfg.OUTPUT_DIR, "mgd_updates.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def calibrate(self) -> None:
        """MGD.LOSS_FACTOR auto: measure the global loss factor once, after the first matching (a resumed run
        loads it from the checkpoint), on MGD.CALIBRATION_IMAGES images of the update's data stream."""
        meta = self._meta_arch()
        d = meta.distiller
        with _KeepRandomState():
            factor = mgd.calibrate_loss_factor(d, self._batches(10 ** 9), ratio=d.loss_ratio,
                                               max_images=d.calibration_images, measure=meta.calibration_losses)
        d.set_loss_factor(factor)
        logger.info("mgd: loss factor %.4g (loss_distill starts at %g x the detector's losses)", factor, d.loss_ratio)
        self.trainer.storage.put_scalar("mgd_loss_factor", factor, smoothing_hint=False)
        self._log({"iteration": self.trainer.iter, "loss_factor": factor, "loss_ratio": d.loss_ratio})

    def update(self) -> None:
        meta = self._meta_arch()
        start = time.perf_counter()
        with _KeepRandomState():
            mgd.mgd_update(self._batches(self.cfg.MGD.UPDATE_ITER), meta.distiller,
                           track=lambda d, batch: meta.track_batch(batch))
        iteration = self.trainer.iter
        self.update_iters.append(iteration)
        seconds = time.perf_counter() - start
        updates = int(meta.distiller.num_updates)
        logger.info("mgd: matching update %d at iteration %d (%.1f s)", updates, iteration, seconds)
        self.trainer.storage.put_scalar("mgd_num_updates", updates, smoothing_hint=False)
        self._log({"iteration": iteration, "num_updates": updates, "seconds": round(seconds, 2)})
        if meta.distiller.needs_calibration:
            self.calibrate()

    def _matches(self) -> bool:
        return getattr(self._meta_arch().distiller, "prepare_name", "") == "matching"

    def before_train(self):
        if self._matches():
            self.update()
        elif self._meta_arch().distiller.needs_calibration:
            self.calibrate()

    def before_step(self):
        if not self._matches():
            return
        it = self.trainer.iter
        if it == self.trainer.start_iter:
            return  # done in before_train
        slow = it >= self.cfg.MGD.UPDATE_SLOW_STEP[0]
        freq = self.cfg.MGD.UPDATE_FREQ[1 if slow else 0]
        if freq > 0 and it % freq == 0:
            self.update()
