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
from typing import Any, Callable

from ..fileio import atomic_open, atomic_write_json, replace_folder
from . import steps as S
from .executors import ExecutorSettings, PhaseRunner

WORK = "work"
SPLITS = "splits"  # under work/: the new train/ and validation/, moved into place when everything is written


@dataclass
class CleanSettings:
    """Everything the clean pipeline needs (the stage config maps onto this one to one)."""

    input_dir: str
    output_dir: str
    profiles: dict = field(default_factory=dict)
    profile_for_source: dict = field(default_factory=lambda: dict(S.DEFAULT_PROFILE_FOR_SOURCE))
    unicode_repair: bool = True
    remove_markup: bool = True
    remove_boilerplate: bool = True
    min_chars: int = 1
    max_chars: int = 1_000_000
    quality_filters: bool = True
    languages: list = field(default_factory=list)
    language_min_score: float = 0.65
    compare_profiles_sample: float = 0.1
    exact_dedup: bool = True
    near_dedup: bool = True
    minhash_ngram: int = 3
    minhash_buckets: int = 20
    minhash_hashes_per_bucket: int = 3
    pii: bool = True
    decontamination_files: list = field(default_factory=list)
    decontamination_ngram: int = 13
    validation_fraction: float = 0.01
    seed: int = 42
    workers: int = 2
    keep_work: bool = False
    progress: bool = True
    cluster: ExecutorSettings = field(default_factory=ExecutorSettings)  # where the phases run


def input_files(input_dir: str) -> list[str]:
    """Parquet shards of a gather output (`data/*.parquet`) or any folder of parquet files with a text column."""
    path = Path(input_dir)
    if path.is_file() and path.suffix == ".parquet":
        return [str(path)]
    for pattern in ("data/*.parquet", "*.parquet", "**/*.parquet"):
        files = sorted(glob.glob(str(path / pattern), recursive=True))
        if files:
            return files
    raise ValueError(f"input_dir {input_dir!r} holds no parquet files (expected a gather output folder with data/*.parquet)")


