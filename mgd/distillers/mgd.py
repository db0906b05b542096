"""MGDistiller: teacher + student + matching state in one nn.Module (MGD, Yue et al., ECCV 2020).

The distiller owns the pieces the method needs and nothing an application owns (no loop, no optimizer):
feature sources for both networks (:mod:`mgd.features`), OFD margins from the teacher's BNs and the
partial L2 (:mod:`mgd.losses.ofd`, shared with OFD through :mod:`mgd.distillers.partial_l2`), one trainable
norm layer per student stage, the guided indices of the current matching and the running cost statistics
(:mod:`mgd.matching`), and the channel reducer (:mod:`mgd.matching.reducers`). Only the student is deployed; the
norm layers are discarded after training.

Two ways to call it, the same computation:

* the one contract of every mgd distiller (:mod:`mgd.distillers.base`): ``d.prepare(loader)`` solves the matching when
  ``d.prepare_due(epoch)`` says so (every ``update_freq`` epochs, or before the epochs in ``update_epochs``),
  and ``d.forward_train(images)`` returns ``(logits, {"distill": ..., "kd": ...})`` with the distillation
  term already divided by the batch size and ``loss_factor``;
* the original code's call, verbatim: ``mgd_update(loader, d)`` and ``d(images)`` returning
  ``(logits, loss_distill)`` or ``(logits, [loss_distill, loss_kd])``, the distillation loss summed over
  elements (the application divides it).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .. import distributed as mdist
from ..calibration import DEFAULT_CALIBRATION_IMAGES, DEFAULT_LOSS_RATIO, Measure, TaskLoss
from ..features import StageSpec
from ..losses import kd_loss
from ..losses.ofd import margin_target, partial_l2
from ..losses.spatial import match_spatial
from ..matching.cost import CostTracker
from ..matching.reducers import REDUCERS, get_reducer
from ..matching.solvers import SOLVERS
from ..matching.update import LEGACY_MAX_IMAGES
from ..registry import register_distiller
from .base import Track, float32_region
from .partial_l2 import LossFactor, PartialL2Distiller, halving_stage_weights

__all__ = ["MGDistiller", "SMDistiller", "DETECTION_LOSS_FACTORS", "stage_loss"]

logger = logging.getLogger("mgd")

#: The channel reducers (:mod:`mgd.matching.reducers`) and assignment solvers, as option types (the flags' choices).
ReducerName = Literal[tuple(REDUCERS)]
SolverName = Literal[SOLVERS]

#: The original RetinaNet per-level divisors for [C2, C3, C4, C5, P3, P4, P5, P6, P7] (0 = not distilled).
DETECTION_LOSS_FACTORS = [f * 5e7 for f in (1, 1, 1e-1, 1e-1, 1, 1, 1e-2, 0, 0)]


def _check_options(solver: str, kd_temperature: float, update_freq: int, update_images: Optional[int]) -> None:
    """MGD's scalar options, checked before anything is built (a ValueError naming the option and the value)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")
    if kd_temperature <= 0:
        raise ValueError(f"kd_temperature must be positive, got {kd_temperature}")
    if int(update_freq) != update_freq or update_freq <= 0:
        raise ValueError(f"update_freq must be a positive number of epochs, got {update_freq!r}")
    if update_images is not None and (int(update_images) != update_images or update_images <= 0):
        raise ValueError(f"update_images must be a positive count or None (all), got {update_images!r}")


def _detection_stage_weights(num_stages: int) -> List[float]:
    """1 / the original's RetinaNet factors, level by level (0 where the original did not distil)."""
    factors = DETECTION_LOSS_FACTORS[:num_stages] + [DETECTION_LOSS_FACTORS[-1]] * (
        num_stages - len(DETECTION_LOSS_FACTORS))
    return [0.0 if f == 0 else 1.0 / f for f in factors]


def stage_loss(norm: nn.Module, student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor,
               guided_inds: torch.Tensor, num_student: int, reducer: Callable) -> torch.Tensor:
    """One stage of MGD's loss in float32: partial L2 (OFD Eq. 4) between norm(student) and the teacher
    reduced to the student's channels along the matching (MGD Sec. 3.3); the teacher side carries no
    gradient. Call it with autocast off (the norm layer then runs in float32 on a float32 copy)."""
    s = norm(student.float())
    with torch.no_grad():
        t, m = reducer(teacher, margin, guided_inds, num_student)
        target, floor = margin_target(t, m, inplace=True)  # reducers return fresh tensors
    return partial_l2(s, target, floor)


