"""Where the clean stage's datatrove phases run: local processes, a Ray cluster or Slurm.

The driver (the `llm-recipes clean` process) runs the phases one after the other and builds the small
whole-corpus indexes between them (exact dedup, decontamination); each phase's tasks run on the chosen
executor. Every executor records a finished task as `logs/<phase>/completions/<rank>`, so a phase that
lost tasks (a crash, a killed worker, a cancelled job) is refused with the ranks it lost, and the next
run of the same recipe redoes only those. There is no silent fallback: a cluster that cannot be reached
is an error naming it.

For Ray and Slurm, `output_dir` must be on storage every worker sees at the same path (the steps read and
write the intermediate shards there), and every worker must import the same llm_recipes and datatrove.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

EXECUTORS = ("local", "ray", "slurm")


def check_executor(cfg) -> None:
    """Executor settings errors of a clean config (`executor`, `ray_*`, `slurm_*` keys), before anything is
    touched."""
    if cfg.executor not in EXECUTORS:
        raise ValueError(f"executor {cfg.executor!r} is not one of {', '.join(EXECUTORS)}")
    if cfg.executor == "ray" and not cfg.ray_address:
        raise ValueError("executor: ray needs ray_address (host:port of the cluster's head, e.g. "
                         "127.0.0.1:6379 as printed by `ray start --head`, or auto)")
    if cfg.executor == "slurm":
        if not cfg.slurm_partition:
            raise ValueError("executor: slurm needs slurm_partition (the partition the jobs are submitted to)")
        if cfg.slurm_sbatch_args is not None and not isinstance(cfg.slurm_sbatch_args, dict):
            raise ValueError(f"slurm_sbatch_args must be a mapping of sbatch option -> value, "
                             f"got {cfg.slurm_sbatch_args!r:.80}")


class PhaseRunner:
    """Runs datatrove pipelines on the configured executor and checks that every task finished.

    Args:
        cfg: the clean config (its `executor`, `ray_*` and `slurm_*` keys).
        logs: the folder under which each phase keeps its datatrove logs and completions.
    """

    def __init__(self, cfg, logs: Path):
        check_executor(cfg)
        self.settings = cfg
        self.logs = logs
        self._ray_started_here = False

    # ------------------------------------------------------------------------------------ connecting

    def connect(self) -> None:
        """Reaches the cluster (called before the previous output is touched)."""
        if self.settings.executor == "ray":
            self._connect_ray()
        elif self.settings.executor == "slurm":
            for command in ("sbatch", "squeue"):
                if shutil.which(command) is None:
                    raise ValueError(f"executor: slurm needs `{command}` on PATH, which is not found here; run clean "
                                     f"on a Slurm login node, or set executor: local")

    def _connect_ray(self) -> None:
        try:
            import ray
        except ImportError as e:
            raise ValueError("executor: ray needs the `ray` package (pip install 'llm-recipes[cluster]')") from e
        address = self.settings.ray_address
        if address != "auto":
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"ray_address {address!r} is not host:port (e.g. 127.0.0.1:6379) or auto")
            try:  # ray.init retries for about a minute before it gives up; a refused port is known at once
                socket.create_connection((host, int(port)), timeout=5).close()
            except OSError as e:
                raise ValueError(f"ray_address {address!r}: the Ray cluster cannot be reached ({e}); start it with "
                                 f"`ray start --head --port {port}` or correct ray_address (no local fallback)") from e
        if ray.is_initialized():
            return
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError) as e:
            raise ValueError(f"ray_address {address!r}: could not join the Ray cluster ({e})"[:500]) from e
        self._ray_started_here = True

    def close(self) -> None:
        if self._ray_started_here:
            import ray

            ray.shutdown()
            self._ray_started_here = False

    # ------------------------------------------------------------------------------------ running

    def run(self, phase: str, pipeline: list, tasks: int, workers: int) -> None:
        """Runs `tasks` tasks of `pipeline`; raises if any of them did not finish.

        Args:
            workers: local processes; on Ray and Slurm, at most this many tasks at once.
        """
        logging_dir = self.logs / phase
        executor = getattr(self, f"_{self.settings.executor}")(pipeline, tasks, workers, logging_dir)
        executor.run()
        if self.settings.executor == "slurm":
            self._wait_for_slurm(executor, phase)
        missing = executor.get_incomplete_ranks(range(tasks))
        if missing:
            where = {"local": "on local processes", "ray": f"on the Ray cluster at {self.settings.ray_address}",
                     "slurm": f"as Slurm job {getattr(executor, 'job_id', '?')}"}[self.settings.executor]
            raise RuntimeError(f"clean phase {phase!r}: {len(missing)} of {tasks} tasks did not finish {where} "
                               f"(ranks {missing[:20]}); their logs are in {logging_dir / 'logs'}. Run clean again "
                               f"to resume: finished tasks are kept and not redone")

    @staticmethod
    def _local(pipeline, tasks, workers, logging_dir):
        from datatrove.executor import LocalPipelineExecutor

        _cache_loguru_lib_dirs()

        # fork, not datatrove's default forkserver: a forkserver worker re-imports everything (~20 s per
        # phase on 2 cores); the parent holds no threads or open pipelines when a phase starts.
        return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=max(1, min(workers, tasks)),
                                     logging_dir=str(logging_dir), skip_completed=True, start_method="fork")

    def _ray(self, pipeline, tasks, workers, logging_dir):
        from datatrove.executor import RayPipelineExecutor

        # one Ray actor per task (cpus_per_task=1); datatrove resubmits a task whose actor died (up to 3 times)
        return RayPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=workers,
                                   logging_dir=str(logging_dir), skip_completed=True, cpus_per_task=1,
                                   mem_per_cpu_gb=self.settings.ray_memory_gb_per_task)

    def _slurm(self, pipeline, tasks, workers, logging_dir):
        from datatrove.executor import SlurmPipelineExecutor

        s = self.settings
        return SlurmPipelineExecutor(
            pipeline=pipeline, tasks=tasks, workers=workers, time=s.slurm_time, partition=s.slurm_partition,
            cpus_per_task=s.slurm_cpus_per_task, mem_per_cpu_gb=s.slurm_mem_per_cpu_gb, qos=s.slurm_qos,
            env_command=s.slurm_env_command or None, sbatch_args=dict(s.slurm_sbatch_args or {}),
            job_name=f"clean-{logging_dir.name}", logging_dir=str(logging_dir), skip_completed=True,
            mail_user=None, requeue=True)

    def _wait_for_slurm(self, executor, phase: str) -> None:
        """The next phase needs this one's output: wait until every task has finished or the job is gone."""
        job_id = executor.job_id
        if job_id in (None, -1):  # nothing was submitted: every task had finished before
            return
        print(f"clean: phase {phase!r} submitted as Slurm job {job_id}; waiting for it", flush=True)
        while executor.get_incomplete_ranks(range(executor.world_size)):
            queued = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True)
            # a finished job leaves the queue: squeue prints nothing, or, once purged, "Invalid job id"
            if (queued.returncode == 0 and not queued.stdout.strip()) or "invalid job id" in queued.stderr.lower():
                return  # run() reports the tasks that did not finish
            time.sleep(self.settings.slurm_poll_seconds)


