"""Hyperparameter search over the training scripts' flags, on Optuna: ``python -m mgd.sweep`` (:mod:`.cli`).

The space (:mod:`.space`) is grids, ranges and groups of named flag sets; a trial (:mod:`.study`) trains its
point once per seed as a child process (:mod:`.runs`) and reports the metric of every epoch, so Optuna's
pruners can stop it; the study lives in an embedded journal file or any Optuna storage, shared by any number
of workers; the results (:mod:`.report`) are tables, the best command line and config, and plots. The sweep
knows no training script: it runs the command it is given and reads the ``log.jsonl`` it writes.
"""
from .cli import main
from .errors import SweepError

__all__ = ["main", "SweepError"]
