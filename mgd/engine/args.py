"""Command-line flags that every training script of mgd shares, with the meanings torchvision's
references and the original MGD scripts give them."""
from __future__ import annotations

import argparse
import collections.abc
import re
import sys
import typing
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["ArgumentParser", "add_launch_arguments", "add_precision_arguments", "add_run_arguments",
           "add_method_arguments", "add_training_arguments", "distiller_options_from_args", "identity_settings", "option_flag",
           "check_method_flags", "positive_int", "positive_float", "non_negative_int", "non_negative_float", "unit_interval"]


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
unit_interval = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def add_training_arguments(p: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float, workers: int,
                           checkpoint: str, start_epoch: bool = False, evaluate: Optional[str] = None) -> None:
    """The optimisation and loop flags every training script shares, as torchvision's references and the
    original scripts name them, with this script's defaults: -j, --epochs (and --start-epoch), -b (the total
    over all processes), --lr, --momentum, --wd, -p, --resume (``checkpoint``: the file it continues from) and,
    where the script has it, -e (``evaluate``: what it reports)."""
    p.add_argument("-j", "--workers", default=workers, type=non_negative_int, help="data loading workers per "
                   "process")
    p.add_argument("--epochs", default=epochs, type=positive_int)
    if start_epoch:
        p.add_argument("--start-epoch", default=0, type=non_negative_int, help="first epoch (overridden by "
                       "--resume)")
    p.add_argument("-b", "--batch-size", default=batch_size, type=positive_int, help="total batch size over all "
                   "processes")
    p.add_argument("--lr", "--learning-rate", default=lr, type=positive_float, dest="lr", help="initial learning "
                   "rate")
    p.add_argument("--momentum", default=0.9, type=non_negative_float)
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=non_negative_float, dest="weight_decay")
    p.add_argument("-p", "--print-freq", default=10, type=positive_int, help="progress bar refresh, in iterations")
    p.add_argument("--resume", default="", metavar="PATH", help=f"a checkpoint of this script ({checkpoint}) to "
                   "continue, exactly where it stopped")
    if evaluate:
        p.add_argument("-e", "--evaluate", action="store_true", help=f"{evaluate} and exit")


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


#: Options whose flag carries no method prefix (``--loss-factor``, ``--nd-weight``: several methods share them).
_UNPREFIXED_OPTIONS = ("loss_factor", "loss_ratio", "nd_weight", "logit_standardize")
#: Options read from a flag of the same name that is no method flag (``--sync-bn``) or set by the launcher.
_RUN_OPTIONS = ("sync_bn", "distributed")


def option_flag(name: str, option: str) -> str:
    """The flag of the method ``name``'s ``option``: ``--<flag_prefix>-<option>`` (the prefix: the class's
    ``flag_prefix``, else its name), or ``--<option>`` when the option is shared by several methods
    (``--loss-factor``) or already starts with the prefix (KD++'s ``kd_weight``: ``--kd-weight``)."""
    from ..registry import DISTILLERS

    prefix = DISTILLERS[name].flag_prefix or name
    bare = option in _UNPREFIXED_OPTIONS or option.startswith(prefix + "_")
    return "--" + (option if bare else f"{prefix}_{option}").replace("_", "-")


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _strip_markup(text: str) -> str:
    """A docstring entry as plain help text: no reST roles or literals; argparse's % escaped."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
    return text.replace("%", "%%")


def _flag_kwargs(annotation: Any) -> Dict[str, Any]:
    """argparse keywords from an option's type hint: bool -> 0/1, Literal -> choices, a number with Literal
    words (a loss factor or "auto") -> either, a sequence of ints -> a list, int -> positive, float -> >= 0."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Union and len(args) == 1:
        annotation, args = args[0], list(typing.get_args(args[0]))  # Optional[X] -> X
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"type": int, "choices": [0, 1]}
    if origin is Literal:
        return {"choices": list(args)}
    if origin is Union:
        words = [w for a in args if typing.get_origin(a) is Literal for w in typing.get_args(a)]
        number = positive_float if float in args else positive_int

        def parse(text: str):
            return text if text in words else number(text)
        parse.__name__ = " or ".join(["number", *map(repr, words)])
        return {"type": parse}
    if origin in (list, tuple, collections.abc.Sequence) or annotation in (list, tuple):
        return {"type": non_negative_int, "nargs": "*"}
    if annotation is int:
        return {"type": positive_int}
    if annotation is float:
        return {"type": non_negative_float}
    return {}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(_shown, value))
    return str(value)


