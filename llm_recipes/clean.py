"""`llm-recipes clean`: repair, filter, deduplicate, scrub and split gathered text, with a report.

Reads a gather output (`data/*.parquet`), writes `train/*.parquet`, `validation/*.parquet` (same
columns) and `report.md` / `report.png` / `report.json`. The work runs as datatrove pipelines on local
processes; an interrupted run resumes with the tasks it had not finished.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional, Union

import yaml

from .cli import entry_point
from .config import ConfigError, check_range, parse_config
from .data.cleaning import CleanSettings, clean
from .data.steps import DEFAULT_PROFILE_FOR_SOURCE
from .pipeline.envelope import StageRun


@dataclass
class CleanConfig:
    input_dir: str = field(default="runs/default/gather", metadata={"help": "Gather output folder (data/*.parquet), or any folder of parquet files with a `text` column."})
    output_dir: str = field(default="runs/default/clean", metadata={"help": "Stage folder: train/, validation/, report.md, report.png, report.json."})
    profiles: Optional[Union[dict, str]] = field(default=None, metadata={"help": "Overrides of the filter profiles (web, docs, none, or new names): {profile: {markup: web|rest|none, engine: fast|datatrove, gopher_repetition|gopher_quality|c4|fineweb: {datatrove kwargs} or false}}."})
    profile_for_source: Optional[Union[dict, str]] = field(default=None, metadata={"help": "Which profile each `source` gets: ordered mapping of glob pattern -> profile. Default {'python-docs*': docs, '*': web}."})
    unicode_repair: bool = field(default=True, metadata={"help": "Repair mojibake and normalize unicode (ftfy, NFC); remove control and zero-width characters."})
    remove_markup: bool = field(default=True, metadata={"help": "Remove markup: HTML (main text extracted) and markdown for the web profile, reST roles for docs."})
    remove_boilerplate: bool = field(default=True, metadata={"help": "Drop navigation, cookie-banner and share lines (web profile)."})
    min_chars: int = field(default=1, metadata={"help": "Drop documents shorter than this many characters after repair."})
    max_chars: int = field(default=1_000_000, metadata={"help": "Drop documents longer than this many characters (0: no limit)."})
    quality_filters: bool = field(default=True, metadata={"help": "Run each document's profile of datatrove quality filters (Gopher repetition and quality, C4, FineWeb)."})
    languages: Optional[list[str]] = field(default=None, metadata={"help": "Keep only documents in these languages (ISO 639-1 codes, e.g. [en]), identified offline by langid.py; off when empty."})
    language_min_score: float = field(default=0.65, metadata={"help": "Minimum language probability to keep a document (FineWeb: 0.65 for English)."})
    compare_profiles_sample: float = field(default=0.1, metadata={"help": "Fraction of non-web documents also checked against web thresholds, to show the effect of profiles in the report (0: off)."})
    exact_dedup: bool = field(default=True, metadata={"help": "Drop exact duplicates (whitespace-normalized text) across the whole corpus."})
    near_dedup: bool = field(default=True, metadata={"help": "Drop near duplicates with datatrove's MinHash LSH across the whole corpus."})
    minhash_ngram: int = field(default=3, metadata={"help": "Word n-gram size of MinHash shingles (FineWeb: 5; 3 finds documents with ~10%% of words changed)."})
    minhash_buckets: int = field(default=20, metadata={"help": "LSH bands (FineWeb: 14)."})
    minhash_hashes_per_bucket: int = field(default=3, metadata={"help": "Hashes per band (FineWeb: 8). Similarity threshold ~ (1/buckets)^(1/hashes): 0.37 here, 0.72 for FineWeb's 14 x 8."})
    pii: bool = field(default=True, metadata={"help": "Replace emails, public IP addresses and phone numbers with <EMAIL>, <IP_ADDRESS>, <PHONE>."})
    decontamination_files: Optional[list[str]] = field(default=None, metadata={"help": "Evaluation sets (files or globs: .jsonl/.json/.parquet/.txt); documents sharing a word n-gram with them are dropped."})
    decontamination_ngram: int = field(default=13, metadata={"help": "n of the word n-grams used for decontamination (GPT-3 used 13)."})
    validation_fraction: float = field(default=0.01, metadata={"help": "Fraction of documents (chosen by a hash of their id, so deterministic) that go to validation/."})
    seed: int = field(default=42, metadata={"help": "Seed of the split hash and the MinHash permutations."})
    num_workers: int = field(default=2, metadata={"help": "Local worker processes (datatrove LocalPipelineExecutor)."})
    keep_work: bool = field(default=False, metadata={"help": "Keep output_dir/work (intermediate shards, MinHash files, datatrove logs) after success."})
    executor: str = field(default="local", metadata={"help": "Where the phases run: local (num_workers processes), ray (a running Ray cluster at ray_address) or slurm (jobs on slurm_partition; this process waits between phases). For ray and slurm, output_dir must be on storage every worker sees at the same path. An unreachable cluster is an error, never a local fallback."})
    ray_address: str = field(default="", metadata={"help": "executor ray: host:port of the Ray head (`ray start --head --port 6379` prints it), or auto."})
    ray_memory_gb_per_task: float = field(default=1.0, metadata={"help": "executor ray: memory reserved per task (GB); each task also reserves 1 CPU."})
    slurm_partition: str = field(default="", metadata={"help": "executor slurm: partition the job arrays are submitted to (required)."})
    slurm_time: str = field(default="04:00:00", metadata={"help": "executor slurm: time limit of each job (sbatch --time)."})
    slurm_cpus_per_task: int = field(default=1, metadata={"help": "executor slurm: CPUs per task (sbatch --cpus-per-task)."})
    slurm_mem_per_cpu_gb: int = field(default=2, metadata={"help": "executor slurm: memory per CPU in GB (sbatch --mem-per-cpu)."})
    slurm_qos: str = field(default="", metadata={"help": "executor slurm: quality of service (sbatch --qos); empty: the cluster's default."})
    slurm_env_command: str = field(default="", metadata={"help": "executor slurm: shell line each job runs first to get this Python environment, e.g. `source /shared/venv/bin/activate`."})
    slurm_sbatch_args: Optional[Union[dict, str]] = field(default=None, metadata={"help": "executor slurm: more sbatch options as a mapping, e.g. {account: myproj}."})
    slurm_poll_seconds: float = field(default=30.0, metadata={"help": "executor slurm: how often the waiting driver checks the queue."})

    def __post_init__(self):
        for key in ("profiles", "profile_for_source", "slurm_sbatch_args"):
            value = getattr(self, key)
            if isinstance(value, str):
                try:
                    value = yaml.safe_load(value)
                except yaml.YAMLError as e:
                    raise ConfigError(f"{key} must be a mapping (JSON or YAML): {e}") from e
                setattr(self, key, value)
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping, got {type(value).__name__} {value!r:.80}")
        check_range(self, "validation_fraction", 0, 1, high_open=True)
        for key in ("min_chars", "max_chars"):
            check_range(self, key, 0)
        if self.max_chars and self.min_chars > self.max_chars:
            raise ConfigError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars}): every document "
                              f"would be dropped")
        for key in ("language_min_score", "compare_profiles_sample"):
            check_range(self, key, 0, 1)
        for key in ("minhash_ngram", "minhash_buckets", "minhash_hashes_per_bucket", "decontamination_ngram",
                    "num_workers", "slurm_cpus_per_task", "slurm_mem_per_cpu_gb"):
            check_range(self, key, 1)
        for key in ("ray_memory_gb_per_task", "slurm_poll_seconds"):
            check_range(self, key, 0, low_open=True)
        try:
            self.executor_settings().validate()
        except ValueError as e:
            raise ConfigError(str(e)) from e

    def executor_settings(self):
        from .data.executors import ExecutorSettings

        return ExecutorSettings(
            executor=self.executor, ray_address=self.ray_address, ray_memory_gb_per_task=self.ray_memory_gb_per_task,
            slurm_partition=self.slurm_partition, slurm_time=self.slurm_time,
            slurm_cpus_per_task=self.slurm_cpus_per_task, slurm_mem_per_cpu_gb=self.slurm_mem_per_cpu_gb,
            slurm_qos=self.slurm_qos, slurm_env_command=self.slurm_env_command,
            slurm_sbatch_args=self.slurm_sbatch_args or {}, poll_seconds=self.slurm_poll_seconds)


def config_classes() -> tuple[type, ...]:
    return (CleanConfig,)


def main(argv=None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="clean")
    run = StageRun("clean", cfg.output_dir, cfg)
    settings = CleanSettings(
        input_dir=cfg.input_dir, output_dir=cfg.output_dir, profiles=cfg.profiles or {},
        profile_for_source=cfg.profile_for_source or dict(DEFAULT_PROFILE_FOR_SOURCE),
        unicode_repair=cfg.unicode_repair, remove_markup=cfg.remove_markup, remove_boilerplate=cfg.remove_boilerplate,
        min_chars=cfg.min_chars, max_chars=cfg.max_chars, quality_filters=cfg.quality_filters,
        languages=cfg.languages or [], language_min_score=cfg.language_min_score,
        compare_profiles_sample=cfg.compare_profiles_sample, exact_dedup=cfg.exact_dedup, near_dedup=cfg.near_dedup,
        minhash_ngram=cfg.minhash_ngram, minhash_buckets=cfg.minhash_buckets,
        minhash_hashes_per_bucket=cfg.minhash_hashes_per_bucket, pii=cfg.pii,
        decontamination_files=cfg.decontamination_files or [], decontamination_ngram=cfg.decontamination_ngram,
        validation_fraction=cfg.validation_fraction, seed=cfg.seed, workers=cfg.num_workers, keep_work=cfg.keep_work,
        cluster=cfg.executor_settings())
    try:
        report = clean(settings, start=run.start)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    run.complete(documents=report["output_documents"], bytes=report["output_bytes"])
    print(f"clean: kept {report['output_documents']} of {report['input_documents']} documents "
          f"({report['output_bytes'] / 2**20:.1f} of {report['input_bytes'] / 2**20:.1f} MB) in "
          f"{report['seconds']['total']:.0f} s: {report['train_documents']} train -> {cfg.output_dir}/train/, "
          f"{report['validation_documents']} validation -> {cfg.output_dir}/validation/; "
          f"report: {cfg.output_dir}/report.md (+ report.png, report.json)")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("clean", main))
