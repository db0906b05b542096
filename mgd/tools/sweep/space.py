"""The search space of a sweep: dimensions over a training script's flags, as Optuna distributions.

Three kinds of dimension, each named by the flag it sets (without its dashes):

* a **grid** of values (``--grid kd-alpha=0.1,0.5,0.9``; a YAML list): every value is tried by the grid
  sampler, and is a categorical choice for TPE;
* a **range** (``--range lr=0.01:1:log``, ``--range epochs=2:8``; a YAML mapping ``{low, high, log}``): a float
  range (an int range when both ends are integers), log-scaled on request; for TPE only;
* a **group** of named flag sets (YAML only: ``method: {KD: [--distiller, kd], AT: [--distiller, at]}``): one
  label per trial, its flags appended to the command; a grid over labels (``benchmarks/compare_distillers.py``
  sweeps methods this way).

Values given on the command line stay the text the user wrote (``1e-4`` is passed as ``1e-4``; a YAML file's
numbers are written as Python writes them, its booleans as 1 and 0), so a trial's command line is the one a
user would type, and its flags are checked by the script's own parser.
"""
from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

from .errors import SweepError

__all__ = ["Grid", "Range", "Group", "Dimension", "parse_grid", "parse_range", "dimensions_from_yaml",
           "grid_points", "point_argv", "point_key", "distributions", "flag_name", "check_names", "as_yaml",
           "flags_of"]

_FLAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def flag_name(text: str, where: str) -> str:
    """``kd-alpha`` from ``kd-alpha`` or ``--kd-alpha``; SweepError for anything that is no flag name."""
    name = text.strip()
    name = name[2:] if name.startswith("--") else name
    if not _FLAG.match(name):
        raise SweepError(f"{where}: {text!r} is no flag name (e.g. kd-alpha for --kd-alpha)")
    return name


def _text(value: Any) -> str:
    """A YAML value as it would be typed on a command line."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@dataclass(frozen=True)
class Grid:
    """A flag and the values to try, in order."""
    name: str
    values: Tuple[str, ...]

    def argv(self, value: str) -> List[str]:
        return [f"--{self.name}", value]

    def distribution(self):
        from optuna.distributions import CategoricalDistribution
        return CategoricalDistribution(list(self.values))


@dataclass(frozen=True)
class Range:
    """A flag and a numeric range (ints when ``integer``), sampled by TPE; ``log`` for a log-uniform range."""
    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def argv(self, value: Union[int, float]) -> List[str]:
        return [f"--{self.name}", str(int(value)) if self.integer else repr(float(value))]

    def distribution(self):
        from optuna.distributions import FloatDistribution, IntDistribution
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Group:
    """Named sets of flags (label -> argv), one label per trial."""
    name: str
    options: Tuple[Tuple[str, Tuple[str, ...]], ...] = field(default=())

    @property
    def values(self) -> Tuple[str, ...]:
        return tuple(label for label, _ in self.options)

    def argv(self, label: str) -> List[str]:
        return list(dict(self.options)[label])

    def distribution(self):
        from optuna.distributions import CategoricalDistribution
        return CategoricalDistribution(list(self.values))


Dimension = Union[Grid, Range, Group]


def parse_grid(text: str) -> Grid:
    """``NAME=V1,V2,...`` -> Grid; SweepError for a missing ``=``, an empty grid or a repeated value."""
    name, sep, values = text.partition("=")
    if not sep:
        raise SweepError(f"--grid {text!r}: write NAME=V1,V2,... (e.g. kd-alpha=0.1,0.9)")
    name = flag_name(name, "--grid")
    items = [v.strip() for v in values.split(",") if v.strip()]
    return _grid(name, items, f"--grid {name}")


def _grid(name: str, items: Sequence[str], where: str) -> Grid:
    if not items:
        raise SweepError(f"{where}: the grid is empty: give at least one value")
    repeated = sorted({v for v in items if items.count(v) > 1})
    if repeated:
        raise SweepError(f"{where}: {', '.join(repeated)} given twice")
    return Grid(name, tuple(items))


def _number(text: str, where: str) -> Union[int, float]:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise SweepError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise SweepError(f"{where}: {text!r} is not a finite number")
    return value


def _range(name: str, low: Any, high: Any, log: bool, where: str) -> Range:
    lo, hi = _number(str(low), where), _number(str(high), where)
    if not lo < hi:
        raise SweepError(f"{where}: the low end {low} must be below the high end {high}")
    if log and lo <= 0:
        raise SweepError(f"{where}: a log range needs a positive low end, got {low}")
    return Range(name, float(lo), float(hi), bool(log), isinstance(lo, int) and isinstance(hi, int))


def parse_range(text: str) -> Range:
    """``NAME=LOW:HIGH`` or ``NAME=LOW:HIGH:log`` -> Range (ints when both ends are)."""
    name, sep, spec = text.partition("=")
    parts = spec.split(":")
    if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise SweepError(f"--range {text!r}: write NAME=LOW:HIGH or NAME=LOW:HIGH:log (e.g. lr=0.01:1:log)")
    name = flag_name(name, "--range")
    return _range(name, parts[0], parts[1], len(parts) == 3, f"--range {name}")


def dimensions_from_yaml(space: Any, where: str) -> List[Dimension]:
    """The ``space:`` mapping of a sweep file: ``name: [values]`` (grid), ``name: {low, high, log}`` (range),
    ``name: {label: [flags...], ...}`` (group)."""
    if space is None:
        return []
    if not isinstance(space, Mapping):
        raise SweepError(f"{where}: space must map flag names to values, got a {type(space).__name__}")
    dims: List[Dimension] = []
    for key, spec in space.items():
        at = f"{where}: space.{key}"
        if isinstance(spec, list):
            dims.append(_grid(flag_name(str(key), at), [_text(v) for v in spec], at))
        elif isinstance(spec, Mapping) and "low" in spec and "high" in spec:
            unknown = set(spec) - {"low", "high", "log"}
            if unknown:
                raise SweepError(f"{at}: a range takes low, high and log, not {', '.join(sorted(map(str, unknown)))}")
            dims.append(_range(flag_name(str(key), at), spec["low"], spec["high"], bool(spec.get("log")), at))
        elif isinstance(spec, Mapping):
            if not spec:
                raise SweepError(f"{at}: the group is empty: give at least one label with its flags")
            options = []
            for label, flags in spec.items():
                if isinstance(flags, str):
                    flags = flags.split()
                if not isinstance(flags, list):
                    raise SweepError(f"{at}.{label}: give the label's flags as a list, e.g. [--distiller, kd]")
                options.append((str(label), tuple(_text(f) for f in flags)))
            dims.append(Group(str(key), tuple(options)))
        else:
            raise SweepError(f"{at}: give a list of values, a range {{low, high, log}} or a group {{label: [flags]}}")
    return dims


def check_names(dims: Sequence[Dimension]) -> None:
    names = [d.name for d in dims]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SweepError(f"{', '.join(repeated)}: swept twice (give each flag one dimension)")


def grid_points(dims: Sequence[Dimension]) -> List[Dict[str, Any]]:
    """Every combination of the grid and group dimensions, the first dimension varying slowest (the order a
    table of the grid is read in); SweepError when a range is among them (a grid needs values)."""
    ranges = [d.name for d in dims if isinstance(d, Range)]
    if ranges:
        raise SweepError(f"the grid sampler needs values, not ranges ({', '.join(ranges)}): use --sampler tpe, "
                         "or give those flags as --grid")
    return [dict(zip([d.name for d in dims], combo)) for combo in itertools.product(*(d.values for d in dims))]


def point_argv(dims: Sequence[Dimension], params: Mapping[str, Any]) -> List[str]:
    """The flags of one point of the space, in the dimensions' order."""
    argv: List[str] = []
    for d in dims:
        argv += d.argv(params[d.name])
    return argv


