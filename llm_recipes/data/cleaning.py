"""The clean stage as datatrove pipelines: filter -> whole-corpus exact dedup -> MinHash near-dedup ->
PII scrubbing, decontamination and the train/validation split.

Each phase is a datatrove executor run with one task per input shard (MinHash bucketing: one task per
band, so no process holds more than one band's index). The executor is local processes, a Ray cluster or
Slurm (`executors.py`); each records finished tasks under `work/logs/`, so a rerun after a crash or a
lost worker skips them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import yaml

from ..config import ConfigError, check_range, config_to_dict
from ..fileio import atomic_open, atomic_write_json, replace_folder
from . import compiled
from . import steps as S
from .documents import write_parquet_atomic
from .executors import PhaseRunner, check_executor
from .report import build_report, write_report
from .sources import expand_paths
from .textops import ngram_hashes

WORK = "work"
SPLITS = "splits"  # under work/: the new train/ and validation/, moved into place when everything is written


@dataclass
class CleanConfig:
    input_dir: str = field(default="runs/default/gather", metadata={
        "help": "Gather output folder (data/*.parquet), or any folder of parquet files with a `text` column."})
    output_dir: str = field(default="runs/default/clean", metadata={
        "help": "Stage folder: train/, validation/, report.md, report.png, report.json."})
    profiles: Optional[Union[dict, str]] = field(default=None, metadata={
        "help": "Overrides of the filter profiles (web, docs, articles, books, none, or new names): {profile: "
                "{markup: web|rest|none, engine: fast|datatrove, gopher_repetition|gopher_quality|c4|fineweb: "
                "{datatrove kwargs} or false}}."})
    profile_for_source: Optional[Union[dict, str]] = field(default=None, metadata={
        "help": "Which profile each `source` gets: ordered mapping of glob pattern -> profile, or auto (by "
                "file type: books for pdf/epub/docx, articles for local md/txt/rst/html, web otherwise). Default "
                "{'python-docs*': docs, '*': auto}."})
    unicode_repair: bool = field(default=True, metadata={
        "help": "Repair mojibake and normalize unicode (ftfy, NFC); remove control and zero-width characters."})
    remove_markup: bool = field(default=True, metadata={
        "help": "Remove markup: HTML (main text extracted) and markdown for the web profile, reST roles for docs."})
    remove_boilerplate: bool = field(default=True, metadata={
        "help": "Drop navigation, cookie-banner and share lines (web profile)."})
    min_chars: int = field(default=1, metadata={
        "help": "Drop documents shorter than this many characters after repair."})
    max_chars: int = field(default=1_000_000, metadata={
        "help": "Drop documents longer than this many characters (0: no limit)."})
    quality_filters: bool = field(default=True, metadata={
        "help": "Run each document's profile of datatrove quality filters (Gopher repetition and quality, C4, "
                "FineWeb)."})
    languages: Optional[list[str]] = field(default=None, metadata={
        "help": "Keep only documents in these languages (ISO 639-1 codes, e.g. [en]), identified offline by "
                "langid.py; off when empty."})
    language_min_score: float = field(default=0.65, metadata={
        "help": "Minimum language probability to keep a document (FineWeb: 0.65 for English)."})
    compare_profiles_sample: float = field(default=0.02, metadata={
        "help": "Fraction of non-web documents also checked against web thresholds, to show the effect of profiles "
                "in the report (0: off). The check runs the web filters (spaCy words) on the sample: at 0.1 it was "
                "40%% of the filter step's CPU on python-docs; 0.02 of a 30k-document corpus is ~600 documents."})
    exact_dedup: bool = field(default=True, metadata={
        "help": "Drop exact duplicates (whitespace-normalized text) across the whole corpus."})
    near_dedup: bool = field(default=True, metadata={
        "help": "Drop near duplicates with datatrove's MinHash LSH across the whole corpus."})
    minhash_ngram: int = field(default=3, metadata={
        "help": "Word n-gram size of MinHash shingles (FineWeb: 5; 3 finds documents with ~10%% of words changed)."})
    minhash_buckets: int = field(default=20, metadata={"help": "LSH bands (FineWeb: 14)."})
    minhash_hashes_per_bucket: int = field(default=3, metadata={
        "help": "Hashes per band (FineWeb: 8). Similarity threshold ~ (1/buckets)^(1/hashes): 0.37 here, 0.72 for "
                "FineWeb's 14 x 8."})
    pii: bool = field(default=True, metadata={
        "help": "Replace emails, public IP addresses and phone numbers with <EMAIL>, <IP_ADDRESS>, <PHONE>."})
    decontamination_files: Optional[list[str]] = field(default=None, metadata={
        "help": "Evaluation sets (files or globs: .jsonl/.json/.parquet/.txt); documents sharing a word n-gram with "
                "them are dropped."})
    decontamination_ngram: int = field(default=13, metadata={
        "help": "n of the word n-grams used for decontamination (GPT-3 used 13)."})
    validation_fraction: float = field(default=0.01, metadata={
        "help": "Fraction of documents (chosen by a hash of their id, so deterministic) that go to validation/."})
    seed: int = field(default=42, metadata={"help": "Seed of the split hash and the MinHash permutations."})
    num_workers: int = field(default=2, metadata={"help": "Local worker processes (datatrove LocalPipelineExecutor)."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    keep_work: bool = field(default=False, metadata={
        "help": "Keep output_dir/work (intermediate shards, MinHash files, datatrove logs) after success."})
    executor: str = field(default="local", metadata={
        "help": "Where the phases run: local (num_workers processes), ray (a running Ray cluster at ray_address) or "
                "slurm (jobs on slurm_partition; this process waits between phases). For ray and slurm, output_dir "
                "must be on storage every worker sees at the same path. An unreachable cluster is an error, never a "
                "local fallback."})
    ray_address: str = field(default="", metadata={
        "help": "executor ray: host:port of the Ray head (`ray start --head --port 6379` prints it), or auto."})
    ray_memory_gb_per_task: float = field(default=1.0, metadata={
        "help": "executor ray: memory reserved per task (GB); each task also reserves 1 CPU."})
    slurm_partition: str = field(default="", metadata={
        "help": "executor slurm: partition the job arrays are submitted to (required)."})
    slurm_time: str = field(default="04:00:00", metadata={
        "help": "executor slurm: time limit of each job (sbatch --time)."})
    slurm_cpus_per_task: int = field(default=1, metadata={
        "help": "executor slurm: CPUs per task (sbatch --cpus-per-task)."})
    slurm_mem_per_cpu_gb: int = field(default=2, metadata={
        "help": "executor slurm: memory per CPU in GB (sbatch --mem-per-cpu)."})
    slurm_qos: str = field(default="", metadata={
        "help": "executor slurm: quality of service (sbatch --qos); empty: the cluster's default."})
    slurm_env_command: str = field(default="", metadata={
        "help": "executor slurm: shell line each job runs first to get this Python environment, e.g. `source "
                "/shared/venv/bin/activate`."})
    slurm_sbatch_args: Optional[Union[dict, str]] = field(default=None, metadata={
        "help": "executor slurm: more sbatch options as a mapping, e.g. {account: myproj}."})
    slurm_poll_seconds: float = field(default=30.0, metadata={
        "help": "executor slurm: how often the waiting driver checks the queue."})

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
            check_executor(self)
        except ValueError as e:
            raise ConfigError(str(e)) from e


def profile_for_source(cfg: CleanConfig) -> dict:
    """Which profile each source gets (the recipe's mapping, else the default one)."""
    return cfg.profile_for_source or dict(S.DEFAULT_PROFILE_FOR_SOURCE)


def input_files(input_dir: str) -> list[str]:
    """Parquet shards of a gather output (`data/*.parquet`) or any folder of parquet files with a text column."""
    path = Path(input_dir)
    if path.is_file() and path.suffix == ".parquet":
        return [str(path)]
    for pattern in ("data/*.parquet", "*.parquet", "**/*.parquet"):
        files = sorted(glob.glob(str(path / pattern), recursive=True))
        if files:
            return files
    raise ValueError(f"input_dir {input_dir!r} holds no parquet files "
                     "(expected a gather output folder with data/*.parquet)")


RUN_ONLY = ("num_workers", "progress", "keep_work", "executor")  # how and where it runs, not what it makes


def _fingerprint(cfg: CleanConfig, files: list[str]) -> str:
    keyed = {k: v for k, v in config_to_dict(cfg).items()
             if k not in RUN_ONLY and not k.startswith(("ray_", "slurm_"))}
    stats = [(os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))) for f in files]
    blob = json.dumps([keyed, stats], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _quiet_datatrove():
    """datatrove logs every task to the console; keep its logs in work/logs and show our own progress."""
    from loguru import logger

    logger.remove()
    logger.add(lambda m: None, level="WARNING")


def clean(cfg: CleanConfig, start: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Runs the whole clean pipeline; returns the report (also written as report.json/md/png).

    Args:
        start: called once the inputs, profiles and decontamination files have been checked, before the
            previous output is touched (the stage clears its completion marker there).
    """
    started = time.time()
    files = [os.path.abspath(f) for f in input_files(cfg.input_dir)]  # cluster workers start elsewhere
    profiles = S.resolve_profiles(cfg.profiles or {})
    for name in profile_for_source(cfg).values():
        if name not in profiles and name != S.AUTO:
            raise ValueError(f"profile_for_source names profile {name!r}, which is not defined "
                             f"(known: {sorted(profiles)})")
    for profile in profiles.values():
        S.build_filters(profile)  # a bad threshold fails here, not inside a worker
    # evaluation sets are read (and a missing or unreadable one refused) before the previous output is touched
    eval_texts = read_eval_texts(cfg.decontamination_files) if cfg.decontamination_files else []
    runner = PhaseRunner(cfg, Path(cfg.output_dir).absolute() / WORK / "logs")
    runner.connect()  # an unreachable cluster is refused here, before anything is touched
    try:
        if start is not None:
            start()
        return _clean(cfg, files, profiles, eval_texts, runner, started)
    finally:
        runner.close()


def _clean(cfg: CleanConfig, files: list[str], profiles: dict, eval_texts: list[str], runner: PhaseRunner,
           started: float) -> dict[str, Any]:
    out = Path(cfg.output_dir).absolute()
    work = out / WORK
    fingerprint = _fingerprint(cfg, files)
    marker = work / "fingerprint.json"
    if marker.exists() and json.loads(marker.read_text()).get("fingerprint") != fingerprint:
        print("clean: the input or the settings changed since the interrupted run; starting over")
        shutil.rmtree(work)
    if not marker.exists():  # the previous train/ and validation/ stay until the new ones replace them
        atomic_write_json(marker, {"fingerprint": fingerprint})
    elif (work / "logs").exists():
        print(f"clean: resuming; finished tasks recorded in {work / 'logs'} are skipped")
    _quiet_datatrove()
    n = len(files)
    filtered = work / "filtered"
    filtered.mkdir(parents=True, exist_ok=True)
    filtered_files = [str(filtered / f"{rank:05d}.parquet") for rank in range(n)]
    timings = {}

    # 1. repair + quality filters, one task per input shard
    t = time.time()
    repair = S.Repair(profiles, profile_for_source(cfg), cfg.unicode_repair, cfg.remove_markup,
                      cfg.remove_boilerplate)
    length = S.LengthGate(cfg.min_chars, cfg.max_chars)
    chain = [repair, length]
    if cfg.languages:
        chain.append(S.LanguageFilter(cfg.languages, cfg.language_min_score))
    # numba's kernels or the numpy paths, by the input's size; local workers, forked from here, inherit the
    # answer and the kernels (loaded by the steps made below)
    compiled.use_for_run(sum(os.path.getsize(f) for f in files))
    if cfg.quality_filters:
        quality = S.ProfiledQuality(profiles, profile_for_source(cfg), cfg.compare_profiles_sample)
        chain.append(quality)
    reader = S.ShardReader(files, tallied=chain, progress=cfg.progress, desc="clean: filter")
    if cfg.quality_filters and cfg.executor == "local":
        def english(met: set[str]) -> bool:
            return S.needs_english_words({name: profiles[name] for name in met})

        # local workers are forked from this process: readied here once (~1.4 s), spaCy's English tokenizer
        # is shared by every worker instead of imported and built in each; not at all when no document meets
        # a profile that splits English with spaCy (e.g. documentation only, and the web comparison's
        # sample empty), the workers would load it on first use anyway. The scan stops at the first such one.
        if english(quality.profiles_met(files, enough=english)):
            from .fastfilters import spacy_words

            spacy_words()
    _phase(f"1/4 repair + quality filters: {n} shards on {cfg.num_workers} workers")
    runner.run("filter", [reader, *chain,
                          S.IntermediateWriter(str(filtered), str(work / "ledger" / "filter"), [reader, *chain])],
               n, cfg.num_workers)
    timings["filter"] = time.time() - t

    # 2. exact dedup over the whole corpus: first occurrence (by shard, then position) wins
    t = time.time()
    remove_dir = work / "exact_remove"
    _phase("2/4 exact dedup over the whole corpus")
    build_exact_index(filtered, n, remove_dir, enabled=cfg.exact_dedup)
    timings["exact_dedup"] = time.time() - t

    # 3. MinHash near-dedup (datatrove): signatures -> buckets -> clusters
    t = time.time()
    minhash_remove = work / "minhash" / "remove"
    if cfg.near_dedup:
        from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupCluster
        from datatrove.utils.hashing import HashConfig

        from .fastminhash import SortedMinhashBuckets

        mh = MinhashConfig(n_grams=cfg.minhash_ngram, num_buckets=cfg.minhash_buckets,
                           hashes_per_bucket=cfg.minhash_hashes_per_bucket, seed=cfg.seed,
                           # sha1: datatrove 0.10 passes str to xxhash, which the installed xxhash rejects
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
        sigs, buckets = work / "minhash" / "signatures", work / "minhash" / "buckets"
        _phase(f"3/4 MinHash near-dedup ({cfg.minhash_buckets} buckets x {cfg.minhash_hashes_per_bucket} hashes, "
               f"{cfg.minhash_ngram}-grams)")
        signature = S.fast_minhash_signature(str(sigs), mh, profiles, profile_for_source(cfg))
        runner.run("minhash_signatures", [S.ShardReader(filtered_files, desc="clean: minhash"),
                                          S.ExactDedup(str(remove_dir)), signature], n, cfg.num_workers)
        # one task per band: each holds only its own band's signatures
        runner.run("minhash_buckets", [SortedMinhashBuckets(input_folder=str(sigs), output_folder=str(buckets),
                                                            config=mh)], mh.num_buckets, cfg.num_workers)
        runner.run("minhash_cluster", [MinhashDedupCluster(input_folder=str(buckets),
                                                           output_folder=str(minhash_remove), config=mh)], 1, 1)
    timings["near_dedup"] = time.time() - t

    # 4. PII, decontamination, split and write
    t = time.time()
    final_chain: list = [S.ExactDedup(str(remove_dir))]
    if cfg.near_dedup:
        final_chain.append(S.NearDedup(str(minhash_remove)))
    if cfg.pii:
        final_chain.append(S.ScrubPII())
    if cfg.decontamination_files:
        ngram_file = work / "decontamination_ngrams.npy"
        count = build_decontamination_index(eval_texts, cfg.decontamination_ngram, ngram_file)
        print(f"clean: decontamination against {count} evaluation texts ({cfg.decontamination_ngram}-grams)")
        final_chain.append(S.Decontaminate(str(ngram_file), cfg.decontamination_ngram))
    final_reader = S.ShardReader(filtered_files, tallied=final_chain, progress=cfg.progress, desc="clean: write")
    _phase("4/4 dedup filter, PII scrubbing, decontamination, train/validation split")
    splits = work / SPLITS
    runner.run("final", [final_reader, *final_chain,
                         S.SplitWriter(str(splits), cfg.validation_fraction, cfg.seed,
                                       str(work / "ledger" / "final"), final_chain)],
               n, cfg.num_workers)
    swapped = work / "swapped.json"  # written before the first split moves: a resumed run must not redo them
    if not swapped.exists():
        ensure_split_files(splits)
    timings["final"] = time.time() - t
    timings["total"] = time.time() - started

    report = build_report(work / "ledger", n, cfg, timings, gather_report_path(cfg.input_dir))
    atomic_write_json(swapped, {"splits": ["train", "validation"]})
    for split in ("train", "validation"):
        if (splits / split).is_dir():
            replace_folder(splits / split, out / split)  # moved aside, replaced, old removed
    write_report(report, out)
    if not cfg.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _phase(message: str) -> None:
    print(f"clean: {message}", flush=True)


def build_exact_index(filtered: Path, n: int, remove_dir: Path, enabled: bool = True) -> int:
    """Lists, per shard, the positions of documents whose text already occurred earlier in the corpus.

    Memory: 8 bytes per document for the hashes (12 M documents ~ 100 MB), not the texts.
    """
    import numpy as np

    remove_dir.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    total = 0
    for rank in range(n):
        hashes = np.load(filtered / f"{rank:05d}.hashes.npy") if enabled else np.zeros(0, dtype=np.uint64)
        drop = []
        for i, h in enumerate(hashes.tolist()):
            if h in seen:
                drop.append(i)
            else:
                seen.add(h)
        total += len(drop)
        atomic_write_json(remove_dir / f"{rank:05d}.json", drop)
    return total


def read_eval_texts(patterns: list[str]) -> list[str]:
    """Texts of evaluation sets: .txt (whole file), .jsonl/.json (every string field of a record joined),
    .parquet (the text column, or all string columns)."""
    texts: list[str] = []
    files = expand_paths(list(patterns))
    if not files:
        raise ValueError(f"decontamination_files {patterns!r} match no file")
    for path in files:
        try:
            texts.extend(_eval_file_texts(path))
        except (OSError, ValueError) as e:  # JSONDecodeError and pyarrow's ArrowInvalid are ValueErrors
            raise ValueError(f"decontamination file {path!r} cannot be read ({type(e).__name__}: {e})"[:400]) from e
    return [t for t in texts if t.strip()]


def _record_text(record) -> str:
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        return "\n".join(v for v in record.values() if isinstance(v, str))
    return record if isinstance(record, str) else ""


def _eval_file_texts(path: str) -> list[str]:
    lower = path.lower()
    if lower.endswith(".jsonl"):
        texts = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    texts.append(_record_text(json.loads(line)))
                except json.JSONDecodeError:
                    continue
        return texts
    if lower.endswith(".json"):
        data = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))
        return [_record_text(r) for r in (data if isinstance(data, list) else [data])]
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        # ParquetFile, not read_table: the latter imports pandas (~0.3 CPU s), which clean never uses
        return [_record_text(record) for record in pq.ParquetFile(path).read().to_pylist()]
    return [Path(path).read_text(encoding="utf-8", errors="replace")]


def build_decontamination_index(texts: list[str], n: int, path: Path) -> int:
    """Writes the sorted word n-gram hashes of the evaluation texts to `path`; returns the text count."""
    import numpy as np

    grams: set[int] = set()
    for text in texts:
        grams |= ngram_hashes(text, n)
    with atomic_open(path) as f:
        np.save(f, np.array(sorted(grams), dtype=np.uint64))
    return len(texts)


def ensure_split_files(out: Path) -> None:
    """A split with no documents still gets one empty parquet file, so `load_dataset` finds both splits."""
    for split in ("train", "validation"):
        if not list((out / split).glob("*.parquet")):
            write_parquet_atomic(out / split / "empty-000.parquet", [])


def gather_report_path(input_dir: str) -> Path | None:
    path = Path(input_dir) / "gather_report.json"
    return path if path.exists() else None
