"""Timing helper shared by the benchmark scripts."""
import statistics
import time


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


def report(name, baseline, ours, target=None):
    ratio = baseline / ours
    goal = f"  (target >= {target}x: {'met' if ratio >= target else 'NOT met'})" if target else ""
    print(f"{name:<44} baseline {baseline * 1e3:9.1f} ms   mgd {ours * 1e3:9.1f} ms   speed-up {ratio:5.1f}x{goal}")
    return ratio
