"""A sweep's results, rewritten after every trial: ``results.csv`` and ``results.md`` (every trial that ran, with
its parameters, each seed's metric, the objective and its state or error), ``best.txt`` (the best point as a
ready-to-run command line) and ``best.yaml`` (the same as a ``--config`` file, from the script's own
``--print-config``), and at the end of a sweep the pictures (matplotlib, headless): ``heatmap.png`` (the first
two dimensions as a table of the objective, like a paper's grid), ``trials.png`` (the objective of every
trial in order, and the best so far) and ``importance.png`` (Optuna's fANOVA parameter importances)."""
from __future__ import annotations

import csv
import io
import math
import os
import shlex
import statistics
import subprocess
from typing import Any, Dict, List, Optional, Sequence

from .runs import python_command
from .space import Group
from .spec import Spec
from .study import SKIPPED, failure, trial_command

__all__ = ["metric_name", "rows", "write_tables", "best_trial", "write_best", "write_plots"]


def metric_name(study, spec: Spec) -> str:
    """The metric's key as the runs' logs name it (``top1`` for ``--metric auto`` in cls)."""
    return study.user_attrs.get("metric", spec.metric)


def _state(trial) -> str:
    name = trial.state.name.lower()
    if name == "fail":
        return "interrupted" if failure(trial) == "interrupted" else "failed"
    return name


def rows(study, spec: Spec) -> List[Dict[str, Any]]:
    """One mapping per trial that ran (trial, state, each parameter, ``seed S`` values, value, seconds,
    error), in trial order; the skipped ones (duplicates, spares) are left out."""
    from optuna.trial import TrialState
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and failure(t) in SKIPPED:
            continue
        row: Dict[str, Any] = {"trial": t.number, "state": _state(t)}
        params = dict(t.system_attrs.get("fixed_params", t.params))
        for d in spec.dims:
            row[d.name] = params.get(d.name, "")
        for seed in spec.seeds:
            row[f"seed {seed}"] = t.user_attrs.get(f"seed {seed}")
        row["value"] = t.value if t.state == TrialState.COMPLETE else None
        if len(spec.seeds) > 1:
            seeds = [row[f"seed {s}"] for s in spec.seeds]
            row["std"] = statistics.stdev(seeds) if row["value"] is not None and None not in seeds else None
        row["seconds"] = t.user_attrs.get("seconds")
        row["error"] = t.user_attrs.get("error", "") if t.state == TrialState.FAIL else ""
        out.append(row)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-3 \
            else f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return str(value)


def _atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_tables(folder: str, table: List[Dict[str, Any]], title: str) -> None:
    """results.csv (full precision) and results.md (rounded, with the sweep's title)."""
    columns = list(table[0]) if table else ["trial", "state", "value"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: "" if row[k] is None else row[k] for k in columns})
    _atomic(os.path.join(folder, "results.csv"), buf.getvalue())
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in table:
        lines.append("| " + " | ".join(_cell(row[k]).replace("|", "\\|") for k in columns) + " |")
    _atomic(os.path.join(folder, "results.md"), "\n".join(lines) + "\n")


def best_trial(study):
    """The best complete trial (by the study's direction), or None."""
    from optuna.trial import TrialState
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    return study.best_trial


def write_best(folder: str, study, spec: Spec, lock) -> Optional[str]:
    """best.txt and best.yaml for the best trial (written under ``lock(folder)``; the script's
    ``--print-config`` runs before); the command line, or None when no trial finished."""
    trial = best_trial(study)
    if trial is None:
        return None
    seed = spec.seeds[0] if spec.seeds else None
    metric = metric_name(study, spec)
    argv = trial_command(spec, dict(trial.params), seed, None)
    command = shlex.join(argv)
    seeds = f" (mean over seeds {', '.join(map(str, spec.seeds))})" if len(spec.seeds) > 1 else ""
    try:
        done = subprocess.run(python_command(argv) + ["--print-config"], capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    with lock(folder):
        _atomic(os.path.join(folder, "best.txt"), f"# trial {trial.number}: {metric} {trial.value:.6g}{seeds}\n"
                f"{command}\n")
        config = os.path.join(folder, "best.yaml")
        if done is not None and done.returncode == 0:
            kept = [line for line in done.stdout.splitlines()
                    if line.startswith("#") or not line.rstrip().endswith("# default")]
            _atomic(config, f"# the best point of the sweep in {folder} (trial {trial.number}, {metric} "
                    f"{trial.value:.6g}{seeds}); the settings its command line gives\n" + "\n".join(kept) + "\n")
        elif os.path.exists(config):  # an earlier best's: it would mislead
            os.remove(config)
    return command


def _grid_matrix(table: Sequence[Dict[str, Any]], spec: Spec):
    """(row dim, column dim, matrix of mean objective) over the first two grid/group dimensions."""
    dims = [d for d in spec.dims if hasattr(d, "values")]
    if len(dims) < 2:
        return None
    a, b = dims[0], dims[1]
    matrix = []
    for va in a.values:
        line = []
        for vb in b.values:
            vals = [r["value"] for r in table if r["value"] is not None and str(r[a.name]) == str(va)
                    and str(r[b.name]) == str(vb)]
            line.append(statistics.mean(vals) if vals else float("nan"))
        matrix.append(line)
    return a, b, matrix


def write_plots(folder: str, study, spec: Spec, table: Sequence[Dict[str, Any]]) -> List[str]:
    """The pictures that the finished trials allow; their paths."""
    import warnings

    if best_trial(study) is None:
        return []

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    written, metric = [], metric_name(study, spec)
    grid = _grid_matrix(table, spec)
    if grid is not None:
        a, b, matrix = grid
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(b.values), 1.0 + 0.6 * len(a.values)), dpi=100)
        image = ax.imshow(matrix, cmap="viridis" if spec.direction == "maximize" else "viridis_r", aspect="auto")
        ax.set_xticks(range(len(b.values)), [str(v) for v in b.values],
                      rotation=30 if isinstance(b, Group) else 0, ha="right" if isinstance(b, Group) else "center")
        ax.set_yticks(range(len(a.values)), [str(v) for v in a.values])
        ax.set_xlabel(b.name)
        ax.set_ylabel(a.name)
        finite = [v for line in matrix for v in line if not math.isnan(v)]
        middle = (min(finite) + max(finite)) / 2 if finite else 0
        for i, line in enumerate(matrix):
            for j, v in enumerate(line):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=9,
                            color="black" if v > middle else "white")
        fig.colorbar(image, ax=ax, label=metric)
        ax.set_title(f"{metric}: mean over seeds {', '.join(map(str, spec.seeds))}" if len(spec.seeds) > 1
                     else metric)
        fig.tight_layout()
        written.append(os.path.join(folder, "heatmap.png"))
        fig.savefig(written[-1])
        plt.close(fig)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, plot in (("trials.png", ovm.plot_optimization_history), ("importance.png", ovm.plot_param_importances)):
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # too few finished trials or varying parameters
                continue
            fig = ax.figure
            fig.set_size_inches(7, 4)
            fig.tight_layout()
            written.append(os.path.join(folder, name))
            fig.savefig(written[-1], dpi=100)
            plt.close(fig)
    return written
