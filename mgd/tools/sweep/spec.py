"""What defines a sweep (its command, space, seeds, metric, sampler), kept in ``SWEEP_DIR/sweep.json`` and in the
study's own attributes, so that a resumed or second worker runs the same sweep, and a different sweep aimed at
the same folder or study is refused instead of mixing its trials in."""
from __future__ import annotations

import contextlib
import functools
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from .errors import SweepError
from .space import Dimension, as_yaml, dimensions_from_yaml

__all__ = ["Spec", "SPEC_FILE", "folder_lock", "load_spec", "save_spec"]

SPEC_FILE = "sweep.json"
LOCK_FILE = "sweep.lock"

#: the fields that make two sweeps the same sweep (the others may change between invocations)
DEFINING = ("command", "space", "seeds", "seed_flag", "output_flag", "metric", "objective", "direction", "sampler")


@dataclass
class Spec:
    command: List[str]
    space: Dict[str, Any] = field(default_factory=dict)  # the dimensions as a sweep file's space mapping
    seeds: List[int] = field(default_factory=lambda: [0])
    seed_flag: str = "--seed"
    output_flag: str = "--output-dir"
    metric: str = "auto"
    objective: str = "last"  # the metric of a run's last epoch, or its best epoch
    direction: str = "maximize"
    sampler: str = "grid"
    trials: Optional[int] = None  # TPE: how many trials in all
    sampler_seed: int = 0
    storage: Optional[str] = None
    study_name: str = "sweep"

    @functools.cached_property
    def dims(self) -> List[Dimension]:
        """The space's dimensions, parsed once (the space is not changed after the spec is built)."""
        return dimensions_from_yaml(self.space, SPEC_FILE)

    @classmethod
    def build(cls, dims: List[Dimension], **kwargs: Any) -> "Spec":
        return cls(space=as_yaml(dims), **kwargs)

    def defining(self) -> Dict[str, Any]:
        data = asdict(self)
        return {k: data[k] for k in DEFINING}

    def differences(self, other: "Spec") -> List[str]:
        mine, theirs = self.defining(), other.defining()
        return [k for k in DEFINING if mine[k] != theirs[k]]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> "Spec":
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise SweepError(f"{where} is not a sweep's record ({exc}): start the sweep in a new folder") from None


@contextlib.contextmanager
def folder_lock(folder: str):
    """An exclusive lock on the sweep folder (the workers of one machine take turns setting up and writing the
    results); released when the process ends, however it ends."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_FILE), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_spec(folder: str) -> Optional[Spec]:
    path = os.path.join(folder, SPEC_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return Spec.from_json(f.read(), path)


def save_spec(folder: str, spec: Spec) -> None:
    path = os.path.join(folder, SPEC_FILE)
    with open(path + ".tmp", "w") as f:
        f.write(spec.to_json() + "\n")
    os.replace(path + ".tmp", path)


def describe_difference(spec: Spec, other: Spec, fields: List[str]) -> str:
    mine, theirs = spec.defining(), other.defining()
    return "; ".join(f"{k}: {theirs[k]!r} there, {mine[k]!r} here" for k in fields)
