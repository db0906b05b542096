"""``python -m mgd.sweep SWEEP_DIR [space] -- COMMAND...``: a hyperparameter search over a training script's
flags on Optuna.

    python -m mgd.sweep output/kd-grid --grid kd-alpha=0.1,0.5,0.9 --grid kd-temperature=1,4,16 --seeds 0 1 \\
        -- python cls/main_mgd.py DATA -a cifar_resnet8_w8 --teacher-arch cifar_resnet8_w32 \\
           --teacher-resume teacher.pth --distiller kd --epochs 4

Each trial runs COMMAND with the point's flags, ``--seed S`` and ``--output-dir SWEEP_DIR/runs/<point>/seedS``
once per seed, reads the metric per epoch from the run's ``log.jsonl`` and reports it to Optuna. Running the
same line again (or ``python -m mgd.sweep SWEEP_DIR``) continues the sweep: finished trials are kept,
interrupted ones run again. More workers (``--jobs N``, or more processes on one storage) share the work.
Results: SWEEP_DIR/results.{md,csv}, best.txt, best.yaml and PNG plots.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import List, Optional, Sequence

from .errors import SweepError
from .report import metric_name, rows, write_best, write_plots, write_tables
from .runs import last_error, python_command
from .space import Range, check_names, dimensions_from_yaml, flags_of, grid_points, parse_grid, parse_range
from .spec import Spec, describe_difference, folder_lock, load_spec, save_spec
from .study import (RETRY_CHOICES, enqueue_missing, mark_stale, next_trial, open_storage, open_study, run_dir,
                    run_trial, trial_command)

__all__ = ["main", "parse"]

SAMPLERS, DIRECTIONS, OBJECTIVES = ("grid", "tpe"), ("maximize", "minimize"), ("last", "best")
#: the settings that define a sweep on the command line (a bare resume keeps the folder's own)
SETTINGS = ("seeds", "seed_flag", "output_flag", "metric", "objective", "direction", "sampler", "sampler_seed")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mgd.sweep", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="The command goes after --, as it would be typed; python means this "
                                       "interpreter.")
    p.add_argument("folder", metavar="SWEEP_DIR", help="the sweep's folder: its runs, study journal and results")
    s = p.add_argument_group("the space")
    s.add_argument("--grid", action="append", default=[], metavar="FLAG=V1,V2,...",
                   help="values of a flag (repeat for more flags); a categorical choice for tpe")
    s.add_argument("--range", action="append", default=[], metavar="FLAG=LOW:HIGH[:log]",
                   help="a numeric range of a flag, ints when both ends are (tpe only)")
    s.add_argument("--space", metavar="FILE", help="a YAML file with a space: mapping (grids, ranges and groups of "
                   "named flag sets) and optionally command:, seeds:, metric: and the other settings here")
    s.add_argument("--seeds", type=int, nargs="*", default=None, metavar="S",
                   help="every point is trained once per seed, its value the mean (default 0; none: no seed flag)")
    s.add_argument("--seed-flag", default=None, help="the command's seed flag (default --seed)")
    s.add_argument("--output-flag", default=None, help="the command's output-folder flag (default --output-dir)")
    o = p.add_argument_group("the objective and the search")
    o.add_argument("--metric", default=None, help="the log.jsonl key to optimise (default auto: the key the script "
                   "keeps a best_ value of, top1 in cls, miou in seg)")
    o.add_argument("--objective", choices=OBJECTIVES, default=None,
                   help="a run's value: its last epoch's metric, or its best epoch's (default last)")
    o.add_argument("--direction", choices=DIRECTIONS, default=None, help="default maximize")
    o.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="grid: every point once (default); tpe: Optuna's TPE over --trials trials")
    o.add_argument("--trials", type=int, default=None, help="tpe: the number of trials in all")
    o.add_argument("--sampler-seed", type=int, default=None, help="the TPE sampler's seed (default 0)")
    o.add_argument("--pruner", choices=("none", "median", "halving"), default="none",
                   help="stop hopeless trials early: Optuna's MedianPruner or SuccessiveHalvingPruner")
    o.add_argument("--prune-after-trials", type=int, default=5,
                   help="median: prune only once this many trials have finished (Optuna's n_startup_trials)")
    o.add_argument("--prune-after-epochs", type=int, default=0,
                   help="median: never prune a trial before this many of its epochs (Optuna's n_warmup_steps)")
    r = p.add_argument_group("running")
    r.add_argument("--jobs", type=int, default=1, help="trials at a time in this process")
    r.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run (default: the CPUs "
                   "divided by --jobs)")
    r.add_argument("--storage", default=None, metavar="URL", help="the study's storage: an RDB URL "
                   "(postgresql://... or mysql://... for workers on several machines; sqlite:///... for one worker "
                   "process with --jobs 1: SQLite cannot lock a row) or a journal file on a shared filesystem "
                   "(default: SWEEP_DIR/study.journal)")
    r.add_argument("--study-name", default=None, help="the study's name in --storage (default: SWEEP_DIR's name)")
    r.add_argument("--retry", choices=RETRY_CHOICES, default="interrupted",
                   help="what a resumed sweep runs again: interrupted trials, also failed ones, or nothing")
    r.add_argument("--stale-after", type=float, default=600.0,
                   help="seconds without a heartbeat (renewed every 30 s) after which a running trial counts as "
                   "interrupted when a worker starts (a trial of this machine whose process is gone counts at once)")
    r.add_argument("--no-check", action="store_true", help="skip the check of the command with --print-config "
                   "(for scripts without it)")
    r.add_argument("--report", action="store_true", help="only rewrite the results from the study, run nothing")
    return p


def parse(argv: Sequence[str]):
    argv = list(argv)
    command: List[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command = argv[:at], argv[at + 1:]
    args = parser().parse_args(argv)
    args.command = command
    return args


def _read_space_file(path: str) -> dict:
    import yaml
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise SweepError(f"--space {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"--space {path} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SweepError(f"--space {path}: give a mapping (space:, command:, seeds:, ...)")
    known = {"space", "command", "seeds", "seed_flag", "output_flag", "metric", "objective", "direction",
             "sampler", "trials", "sampler_seed"}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise SweepError(f"--space {path}: unknown key {unknown[0]!r} (valid: {', '.join(sorted(known))})")
    return data


def _spec_from_args(args) -> Optional[Spec]:
    """The sweep the command line describes, or None when it only names a folder (resume)."""
    given = args.command or args.grid or args.range or args.space
    if not given:
        return None
    data = _read_space_file(args.space) if args.space else {}
    dims = dimensions_from_yaml(data.get("space"), f"--space {args.space}") + \
        [parse_grid(g) for g in args.grid] + [parse_range(r) for r in args.range]
    check_names(dims)
    command = args.command or data.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    if not isinstance(command, list):
        raise SweepError(f"--space {args.space}: command: give the command line as a string or a list")
    if not command:
        raise SweepError("give the training command after -- (e.g. -- python cls/main_mgd.py DATA ...)")

    def pick(name, default):
        value = getattr(args, name)
        return value if value is not None else data.get(name, default)
    seeds = pick("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
        raise SweepError(f"--space {args.space}: seeds: give a list of integers, got {seeds!r}")
    for name, choices in (("sampler", SAMPLERS), ("direction", DIRECTIONS), ("objective", OBJECTIVES)):
        if pick(name, choices[0]) not in choices:
            raise SweepError(f"--space {args.space}: {name}: {pick(name, None)!r} is not one of {', '.join(choices)}")
    sampler = pick("sampler", "grid")
    if sampler == "tpe" and not pick("trials", None):
        raise SweepError("--sampler tpe needs --trials N (how many trials in all)")
    if sampler == "grid":
        grid_points(dims)  # ranges are refused here, before anything is written
    storage = args.storage
    if storage is not None and "://" not in storage:
        storage = os.path.abspath(storage)  # a journal file: the same one from any working folder
    spec = Spec.build(dims, command=[str(c) for c in command], seeds=list(seeds),
                      seed_flag=pick("seed_flag", "--seed"), output_flag=pick("output_flag", "--output-dir"),
                      metric=pick("metric", "auto"), objective=pick("objective", "last"),
                      direction=pick("direction", "maximize"), sampler=sampler, trials=pick("trials", None),
                      sampler_seed=pick("sampler_seed", 0), storage=storage,
                      study_name=args.study_name or os.path.basename(os.path.abspath(args.folder)))
    _check_conflicts(spec)
    return spec


def _check_conflicts(spec: Spec) -> None:
    """Each flag is set by one thing: the base command, one dimension, the seeds or the run folder (two of
    them would leave the last one silently winning)."""
    by_sweep = flags_of(spec.dims) + [(spec.output_flag, "the sweep (each run's folder)")] + \
        ([(spec.seed_flag, "--seeds")] if spec.seeds else [])
    seen: dict = {}
    for flag, where in by_sweep:
        if flag in seen:
            raise SweepError(f"{flag} is set by {seen[flag]} and by {where}: give it one place")
        seen[flag] = where
    given = {c.split("=", 1)[0] for c in spec.command if c.startswith("--")}
    for flag, where in by_sweep:
        if flag in given:
            raise SweepError(f"{flag} is in the command and set by {where}: leave it out of the command")


def _print_config(argv: List[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(python_command(argv) + ["--print-config"], capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise SweepError(f"cannot run {argv[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise SweepError(f"{' '.join(argv[:2])} --print-config did not answer in 600 s (--no-check skips the "
                         "check)") from None


def _config_keys(done: subprocess.CompletedProcess) -> set:
    """The flag names of a script's ``--print-config`` output (empty when it is no mapping)."""
    import yaml
    try:
        data = yaml.safe_load(done.stdout)
    except yaml.YAMLError:
        return set()
    return set(map(str, data)) if isinstance(data, dict) else set()


