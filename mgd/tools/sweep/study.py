"""The sweep's Optuna study: its storage, the trials a worker takes, and what a trial runs.

Every trial is one point of the space, trained once per seed (``runs/<point>/seed<S>``); its value is the
mean over the seeds of the metric (each run's last or best epoch), so a configuration is judged on all its
seeds and the table can pair methods seed by seed. Per epoch, the trial reports the metric to Optuna (step =
epochs done over its seeds so far), which lets a pruner stop it.

A grid is a queue: the points are enqueued once (``Study.enqueue_trial``), and a worker's ``Study.ask`` takes
a waiting one atomically in any storage (Optuna's own guarantee: a waiting trial becomes running for one
caller only), so any number of workers, on one machine or many, run each point once. If two workers started
at the same moment enqueue a point twice, the later trial sees the earlier and is skipped ("duplicate").

A trial records its host, the sweep's process id and a heartbeat. A running trial whose process is gone (same
host) or whose heartbeat is older than ``stale_after`` seconds (any host) was interrupted: the next worker to
start marks it failed ("interrupted") and, by ``retry``, runs its point again; the runs of its seeds that had
finished are reused, not trained again.
"""
from __future__ import annotations

import math
import os
import socket
import statistics
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import SweepError
from .runs import RunResult, alive, python_command, run_training, stop_group
from .space import Dimension, Grid, Group, grid_points, point_argv, point_key
from .spec import Spec

__all__ = ["open_storage", "open_study", "mark_stale", "enqueue_missing", "next_trial", "run_trial", "failure",
           "RETRY_CHOICES", "HEARTBEAT_SECONDS"]

JOURNAL_FILE = "study.journal"
HEARTBEAT_SECONDS = 30.0
#: what a resumed sweep runs again: trials that were interrupted, also those whose command failed, or none
RETRY_CHOICES = ("interrupted", "failed", "none")
#: failure kinds (user attribute "failure") that never ran a training: not results, and never in the table
SKIPPED = ("duplicate", "spare")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise SweepError("the sweep needs Optuna: pip install optuna (requirements.txt pins the tested release)") \
            from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: Optional[str], folder: str):
    """The study's storage: a journal file in the sweep folder by default (nothing to set up; safe for several
    processes on one machine, and on a shared filesystem); an RDB URL (``sqlite:///...``,
    ``postgresql://...``, ``mysql://...``) or the path of a journal file on a shared filesystem for workers on
    several machines. SweepError when it cannot be opened."""
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
    if url is None or "://" not in url:
        path = os.path.join(folder, JOURNAL_FILE) if url is None else os.path.abspath(url)
        if not os.path.isdir(os.path.dirname(path)):
            raise SweepError(f"--storage {url}: the folder {os.path.dirname(path)} does not exist")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
        except (OSError, ValueError) as exc:
            raise SweepError(f"--storage {url or path}: cannot open the journal: {exc}") from None
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # sqlalchemy's errors (bad URL, no driver, no server) have no common base here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SweepError(f"--storage {url}: cannot open it: {first}") from None


def open_study(spec: Spec, storage, create: bool, worker: int = 0):
    """The spec's study in ``storage`` (created when ``create``); SweepError if it holds another sweep, or a
    study of that name that no sweep made. ``worker``: this process's worker number (0 for the first), so that
    workers' TPE samplers differ (seeded alike, they would propose the same points in lockstep)."""
    optuna = _optuna()
    if spec.sampler == "tpe":
        seed = spec.sampler_seed if worker == 0 and not _other_workers(storage, spec) else \
            spec.sampler_seed + 1000 * (worker + 1) + os.getpid() % 1000
        sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    else:  # the grid is enqueued; the sampler never draws
        sampler = optuna.samplers.RandomSampler(seed=spec.sampler_seed)
    try:
        if create:
            study = optuna.create_study(study_name=spec.study_name, storage=storage, sampler=sampler,
                                        direction=spec.direction, load_if_exists=True)
        else:
            study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler)
    except KeyError:
        raise SweepError(f"the storage holds no study named {spec.study_name!r}") from None
    recorded = study.user_attrs.get("sweep")
    if recorded is None and study.get_trials(deepcopy=False):
        raise SweepError(f"the storage's study {spec.study_name!r} was not made by a sweep: give another "
                         "--study-name")
    if recorded is None and create:
        study.set_user_attr("sweep", spec.defining())
    elif recorded is not None and recorded != spec.defining():
        fields = [k for k in recorded if recorded.get(k) != spec.defining().get(k)]
        raise SweepError(f"the study {spec.study_name!r} in that storage is another sweep (its {', '.join(fields)} "
                         "differ): give another --study-name or folder")
    return study