def add_method_arguments(parser: argparse.ArgumentParser, methods: Sequence[str],
                         defaults: Optional[Mapping[str, Any]] = None, exclude: Sequence[str] = ()) -> None:
    """One flag per command-line option of the ``methods`` (:func:`mgd.registry.command_line_options`: each
    class's ``cli_options``, typed by their annotations, helped by their docstrings), in one argument group:
    the one place where every script's method flags come from, so their defaults cannot drift. A flag that
    several methods share (``--loss-factor``) is one flag whose help lists each method's default.

    ``defaults``: option -> this application's default where it is not the method's (seg/'s loss factor of
    1e5, OFD's segmentation setting), shown in the help. ``exclude``: options the application cannot offer
    (MoCo's encoders have no logits for MGD's ``with_kd``). Every flag defaults to None (unset: the method's
    default); :func:`distiller_options_from_args` reads them back.
    """
    from ..registry import command_line_options

    defaults = dict(defaults or {})
    flags: Dict[str, List[Tuple[str, Any]]] = {}
    for name in sorted(methods):
        for spec in command_line_options(name):
            if spec.option not in exclude:
                flags.setdefault(option_flag(name, spec.option), []).append((name, spec))
    group = parser.add_argument_group("method options", "each method's options, generated from the registry; "
                                      "unset: the method's default (shown), or this script's where it says 'here'")
    for flag in sorted(flags):
        users = flags[flag]
        option = users[0][1].option
        by_default: Dict[str, List[str]] = {}
        for name, spec in users:
            by_default.setdefault(_shown(spec.default), []).append(name)
        shown = "; ".join(f"{', '.join(names)}: default {value}" for value, names in by_default.items())
        if option in defaults:
            shown = f"default here {_shown(defaults[option])} ({shown})"
        group.add_argument(flag, default=None, **_flag_kwargs(users[0][1].annotation),
                           help=f"[{shown}] {_strip_markup(users[0][1].help)}")
    parser.set_defaults(method_defaults=defaults)


def distiller_options_from_args(name: str, args: argparse.Namespace, **given) -> dict:
    """Options for ``mgd.build_distiller(name, ...)`` from the flags of :func:`add_method_arguments`, with no
    per-method code: ``given`` (e.g. stage positions, passed to the methods that accept them) first, then each
    option's flag (:func:`option_flag`) or, for ``sync_bn`` / ``distributed``, the run's flag of that name, then
    the application's default (``defaults`` of :func:`add_method_arguments`). Options left out take the
    method's (paper's) default."""
    from ..registry import command_line_options, distiller_options

    accepted = distiller_options(name)
    app_defaults = getattr(args, "method_defaults", None) or {}
    options = {k: v for k, v in given.items() if k in accepted}
    flagged = {spec.option for spec in command_line_options(name)} | (set(_RUN_OPTIONS) & accepted)
    for option in sorted(flagged - set(options)):
        dest = option if option in _RUN_OPTIONS else _dest(option_flag(name, option))
        value = getattr(args, dest, None)
        if value is None:
            value = app_defaults.get(option)
        if value is not None:
            options[option] = value
    return options


def check_method_flags(name: str, args: argparse.Namespace, methods: Sequence[str]) -> List[str]:
    """The method flags (of ``methods``, as :func:`add_method_arguments` made them) set on this command line that
    the method ``name`` does not read, each named in a one-line warning on stderr (``--kd-alpha`` on an MGD run
    would otherwise be lost without a word). A warning, not an error: one base command for several methods (a
    sweep over ``--distiller``) is a normal way to run them."""
    from ..registry import command_line_options

    own = {option_flag(name, spec.option) for spec in command_line_options(name)}
    unused = sorted({flag for other in methods for flag in (option_flag(other, s.option)
                                                             for s in command_line_options(other))
                     if flag not in own and getattr(args, _dest(flag), None) is not None})
    if unused:
        print(f"warning: {', '.join(unused)} {'has' if len(unused) == 1 else 'have'} no meaning for --distiller "
              f"{name}, ignored (its options: {', '.join(sorted(own)) or 'none'})", file=sys.stderr)
    return unused


def identity_settings(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """The method's ``identity_options`` for this run (the flag, else the method's default), keyed by their
    flags' names as the checkpoints store them (MGD and sparse matching: ``mgd_reducer``)."""
    from ..registry import DISTILLERS, option_default

    given = distiller_options_from_args(name, args)
    return {_dest(option_flag(name, option)): given.get(option, option_default(name, option))
            for option in DISTILLERS[name].identity_options}


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, except where it is None (unset: the help says what then happens)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the scripts' conventions: a bad flag is one line on stderr and exit code 2 (argparse
    itself prints the whole usage first, which buries the one line that matters); --help shows the defaults;
    ``--config FILE`` and ``--print-config`` (:mod:`mgd.engine.config`: a recipe as a file, the command line
    overriding it)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        from .config import add_config_arguments
        add_config_arguments(self)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        from .config import parse_with_config
        return parse_with_config(self, args, lambda argv: super(ArgumentParser, self).parse_args(argv, namespace))

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_run_arguments(p: argparse.ArgumentParser, default_output: Optional[str] = None) -> None:
    """Where a run writes (checked before it starts, see :mod:`mgd.engine.rundir`) and how it reads images."""
    p.add_argument("--output-dir", default=default_output, help="checkpoints and logs" +
                   ("" if default_output else " (default: output/<data>.<arch>...)"))
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --output-dir that holds a previous "
                   "run: its checkpoints and log are moved to OUTPUT_DIR/previous-<time>/ first, nothing is deleted (without it, such a run is refused unless it is --resume'd)")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard scalars to OUTPUT_DIR/tb")
    p.add_argument("--skip-bad-images", action="store_true", help="skip truncated or undecodable images with a "
                   "warning naming each file (default: stop at the first one, naming it)")
