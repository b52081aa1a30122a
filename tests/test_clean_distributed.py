"""clean on a cluster: a local Ray head (127.0.0.1, 2 CPUs) gives the same documents and report counts as
the local executor, also when a Ray worker is killed mid-run; Slurm's generated job scripts run the same
phases; bad executor settings and an unreachable cluster are refused before anything is written."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from test_clean import prose, row, write_input

from llm_recipes.config import ConfigError
from llm_recipes.data import load_clean_splits
from llm_recipes.data.cleaning import CleanConfig, clean
from llm_recipes.data.executors import local_ray_head

VOLATILE = ("seconds", "mb_per_s")  # timings differ between runs; every count must not


def corpus(folder: Path) -> Path:
    """Two shards with an exact duplicate, near duplicates, a short document and PII (few tasks: on the test's
    2-CPU cluster each task starts a Ray actor, which costs seconds)."""
    rng = random.Random(11)
    texts = [prose(rng, 120) for _ in range(14)]
    near = []
    for text in texts[:4]:
        words = text.split()
        for i in rng.sample(range(len(words)), k=len(words) // 20):
            words[i] = "changed"
        near.append(" ".join(words))
    rows = [row(t, f"d{i}") for i, t in enumerate(texts)] + [row(t, f"near{i}") for i, t in enumerate(near)]
    rows += [row(texts[5], "exact-copy"), row("tiny", "short"), row("Mail a.b@mail.org " + texts[7], "pii")]
    random.Random(3).shuffle(rows)
    return write_input(folder, [rows[:10], rows[10:]])


def settings(tmp_path: Path, out: str, cluster: dict | None = None, **kw) -> CleanConfig:
    """The clean config of these tests; `cluster`: its executor keys (executor, ray_*, slurm_*)."""
    return CleanConfig(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / out), num_workers=2, progress=False,
                       compare_profiles_sample=0.0, validation_fraction=0.2, minhash_buckets=4,
                       minhash_hashes_per_bucket=2, **(cluster or {}), **kw)


def outputs(folder: Path) -> dict[str, list[dict]]:
    splits = load_clean_splits(folder)
    return {name: sorted(split.to_list(), key=lambda r: r["id"]) for name, split in splits.items()}


def counts(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in VOLATILE}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("local")
    corpus(tmp_path / "in")
    report = clean(settings(tmp_path, "out"))
    removed = {s["step"]: sum(s["removed"].values()) for s in report["steps"]}
    assert removed["exact dedup"] == 1 and removed["near dedup"] >= 3 and removed["quality"] >= 1
    return tmp_path, report, outputs(tmp_path / "out")


# ------------------------------------------------------------------------------------------- Ray

@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A Ray head on 127.0.0.1 with 2 CPUs (two worker processes), stopped after the module."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'llm-recipes[cluster]')")
    if not (shutil.which("ray") or (Path(sys.executable).parent / "ray").exists()):
        pytest.skip("the `ray` command is not installed")
    with local_ray_head(tmp_path_factory.mktemp("ray"), num_cpus=2) as address:
        yield address
        import ray

        ray.shutdown()


@pytest.mark.slow  # every task starts a Ray actor / a fresh Python: 1-2 minutes on 2 loaded cores
def test_ray_equals_local(local_run, ray_head):
    tmp_path, local_report, local_out = local_run
    report = clean(settings(tmp_path, "ray", dict(executor="ray", ray_address=ray_head)))
    assert outputs(tmp_path / "ray") == local_out
    assert counts(report) == counts(local_report)
    assert report["count_problems"] == []


@pytest.mark.slow  # every task starts a Ray actor / a fresh Python: 1-2 minutes on 2 loaded cores
def test_ray_worker_killed_mid_run_loses_nothing(local_run, ray_head):
    """SIGKILL the first Ray worker process (a datatrove RankWorker actor) seen running a task: its task is
    rerun (datatrove resubmits tasks whose actor died), finished tasks are kept, the output is complete."""
    tmp_path, local_report, local_out = local_run
    killed: list[int] = []
    stop = threading.Event()

    def killer():
        while not stop.is_set() and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "RankWorker.run_for_rank" in " ".join(proc.info["cmdline"] or []):
                    proc.send_signal(signal.SIGKILL)
                    killed.append(proc.info["pid"])
                    break
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        report = clean(settings(tmp_path, "ray-killed", dict(executor="ray", ray_address=ray_head)))
    finally:
        stop.set()
        thread.join()
    assert killed, "no Ray worker was seen running a task"
    assert outputs(tmp_path / "ray-killed") == local_out
    assert counts(report) == counts(local_report)


def test_unreachable_ray_cluster_is_refused_before_anything_is_written(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed")
    corpus(tmp_path / "in")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ValueError, match=f"ray_address '{address}'.*cannot be reached.*no local fallback"):
        clean(settings(tmp_path, "out", dict(executor="ray", ray_address=address)))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- Slurm

# Stand-ins for Slurm's commands, for a machine without Slurm: `sbatch` runs the submitted script at once,
# once per array index, with the environment Slurm gives an array task; `srun` runs its command;
# `squeue` shows an empty queue (every job has finished when sbatch returns); `scontrol show hostnames`
# expands the node list.
SBATCH = textwrap.dedent("""\
    #!{python}
    import os, re, subprocess, sys, itertools
    args, script = sys.argv[1:-1], sys.argv[-1]
    text = open(script).read()
    with open(os.environ["SLURM_STANDIN_LOG"], "a") as log:
        log.write(" ".join(args) + "\\n" + text + "\\n----\\n")
    env = dict(os.environ, SLURM_NODELIST="localhost", SLURM_JOB_ID="1")
    for arg in args:
        if arg.startswith("--export=ALL,"):
            env.update(kv.split("=", 1) for kv in arg[len("--export=ALL,"):].split(","))
    match = re.search(r"^#SBATCH --array=(\\d+)-(\\d+)", text, re.M)
    name = re.search(r"^#SBATCH --job-name=(\\S+)", text, re.M)[1]
    for index in range(int(match[1]), int(match[2]) + 1) if match else [None]:
        if f"{{name}}:{{index}}" == os.environ.get("SLURM_STANDIN_LOSE"):
            continue  # this array task is lost (node failure, preemption): it never runs
        if index is not None:
            env["SLURM_ARRAY_TASK_ID"] = str(index)
        subprocess.run(["bash", script], env=env)  # as with Slurm, a failed task does not fail the submission
    print("Submitted batch job 4242")
