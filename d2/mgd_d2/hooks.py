"""What a distiller derives from data (MGD's matching, the calibrated loss factor), as a Detectron2 hook on its
own data stream."""
from __future__ import annotations

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


class _UpdateStream:
    """The hook's own training-data stream as a re-iterable loader: each pass continues where the last one
    stopped (the distiller's prepare step iterates it for its tracking pass, then again for a calibration)."""

    def __init__(self, hook: "MGDUpdateHook") -> None:
        self.hook = hook

    def __iter__(self):
        if self.hook._stream is None:
            self.hook._stream = iter(build_detection_train_loader(self.hook.cfg))
        return self.hook._stream


class MGDUpdateHook(HookBase):
    """The distiller's prepare step (:meth:`mgd.Distiller.prepare`), on d2's own data stream and iteration
    schedule; when it runs is read off the distiller's capabilities, never the method's name:

    * a distiller whose ``prepare_tracks_features`` is true (MGD's matching, and any method whose prepare is a
      tracking pass of both networks' stage features): before the first step (also after a resume), then every
      MGD.UPDATE_FREQ[0] iterations until MGD.UPDATE_SLOW_STEP[0], then every MGD.UPDATE_FREQ[1]. Each tracks
      MGD.UPDATE_ITER batches (the distiller's ``update_images``, set from it) with the detector's tracking
      step (:meth:`DistillDetector.track_batch`: the teacher's and the student's preprocessing apart), from a
      separate training-data loader (each process its own shard; the statistics are all-reduced by the
      library), so the trainer's data stream is neither consumed nor reordered. Updates are logged (the count
      from the distiller's :meth:`~mgd.Distiller.prepare_summary`) and appended to OUTPUT_DIR/mgd_updates.jsonl;
    * otherwise, a distiller that ``needs_calibration`` (MGD.LOSS_FACTOR auto, a method with a loss factor:
      OFD): its prepare step once, before the first step, unless it already holds a factor (a resumed run).

    A prepare step that measures a loss factor uses the detector's own losses (``measure``:
    :meth:`DistillDetector.calibration_losses`) on MGD.CALIBRATION_IMAGES images of the same stream. A
    distiller with neither (AT, SP, a logit method, ...) makes the hook do nothing."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        if len(cfg.MGD.UPDATE_FREQ) != 2 or len(cfg.MGD.UPDATE_SLOW_STEP) != 1:
            raise ValueError("MGD.UPDATE_FREQ needs 2 values and MGD.UPDATE_SLOW_STEP 1")
        self._stream = None
        self.update_iters = []

    def _meta_arch(self):
        model = self.trainer.model
        return model.module if hasattr(model, "module") else model

    def _log(self, record) -> None:
        if comm.is_main_process():
            with open(os.path.join(self.cfg.OUTPUT_DIR, "mgd_updates.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def _tracks(self) -> bool:
        return self._meta_arch().distiller.prepare_tracks_features

    def prepare(self) -> None:
        """The distiller's prepare step on the update stream, with the detector's tracking and measuring steps;
        then what it did, logged: the update (a tracking method) and the loss factor (when it measured one)."""
        meta = self._meta_arch()
        d = meta.distiller
        calibrating = d.needs_calibration
        start = time.perf_counter()
        with _KeepRandomState():
            d.prepare(_UpdateStream(self), track=lambda _, batch: meta.track_batch(batch),
                      measure=meta.calibration_losses)
        iteration = self.trainer.iter
        if self._tracks():
            self.update_iters.append(iteration)
            seconds = time.perf_counter() - start
            # the distiller's count (MGD's prepare_summary; it survives a resume), else this run's
            updates = int(d.prepare_summary().get("num_updates", len(self.update_iters)))
            logger.info("mgd: %s update %d at iteration %d (%.1f s)", d.prepare_name, updates, iteration, seconds)
            self.trainer.storage.put_scalar("mgd_num_updates", updates, smoothing_hint=False)
            self._log({"iteration": iteration, "num_updates": updates, "seconds": round(seconds, 2)})
        if calibrating and not d.needs_calibration:
            factor, ratio = d.loss_factor, d.loss_ratio
            logger.info("mgd: loss factor %.4g (loss_distill starts at %g x the detector's losses)", factor, ratio)
            self.trainer.storage.put_scalar("mgd_loss_factor", factor, smoothing_hint=False)
            self._log({"iteration": iteration, "loss_factor": factor, "loss_ratio": ratio})

    def before_train(self):
        if self._tracks() or self._meta_arch().distiller.needs_calibration:
            self.prepare()

    def before_step(self):
        if not self._tracks():
            return
        it = self.trainer.iter
        if it == self.trainer.start_iter:
            return  # done in before_train
        slow = it >= self.cfg.MGD.UPDATE_SLOW_STEP[0]
        freq = self.cfg.MGD.UPDATE_FREQ[1 if slow else 0]
        if freq > 0 and it % freq == 0:
            self.prepare()