def _sync_matched_flag(module: "MGDistiller", keys) -> None:
    """After a state dict is loaded: whether it holds a matching (read once, not at every step)."""
    module._matched = int(module.num_updates) > 0


def _check_before_load(module: "MGDistiller", state_dict: Mapping[str, Any], prefix: str, local_metadata: Any,
                       strict: bool, missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
    """load_state_dict pre-hook: refuse a state saved with other stages or networks before anything is copied
    (it would load and the first forward would fail with "INDICES element is out of DATA bounds"). The norm
    layers' presence is compared only in strict loads (``load_own_state_dict`` checks it itself)."""
    module.check_state_fits(state_dict, prefix, layout=strict)


@register_distiller("mgd")
class MGDistiller(PartialL2Distiller):
    """Matching Guided Distillation between a teacher and a student network.

    The original call works unchanged for models implementing ``extract_feature(x, preReLU)``,
    ``get_bn_before_relu()`` and ``get_channel_num()``; torchvision ResNet, MobileNetV2 and ShuffleNetV2
    work with no arguments; any other pair works by naming its stage layers.

    Args:
        t_net, s_net: teacher and student. The teacher stays in eval mode and receives no gradients.
        ignore_inds: stages not distilled. None: the student family's default (stage 0 for MobileNetV2 and
            ShuffleNetV2, whose first stage has another resolution than a ResNet teacher's), else none.
        reducer: "amp" (absolute max pooling), "sp" (max pooling), "rd" (random drop) or "sm" (sparse matching).
        sync_bn: SyncBatchNorm for the student-side norm layers when training is distributed.
        with_kd: also Hinton's KD loss on the logits (temperature ``kd_temperature``).
        preReLU: distill pre-ReLU features (the method); False applies a ReLU to both sides.
        distributed: kept for the original API; the process group is detected automatically.
        det: detection mode: the student returns a loss dict; GroupNorm(32) student side unless sync_bn;
            the original RetinaNet per-level loss factors.
        teacher_layers, student_layers: stage layer names (str or :class:`StageSpec`) for hook capture.
        teacher_bns: names of the teacher BNs feeding each stage's ReLU (margins), with ``teacher_layers``.
        teacher_channels, student_channels: channel counts where they cannot be read off the layers.
        example_input: a small input batch used once to read the channel counts off a forward, if needed.
        solver: "ortools" (default) or "scipy"; both solve the assignment exactly.
        stage_weights: per-stage loss weights (default: 1 / 2^(n-i-1), or 1 / the detection factors).
        student_norm: callable channels -> nn.Module for the student-side norm layers (overrides the default).
        kd_temperature: KD temperature (1.5 as in the original).
        teacher_train_mode: keep the teacher in train mode (OFD's option); default eval.
        own_networks: register t_net and s_net as submodules (default, the original's layout). False when
            the networks already belong to a larger model (e.g. a detector holding both): the distiller's
            state_dict then holds only its own state and the owner moves the networks between devices.
        loss_factor: :meth:`forward_train` divides the summed distillation loss by the batch size and this
            factor (1e4, the original's value at 224 px; the right value depends on the input size). "auto":
            measured after the first matching so that the distillation term starts at ``loss_ratio`` times
            the cross-entropy (or ``calibration_task_loss(output, target)``), on ``calibration_images`` images
            (:func:`mgd.calibrate_loss_factor`).
        update_freq: :meth:`prepare_due` asks for a new matching before every ``update_freq``-th epoch
            (the original's ``--mgd-update-freq``, 2).
        update_epochs: instead, the epochs (0-based) before which to re-solve, e.g. the log-spaced list of
            the original's unsupervised code; the matching is always solved before the first epoch.
        update_images: images tracked per :meth:`prepare`, over all processes (the original: about 20000).
        track_in_autocast: run the tracking pass of :meth:`prepare` / :func:`mgd_update` under the caller's
            ``torch.autocast`` when one is enabled. Default False: the pass runs in float32 whatever the
            caller's autocast, since half-precision features pick other channels (three of four stages of
            ResNet-50 -> MobileNetV2 differed under autocast), so the matching does not depend on ``--amp``.
    """

    cli_options = PartialL2Distiller.cli_options + ("reducer", "update_freq", "update_epochs", "update_images",
                                                    "with_kd", "solver")
    wider_teacher = True  # matching assigns several teacher channels to each student channel
    prepare_name = "matching"
    identity_options = ("reducer",)  # mgd.amp and mgd.rd are different runs (and checkpoints)
    prepare_tracks_features = True  # prepare = mgd_update: track the stage features, solve the matching
    #: seconds of the tracking pass that precedes the next update_flow (set by mgd_update; None: unknown)
    track_seconds: Optional[float] = None
    _last_track_seconds: Optional[float] = None
    factor_terms = ("distill",)

    def __init__(self, t_net: nn.Module, s_net: nn.Module, ignore_inds: Optional[Sequence[int]] = None,
                 reducer: ReducerName = "amp", sync_bn: bool = False, with_kd: bool = False, preReLU: bool = True,
                 distributed: bool = False, det: bool = False, *,
                 teacher_layers: Optional[Sequence[Union[str, StageSpec]]] = None,
                 student_layers: Optional[Sequence[Union[str, StageSpec]]] = None,
                 teacher_bns: Optional[Sequence[str]] = None,
                 teacher_channels: Optional[Sequence[int]] = None,
                 student_channels: Optional[Sequence[int]] = None,
                 example_input: Optional[torch.Tensor] = None,
                 solver: SolverName = "ortools",
                 stage_weights: Optional[Sequence[float]] = None,
                 student_norm: Optional[Callable[[int], nn.Module]] = None,
                 kd_temperature: float = 1.5,
                 teacher_train_mode: bool = False,
                 own_networks: bool = True,
                 loss_factor: LossFactor = 1e4,
                 loss_ratio: float = DEFAULT_LOSS_RATIO,
                 calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                 calibration_task_loss: Optional[TaskLoss] = None,
                 update_freq: int = 2,
                 update_epochs: Optional[Sequence[int]] = None,
                 update_images: Optional[int] = LEGACY_MAX_IMAGES,
                 track_in_autocast: bool = False) -> None:
        _check_options(solver, kd_temperature, update_freq, update_images)
        self.reducer_name = reducer
        self.reducer = get_reducer(reducer)
        self.det = bool(det)  # before the base: it picks the default stage weights
        super().__init__(t_net, s_net, teacher_layers=teacher_layers, student_layers=student_layers,
                         teacher_bns=teacher_bns, teacher_train_mode=teacher_train_mode, own_networks=own_networks,
                         ignore_inds=ignore_inds, loss_factor=loss_factor, loss_ratio=loss_ratio,
                         calibration_images=calibration_images, calibration_task_loss=calibration_task_loss,
                         stage_weights=stage_weights,
                         teacher_channels=teacher_channels, student_channels=student_channels,
                         example_input=example_input)
        self.sync_bn = bool(sync_bn)
        self.with_kd = bool(with_kd)
        self.preReLU = bool(preReLU)
        self.distributed = bool(distributed)
        self.solver = solver
        self.T = float(kd_temperature)
        self.update_freq = int(update_freq)
        self.update_epochs = None if update_epochs is None else sorted({int(e) for e in update_epochs})
        self.update_images = None if update_images is None else int(update_images)
        self.track_in_autocast = bool(track_in_autocast)
        self._check_widths()
        self.groups = [1 if reducer == "sm" else t // s for t, s in zip(self.t_channels, self.s_channels)]
        self._build_norms(student_norm)
        self._register_matching_state()
        self.init_flow()
        self.train(self.training)
        self._log_layout()

    def _check_widths(self) -> None:
        """ValueError naming the first distilled stage whose student is wider than its teacher."""
        for i in self.stages:
            sc, tc = self.s_channels[i], self.t_channels[i]
            if sc > tc:
                raise ValueError(f"stage {i}: the student has {sc} channels but the teacher only {tc}; MGD needs "
                                 "teacher stages at least as wide as the student's (or ignore this stage)")

    def _build_norms(self, student_norm: Optional[Callable[[int], nn.Module]]) -> None:
        """The trainable norm layer on each distilled student stage (MGD Sec. 3.1, as OFD's connector's BN).

        Stages without a loss (ignored, or weight 0) get no norm layer (an Identity): parameters that never
        receive a gradient would make DistributedDataParallel wait for them (the original needed
        find_unused_parameters=True)."""
        make_norm = student_norm or self._default_norm()
        self.BNs = nn.ModuleList([make_norm(c) if i in self.stages and self.stage_weights[i] != 0 else nn.Identity()
                                  for i, c in enumerate(self.s_channels)])

    def _register_matching_state(self) -> None:
        """The buffers a checkpoint keeps of the matching: each stage's guided indices (-1: not solved yet), the
        update count and the epoch of the last prepare; and the hooks that check a loaded state against them."""
        for i, (g, sc) in enumerate(zip(self.groups, self.s_channels)):
            self.register_buffer(f"guided_inds{i + 1}", torch.full((g * sc,), -1, dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        #: the epoch before which the last matching was solved through prepare() (-1: none yet)
        self.register_buffer("prepared_epoch", torch.full((), -1, dtype=torch.long))
        self._last_reports: list = []
        self._matched = False  # mirrors num_updates > 0 on the Python side (no device sync per step)
        self.register_load_state_dict_pre_hook(_check_before_load)
        self.register_load_state_dict_post_hook(_sync_matched_flag)

    # ------------------------------------------------------------------------------------------ set-up
    def default_stage_weights(self, num_stages: int) -> List[float]:
        """Classification: 1 / 2^(n-i-1), deeper stages weigh more. Detection: 1 / the original's factors."""
        return _detection_stage_weights(num_stages) if self.det else halving_stage_weights(num_stages)

    def _default_norm(self) -> Callable[[int], nn.Module]:
        use_sync = self.sync_bn and (self.distributed or mdist.is_distributed())
        if use_sync:
            return nn.SyncBatchNorm
        if self.det and not self.sync_bn:
            def group_norm(c: int) -> nn.Module:
                if c % 32:
                    raise ValueError(f"GroupNorm(32) needs channels divisible by 32, got {c}; pass student_norm")
                return nn.GroupNorm(32, c)
            return group_norm
        return nn.BatchNorm2d

    def _log_layout(self) -> None:
        for i in range(len(self.t_channels)):
            state = "ignored" if i in self.ignore_inds else f"{self.groups[i]} teacher channel(s) per student channel"
            logger.info("mgd stage %d: teacher %d -> student %d channels, %s, weight %.3g", i, self.t_channels[i],
                        self.s_channels[i], state, self.stage_weights[i])

    def init_flow(self) -> None:
        """Reset the running cost statistics (start of a matching update)."""
        self._tracker = CostTracker(len(self.t_channels))

    # ------------------------------------------------------------------------------------------ state
    @property
    def guided_inds(self) -> List[torch.Tensor]:
        """Per stage, the 1-D LongTensor of length g*sc: entry k*sc + j is the k-th teacher channel of student j."""
        return [getattr(self, f"guided_inds{i + 1}") for i in range(len(self.t_channels))]

    def load_own_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`own_state_dict`; RuntimeError naming the stage when ``state`` was saved with
        other ignored stages, stage weights, reducer or networks (see :meth:`check_state_fits`)."""
        self.check_state_fits(state)
        super().load_own_state_dict(state)

    def check_state_fits(self, state: Mapping[str, Any], prefix: str = "", layout: bool = True) -> None:
        """RuntimeError whose first line names the first stage where ``state`` (its keys under ``prefix``)
        does not fit this distiller: another number of guided indices or margins (other networks, reducer or
        ignored stages), indices outside this teacher's channels, no matching for a stage this distiller
        distils, and with ``layout`` a student norm layer where this distiller has none or the reverse.
        Applications turn the first line into a one-line error, so it says everything by itself."""
        updates = state.get(prefix + "num_updates")
        matched = self._matched if not isinstance(updates, torch.Tensor) else int(updates) > 0
        for i in range(len(self.t_channels)):
            problem = (self._size_problem(i, state, prefix) or self._index_problem(i, state, prefix, matched)
                       or (self._norm_problem(i, state, prefix) if layout else ""))
            if problem:
                raise RuntimeError(f"stage {i}: {problem}")

    def _size_problem(self, i: int, state: Mapping[str, Any], prefix: str) -> str:
        """Sizes first: torch's own size-mismatch error starts with a line that names neither stage nor sizes."""
        tc, expected = self.t_channels[i], self.groups[i] * self.s_channels[i]
        inds, margin = state.get(f"{prefix}guided_inds{i + 1}"), state.get(f"{prefix}margin{i + 1}")
        loaded_tc = margin.numel() if isinstance(margin, torch.Tensor) else None
        if isinstance(inds, torch.Tensor) and inds.numel() != expected:
            of = "" if loaded_tc is None else f" for {loaded_tc} teacher channels"
            return (f"the loaded matching has {inds.numel()} guided indices{of}, this distiller expects {expected} "
                    f"indices for {tc} teacher channels (saved with other ignore_inds, reducer or networks?)")
        if loaded_tc is not None and loaded_tc != tc:
            return (f"the loaded state has margins for {loaded_tc} teacher channels, this distiller's teacher has "
                    f"{tc} channels at this stage (saved with other networks?)")
        return ""

    def _index_problem(self, i: int, state: Mapping[str, Any], prefix: str, matched: bool) -> str:
        """A stage whose loss gathers teacher channels needs every index in [0, tc) once matched."""
        if not matched or i not in self.stages or self.stage_weights[i] == 0:
            return ""
        tc, key = self.t_channels[i], f"guided_inds{i + 1}"
        inds = state.get(prefix + key)
        if not isinstance(inds, torch.Tensor):
            if int(getattr(self, key).min()) >= 0:
                return ""
            return (f"the loaded state has a matching (num_updates > 0) but {key} is missing, and this distiller "
                    "has no matching for this stage yet (a partial state?)")
        low, high = int(inds.min()), int(inds.max())
        if low >= 0 and high < tc:
            return ""
        if high < 0:
            return (f"the loaded state has no matching for this stage (its {inds.numel()} guided indices are "
                    f"unset: the stage was ignored when saved), this distiller distils it (ignore_inds "
                    f"{self.ignore_inds}; saved with other ignore_inds?)")
        return (f"the loaded matching has guided indices in [{low}, {high}], this distiller expects "
                f"{inds.numel()} indices in [0, {tc - 1}] for {tc} teacher channels (saved with other networks?)")

    def _norm_problem(self, i: int, state: Mapping[str, Any], prefix: str) -> str:
        """A student norm layer saved for a stage this distiller does not train, or missing for one it does."""
        has = bool(self.BNs[i].state_dict())
        loaded = any(k.startswith(f"{prefix}BNs.{i}.") for k in state)
        if has == loaded:
            return ""
        why = (f"ignore_inds {self.ignore_inds}, stage weight {self.stage_weights[i]:g}; saved with other "
               "ignore_inds or stage_weights?")
        if loaded:
            return ("the loaded state has a student norm layer for this stage, this distiller does not distil it "
                    f"({why})")
        return f"the loaded state has no student norm layer for this stage, this distiller distils it ({why})"

    # ------------------------------------------------------------------------------------------ matching
    def prepare_due(self, epoch: int) -> bool:
        """True before the first epoch trained without a matching (or an uncalibrated ``loss_factor='auto'``),
        then before every ``update_freq``-th epoch (or the epochs in ``update_epochs``), once per epoch."""
        if not self._matched or self.needs_calibration:
            return True
        if epoch == int(self.prepared_epoch):
            return False
        if self.update_epochs is not None:
            return epoch in self.update_epochs
        return epoch % self.update_freq == 0

    def prepare(self, loader: Iterable, epoch: Optional[int] = None, *, track: Optional[Track] = None,
                measure: Optional[Measure] = None) -> None:
        """Solve a new matching from at most ``update_images`` images of ``loader`` (:func:`mgd_update`, with
        the application's ``track`` step where batches are not images), then, the first time with
        ``loss_factor="auto"``, measure the loss factor (with ``measure``, see :meth:`calibrate`)."""
        from ..matching.update import mgd_update as _update
        _update(loader, self, max_images=self.update_images, track=track)
        if epoch is not None:
            self.prepared_epoch.fill_(int(epoch))
        if self.needs_calibration:  # after the first matching: the distillation term needs one
            self.calibrate(loader, measure)

    def prepared_state(self) -> List[torch.Tensor]:
        return self.guided_inds + super().prepared_state()

    def prepare_summary(self) -> Dict[str, Any]:
        """The last matching, per distilled stage i: ``stage{i}_matched_cost`` (mean cost of the matched pairs),
        ``stage{i}_random_cost`` (a random assignment's expected mean cost: what matching buys),
        ``stage{i}_changed`` (fraction of teacher channels whose student changed since the previous matching;
        None at the first), ``stage{i}_solve_seconds``; and ``track_seconds`` (the tracking pass, this rank)."""
        summary: Dict[str, Any] = {**super().prepare_summary(), "num_updates": int(self.num_updates)}
        for r in self._last_reports:
            summary[f"stage{r.stage}_matched_cost"] = round(r.mean_cost, 6)
            summary[f"stage{r.stage}_random_cost"] = round(r.random_cost, 6)
            summary[f"stage{r.stage}_changed"] = None if r.changed is None else round(r.changed, 6)
            summary[f"stage{r.stage}_solve_seconds"] = round(r.seconds, 4)
        if self._last_reports and self._last_track_seconds is not None:
            summary["track_seconds"] = round(self._last_track_seconds, 3)
        return summary

    def prepare_artifacts(self) -> Dict[str, torch.Tensor]:
        """The last matching's tensors for the run folder (``matching_last.pth``, :mod:`mgd.plot`): per distilled
        stage i, ``stage{i}_cost`` (the (sc, tc) mean cost, CPU float32) and ``stage{i}_guided_inds``; empty
        before the first update of this process (the matrices are not part of the checkpoint)."""
        if not self._last_reports:
            return {}
        out: Dict[str, torch.Tensor] = {"num_updates": self.num_updates.detach().cpu().clone()}
        for r in self._last_reports:
            out[f"stage{r.stage}_cost"] = r.cost
            out[f"stage{r.stage}_guided_inds"] = getattr(self, f"guided_inds{r.stage + 1}").detach().cpu().clone()
        return out

    def extract_feature(self, x: torch.Tensor) -> None:
        """Track one batch for the next matching: accumulate the costs of raw student vs teacher features."""
        with torch.no_grad():
            t_feats, _ = self._t_src(self.t_net, x, self.preReLU)
            s_feats, _ = self._s_src(self.s_net, x, self.preReLU)
            self._check_features(t_feats, s_feats)
            for i in self.stages:
                self._tracker.add(i, *self._same_size(s_feats[i], t_feats[i]))
            self._tracker.add_images(x.shape[0])

    def track_running_stats(self, t_feats: Sequence[torch.Tensor], s_feats: Sequence[torch.Tensor]) -> None:
        """Track already computed features (for callers that run the networks themselves, e.g. detection)."""
        self._check_features(list(t_feats), list(s_feats))
        for i in self.stages:
            self._tracker.add(i, *self._same_size(s_feats[i], t_feats[i]))
        self._tracker.add_images(t_feats[self.stages[0]].shape[0])

    @property
    def tracking_failed(self) -> bool:
        """True once a tracked batch had non-finite features (the update will fail, keeping the old matching)."""
        return bool(self._tracker.nonfinite)

    @property
    def num_tracked_imgs(self) -> int:
        return self._tracker.num_images

    def update_flow(self) -> None:
        """Solve the matching from the tracked statistics (all ranks reduced) and store the guided indices."""
        device = self.num_updates.device
        shapes = [(self.s_channels[i], self.t_channels[i]) for i in self.stages]
        previous = [getattr(self, f"guided_inds{i + 1}").clone() for i in self.stages] if self._matched else None
        track_seconds, self.track_seconds = self.track_seconds, None  # set by mgd_update for this pass only
        try:
            inds, reports = self._tracker.solve(self.stages, shapes, device, [self.groups[i] for i in self.stages],
                                                self.solver, previous=previous)
        finally:
            self.init_flow()
        for stage, ind in zip(self.stages, inds):
            getattr(self, f"guided_inds{stage + 1}").copy_(ind)
        self.num_updates += 1
        self._matched = True
        self._last_reports = reports  # holds the cost matrices of the last update only
        self._last_track_seconds = track_seconds
        for r in reports:
            changed = "first matching" if r.changed is None else f"{100 * r.changed:.1f}% of teacher channels moved"
            logger.info("mgd matching %d, stage %d: cost %dx%d solved in %.3f s, mean matched cost %.4f vs %.4f "
                        "random, %s", int(self.num_updates), r.stage, r.shape[0], r.shape[1], r.seconds,
                        r.mean_cost, r.random_cost, changed)

    # ------------------------------------------------------------------------------------------ training
    def _check_features(self, t_feats, s_feats) -> None:
        n = len(self.t_channels)
        if len(t_feats) != n or len(s_feats) != n:
            raise RuntimeError(f"expected {n} stage features per network, got teacher {len(t_feats)}, "
                               f"student {len(s_feats)}")
        for i in self.stages:
            t, s = t_feats[i], s_feats[i]
            if t.shape[1] != self.t_channels[i] or s.shape[1] != self.s_channels[i]:
                raise RuntimeError(f"stage {i}: features have {t.shape[1]} (teacher) / {s.shape[1]} (student) "
                                   f"channels, expected {self.t_channels[i]} / {self.s_channels[i]}")

    @staticmethod
    def _same_size(s_feat: torch.Tensor, t_feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """A stage's maps at one spatial size (the larger average-pooled to the smaller, as mdistiller pools
        for AT and OFD): the matching's costs and the partial L2 compare them position by position. Equal
        sizes, the original's only case, pass unchanged."""
        return match_spatial(s_feat, t_feat)

    def _check_matched(self) -> None:
        if not self._matched:  # a Python flag: reading num_updates on a GPU at every step would synchronise
            raise RuntimeError("no channel matching yet: call mgd_update(loader, distiller) (or "
                               "distiller.prepare(loader)) before the first forward, and again every few epochs")

    def stage_loss(self, i: int, s_feat: torch.Tensor, t_feat: torch.Tensor) -> torch.Tensor:
        """Partial L2 between the normalised student feature and the reduced teacher feature of stage i."""
        return stage_loss(self.BNs[i], s_feat, t_feat, getattr(self, f"margin{i + 1}"),
                          getattr(self, f"guided_inds{i + 1}"), self.s_channels[i], self.reducer)

    def distill_loss(self, s_feats: Sequence[torch.Tensor], t_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weighted sum of the stages' partial L2 (float32, summed over elements, not normalised)."""
        self._check_matched()
        self._check_features(t_feats, s_feats)
        device = s_feats[self.stages[0]].device
        with float32_region(device):
            loss = torch.zeros((), device=device)
            for i in self.stages:
                if self.stage_weights[i] != 0:
                    loss = loss + self.stage_loss(i, *self._same_size(s_feats[i], t_feats[i])) * self.stage_weights[i]
        return loss

    def run_networks(self, images: torch.Tensor) -> Tuple[Any, Any, Any, Any]:
        self._check_matched()  # before the forward, not after it
        return super().run_networks(images)

    def losses(self, s_feats, t_feats, s_out, t_out, target) -> Dict[str, torch.Tensor]:
        batch = s_feats[self.stages[0]].shape[0]
        losses = {"distill": self.normalise(self.distill_loss(s_feats, t_feats), batch)}
        if self.with_kd:
            losses["kd"] = kd_loss(s_out, t_out, self.T)
        return losses

    def forward(self, x: torch.Tensor):
        """The original's return values: (student output, loss_distill); with_kd: (student output,
        [loss_distill, loss_kd]); det: the student's loss dict gains 'loss_distill'. The distillation loss
        is summed over elements: divide it by the batch size and a loss factor in the application (or use
        :meth:`forward_train`, which does)."""
        t_feats, t_out, s_feats, s_out = self.run_networks(x)
        loss_distill = self.distill_loss(s_feats, t_feats)
        if self.with_kd:
            return s_out, [loss_distill, kd_loss(s_out, t_out, self.T)]  # kd_loss computes in float32
        if self.det:
            s_out["loss_distill"] = loss_distill
        return s_out, loss_distill


@register_distiller("sm")
class SMDistiller(MGDistiller):
    """MGD with sparse matching: each student channel learns from one matched teacher channel."""

    flag_prefix = "mgd"  # sparse matching reads MGD's flags, but for the reducer (always sm)
    cli_options = tuple(o for o in MGDistiller.cli_options if o != "reducer")

    def __init__(self, t_net: nn.Module, s_net: nn.Module, ignore_inds: Optional[Sequence[int]] = None,
                 reducer: ReducerName = "sm", sync_bn: bool = False, with_kd: bool = False, preReLU: bool = True,
                 distributed: bool = False, det: bool = False, **kwargs) -> None:
        if reducer != "sm":
            raise ValueError(f"SMDistiller uses the 'sm' reducer, got {reducer!r}; use MGDistiller for others")
        super().__init__(t_net, s_net, ignore_inds, "sm", sync_bn, with_kd, preReLU, distributed, det, **kwargs)

