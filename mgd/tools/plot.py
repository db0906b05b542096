"""Pictures of a run's channel matching, headless (matplotlib's Agg canvas, no display needed)::

    python -m mgd.plot RUN_DIR [--out DIR]

reads RUN_DIR/log.jsonl (the ``"event": "matching"`` records the training scripts write at every update) and
RUN_DIR/matching_last.pth (the last update's cost matrices) and writes into RUN_DIR (or DIR):

* ``matching_cost.png``: per stage, the mean matched cost against the mean cost of a random assignment over
  the updates: the gap is what matching buys (cost = 2 - 2 <S, T> of unit channels: 0 identical, 2 unrelated);
* ``matching_stability.png``: per stage, the fraction of teacher channels whose student changed since the
  previous update: near 0 the matching has settled and updating it less often loses little;
* ``matching_matrix_stage{i}.png``: the last (student, teacher) cost matrix of stage i, teacher columns
  ordered by the matching (the g channels of student 0, then of student 1, ...), so the matched entries lie
  on the diagonal blocks; dark blocks on a lighter background are a matching that found close channels.

:func:`matching_figures` returns the same figures (matplotlib ``Figure`` objects, not tied to pyplot) and
:func:`cost_matrix_figures` only the matrices, e.g. for ``SummaryWriter.add_figure``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..checkpoint import safe_load
from ..matching.report import assignment_order

__all__ = ["LOG_FILE", "MATCHING_FILE", "read_matching_records", "load_matching_artifacts", "cost_curves_figure",
           "stability_figure", "cost_matrix_figure", "cost_matrix_figures", "matching_figures", "write_figures",
           "plot_run", "main", "NoMatchingData"]

logger = logging.getLogger("mgd")

LOG_FILE = "log.jsonl"
MATCHING_FILE = "matching_last.pth"

#: Pixel sizes are fixed (inches x DPI, no tight bounding box) so that pictures of different runs compare.
DPI = 100
PANEL_SIZE = (3.2, 2.8)  # one stage's panel of matching_cost.png
PANEL_COLUMNS = 4
STABILITY_SIZE = (6.4, 3.6)
MATRIX_SIZE = (6.4, 4.8)
#: Block outlines are drawn up to this many student channels (beyond, they would cover the picture).
MAX_OUTLINED_ROWS = 64


class NoMatchingData(ValueError):
    """The run folder holds nothing to plot (no matching record and no matching_last.pth)."""


# ---------------------------------------------------------------------------------------------- reading
def read_matching_records(run_dir: str) -> List[Dict[str, Any]]:
    """The ``"event": "matching"`` records of RUN_DIR/log.jsonl in order ([] without the file); a torn last
    line (a run killed while writing) is skipped."""
    path = os.path.join(run_dir, LOG_FILE)
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == "matching":
                records.append(record)
    return records


def load_matching_artifacts(run_dir: str) -> Dict[str, torch.Tensor]:
    """RUN_DIR/matching_last.pth as a dict of tensors ({} without the file), loaded with weights_only=True;
    NoMatchingData, naming the file, when it is no PyTorch file or holds no cost matrix (another checkpoint
    copied to that name)."""
    path = os.path.join(run_dir, MATCHING_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        state = safe_load(path)
    except RuntimeError as exc:
        raise NoMatchingData(str(exc)) from None
    if not isinstance(state, dict):
        raise NoMatchingData(f"{path} is not a dict of tensors (got {type(state).__name__})")
    if not _stages([k for k in state if isinstance(k, str)], "cost"):
        shown = ", ".join(sorted(map(str, state))[:5])
        raise NoMatchingData(f"{path} holds no cost matrix (stage<i>_cost): it is not the matching file an MGD "
                             f"run writes (its keys: {shown}{', ...' if len(state) > 5 else ''})")
    return state


def _stages(keys: Sequence[str], suffix: str) -> List[int]:
    pattern = re.compile(rf"stage(\d+)_{suffix}$")
    return sorted({int(m.group(1)) for k in keys for m in [pattern.match(k)] if m})


def _series(records: Sequence[Mapping[str, Any]], key: str) -> List[float]:
    """One value per record, NaN where missing or null (the first update's stability)."""
    values = [r.get(key) for r in records]
    return [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan for v in values]


def _steps(records: Sequence[Mapping[str, Any]]) -> List[int]:
    """The epoch before which each update ran (its index when a record has none)."""
    return [r["before_epoch"] if isinstance(r.get("before_epoch"), int) else n for n, r in enumerate(records)]


# ---------------------------------------------------------------------------------------------- figures
def _new_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas: no pyplot state, no display, nothing to close."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError("mgd.plot needs matplotlib (pip install matplotlib)") from exc
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def cost_curves_figure(records: Sequence[Mapping[str, Any]]):
    """Per stage, the mean matched cost and a random assignment's mean cost over the updates."""
    stages = _stages([k for r in records for k in r], "matched_cost")
    cols = max(1, min(PANEL_COLUMNS, len(stages)))
    rows = max(1, math.ceil(len(stages) / cols))
    figure = _new_figure(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    x = _steps(records)
    for ax, stage in zip(axes, stages):
        ax.plot(x, _series(records, f"stage{stage}_random_cost"), "--x", color="tab:gray", label="random")
        ax.plot(x, _series(records, f"stage{stage}_matched_cost"), "-o", color="tab:blue", label="matched")
        ax.set_title(f"stage {stage}", fontsize=10)
        _epoch_axis(ax)
    for ax in axes[len(stages):]:
        ax.set_visible(False)
    axes[0].set_ylabel("mean cost 2 - 2<S,T>")
    if stages:
        axes[0].legend(fontsize=8)
    figure.suptitle("what matching buys: matched vs random assignment", fontsize=11)
    return figure


def stability_figure(records: Sequence[Mapping[str, Any]]):
    """Per stage, the percentage of teacher channels whose student changed since the previous update."""
    figure = _new_figure(*STABILITY_SIZE)
    ax = figure.subplots()
    x = _steps(records)
    measured = False
    for stage in _stages([k for r in records for k in r], "changed"):
        y = [100 * v for v in _series(records, f"stage{stage}_changed")]
        measured = measured or any(math.isfinite(v) for v in y)
        ax.plot(x, y, "-o", label=f"stage {stage}")
    if measured:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "one matching so far: nothing to compare yet", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_ylim(-2, 102)
    _epoch_axis(ax)
    ax.set_ylabel("teacher channels moved (%)")
    ax.set_title("stability: channels whose student changed since the previous matching", fontsize=10)
    return figure


def _epoch_axis(ax: Any) -> None:
    """Updates happen before whole epochs: integer ticks."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("before epoch")
    ax.grid(alpha=0.3)


def cost_matrix_figure(cost: torch.Tensor, guided_inds: torch.Tensor, stage: int, update: Optional[int] = None):
    """The (sc, tc) cost of one stage with teacher columns ordered by the matching: student row j, then the g
    teacher channels matched to it, so the matched entries lie on diagonal blocks of width g."""
    cost = cost.detach().float().cpu()
    sc, tc = cost.shape
    groups = guided_inds.numel() // sc
    ordered = cost[:, assignment_order(guided_inds, sc, tc)].numpy()
    figure = _new_figure(*MATRIX_SIZE)
    ax = figure.subplots()
    low, high = (float(v) for v in torch.quantile(cost.flatten()[:1 << 24], torch.tensor([0.02, 0.98])))
    image = ax.imshow(ordered, aspect="auto", interpolation="nearest", cmap="viridis", vmin=low,
                      vmax=max(high, low + 1e-6))
    if sc <= MAX_OUTLINED_ROWS:
        _outline_blocks(ax, sc, groups)
    figure.colorbar(image, ax=ax, label="mean cost 2 - 2<S,T>")
    rows = torch.arange(guided_inds.numel()) % sc
    matched = cost[rows, guided_inds.cpu().long()].mean().item()
    which = "" if update is None else f", update {update}"
    ax.set_title(f"stage {stage}{which}: {sc}x{tc}, matched {matched:.3f} vs random {cost.mean().item():.3f}",
                 fontsize=10)
    ax.set_ylabel("student channel")
    ax.set_xlabel(f"teacher channel, ordered by the matching ({groups} per student)")
    return figure


def _outline_blocks(ax: Any, rows: int, width: int) -> None:
    """The staircase around the diagonal blocks (row j, columns j*width .. (j+1)*width - 1)."""
    upper_x, upper_y, lower_x, lower_y = [-0.5], [-0.5], [-0.5], [-0.5]
    for j in range(rows):
        upper_x += [(j + 1) * width - 0.5, (j + 1) * width - 0.5]
        upper_y += [j - 0.5, j + 0.5]
        lower_x += [j * width - 0.5, (j + 1) * width - 0.5]
        lower_y += [j + 0.5, j + 0.5]
    for xs, ys in ((upper_x, upper_y), (lower_x, lower_y)):
        ax.plot(xs, ys, color="white", linewidth=0.6, alpha=0.8)


def cost_matrix_figures(artifacts: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """``{"matching_matrix_stage{i}": figure}`` for every stage of a ``prepare_artifacts()`` dict."""
    update = artifacts.get("num_updates")
    update = int(update) if isinstance(update, torch.Tensor) else None
    return {f"matching_matrix_stage{i}": cost_matrix_figure(artifacts[f"stage{i}_cost"],
                                                            artifacts[f"stage{i}_guided_inds"], i, update)
            for i in _stages(list(artifacts), "cost") if f"stage{i}_guided_inds" in artifacts}


def matching_figures(records: Sequence[Mapping[str, Any]], artifacts: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """Every picture of :mod:`mgd.plot` by file stem: the curves (with records) and the matrices (with artifacts)."""
    figures: Dict[str, Any] = {}
    if records:
        figures["matching_cost"] = cost_curves_figure(records)
        figures["matching_stability"] = stability_figure(records)
    figures.update(cost_matrix_figures(artifacts))
    return figures


def write_figures(figures: Mapping[str, Any], out_dir: str) -> List[str]:
    """Save each figure as ``out_dir/<name>.png``; the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, figure in figures.items():
        path = os.path.join(out_dir, f"{name}.png")
        figure.savefig(path, dpi=DPI)
        paths.append(path)
    return paths


def plot_run(run_dir: str, out_dir: Optional[str] = None) -> List[str]:
    """Write the matching pictures of ``run_dir`` into ``out_dir`` (default ``run_dir``); the paths written.
    NoMatchingData when the folder holds neither matching records nor ``matching_last.pth``."""
    if not os.path.isdir(run_dir):
        raise NoMatchingData(f"{run_dir} is not a folder (give the run's --output-dir)")
    records, artifacts = read_matching_records(run_dir), load_matching_artifacts(run_dir)
    if not records and not _stages(list(artifacts), "cost"):
        raise NoMatchingData(f"{run_dir} has no matching to plot: no \"matching\" record in {LOG_FILE} and no "
                             f"{MATCHING_FILE} (was it trained with --distiller mgd?)")
    if not records:
        logger.warning("%s: no matching record in %s, plotting only the last cost matrices", run_dir, LOG_FILE)
    elif not artifacts:
        logger.warning("%s: no %s, plotting only the curves", run_dir, MATCHING_FILE)
    return write_figures(matching_figures(records, artifacts), out_dir or run_dir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mgd.plot", description=__doc__.strip().splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output folder (holding log.jsonl)")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the PNGs (default: RUN_DIR)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="mgd.plot: %(message)s")
    try:
        paths = plot_run(args.run_dir, args.out)
    except (NoMatchingData, RuntimeError, OSError, pickle.UnpicklingError) as exc:
        print(f"mgd.plot: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