def _last_error(done: subprocess.CompletedProcess) -> str:
    return last_error((done.stderr or "") + "\n" + (done.stdout or "")) or f"exit {done.returncode}"


def check_command(spec: Spec, folder: str) -> None:
    """Run the first point's command with ``--print-config`` (the script's own parser checks every flag and
    value, nothing is trained) and check that every flag the space sets is one of the script's."""
    import difflib

    dims = spec.dims
    first = grid_points(dims)[0] if spec.sampler == "grid" else {
        d.name: (d.low if isinstance(d, Range) else d.values[0]) for d in dims}
    if spec.sampler != "grid":
        first = {k: (int(v) if isinstance(d, Range) and d.integer else v) for (k, v), d in zip(first.items(), dims)}
    seed = spec.seeds[0] if spec.seeds else None
    done = _print_config(trial_command(spec, first, seed, run_dir(folder, dims, first, seed)))
    if done.returncode == 0:
        keys = _config_keys(done)
    else:
        base = _print_config(list(spec.command))  # which flags exist, to name the wrong one
        if base.returncode != 0:
            error = _last_error(base)
            hint = " (the script has no --print-config: give --no-check)" if "--print-config" in error else ""
            raise SweepError(f"the command fails: {error}{hint}")
        keys = _config_keys(base)
    flags = flags_of(dims) + [(spec.output_flag, "--output-flag")] + \
        ([(spec.seed_flag, "--seed-flag")] if spec.seeds else [])
    for flag, where in flags:
        if keys and flag[2:] not in keys:
            close = difflib.get_close_matches(flag[2:], list(keys), n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise SweepError(f"{flag} ({where}) is no flag of {' '.join(spec.command[:2])}{hint}")
    if done.returncode != 0:
        raise SweepError(f"the command with the space's first point fails: {_last_error(done)}")


def _pruner(args):
    import optuna
    if args.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=args.prune_after_trials,
                                           n_warmup_steps=args.prune_after_epochs)
    if args.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