@contextlib.contextmanager
def local_ray_head(temp_dir: Path, num_cpus: int = 2, start_timeout: float = 120) -> Iterator[str]:
    """A throwaway Ray head on 127.0.0.1 (tests, benchmarks); yields its address (host:port).

    `ray start --head --block` runs in its own process group and is stopped by ending that group and any
    process of its temp dir left over: `ray stop` would stop every Ray cluster of this user on the machine.
    """
    ray_cli = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp_dir.mkdir(parents=True, exist_ok=True)
    with open(temp_dir / "head.log", "w") as log:
        head = subprocess.Popen(
            [ray_cli, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", str(num_cpus), "--include-dashboard", "false", "--object-store-memory", str(80 << 20),
             "--disable-usage-stats", "--temp-dir", str(temp_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if head.poll() is not None or time.time() > deadline:
                        log_tail = (temp_dir / "head.log").read_text()[-2000:]
                        raise RuntimeError(f"the Ray head did not start: {log_tail}")
                    time.sleep(0.5)
            yield f"127.0.0.1:{port}"
        finally:
            _stop_group(head, str(temp_dir))


def _stop_group(head: subprocess.Popen, marker: str) -> None:
    import psutil

    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    for proc in psutil.process_iter(["cmdline"]):  # anything of this cluster that outlived its group
        if marker in " ".join(proc.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def _cache_loguru_lib_dirs() -> None:
    """datatrove adds three loguru sinks per task; loguru recomputes the interpreter's library folders for each
    (every sysconfig scheme expanded: ~10 ms a sink, ~0.5-1 CPU s per clean of 30-70 tasks). They do not change
    within a process, so they are computed once; forked workers inherit the cached list. Left as is if loguru's
    private helper is not there (another loguru version)."""
    import functools

    from loguru import _better_exceptions

    formatter = getattr(_better_exceptions, "ExceptionFormatter", None)
    helper = getattr(formatter, "_get_lib_dirs", None)
    if helper is None or hasattr(helper, "cache_info"):
        return
    cached = functools.lru_cache(maxsize=1)(helper)
    formatter._get_lib_dirs = staticmethod(lambda: list(cached()))
    formatter._get_lib_dirs.cache_info = cached.cache_info  # marks it as done