def _fingerprint(settings: CleanSettings, files: list[str]) -> str:
    keyed = {k: v for k, v in vars(settings).items() if k not in ("workers", "progress", "keep_work", "cluster")}
    stats = [(os.path.basename(f), os.path.getsize(f), int(os.path.getmtime(f))) for f in files]
    blob = json.dumps([keyed, stats], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _quiet_datatrove():
    """datatrove logs every task to the console; keep its logs in work/logs and show our own progress."""
    from loguru import logger

    logger.remove()
    logger.add(lambda m: None, level="WARNING")


def clean(settings: CleanSettings, start: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Runs the whole clean pipeline; returns the report (also written as report.json/md/png).

    Args:
        start: called once the inputs, profiles and decontamination files have been checked, before the
            previous output is touched (the stage clears its completion marker there).
    """
    started = time.time()
    files = [os.path.abspath(f) for f in input_files(settings.input_dir)]  # cluster workers start elsewhere
    profiles = S.resolve_profiles(settings.profiles)
    for name in settings.profile_for_source.values():
        if name not in profiles:
            raise ValueError(f"profile_for_source names profile {name!r}, which is not defined "
                             f"(known: {sorted(profiles)})")
    for profile in profiles.values():
        S.build_filters(profile)  # a bad threshold fails here, not inside a worker
    # evaluation sets are read (and a missing or unreadable one refused) before the previous output is touched
    eval_texts = read_eval_texts(settings.decontamination_files) if settings.decontamination_files else []
    runner = PhaseRunner(settings.cluster, Path(settings.output_dir).absolute() / WORK / "logs")
    runner.connect()  # an unreachable cluster is refused here, before anything is touched
    try:
        if start is not None:
            start()
        return _clean(settings, files, profiles, eval_texts, runner, started)
    finally:
        runner.close()


def _clean(settings: CleanSettings, files: list[str], profiles: dict, eval_texts: list[str], runner: PhaseRunner,
           started: float) -> dict[str, Any]:
    from .report import build_report, write_report

    out = Path(settings.output_dir).absolute()
    work = out / WORK
    fingerprint = _fingerprint(settings, files)
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
    repair = S.Repair(profiles, settings.profile_for_source, settings.unicode_repair, settings.remove_markup,
                      settings.remove_boilerplate)
    length = S.LengthGate(settings.min_chars, settings.max_chars)
    chain = [repair, length]
    if settings.languages:
        chain.append(S.LanguageFilter(settings.languages, settings.language_min_score))
    if settings.quality_filters:
        chain.append(S.ProfiledQuality(profiles, settings.profile_for_source, settings.compare_profiles_sample))
    reader = S.ShardReader(files, tallied=chain, progress=settings.progress, desc="clean: filter")
    _phase(f"1/4 repair + quality filters: {n} shards on {settings.workers} workers")
    runner.run("filter", [reader, *chain,
                          S.IntermediateWriter(str(filtered), str(work / "ledger" / "filter"), [reader, *chain])],
               n, settings.workers)
    timings["filter"] = time.time() - t

    # 2. exact dedup over the whole corpus: first occurrence (by shard, then position) wins
    t = time.time()
    remove_dir = work / "exact_remove"
    _phase("2/4 exact dedup over the whole corpus")
    build_exact_index(filtered, n, remove_dir, enabled=settings.exact_dedup)
    timings["exact_dedup"] = time.time() - t

    # 3. MinHash near-dedup (datatrove): signatures -> buckets -> clusters
    t = time.time()
    minhash_remove = work / "minhash" / "remove"
    if settings.near_dedup:
        from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster
        from datatrove.utils.hashing import HashConfig

        mh = MinhashConfig(n_grams=settings.minhash_ngram, num_buckets=settings.minhash_buckets,
                           hashes_per_bucket=settings.minhash_hashes_per_bucket, seed=settings.seed,
                           # sha1: datatrove 0.10 passes str to xxhash, which the installed xxhash rejects
                           hash_config=HashConfig(precision=64, hash_fc="sha1"))
        sigs, buckets = work / "minhash" / "signatures", work / "minhash" / "buckets"
        _phase(f"3/4 MinHash near-dedup ({settings.minhash_buckets} buckets x {settings.minhash_hashes_per_bucket} hashes, "
               f"{settings.minhash_ngram}-grams)")
        signature = S.fast_minhash_signature(str(sigs), mh, profiles, settings.profile_for_source)
        runner.run("minhash_signatures", [S.ShardReader(filtered_files, desc="clean: minhash"),
                                          S.ExactDedup(str(remove_dir)), signature], n, settings.workers)
        # one task per band: each holds only its own band's signatures
        runner.run("minhash_buckets", [MinhashDedupBuckets(input_folder=str(sigs), output_folder=str(buckets),
                                                           config=mh)], mh.num_buckets, settings.workers)
        runner.run("minhash_cluster", [MinhashDedupCluster(input_folder=str(buckets),
                                                           output_folder=str(minhash_remove), config=mh)], 1, 1)
    timings["near_dedup"] = time.time() - t

    # 4. PII, decontamination, split and write
    t = time.time()
    final_chain: list = [S.ExactDedup(str(remove_dir))]
    if settings.near_dedup:
        final_chain.append(S.NearDedup(str(minhash_remove)))
    if settings.pii:
        final_chain.append(S.ScrubPII())
    if settings.decontamination_files:
        ngram_file = work / "decontamination_ngrams.npy"
        count = build_decontamination_index(eval_texts, settings.decontamination_ngram, ngram_file)
        print(f"clean: decontamination against {count} evaluation texts ({settings.decontamination_ngram}-grams)")
        final_chain.append(S.Decontaminate(str(ngram_file), settings.decontamination_ngram))
    final_reader = S.ShardReader(filtered_files, tallied=final_chain, progress=settings.progress, desc="clean: write")
    _phase("4/4 dedup filter, PII scrubbing, decontamination, train/validation split")
    splits = work / SPLITS
    runner.run("final", [final_reader, *final_chain,
                         S.SplitWriter(str(splits), settings.validation_fraction, settings.seed,
                                       str(work / "ledger" / "final"), final_chain)],
               n, settings.workers)
    swapped = work / "swapped.json"  # written before the first split moves: a resumed run must not redo them
    if not swapped.exists():
        ensure_split_files(splits)
    timings["final"] = time.time() - t
    timings["total"] = time.time() - started

    report = build_report(work / "ledger", n, settings, timings, gather_report_path(settings.input_dir))
    atomic_write_json(swapped, {"splits": ["train", "validation"]})
    for split in ("train", "validation"):
        if (splits / split).is_dir():
            replace_folder(splits / split, out / split)  # moved aside, replaced, old removed
    write_report(report, out)
    if not settings.keep_work:
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
    from .sources import expand_paths

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

        return [_record_text(record) for record in pq.read_table(path).to_pylist()]
    return [Path(path).read_text(encoding="utf-8", errors="replace")]


def build_decontamination_index(texts: list[str], n: int, path: Path) -> int:
    """Writes the sorted word n-gram hashes of the evaluation texts to `path`; returns the text count."""
    import numpy as np

    from .textops import ngram_hashes

    grams: set[int] = set()
    for text in texts:
        grams |= ngram_hashes(text, n)
    with atomic_open(path) as f:
        np.save(f, np.array(sorted(grams), dtype=np.uint64))
    return len(texts)


def ensure_split_files(out: Path) -> None:
    """A split with no documents still gets one empty parquet file, so `load_dataset` finds both splits."""
    from .documents import write_parquet_atomic

    for split in ("train", "validation"):
        if not list((out / split).glob("*.parquet")):
            write_parquet_atomic(out / split / "empty-000.parquet", [])


def gather_report_path(input_dir: str) -> Path | None:
    path = Path(input_dir) / "gather_report.json"
    return path if path.exists() else None