class Sweep:
    """The workers of this process, their shared stop flag and the reports."""

    def __init__(self, args, spec: Spec, storage) -> None:
        from tqdm import tqdm
        self.args, self.spec, self.storage, self.folder = args, spec, storage, args.folder
        self.stop = threading.Event()
        self.abort: Optional[str] = None  # a user error that stops the sweep (exit 2)
        self.crash: Optional[str] = None  # an unexpected exception's traceback (exit 1)
        self.lock = threading.Lock()
        total = len(grid_points(spec.dims)) if spec.sampler == "grid" else spec.trials
        study = open_study(spec, storage, create=False)
        self.bar = tqdm(total=total, desc="trials", unit="trial", dynamic_ncols=True, file=sys.stdout,
                        disable=not sys.stdout.isatty(),  # in a log file, the per-trial lines say it
                        initial=len([r for r in rows(study, spec) if r["state"] in ("complete", "pruned")]))
        self.threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))

    def say(self, line: str) -> None:
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    def work(self, worker: int) -> None:
        try:
            self._work(worker)
        except SweepError as exc:  # e.g. a command that cannot be started: every worker stops
            self.abort = str(exc)
            self.stop.set()
        except Exception:  # a defect, or a storage gone away: the trial was marked interrupted; stop, exit 1
            self.crash = traceback.format_exc()
            self.stop.set()

    def _work(self, worker: int) -> None:
        study = open_study(self.spec, self.storage, create=False, worker=worker)
        study.pruner = _pruner(self.args)
        while not self.stop.is_set():
            trial = next_trial(study, self.spec, self.args.retry)
            if trial is None:
                return
            result = run_trial(study, trial, self.spec, self.folder, self.threads, self.args.pruner != "none",
                               self.stop, self.say)
            if result.state in ("complete", "pruned"):
                self.bar.update(1)
            elif result.state == "aborted":
                self.abort = result.error or "the command failed"
                self.stop.set()
                return
            self.write_tables(study)

    def write_tables(self, study) -> None:
        with self.lock, folder_lock(self.folder):
            write_tables(self.folder, rows(study, self.spec), _title(self.spec, metric_name(study, self.spec)))

    def finish(self, plots: bool = True) -> None:
        study = open_study(self.spec, self.storage, create=False)
        self.bar.close()
        self.write_tables(study)
        command = write_best(self.folder, study, self.spec, folder_lock)
        if plots:
            with folder_lock(self.folder):
                write_plots(self.folder, study, self.spec, rows(study, self.spec))
        if command:
            print(f"best ({metric_name(study, self.spec)} {study.best_value:.6g}): {command}", flush=True)
        print(f"results: {os.path.join(self.folder, 'results.md')}", flush=True)