""")
SRUN = '#!/bin/bash\nwhile [[ "$1" == -* ]]; do [[ "$1" == -n ]] && shift; shift; done\nexec "$@"\n'
SQUEUE = "#!/bin/bash\nexit 0\n"
SCONTROL = "#!/bin/bash\necho localhost\n"


@pytest.fixture
def slurm_standins(tmp_path, monkeypatch):
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", SBATCH.format(python=sys.executable)), ("srun", SRUN), ("squeue", SQUEUE),
                       ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_STANDIN_LOG", str(tmp_path / "sbatch.log"))
    return tmp_path / "sbatch.log"


@pytest.mark.slow  # every task starts a Ray actor / a fresh Python: 1-2 minutes on 2 loaded cores
def test_slurm_job_scripts_run_the_same_clean(local_run, slurm_standins):
    tmp_path, local_report, local_out = local_run
    cluster = dict(executor="slurm", slurm_partition="cpu", slurm_time="00:30:00",
                   slurm_sbatch_args={"account": "research"}, slurm_poll_seconds=0.1,
                   slurm_env_command=f"export PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    report = clean(settings(tmp_path, "slurm", cluster))
    assert outputs(tmp_path / "slurm") == local_out
    assert counts(report) == counts(local_report)
    submitted = slurm_standins.read_text()
    # one job array per phase (plus datatrove's stats-merging job), with our partition, time and options
    for phase in ("filter", "minhash_signatures", "minhash_buckets", "minhash_cluster", "final"):
        assert f"#SBATCH --job-name=clean-{phase}" in submitted
    assert "#SBATCH --partition=cpu" in submitted and "#SBATCH --time=00:30:00" in submitted
    assert "#SBATCH --account=research" in submitted and "#SBATCH --array=0-3%2" in submitted  # 4 bands, 2 at once
    assert "launch_pickled_pipeline" in submitted and "--qos" not in submitted


@pytest.mark.slow  # every task starts a fresh Python: 1-2 minutes on 2 loaded cores
def test_slurm_lost_task_stops_the_phase_and_the_rerun_resumes(local_run, slurm_standins, monkeypatch):
    tmp_path, local_report, local_out = local_run
    cluster = dict(executor="slurm", slurm_partition="cpu", slurm_poll_seconds=0.1,
                   slurm_env_command=f"export PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("SLURM_STANDIN_LOSE", "clean-filter:1")
    with pytest.raises(RuntimeError, match=r"clean phase 'filter': 1 of 2 tasks did not finish as Slurm job 4242 "
                                           r"\(ranks \[1\]\).*Run clean again to resume"):
        clean(settings(tmp_path, "slurm-lost", cluster))
    completions = tmp_path / "slurm-lost" / "work" / "logs" / "filter" / "completions"
    assert [p.name for p in completions.iterdir()] == ["00000"] and not (tmp_path / "slurm-lost" / "train").exists()
    shard0 = tmp_path / "slurm-lost" / "work" / "filtered" / "00000.parquet"
    written = shard0.stat().st_mtime_ns
    monkeypatch.delenv("SLURM_STANDIN_LOSE")
    report = clean(settings(tmp_path, "slurm-lost", cluster, keep_work=True))
    assert outputs(tmp_path / "slurm-lost") == local_out and counts(report) == counts(local_report)
    assert shard0.stat().st_mtime_ns == written  # the finished task was not redone


def test_slurm_without_sbatch_is_refused(tmp_path, monkeypatch):
    corpus(tmp_path / "in")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="needs `sbatch` on PATH"):
        clean(settings(tmp_path, "out", dict(executor="slurm", slurm_partition="cpu")))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- settings

@pytest.mark.parametrize("argv, message", [
    (["--executor", "spark"], "executor 'spark' is not one of local, ray, slurm"),
    (["--executor", "slurm"], "slurm needs slurm_partition"),
    (["--executor", "ray"], "ray needs ray_address"),
    (["--executor", "slurm", "--slurm_partition", "cpu", "--slurm_sbatch_args", "[1, 2]"],
     "slurm_sbatch_args must be a mapping"),
    (["--ray_memory_gb_per_task", "0"], "ray_memory_gb_per_task must be > 0"),
])
def test_bad_executor_settings_are_refused(argv, message):
    from llm_recipes.clean import CleanConfig
    from llm_recipes.config import parse_config

    with pytest.raises(ConfigError, match=message):
        parse_config([CleanConfig], argv, stage="clean")


def test_bad_ray_address_form(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed")
    corpus(tmp_path / "in")
    with pytest.raises(ValueError, match="is not host:port"):
        clean(replace(settings(tmp_path, "out"), executor="ray", ray_address="head-node"))
