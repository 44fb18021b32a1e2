"""Measuring a command: wall time, peak RSS and CPU of its whole process tree, and the load of
everything else on the machine meanwhile (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["busy_cpu", "measure", "tree_sample", "wait_idle"]


def tree_sample(proc, cpu_seen: dict | None = None) -> int:
    """RSS summed over PROC and its descendants; records each one's CPU time in CPU_SEEN."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                if cpu_seen is not None:
                    t = p.cpu_times()
                    cpu_seen[(p.pid, p.create_time())] = t.user + t.system
        except psutil.Error:
            pass
    return total


def busy_cpu() -> float:
    """CPU seconds the whole machine has been busy (all cores)."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def _rusage_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def wait_idle(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait (up to MAX_WAIT_S) until no other work keeps the CPUs busy; the last load seen (cores)."""
    deadline = time.monotonic() + max_wait_s
    announced = False
    while True:
        b0, t0 = busy_cpu(), time.monotonic()
        time.sleep(1.0)
        busy = (busy_cpu() - b0) / (time.monotonic() - t0)
        if busy <= threshold_cores or time.monotonic() >= deadline:
            return busy
        if not announced:
            print(f"  machine busy ({busy:.2f} cores in use), waiting up to {max_wait_s:.0f} s", flush=True)
            announced = True
        time.sleep(4.0)


def measure(cmd: list[str], log: Path, *, cwd: Path | None = None, env: dict | None = None,
            max_rss: int | None = None, timeout_s: float | None = None) -> dict:
    """Run CMD (output to LOG) and measure it.

    Returns ``rc``, ``wall_s``, ``peak_rss`` (bytes, the process tree sampled every 50 ms),
    ``cpu_s`` (the tree's CPU time), ``other_cores`` (CPU used by everything else on the
    machine meanwhile, in cores: ~0 for a clean measurement), ``harness_cpu_s``, ``stopped``
    (why the run was killed: above ``max_rss`` bytes or after ``timeout_s``; else None) and
    ``log``.
    """
    import psutil

    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    limited = max_rss is not None or timeout_s is not None
    busy0, kids0, self0 = busy_cpu(), _rusage_cpu(resource.RUSAGE_CHILDREN), _rusage_cpu(resource.RUSAGE_SELF)
    with open(log, "wb") as fh:
        t0 = time.perf_counter()
        popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                 start_new_session=limited)
        proc = psutil.Process(popen.pid)
        peak, why = [0], [None]
        cpu_seen: dict = {}
        done = threading.Event()

        def poll():
            while not done.is_set():
                rss = tree_sample(proc, cpu_seen)
                peak[0] = max(peak[0], rss)
                over = max_rss is not None and rss > max_rss
                late = timeout_s is not None and time.perf_counter() - t0 > timeout_s
                if (over or late) and why[0] is None:
                    why[0] = (f"stopped at {rss / 2**30:.1f} GiB RSS (limit {max_rss / 2**30:.0f} GiB)" if over
                              else f"stopped after {timeout_s:.0f} s")
                    try:
                        os.killpg(popen.pid, 9)  # our own child's process group
                    except OSError:
                        pass
                done.wait(0.05)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        rc = popen.wait()
        wall = time.perf_counter() - t0
        done.set()
        thread.join()
    # CPU of the tree: the reaped descendants' rusage, or the sum of the per-process samples
    # where some descendants are never reaped by the tree itself (e.g. a forkserver's workers)
    tree_cpu = max(_rusage_cpu(resource.RUSAGE_CHILDREN) - kids0, sum(cpu_seen.values()))
    harness_cpu = _rusage_cpu(resource.RUSAGE_SELF) - self0
    other = max(0.0, busy_cpu() - busy0 - tree_cpu - harness_cpu)
    return {"rc": rc, "wall_s": wall, "peak_rss": peak[0], "cpu_s": tree_cpu, "other_cores": other / wall,
            "harness_cpu_s": harness_cpu, "stopped": why[0], "log": str(log)}