def _other_workers(storage, spec: Spec) -> bool:
    """Whether the study already has running trials (another worker process): its sampler seed must differ."""
    from optuna.trial import TrialState
    try:
        study_id = storage.get_study_id_from_name(spec.study_name)
    except KeyError:
        return False
    return bool(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)))


def failure(trial) -> str:
    """The kind of a failed trial: ``interrupted``, ``error``, ``aborted``, ``duplicate`` or ``spare``."""
    return trial.user_attrs.get("failure", "error")


def _retried(trial, retry: str) -> bool:
    """Whether a failed trial's point is run again by a sweep started with ``retry``."""
    kind = failure(trial)
    return kind in SKIPPED or kind == "aborted" or (kind == "interrupted" and retry != "none") or \
        (kind == "error" and retry == "failed")


def _fail(storage, trial, kind: str, error: str) -> None:
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    try:
        storage.set_trial_user_attr(trial._trial_id, "failure", kind)
        storage.set_trial_user_attr(trial._trial_id, "error", error)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except UpdateFinishedTrialError:  # another worker marked it first
        pass


def _stop_orphan(pid: int, run_dir: str) -> None:
    """Stop the training process of an interrupted trial if it still runs (its sweep was killed, not stopped),
    and wait for it to end."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().decode(errors="replace")
    except OSError:
        return
    if run_dir in command:  # the pid was not reused by another program
        stop_group(pid)


def mark_stale(study, stale_after: float) -> List[int]:
    """Mark failed ("interrupted") the running trials whose sweep process is gone (on this host), or whose
    heartbeat is older than ``stale_after`` seconds (any host: a machine that went down, a hung process); stop
    their training processes left on this host. Their numbers."""
    from optuna.trial import TrialState
    host, now, marked = socket.gethostname(), time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        heartbeat = attrs.get("heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else now)
        gone = attrs.get("host") == host and "pid" in attrs and not alive(attrs["pid"])
        if gone or now - heartbeat > stale_after:
            if attrs.get("host") == host and attrs.get("child_pid") and attrs.get("run_dir"):
                _stop_orphan(attrs["child_pid"], attrs["run_dir"])
            _fail(study._storage, trial, "interrupted", "interrupted (its sweep process stopped)")
            marked.append(trial.number)
    return marked


def _params(trial) -> Dict[str, Any]:
    return dict(trial.system_attrs.get("fixed_params", trial.params))


def _covering(trials, params: Dict[str, Any], retry: str, below: Optional[int] = None) -> List[Any]:
    """The trials of ``params`` that stand for its point (waiting, running, finished, or failed and not run
    again under ``retry``), of numbers below ``below`` if given."""
    from optuna.trial import TrialState
    return [t for t in trials if _params(t) == params and (below is None or t.number < below)
            and not (t.state == TrialState.FAIL and _retried(t, retry))]


def enqueue_missing(study, spec: Spec, retry: str) -> int:
    """Enqueue the points no trial stands for: the whole grid at first, then the interrupted (and by ``retry``
    the failed) ones; for TPE, the interrupted trials' points. The number enqueued."""
    from optuna.trial import TrialState
    trials = study.get_trials(deepcopy=False)
    if spec.sampler == "grid":
        points = grid_points(spec.dims)
    else:
        points = []
        for t in trials:
            if t.state == TrialState.FAIL and failure(t) not in SKIPPED and _retried(t, retry) and _params(t) \
                    and _params(t) not in points:
                points.append(_params(t))
    count = 0
    for params in points:
        if not _covering(trials, params, retry):
            study.enqueue_trial(params)
            count += 1
    return count


