"""The one contract every distiller of mgd keeps, whatever its method (MGD, OFD, KD, AT, SP, KD++, ...).

::

    d = mgd.build_distiller(name, teacher, student, **options)   # every option has a default
    d.set_epoch(epoch)                         # before each epoch (warm-ups)
    d.prepare(loader)                          # what the method derives from data (MGD: the matching)
    logits, losses = d.forward_train(images, target)
    loss = d.task_weight * task_loss + sum(losses.values())
    d.get_learnable_parameters(); d.own_state_dict(); d.load_own_state_dict(state); d.close()

``losses`` are weighted and normalised scalar terms (per image, divided by any loss factor), computed and
summed in float32 whatever the autocast dtype: a summed partial L2 overflows float16, and bfloat16 keeps
about three significant digits. A training script therefore never needs to know which method it runs: it
asks :meth:`Distiller.prepare_due` before each epoch, calls :meth:`Distiller.prepare` when it says so,
adds the terms, and checkpoints :meth:`Distiller.own_state_dict` beside the student.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..features import StageSpec, builtin_ignore_inds, implements_protocol, make_feature_source
from ..features.discovery import default_positions
from ..losses.precision import float32_region

if TYPE_CHECKING:
    from ..calibration import Measure

#: ``track(distiller, batch) -> images``: one batch of a tracking pass where batches are not images.
Track = Callable[[nn.Module, Any], int]

__all__ = ["Distiller", "TrainableDistiller", "check_networks", "float32_region", "Layers"]

Layers = Optional[Sequence[Union[str, StageSpec]]]


def check_networks(t_net: Any, s_net: Any) -> None:
    for name, net in (("t_net", t_net), ("s_net", s_net)):
        if not isinstance(net, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")


class Distiller(nn.Module):
    """Base of every distiller: a frozen teacher in eval mode, a trainable student, optional stage features.

    Subclasses implement :meth:`losses` (and, when the method derives something from data, :meth:`prepare`,
    :meth:`prepare_due` and :meth:`prepared_state`). Class attributes:

    * ``task_weight``: how much of the task loss (cross-entropy) the method keeps (KD: 1 - alpha);
    * ``needs_features``: whether :meth:`forward_train` captures stage features (hooks) or only logits;
    * ``prepare_name``: what :meth:`prepare` derives, for logs ("matching", "class_means");
    * ``needs_indices``: whether :meth:`forward_train` takes ``indices=`` (the samples' dataset indices).

    Args:
        t_net, s_net: teacher and student. The teacher receives no gradient and stays in eval mode (unless
            ``teacher_train_mode``, OFD's option).
        teacher_layers, student_layers, teacher_bns: stage positions (see :mod:`mgd.features`); None uses
            the original protocol or the built-in torchvision positions.
        own_networks: register the networks as submodules (default). False when they belong to a larger
            model (e.g. a detector holding both): the distiller's state then holds only its own tensors.
    """

    task_weight: float = 1.0
    needs_features: bool = True
    preReLU: bool = True  # stage features as captured (pre-ReLU); MGD's preReLU=False applies a ReLU
    prepare_name: str = "prepare"
    #: Whether each distilled teacher stage must be at least as wide as its student stage (MGD's matching).
    wider_teacher: bool = False
    #: Whether :meth:`prepare` is a tracking pass over both networks' stage features then a solve (MGD's matching,
    #: :func:`mgd.mgd_update`), worth repeating as the student trains: an application that runs the networks
    #: itself feeds that pass with ``mgd_update(batches, d, track=...)`` (which hands captured features to
    #: ``d.track_running_stats``) on its own schedule (d2: every MGD.UPDATE_FREQ iterations).
    prepare_tracks_features: bool = False
    #: Whether :meth:`forward_train` needs ``indices=`` (each sample's index in the training set: CRD's memory).
    needs_indices: bool = False
    #: The heads of the student's output the method reads: 1 for any classifier; 2 for a student that returns a
    #: class head's and a distillation head's logits in training (DeiT's distillation token).
    student_heads: int = 1
    #: The samples' dataset indices of the batch whose terms :meth:`compute_terms` computes (None outside it).
    _indices: Optional[torch.Tensor] = None
    #: The training epoch (0-based) announced by :meth:`set_epoch`: what warm-ups ramp on (None: never announced).
    epoch: Optional[int] = None
    #: Whether training must drop a last, smaller batch (ReviewKD: a BatchNorm on 1x1 maps needs 2 samples).
    needs_full_batches: bool = False
    #: Whether the method may run in nn.DataParallel replicas (False: its training forward moves a memory, whose
    #: in-place updates DataParallel keeps from one replica only; use DistributedDataParallel).
    replica_safe: bool = True
    #: Whether the method needs a teacher network (False only for ``none``, plain training).
    needs_teacher: bool = True
    #: Whether :meth:`prepare` still has to measure a loss factor (``loss_factor="auto"``, the partial-L2 methods).
    needs_calibration: bool = False
    #: Whether the method works on dense (N, C, H, W) outputs, as a segmenter's (the feature methods and
    #: pixel-wise KD); False where it needs image-level labels or a classifier's embedding.
    dense_outputs: bool = False
    #: The options applications offer as command-line flags ``--<flag_prefix>-<option>`` (generated by
    #: :func:`mgd.engine.args.add_method_arguments`; each documented in an ``Args:`` entry of the docstring).
    cli_options: Tuple[str, ...] = ()
    #: The prefix of the method's flags (and of d2's config section ``MGD.<PREFIX>``); None: its registered name.
    flag_prefix: Optional[str] = None
    #: The options that name a run beside the method and that a resume must keep (MGD: its reducer; the
    #: original's output folder <distiller>.<reducer>).
    identity_options: Tuple[str, ...] = ()
    _NETWORK_PREFIXES = ("t_net.", "s_net.")

    def __init_subclass__(cls, **kwargs) -> None:
        """A constructor that fails (a bad option, stages that do not fit) removes the hooks it already
        installed: no object comes back on which ``close()`` could be called."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_closes_on_error", False):
            return

        @functools.wraps(init)
        def guarded(self, *args, **kw):
            try:
                init(self, *args, **kw)
            except BaseException:
                if "_sources" in self.__dict__:
                    self.close()
                raise
        guarded._closes_on_error = True  # type: ignore[attr-defined]
        cls.__init__ = guarded  # type: ignore[method-assign]

    def __init__(self, t_net: nn.Module, s_net: nn.Module, *, teacher_layers: Layers = None,
                 student_layers: Layers = None, teacher_bns: Optional[Sequence[str]] = None,
                 teacher_train_mode: bool = False, own_networks: bool = True) -> None:
        super().__init__()
        check_networks(t_net, s_net)
        if own_networks:
            self.t_net, self.s_net = t_net, s_net
        else:  # plain attributes: not submodules, not in state_dict()
            self.__dict__["t_net"], self.__dict__["s_net"] = t_net, s_net
        self.teacher_train_mode = bool(teacher_train_mode)
        t_net.requires_grad_(False)
        self._sources: List[Any] = []
        if self.needs_features and teacher_layers is None and student_layers is None and teacher_bns is None \
                and not (implements_protocol(t_net) or implements_protocol(s_net)):
            positions = default_positions(t_net, s_net, self.wider_teacher)  # found in the models, paired
            if positions is not None:
                teacher_layers, student_layers = positions
        self._student_layers_given = student_layers is not None
        if self.needs_features:
            self._t_src = self._source(t_net, teacher_layers, teacher_bns, "teacher")
            self._s_src = self._source(s_net, student_layers, None, "student")
        self.train(self.training)  # the teacher in eval mode from the start, not only after a .train() call

    # ------------------------------------------------------------------------------------------ set-up
    def _source(self, net: nn.Module, layers: Layers, bns: Optional[Sequence[str]], role: str):
        """A feature source on ``net`` that :meth:`close` will remove."""
        source = make_feature_source(net, layers, bns, role)
        self._sources.append(source)
        return source

    def _stage_channels(self, teacher_channels: Optional[Sequence[int]] = None,
                        student_channels: Optional[Sequence[int]] = None,
                        example_input: Optional[torch.Tensor] = None) -> Tuple[List[int], List[int]]:
        """Channel counts per stage: given, read off the named modules, or read off one forward of
        ``example_input``; ValueError when the two networks have different stage counts."""
        t_ch = list(teacher_channels) if teacher_channels is not None else self._t_src.channels()
        s_ch = list(student_channels) if student_channels is not None else self._s_src.channels()
        if None in t_ch or None in s_ch:
            if example_input is None:
                raise ValueError("cannot read the channel count of some stage layers off the modules; give "
                                 "teacher_channels=[...] / student_channels=[...] or example_input=<a small input batch>")
            with torch.no_grad():
                was = (self.t_net.training, self.s_net.training)
                self.t_net.eval(), self.s_net.eval()
                t_feats, _ = self._t_src(self.t_net, example_input)
                s_feats, _ = self._s_src(self.s_net, example_input)
                self.t_net.train(was[0]), self.s_net.train(was[1])
            t_ch = [c if c is not None else f.shape[1] for c, f in zip(t_ch, t_feats)]
            s_ch = [c if c is not None else f.shape[1] for c, f in zip(s_ch, s_feats)]
        if len(t_ch) != len(s_ch):
            raise ValueError(f"the teacher has {len(t_ch)} stages but the student has {len(s_ch)}; give the same "
                             "number of teacher and student layers")
        return [int(c) for c in t_ch], [int(c) for c in s_ch]

    def _select_stages(self, num_stages: int, ignore_inds: Optional[Sequence[int]]) -> None:
        """``self.ignore_inds`` and ``self.stages`` (the distilled ones). None: the student family's default
        (stage 0 of MobileNetV2 and ShuffleNetV2, whose first stage has another resolution than a ResNet
        teacher's, as the original skipped it) when the positions are built in, else none."""
        if ignore_inds is None:
            ignore_inds = [] if self._student_layers_given else builtin_ignore_inds(self.s_net)
        bad = [i for i in ignore_inds if not 0 <= int(i) < num_stages]
        if bad:
            raise ValueError(f"ignore_inds {bad} out of range for {num_stages} stages (valid: 0..{num_stages - 1})")
        self.ignore_inds = sorted({int(i) for i in ignore_inds})
        self.stages = [i for i in range(num_stages) if i not in self.ignore_inds]
        if not self.stages:
            raise ValueError("ignore_inds leaves no stage to distill")

    # ------------------------------------------------------------------------------------------ modes, state
    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.s_net.train(mode)  # also when the distiller does not own it
        self.t_net.train(mode and self.teacher_train_mode)  # frozen statistics, no dropout: a fixed target
        return self

    def own_state_dict(self) -> Dict[str, torch.Tensor]:
        """The distiller's state without the teacher's and the student's weights (connectors, norm layers,
        matching, class means...): what a checkpoint needs beside the student."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self._NETWORK_PREFIXES)}

    def load_own_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`own_state_dict`; every non-network key must be present."""
        result = self.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(self._NETWORK_PREFIXES)]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"distiller state does not fit this distiller: missing {missing}, "
                               f"unexpected {result.unexpected_keys}")

    def get_learnable_parameters(self) -> List[nn.Parameter]:
        """What the optimizer trains: the student's parameters and the distiller's own (norm layers,
        connectors, projections); never the teacher's."""
        params = list(self.s_net.parameters())
        seen = {id(p) for p in params} | {id(p) for p in self.t_net.parameters()}
        return params + [p for p in self.parameters() if id(p) not in seen]

    def close(self) -> None:
        """Remove every hook this distiller installed and restore the in-place flags it switched off, so
        the two networks are exactly as they were before it was built (a notebook, a sweep)."""
        for source in self.__dict__.get("_sources", []):
            source.close()
        self._sources = []

    # ------------------------------------------------------------------------------------------ data
    def set_epoch(self, epoch: int) -> None:
        """Announce the epoch about to be trained (0-based; as ``DistributedSampler.set_epoch``): the methods
        whose terms ramp in over a warm-up (DKD, ReviewKD, KD++) read it. Training loops call it before each
        epoch (mgd.engine does), so a resumed run ramps exactly as an uninterrupted one."""
        self.epoch = int(epoch)

    def prepare_due(self, epoch: int) -> bool:
        """True when :meth:`prepare` should run before ``epoch`` (0-based). Default: never."""
        return False

    def prepare(self, loader: Iterable, epoch: Optional[int] = None, *, track: Optional[Track] = None,
                measure: Optional[Measure] = None) -> None:
        """Derive what the method needs from data (``loader`` yields images or (images, targets), each
        process its own shard; it may be iterated more than once). Default: nothing.

        An application whose batches are not images (a detector's inputs) says how to use them: ``track(d,
        batch) -> images`` runs both networks on a batch for a tracking pass (:func:`mgd.mgd_update`'s), and
        ``measure(batch) -> (distillation term, task loss, images)`` measures a loss factor
        (:func:`mgd.calibrate_loss_factor`'s). A method that needs neither ignores them."""

    def prepared_state(self) -> List[torch.Tensor]:
        """The tensors :meth:`prepare` derived, which every process must hold identically afterwards."""
        return []

    def prepare_summary(self) -> Dict[str, Any]:
        """A few numbers about the last :meth:`prepare`, for the run log."""
        return {}

    def prepare_artifacts(self) -> Dict[str, torch.Tensor]:
        """Tensors of the last :meth:`prepare` worth keeping beside the run log but not in the checkpoint
        (MGD: the cost matrices and indices of the last matching, for :mod:`mgd.plot`); CPU tensors, the same
        on every process. Default: none."""
        return {}

    # ------------------------------------------------------------------------------------------ capture
    def teacher_features(self, forward: Callable[[], Any]) -> Tuple[List[torch.Tensor], Any]:
        """Stage features of the teacher captured while ``forward()`` runs (without gradients), and its
        result; for callers that run the networks themselves (e.g. only a detector's backbone)."""
        with torch.no_grad():
            return self._run("_t_src", forward, "teacher")

    def student_features(self, forward: Callable[[], Any]) -> Tuple[List[torch.Tensor], Any]:
        """Stage features of the student captured while ``forward()`` runs, and its result: e.g. a
        detector's own training forward, so the student runs once for both its losses and MGD."""
        return self._run("_s_src", forward, "student")

    def _run(self, source_name: str, forward: Callable[[], Any], role: str) -> Tuple[List[torch.Tensor], Any]:
        if not self.needs_features:
            raise TypeError(f"{type(self).__name__} captures no stage features")
        source = getattr(self, source_name)
        if not hasattr(source, "run"):
            raise TypeError(f"{role}_features needs hook-captured features; this {role} uses the "
                            "extract_feature protocol, call the distiller instead")
        return source.run(forward, self.preReLU)

    # ------------------------------------------------------------------------------------------ training
    def run_networks(self, images: torch.Tensor) -> Tuple[Any, Any, Any, Any]:
        """(teacher features, teacher output, student features, student output); the teacher without
        gradients. Features are None when the method needs none."""
        if self.needs_features:
            with torch.no_grad():
                t_feats, t_out = self._t_src(self.t_net, images, self.preReLU)
            s_feats, s_out = self._s_src(self.s_net, images, self.preReLU)
            return t_feats, t_out, s_feats, s_out
        with torch.no_grad():
            t_out = self.t_net(images)
        return None, t_out, None, self.s_net(images)

    def forward_train(self, images: torch.Tensor, target: Optional[torch.Tensor] = None,
                      indices: Optional[torch.Tensor] = None) -> Tuple[Any, Dict[str, torch.Tensor]]:
        """(student output, {term name: weighted, normalised float32 scalar}) for one training batch: the
        networks run (:meth:`run_networks`), then :meth:`compute_terms` on what they gave. ``indices``: each
        sample's index in the training set, for the methods whose ``needs_indices`` is true (CRD's memory)."""
        t_feats, t_out, s_feats, s_out = self.run_networks(images)
        return s_out, self.compute_terms(student_features=s_feats, teacher_features=t_feats, student_logits=s_out,
                                         teacher_logits=t_out, target=target, indices=indices)

    def compute_terms(self, *, student_features: Optional[Sequence[torch.Tensor]] = None,
                      teacher_features: Optional[Sequence[torch.Tensor]] = None, student_logits: Any = None,
                      teacher_logits: Any = None, target: Optional[torch.Tensor] = None,
                      indices: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Features in, terms out: the method's weighted, normalised float32 terms (the dict
        :meth:`forward_train` returns) from what an application captured itself, for the applications that run
        the networks their own way (a detector's bottom-up, MoCo's encoders) and hand over the results.

        ``student_features`` / ``teacher_features``: what :meth:`student_features` / :meth:`teacher_features`
        captured (this distiller's stage positions, then its embedding when it reads one); ``*_logits``: the
        networks' outputs, for the methods that compare them; ``target``: the labels, for those that read them
        (DKD, KD++'s class means); ``indices``: the samples' dataset indices (``needs_indices``). A method reads
        only what it needs (a feature method no logits, so a detector hands none); missing stage features or
        indices are a ValueError naming them. Computed and summed in float32 whatever the autocast dtype.
        """
        if self.needs_indices and indices is None:
            raise ValueError(f"{type(self).__name__} needs each sample's dataset index: pass indices=... "
                             "(forward_train(images, target, indices=...))")
        if self.needs_features and (student_features is None or teacher_features is None):
            raise ValueError(f"{type(self).__name__} distils features: pass student_features= and teacher_features="
                             " (what student_features() / teacher_features() captured)")
        device = _first_device(student_features, student_logits, teacher_features, teacher_logits, target)
        self._indices = indices
        try:
            with float32_region(device):
                return self.losses(student_features, teacher_features, student_logits, teacher_logits, target)
        finally:
            self._indices = None

    def forward(self, *args, **kwargs):
        return self.forward_train(*args, **kwargs)

    def losses(self, s_feats, t_feats, s_out, t_out, target) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


def _first_device(*values: Any) -> torch.device:
    """The device of the first tensor among ``values`` (looking into sequences and dicts, as a detector's outputs
    are): where the float32 region of :meth:`Distiller.compute_terms` applies; the CPU when there is none."""
    return next((t.device for t in _tensors(values)), torch.device("cpu"))


def _tensors(values: Any) -> Iterator[torch.Tensor]:
    """Every tensor in ``values``, depth first through sequences and dicts."""
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, dict):
            yield from _tensors(value.values())
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


class TrainableDistiller(nn.Module):
    """Holds only the trainable parts of a distiller (its children except the teacher: the student and the
    norm layers, connectors or projections); its forward is the distiller's :meth:`~Distiller.forward_train`.
    Wrap *this* in DistributedDataParallel: the trainable parts' gradients are synchronised while the frozen
    teacher is neither wrapped, broadcast nor checked for unused parameters."""

    def __init__(self, distiller: Distiller) -> None:
        super().__init__()
        for name, child in distiller.named_children():
            if child is not distiller.t_net:
                self.add_module(name, child)
        self._distiller = [distiller]  # a list: not registered as a submodule

    @property
    def distiller(self) -> Distiller:
        return self._distiller[0]

    def train(self, mode: bool = True) -> "TrainableDistiller":
        super().train(mode)
        self.distiller.train(mode)  # reaches the teacher too, which must stay in eval mode
        return self

    def forward(self, *args, **kwargs):
        return self.distiller.forward_train(*args, **kwargs)