def _title(spec: Spec, metric: str) -> str:
    return (f"Sweep of `{' '.join(spec.command)}`: {metric} ({spec.objective} epoch, {spec.direction}), "
            f"{spec.sampler} sampler" + (f", seeds {' '.join(map(str, spec.seeds))}" if spec.seeds else "") + ".")


def _same_sweep(spec: Spec, saved: Optional[Spec], folder: str) -> None:
    """SweepError unless ``saved`` (the folder's sweep) is None or the same sweep in the same study."""
    if saved is None:
        return
    differ = spec.differences(saved)
    if differ:
        raise SweepError(f"{folder} holds another sweep ({describe_difference(spec, saved, differ)}): "
                         "use another folder, or give no space to continue that one")
    for what, mine, theirs in (("--storage", spec.storage, saved.storage),
                               ("--study-name", spec.study_name, saved.study_name)):
        if mine != theirs:
            raise SweepError(f"{folder}'s study is {what} {theirs}, not {mine}: leave {what} out to continue it")


def _setup(args) -> tuple:
    """(spec, storage) of the folder's sweep, the study created and its missing points enqueued."""
    folder = args.folder
    spec = _spec_from_args(args)
    if spec is None:
        given = [f"--{n.replace('_', '-')}" for n in SETTINGS if getattr(args, n) is not None]
        if given:
            raise SweepError(f"a resumed sweep keeps its settings: leave out {', '.join(given)} (or give the whole "
                             "sweep, space and command, to start one in a new folder)")
        spec = load_spec(folder) if os.path.isdir(folder) else None
        if spec is None:
            raise SweepError(f"{folder} holds no sweep: give its space and the command after --")
        if args.storage or args.study_name:
            given_storage = args.storage if not args.storage or "://" in args.storage else \
                os.path.abspath(args.storage)
            _same_sweep(dataclasses.replace(spec, storage=given_storage or spec.storage,
                                            study_name=args.study_name or spec.study_name), spec, folder)
    else:
        _same_sweep(spec, load_spec(folder) if os.path.isdir(folder) else None, folder)  # before the check's runs
    if args.trials:
        if spec.sampler != "tpe":
            raise SweepError("--trials is for --sampler tpe (a grid runs every point)")
        spec.trials = args.trials  # a resumed TPE sweep may be given more trials
    if spec.storage and spec.storage.startswith("sqlite") and args.jobs > 1:
        raise SweepError("an SQLite storage serves one worker: use --jobs 1, the default journal, or PostgreSQL or "
                         "MySQL for several")
    if not args.no_check and not args.report:
        check_command(spec, folder)
    os.makedirs(folder, exist_ok=True)
    storage = open_storage(spec.storage, os.path.abspath(folder))
    with folder_lock(folder):
        _same_sweep(spec, load_spec(folder), folder)  # again under the lock: another sweep may have started
        study = open_study(spec, storage, create=True)
        save_spec(folder, spec)
        if not args.report:
            marked = mark_stale(study, args.stale_after)
            if marked:
                print(("trial " if len(marked) == 1 else "trials ") + ", ".join(map(str, marked))
                      + (" was" if len(marked) == 1 else " were") + " interrupted"
                      + ("" if args.retry == "none" else ": running again"), flush=True)
            enqueue_missing(study, spec, args.retry)
    return spec, storage


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops the sweep as Ctrl-C does (also where SIGINT is ignored)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        previous = None
    try:
        return _main(args)
    except SweepError as exc:
        print(f"mgd.sweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mgd.sweep: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    if args.jobs < 1:
        raise SweepError(f"--jobs {args.jobs}: give at least 1")
    spec, storage = _setup(args)
    sweep = Sweep(args, spec, storage)
    if args.report:
        sweep.finish()
        return 0
    workers = [threading.Thread(target=sweep.work, args=(i,), daemon=True) for i in range(args.jobs)]
    interrupted = False
    try:
        for w in workers:
            w.start()
            time.sleep(0.2)  # the workers' first asks in turn: fewer simultaneous storage writes
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(0.5)
    except KeyboardInterrupt:
        interrupted = True
        sweep.stop.set()
        sweep.say("interrupted: stopping the running trials (they run again when the sweep is resumed)")
        for w in workers:
            w.join()
    sweep.finish(plots=not interrupted)
    if sweep.crash:
        print(sweep.crash, file=sys.stderr)
        return 1
    if sweep.abort:
        print(f"mgd.sweep: error: the command fails: {sweep.abort}; nothing finished, so the sweep stopped "
              "(fix the command and start it in a new folder)", file=sys.stderr)
        return 2
    return 130 if interrupted else 0