def _counted(study, retry: str) -> int:
    """TPE: the trials that count towards --trials (all but the skipped and those run again)."""
    from optuna.trial import TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if not (t.state == TrialState.FAIL and _retried(t, retry)))


def _suggest(trial, dims: Sequence[Dimension]) -> None:
    """Give the trial its value of every dimension (an enqueued trial's are fixed; TPE samples the others)."""
    for d in dims:
        if isinstance(d, (Grid, Group)):
            trial.suggest_categorical(d.name, list(d.values))
        elif d.integer:
            trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
        else:
            trial.suggest_float(d.name, d.low, d.high, log=d.log)


def next_trial(study, spec: Spec, retry: str):
    """The trial this worker runs next (a waiting point first), or None when the sweep has nothing left."""
    from optuna.trial import TrialState
    dims = spec.dims
    while True:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if spec.sampler == "grid" and not waiting:
            return None
        if spec.sampler == "tpe" and not waiting and _counted(study, retry) >= (spec.trials or 0):
            return None
        trial = study.ask()  # no parameters yet: a trial that got no point must never stand for one
        fixed = "fixed_params" in study._storage.get_trial_system_attrs(trial._trial_id)
        if spec.sampler == "grid" and not fixed:  # another worker took the last waiting point
            _fail(study._storage, trial, "spare", "no point left")
            return None
        if spec.sampler == "tpe" and not fixed and _counted_below(study, trial.number, retry) >= (spec.trials or 0):
            _fail(study._storage, trial, "spare", "--trials reached")  # other workers asked at the same time
            return None
        _suggest(trial, dims)
        if fixed:
            earlier = _covering(study.get_trials(deepcopy=False), trial.params, retry, below=trial.number)
            if earlier:
                _fail(study._storage, trial, "duplicate", f"trial {earlier[0].number} runs this point")
                continue
        return trial


def _counted_below(study, number: int, retry: str) -> int:
    from optuna.trial import TrialState
    return sum(1 for t in study.get_trials(deepcopy=False) if t.number < number
               and not (t.state == TrialState.FAIL and _retried(t, retry)))


class _Heartbeat:
    """The trial's heartbeat attribute, renewed every HEARTBEAT_SECONDS while it runs."""

    def __init__(self, storage, trial_id: int) -> None:
        self.storage, self.trial_id, self.done = storage, trial_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.done.wait(HEARTBEAT_SECONDS):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except Exception:  # the trial finished meanwhile, or the storage is briefly unreachable
                pass

    def __enter__(self):
        self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def run_dir(folder: str, dims: Sequence[Dimension], params: Dict[str, Any], seed: Optional[int]) -> str:
    return os.path.join(folder, "runs", point_key(dims, params), "run" if seed is None else f"seed{seed}")


def trial_command(spec: Spec, params: Dict[str, Any], seed: Optional[int], out: Optional[str]) -> List[str]:
    """The command line of one run: the base command, the point's flags, the seed, the output folder."""
    argv = list(spec.command) + point_argv(spec.dims, params)
    if seed is not None:
        argv += [spec.seed_flag, str(seed)]
    if out is not None:
        argv += [spec.output_flag, out]
    return argv


