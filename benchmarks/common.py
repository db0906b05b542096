"""Timing and results helpers shared by the benchmark scripts.

Each benchmark prints its table as it measures and, with ``--save``, writes it to
``benchmarks/results/<script>.md`` with the command, the date and the machine: the documentation's benchmark
tables are those files (``<!-- mgd:benchmark NAME -->``), never numbers copied by hand.
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from typing import List, Optional, Sequence

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def best_of(fn, repeat=5, warmup=1):
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def add_save_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--save", action="store_true",
                        help="write the results table to benchmarks/results/<script>.md (the documentation's table)")


def machine() -> str:
    """The processor and the threads PyTorch uses, for the results file's header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch
    return f"{cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


class Results:
    """A benchmark's Markdown table: each row printed as it is added, all of them written by :meth:`save`."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        self.notes: List[str] = []

    def add(self, *cells: object) -> None:
        self.lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        print(self.lines[-1], flush=True)

    def note(self, text: str) -> None:
        """A line printed now and written under the table."""
        self.notes.append(text)
        print(text, flush=True)

    def header(self) -> None:
        print("\n".join(self.lines[:2]), flush=True)

    def save(self, args: argparse.Namespace, what: Optional[str] = None) -> None:
        save_results(args, [*self.lines, *([""] + self.notes if self.notes else [])], what)


def save_results(args: argparse.Namespace, lines: Sequence[str], what: Optional[str] = None) -> None:
    """With ``--save``, write ``lines`` (a Markdown table, notes) to ``benchmarks/results/<script>.md`` under a
    line that says how, when and where they were measured."""
    if not getattr(args, "save", False):
        return
    script = os.path.basename(sys.argv[0])
    command = " ".join(["python", f"benchmarks/{script}", *sys.argv[1:]])
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, script.replace(".py", ".md"))
    head = f"Measured by `{command}` on {datetime.date.today()}, {machine()}" + (f"; {what}" if what else "") + "."
    with open(path, "w") as f:
        f.write("\n".join([head, "", *lines]) + "\n")
    print(f"wrote {os.path.relpath(path)}")


def report(name, baseline, ours, target=None, results: Optional[Results] = None):
    ratio = baseline / ours
    goal = f" (target >= {target}x: {'met' if ratio >= target else 'not met'})" if target else ""
    print(f"{name:<44} baseline {baseline * 1e3:9.1f} ms   mgd {ours * 1e3:9.1f} ms   speed-up {ratio:5.1f}x{goal}")
    if results is not None:  # the row only: report() printed it already
        results.lines.append(f"| {name} | {baseline * 1e3:.1f} ms | {ours * 1e3:.1f} ms | {ratio:.1f}x{goal} |")
    return ratio
