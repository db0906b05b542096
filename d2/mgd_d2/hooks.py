"""What a distiller derives from data (MGD's matching, the calibrated loss factor), as a Detectron2 hook on its
own data stream."""
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
    """What the distiller derives from data, on d2's own data stream and iteration schedule; which steps apply is
    read off the distiller's capabilities and the config, never the method's name:

    * a distiller whose ``prepare_tracks_features`` is true (MGD's matching, and any method whose prepare is a
      tracking pass of both networks' stage features): its prepare step, :func:`mgd.mgd_update` with the
      detector's tracking pass (:meth:`DistillDetector.track_batch`, the teacher's and the student's
      preprocessing apart), before the first step (also after a resume), then every MGD.UPDATE_FREQ[0]
      iterations until MGD.UPDATE_SLOW_STEP[0], then every MGD.UPDATE_FREQ[1]. Each update tracks
      MGD.UPDATE_ITER batches from a separate training-data loader (each process its own shard; the statistics
      are all-reduced by the library), so the trainer's data stream is neither consumed nor reordered. Updates
      are logged (the count from the distiller's :meth:`~mgd.Distiller.prepare_summary`) and appended to
      OUTPUT_DIR/mgd_updates.jsonl;
    * MGD.LOSS_FACTOR auto (a method with a loss factor: MGD, OFD): the factor, measured once
      (:func:`mgd.calibrate_loss_factor` on the detector's own losses), after the first matching if any, unless
      the distiller already holds one (a resumed run).

    A distiller with neither (AT, SP, a logit method, ...) makes the hook do nothing."""

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

    def _tracks(self) -> bool:
        return self._meta_arch().distiller.prepare_tracks_features

    def _needs_calibration(self) -> bool:
        """MGD.LOSS_FACTOR auto (check_method admits it only for a method with a loss factor) and no factor yet."""
        return self.cfg.MGD.LOSS_FACTOR == "auto" and self._meta_arch().distiller.needs_calibration

    def calibrate(self) -> None:
        """MGD.LOSS_FACTOR auto: measure the global loss factor once, after the first matching (a resumed run
        loads it from the checkpoint), on MGD.CALIBRATION_IMAGES images of the update's data stream."""
        meta = self._meta_arch()
        d, ratio = meta.distiller, float(self.cfg.MGD.LOSS_RATIO)
        with _KeepRandomState():
            factor = mgd.calibrate_loss_factor(d, self._batches(10 ** 9), ratio=ratio,
                                               max_images=self.cfg.MGD.CALIBRATION_IMAGES,
                                               measure=meta.calibration_losses)
        d.set_loss_factor(factor)
        logger.info("mgd: loss factor %.4g (loss_distill starts at %g x the detector's losses)", factor, ratio)
        self.trainer.storage.put_scalar("mgd_loss_factor", factor, smoothing_hint=False)
        self._log({"iteration": self.trainer.iter, "loss_factor": factor, "loss_ratio": ratio})

    def update(self) -> None:
        """The distiller's tracking pass and solve (:func:`mgd.mgd_update`, MGD.UPDATE_ITER batches), then the
        calibration if one is due."""
        meta = self._meta_arch()
        d = meta.distiller
        start = time.perf_counter()
        with _KeepRandomState():
            mgd.mgd_update(self._batches(self.cfg.MGD.UPDATE_ITER), d, track=lambda _, batch: meta.track_batch(batch))
        iteration = self.trainer.iter
        self.update_iters.append(iteration)
        seconds = time.perf_counter() - start
        # the distiller's count (MGD's prepare_summary; it survives a resume), else this run's
        updates = int(d.prepare_summary().get("num_updates", len(self.update_iters)))
        logger.info("mgd: %s update %d at iteration %d (%.1f s)", d.prepare_name, updates, iteration, seconds)
        self.trainer.storage.put_scalar("mgd_num_updates", updates, smoothing_hint=False)
        self._log({"iteration": iteration, "num_updates": updates, "seconds": round(seconds, 2)})
        if self._needs_calibration():
            self.calibrate()

    def before_train(self):
        if self._tracks():
            self.update()
        elif self._needs_calibration():
            self.calibrate()

    def before_step(self):
        if not self._tracks():
            return
        it = self.trainer.iter
        if it == self.trainer.start_iter:
            return  # done in before_train
        slow = it >= self.cfg.MGD.UPDATE_SLOW_STEP[0]
        freq = self.cfg.MGD.UPDATE_FREQ[1 if slow else 0]
        if freq > 0 and it % freq == 0:
            self.update()
