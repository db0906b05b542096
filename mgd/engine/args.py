"""Command-line flags that every training script of mgd shares, with the meanings torchvision's
references and the original MGD scripts give them."""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

__all__ = ["ArgumentParser", "add_launch_arguments", "add_precision_arguments", "add_run_arguments",
           "distiller_options_from_args", "loss_factor", "positive_int", "positive_float", "non_negative_int", "non_negative_float"]


def _number(kind, test, what):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be {what}")
        return value
    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a positive number")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def loss_factor(text: str):
    """--loss-factor: a positive number, or "auto" (measured before training, see mgd.calibrate_loss_factor)."""
    return "auto" if text == "auto" else positive_float(text)


def add_launch_arguments(p: argparse.ArgumentParser) -> None:
    """Processes, devices and seeds (read by :func:`mgd.engine.launch.launch` and ``setup_process``)."""
    p.add_argument("--world-size", default=-1, type=int, help="number of nodes (with --multiprocessing-distributed) "
                   "or processes")
    p.add_argument("--rank", default=-1, type=int, help="node rank (with --multiprocessing-distributed) or rank")
    p.add_argument("--dist-url", default="auto", help="init method; 'auto': env:// under torchrun, else a free "
                   "local TCP port")
    p.add_argument("--dist-backend", default=None, help="nccl with CUDA, gloo otherwise")
    p.add_argument("--seed", default=None, type=int, help="seed: makes runs (and resumed runs) repeatable")
    p.add_argument("--gpu", default=None, type=int, help="GPU id to use (single process)")
    p.add_argument("--multiprocessing-distributed", action="store_true",
                   help="spawn --nproc-per-node processes on this node and train with DDP")
    p.add_argument("--nproc-per-node", default=None, type=positive_int,
                   help="processes per node (default: the GPU count, or 1)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")
    p.add_argument("--dist-timeout", default=30.0, type=positive_float, metavar="MINUTES",
                   help="a collective (or the rendezvous) that waits longer than this for another process fails "
                   "and stops the job, instead of hanging (default: 30, gloo's and NCCL's own)")


def add_precision_arguments(p: argparse.ArgumentParser) -> None:
    """Mixed precision and memory layout, as torchvision's references name them."""
    p.add_argument("--amp", action="store_true", help="mixed precision: autocast for the networks' forward (the "
                   "distillation losses stay float32), GradScaler with float16")
    p.add_argument("--amp-dtype", default=None, choices=["float16", "bfloat16"],
                   help="autocast dtype with --amp (default: float16 on CUDA, bfloat16 on the CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the networks "
                   "and the input batches")


#: Options several methods share, read from the flag of the same name (``--loss-factor``, ``--sync-bn``) or
#: set by the launcher (``distributed``).
_SHARED_OPTIONS = ("loss_factor", "loss_ratio", "sync_bn", "distributed", "nd_weight")


def distiller_options_from_args(name: str, args: argparse.Namespace, **given) -> dict:
    """Options for ``mgd.build_distiller(name, ...)`` from command-line flags, with no per-method code.

    For each option the method accepts (:func:`mgd.registry.distiller_options`): the flag
    ``--<prefix>-<option>`` for each of the method's ``flag_prefixes`` (its name; KD++ also ``kd``), then
    ``--<option>`` when the option's own name starts with such a prefix (``--nd-weight``) or is shared
    (``--loss-factor``, ``--sync-bn``). Flags left at None fall back to the method's (paper's) default.
    ``given`` (e.g. stage positions) is passed to the methods that accept it.
    """
    from ..registry import DISTILLERS, distiller_options

    accepted = distiller_options(name)
    prefixes = DISTILLERS[name].flag_prefixes or (name,)
    options = {k: v for k, v in given.items() if k in accepted}
    for option in sorted(accepted - set(options)):
        candidates = [f"{p}_{option}" for p in prefixes]
        if option in _SHARED_OPTIONS or option.startswith(tuple(f"{p}_" for p in prefixes)):
            candidates.append(option)
        for flag in candidates:
            value = getattr(args, flag, None)
            if value is not None:
                options[option] = value
                break
    return options


def identity_settings(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The method's ``identity_options`` for this run (the flag, else the method's default), keyed
    ``<flag prefix>_<option>`` as the flags and the checkpoints name them (MGD and sparse matching: mgd_reducer)."""
    from ..registry import DISTILLERS, option_default

    cls = DISTILLERS[name]
    prefix = (cls.flag_prefixes or (name,))[0]
    given = distiller_options_from_args(name, args)
    return {f"{prefix}_{option}": given.get(option, option_default(name, option)) for option in cls.identity_options}


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the scripts' error convention: a bad flag is one line on stderr and exit code 2 (argparse
    itself prints the whole usage first, which buries the one line that matters)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_run_arguments(p: argparse.ArgumentParser, default_output: Optional[str] = None) -> None:
    """Where a run writes (checked before it starts, see :mod:`mgd.engine.rundir`) and how it reads images."""
    p.add_argument("--output-dir", default=default_output, help="checkpoints and logs" +
                   ("" if default_output else " (default: output/<data>.<arch>...)"))
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --output-dir that holds a previous "
                   "run, deleting its checkpoints (without it, such a run is refused unless it is --resume'd)")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard scalars to OUTPUT_DIR/tb")
    p.add_argument("--skip-bad-images", action="store_true", help="skip truncated or undecodable images with a "
                   "warning naming each file (default: stop at the first one, naming it)")
