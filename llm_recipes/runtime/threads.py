"""How many CPU threads torch should use: the CPUs actually free, not the CPUs that exist.

On a machine shared with other busy processes, torch's default (one OpenMP thread per core) collapses: the
threads spin and wait on each other, and with two busy processes on 2 cores a training step of the
quickstart model ran 1,093 tokens/s on 2 threads against 1,867 on 1 (4,673 quiet; /work/shared/REFERENCE.md).
`CpuShare` measures what other processes use, from the machine's CPU time (Linux /proc/stat) minus this
process's own, so a training run that keeps both cores busy itself does not mistake its own work for
contention; `choose` turns that into a thread count, and a stage re-checks it while it runs.
"""

from __future__ import annotations

import os
import time


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _machine_times() -> tuple[float, float] | None:
    """(total, busy) CPU seconds of the whole machine since boot, or None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return total / tick, (total - idle) / tick


class CpuShare:
    """Free CPUs over the interval since the last `sample()`: usable CPUs minus what other processes used."""

    def __init__(self):
        self._last = self._now()

    @staticmethod
    def _now():
        return time.monotonic(), _machine_times(), time.process_time()

    def sample(self) -> float | None:
        """Free CPUs (fractional) since the previous call; None where the machine's CPU time is unknown."""
        (wall0, machine0, own0), (wall1, machine1, own1) = self._last, self._now()
        self._last = (wall1, machine1, own1)
        if machine0 is None or machine1 is None or wall1 - wall0 <= 0:
            return None
        cpus = os.cpu_count() or 1
        others_busy = max(0.0, (machine1[1] - machine0[1]) - (own1 - own0)) / (wall1 - wall0)
        return max(0.0, min(usable_cpus(), cpus - others_busy))


def free_cpus(sample_s: float = 0.25) -> float:
    """Free CPUs measured over `sample_s` now; without /proc, from the load average."""
    share = CpuShare()
    time.sleep(sample_s)
    free = share.sample()
    if free is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        free = max(0.0, usable_cpus() - busy)
    return free


def choose(free: float, limit: int | None = None) -> int:
    """Threads for `free` CPUs: the whole free ones, at least 1, at most `limit` (e.g. torch's own setting).
    A CPU more than three quarters free counts (a shell or a monitor is not contention)."""
    threads = max(1, int(free + 0.25))
    return min(threads, limit) if limit else threads


class ThreadGovernor:
    """Sets torch's thread count for a stage on the CPU, from the CPUs free at its start, and follows changes
    while it runs (`recheck` at each log line); `fixed` (a user's setting) turns all of that off. Logs each
    choice through `say`; `summary()` is what the stage records (how free the machine was)."""

    def __init__(self, stage: str, say, fixed: int | None = None, active: bool = True):
        import torch

        self.stage, self.say = stage, say
        self.samples: list[float] = []
        self.share: CpuShare | None = None  # None: the thread count is not ours to follow
        if fixed:
            torch.set_num_threads(int(fixed))
            say(f"{stage}: {fixed} CPU thread(s) (torch_num_threads)")
        if fixed or not active:
            return
        free = free_cpus()
        self.samples.append(free)
        torch.set_num_threads(choose(free))
        self.share = CpuShare()
        say(f"{stage}: {torch.get_num_threads()} CPU thread(s): {free:.1f} of {usable_cpus()} CPUs free at start "
            "(set torch_num_threads to fix it)")

    def recheck(self) -> None:
        if self.share is None:
            return
        import torch

        free = self.share.sample()
        if free is None:
            return
        self.samples.append(free)
        threads = choose(free)
        if threads != torch.get_num_threads():
            self.say(f"{self.stage}: {free:.1f} of {usable_cpus()} CPUs free now: {torch.get_num_threads()} -> "
                     f"{threads} CPU thread(s)")
            torch.set_num_threads(threads)

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        mean = sum(self.samples) / len(self.samples)
        return {"cpus": usable_cpus(), "cpus_free_mean": round(mean, 2), "cpus_free_min": round(min(self.samples), 2)}

    def busy(self) -> bool:
        """Other processes took more than half a CPU on average: a time-budgeted run trained on less."""
        summary = self.summary()
        return bool(summary) and summary["cpus_free_mean"] < summary["cpus"] - 0.5