def run_trial(study, trial, spec: Spec, folder: str, threads: int, prune: bool, stop: threading.Event,
              say: Callable[[str], None]) -> RunResult:
    """Train every seed of the trial's point and tell Optuna the outcome; the last run's result (its state is
    the trial's: ``complete``, ``pruned``, ``failed``, ``interrupted``, or ``aborted`` when the command failed
    with a user error before its first epoch while nothing has finished and no other trial runs). An
    unexpected exception marks the trial interrupted (its point runs again on resume) and propagates."""
    try:
        return _run_trial(study, trial, spec, folder, threads, prune, stop, say)
    except BaseException as exc:
        _fail(study._storage, trial, "interrupted", f"{type(exc).__name__}: {exc}")
        raise


def _run_trial(study, trial, spec, folder, threads, prune, stop, say) -> RunResult:
    from optuna.trial import TrialState
    storage, dims, params = study._storage, spec.dims, dict(trial.params)
    storage.set_trial_user_attr(trial._trial_id, "host", socket.gethostname())
    storage.set_trial_user_attr(trial._trial_id, "pid", os.getpid())
    name = f"trial {trial.number} " + (" ".join(f"{k}={v}" for k, v in params.items()) or "(base)")
    objective: List[float] = []
    step, seconds = 0, 0.0
    result = RunResult("complete")
    with _Heartbeat(storage, trial._trial_id):
        for seed in spec.seeds or [None]:
            out = run_dir(folder, dims, params, seed)
            argv = python_command(trial_command(spec, params, seed, out))
            storage.set_trial_user_attr(trial._trial_id, "run_dir", out)
            run_name = name + (f" seed {seed}" if seed is not None else "")
            epoch = 0

            def on_epoch(key: str, value: float) -> bool:
                nonlocal step, epoch
                trial.report(value, step)
                say(f"{run_name} epoch {epoch}: {key} {value:.4g}")
                step, epoch = step + 1, epoch + 1
                return not (prune and trial.should_prune())

            result = run_training(argv, out, spec.metric, threads, on_epoch, stop,
                                  on_start=lambda pid: storage.set_trial_user_attr(trial._trial_id, "child_pid", pid))
            if result.state == "reused":  # this run finished in an earlier attempt: its epochs count again
                for value in result.values:
                    trial.report(value, step)
                    step += 1
                result.state = "complete"
                say(f"{run_name}: finished earlier, reused")
            seconds += result.seconds
            if result.key and "metric" not in study.user_attrs:
                study.set_user_attr("metric", result.key)
            if seed is not None and result.values:
                storage.set_trial_user_attr(trial._trial_id, f"seed {seed}",
                                            result.last if spec.objective == "last" else result.best)
            if result.state != "complete":
                break
            objective.append(result.last if spec.objective == "last" else result.best)
    storage.set_trial_user_attr(trial._trial_id, "seconds", round(seconds, 1))
    if result.state == "complete":
        value = statistics.mean(objective)
        if math.isnan(value):
            result.state, result.error = "failed", "the metric is NaN (the run diverged)"
            _fail(storage, trial, "error", result.error)
            say(f"{name}: failed: {result.error}")
        else:
            study.tell(trial, value)
            say(f"{name}: {value:.4g}" + (f" (seeds {', '.join(f'{v:.4g}' for v in objective)})"
                                            if len(objective) > 1 else ""))
    elif result.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        say(f"{name}: pruned after {step} epochs")
    elif result.state == "interrupted":
        _fail(storage, trial, "interrupted", "interrupted")
    elif result.returncode == 2 and not result.values and _nothing_else(study, trial):
        # a user error before the first epoch while nothing has finished or runs: the command itself is wrong;
        # the trial does not count against its point
        result.state = "aborted"
        _fail(storage, trial, "aborted", result.error)
    else:
        _fail(storage, trial, "error", result.error)
        say(f"{name}: failed: {result.error}")
    return result


def _nothing_else(study, trial) -> bool:
    """No trial has finished and none but ``trial`` runs."""
    from optuna.trial import TrialState
    others = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return all(t.number == trial.number for t in others)