def point_key(dims: Sequence[Dimension], params: Mapping[str, Any]) -> str:
    """A folder name for one point, readable and unique: ``kd-alpha=0.5,kd-temperature=4``; a value that had
    to be rewritten for a file name (``a b``, ``a/b``) gets a short hash of its text, so two never share one."""
    def clean(value: Any) -> str:
        text = str(value)
        safe = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"
        return safe if safe == text else f"{safe}~{hashlib.sha1(text.encode()).hexdigest()[:6]}"
    return ",".join(f"{d.name}={clean(params[d.name])}" for d in dims) or "base"


def distributions(dims: Sequence[Dimension]) -> Dict[str, Any]:
    """name -> Optuna distribution of every dimension."""
    return {d.name: d.distribution() for d in dims}


def as_yaml(dims: Sequence[Dimension]) -> Dict[str, Any]:
    """The dimensions as a sweep file's ``space:`` mapping (what sweep.json records)."""
    out: Dict[str, Any] = {}
    for d in dims:
        if isinstance(d, Grid):
            out[d.name] = list(d.values)
        elif isinstance(d, Range):
            lo, hi = (int(d.low), int(d.high)) if d.integer else (d.low, d.high)
            out[d.name] = {"low": lo, "high": hi, "log": d.log}
        else:
            out[d.name] = {label: list(flags) for label, flags in d.options}
    return out


def flags_of(dims: Sequence[Dimension]) -> List[Tuple[str, str]]:
    """(flag, where) of every flag the space sets, once per dimension: the dimensions' own and the groups'."""
    found = []
    for d in dims:
        if isinstance(d, Group):
            flags = {f.split("=", 1)[0]: f"the group {d.name}" for _, group in d.options for f in group
                     if f.startswith("--")}
            found += list(flags.items())
        else:
            found.append((f"--{d.name}", f"the space's {d.name}"))
    return found
