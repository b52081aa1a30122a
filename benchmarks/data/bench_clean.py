"""Clean-stage throughput (MB/s of input text) and peak memory (whole process tree) on 2 cores.

    python benchmarks/data/bench_clean.py --corpus shakespeare --corpus verdict --corpus instructions
    python benchmarks/data/bench_clean.py --corpus python-docs --packages transformers torch pandas ...
    python benchmarks/data/bench_clean.py --corpus python-docs --engine datatrove   # the reference filters
    python benchmarks/data/bench_clean.py --corpus python-docs --repeat 4           # memory at 4x the input

Each corpus is gathered once (timed in CPU seconds when it runs, or with --regather), then `llm-recipes clean`
runs in a subprocess while this script samples the resident memory of that process and all its children every
0.2 s. MB per CPU second counts the CPU time of the whole process tree (workers included, process start and
imports too), so it is MB/s per core whatever the load. Corpora: shakespeare, verdict, instructions,
python-docs, warc (the WARC of local HTML that bench_filters.py builds; gather extracts with trafilatura) and
warc-resiliparse (the same, `html_extractor: resiliparse`); a WARC corpus is gathered again in every round,
its gather CPU time (reading + extraction) added to the stage's (with `--before`, each checkout gathers with
its own code before its clean run). Several `--engine`, `--repeat` and `--before`
runs are interleaved on the same gathered input, so their ratios hold under a changing load:

    python benchmarks/data/bench_clean.py --corpus python-docs --engine fast --engine datatrove --repeat 1 \
        --repeat 4 --before /work/main

A small run shows the stage's fixed costs (process start, imports, spaCy, the report's PNG); `--clean_arg` passes
a setting to every clean run:

    python benchmarks/data/bench_clean.py --corpus quickstart-300 --gathered runs/quickstart/gather \
        --first_documents 300 --clean_arg compare_profiles_sample=0 --before /work/main --rounds 3

Writes a JSON line per run to benchmarks/data/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results.jsonl"
WARC = Path("/tmp/llm_recipes_bench_filters/warc/pages.warc.gz")  # bench_filters.py --corpus warc writes it


def sources(corpus: str, packages: list[str]) -> list[dict]:
    if corpus == "shakespeare":  # one play-text file: paragraphs (speeches) as documents
        return [{"type": "files", "paths": [str(SHARED / "karpathy/tinyshakespeare/input.txt")],
                 "split_text": "paragraphs"}]
    if corpus == "verdict":
        return [{"type": "files",
                 "paths": [str(SHARED / "rasbt/the-verdict.txt"), str(SHARED / "rasbt/small-text-sample.txt")],
                 "split_text": "paragraphs"}]
    if corpus == "instructions":
        return [{"type": "files", "paths": [str(SHARED / "rasbt/ch07/instruction-data.json")],
                 "template": "{instruction}\n\n{input}\n\n{output}"}]
    if corpus.startswith("python-docs"):
        return [{"type": "python-docs", "packages": packages}]
    if corpus.startswith("warc"):  # warc or warc-resiliparse: the WARC bench_filters.py builds from local HTML
        spec = {"type": "files", "paths": [str(WARC)]}
        return [{**spec, "html_extractor": "resiliparse"} if corpus.endswith("resiliparse") else spec]
    raise SystemExit(f"unknown corpus {corpus}")


def tree_rss(pid: int) -> int:
    """Proportional set size (PSS) of a process and its children: forked workers share the parent's
    pages, and plain RSS would count those once per process."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            pass
    return total


def children_cpu_s() -> float:
    """CPU seconds of this process's finished descendants (a stage's workers included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[float, int]:
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with {proc.returncode}")
    return time.time() - start, peak


def repeated(gathered: Path, out: Path, times: int) -> Path:
    """A copy of a gather output whose shards appear `times` times (ids made unique per copy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted((gathered / "data").glob("*.parquet"))
    shutil.rmtree(out, ignore_errors=True)  # copies made from an earlier gather must not stay beside these
    (out / "data").mkdir(parents=True, exist_ok=True)
    for k in range(times):
        for shard in shards:
            table = pq.read_table(shard)
            ids = pa.array([f"{i}#copy{k}" for i in table.column("id").to_pylist()])
            pq.write_table(table.set_column(table.schema.get_field_index("id"), "id", ids),
                           out / "data" / f"{k:02d}-{shard.name}")
    return out


def gather(corpus: str, args, gathered: Path, tree: str = "") -> float:
    """Runs `llm-recipes gather` for a corpus (with the llm_recipes of checkout `tree`, else this one); returns
    its CPU seconds (for a WARC: reading and extraction)."""
    cpu = children_cpu_s()
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    subprocess.run([sys.executable, "-m", "llm_recipes.gather", "--output_dir", str(gathered.absolute()),
                    "--sources", json.dumps(sources(corpus, args.packages)), "--shard_mb", str(args.shard_mb),
                    "--overwrite_output_dir", "true"], check=True, stdout=subprocess.DEVNULL, env=env,
                   cwd=tree or None)
    return children_cpu_s() - cpu


def first_documents(gathered: Path, out: Path, count: int) -> Path:
    """A copy of a gather output holding only its first `count` documents (shards in name order)."""
    import pyarrow.parquet as pq

    shutil.rmtree(out, ignore_errors=True)
    (out / "data").mkdir(parents=True)
    for shard in sorted((gathered / "data").glob("*.parquet")):
        table = pq.read_table(shard)
        if count > 0:
            pq.write_table(table.slice(0, count), out / "data" / shard.name)
        count -= table.num_rows
    return out


def clean_flags(args) -> list[str]:
    """`--clean_arg key=value` options as `llm-recipes clean` flags."""
    flags = []
    for item in args.clean_arg or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--clean_arg {item!r}: expected key=value, e.g. compare_profiles_sample=0")
        flags += [f"--{key}", value]
    return flags


def clean_run(corpus: str, engine: str, repeat: int, gathered: Path, work: Path, args, gather_cpu, tree: str,
              raw_mb: float | None) -> dict:
    """One `llm-recipes clean` of `gathered` (copied `repeat` times over) with every profile's engine set."""
    if args.first_documents:
        gathered = first_documents(gathered, work / f"gather-first{args.first_documents}", args.first_documents)
    if repeat > 1:
        gathered = repeated(gathered, work / f"gather-x{repeat}", repeat)
    out = work / "clean"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    profiles = {name: {"engine": engine.removesuffix("-numpy")} for name in ("web", "docs")}
    # `python -m` puts the working folder first on sys.path, before PYTHONPATH: the other checkout's code runs
    # only when the command starts in it
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    if engine.endswith("-numpy"):  # the fast engine with the compiled kernels off (a machine without numba)
        env = {**(env or os.environ), "LLM_RECIPES_COMPILED": "0"}
    cpu = children_cpu_s()
    seconds, peak = run([sys.executable, "-m", "llm_recipes.clean", "--input_dir", str(gathered.absolute()),
                         "--output_dir", str(out.absolute()), "--num_workers", str(args.workers),
                         "--profiles", json.dumps(profiles), "--progress", "false", *clean_flags(args)],
                        env, cwd=tree or None)
    clean_cpu = children_cpu_s() - cpu
    report = json.loads((out / "report.json").read_text())
    mb = report["input_bytes"] / 2**20
    result = {"corpus": corpus, "engine": engine, "tree": tree or "this", "repeat": repeat,
              "input_mb": round(mb, 2),
              "input_documents": report["input_documents"], "output_documents": report["output_documents"],
              "shards": report["shards"], "workers": args.workers, "clean_args": args.clean_arg or [],
              "wall_s": round(seconds, 1),
              "pipeline_s": report["seconds"], "mb_per_s_wall": round(mb / seconds, 3),
              "peak_pss_mb": round(peak / 2**20), "clean_cpu_s": round(clean_cpu, 1),
              "clean_mb_per_cpu_s": round(mb / clean_cpu, 3),
              "gather_cpu_s": round(gather_cpu, 1) if gather_cpu is not None else None,
              "gather_and_clean_mb_per_cpu_s":
                  round(mb / (clean_cpu + gather_cpu * repeat), 3) if gather_cpu else None,
              "load_avg": [round(x, 2) for x in os.getloadavg()],
              "commit": subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                       cwd=tree or Path(__file__).parent).stdout.strip(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if raw_mb is not None and gather_cpu:  # the WARC's own bytes (HTML) through gather + clean, per CPU second
        result.update({"raw_input_mb": round(raw_mb * repeat, 2),
                       "raw_mb_per_cpu_s": round(raw_mb * repeat / (clean_cpu + gather_cpu * repeat), 3)})
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", action="append", required=True)
    ap.add_argument("--packages", nargs="*", default=[])
    ap.add_argument("--work", default="/tmp/llm_recipes_bench_data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard_mb", type=float, default=1.5)
    ap.add_argument("--engine", action="append", choices=["fast", "fast-numpy", "datatrove"],
                    help="quality-filter engine of every profile (datatrove: its own filter classes, the reference; "
                         "fast-numpy: fast with the compiled kernels off, LLM_RECIPES_COMPILED=0); repeat to run "
                         "several, interleaved, on the same gathered input (default: fast)")
    ap.add_argument("--repeat", type=int, action="append", help="clean the gathered shards this many times over "
                    "(memory as the input grows; later copies are exact duplicates, removed after the filter "
                    "phase); repeat the option for several sizes (default: 1)")
    ap.add_argument("--before", default="", help="also clean with the llm_recipes of this checkout (fast engine), "
                    "interleaved: the same stage before a change, in the same run")
    ap.add_argument("--gathered", default="", help="use this gather output for the (single) corpus instead of "
                    "gathering, e.g. the quickstart's runs/<name>/gather")
    ap.add_argument("--rounds", type=int, default=1, help="run the whole interleaved sequence this many times")
    ap.add_argument("--regather", action="store_true", help="gather again (timed: gather_cpu_s); always done "
                    "once per round for WARC corpora, whose extraction is part of the stage's time")
    ap.add_argument("--first_documents", type=int, default=0, help="clean only the first N documents of the "
                    "gathered input (a small run: the stage's fixed costs)")
    ap.add_argument("--clean_arg", action="append", help="key=value: a setting passed to every clean run")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    engines, repeats = args.engine or ["fast"], args.repeat or [1]
    runs = [(engine, "") for engine in engines] + ([("fast", os.path.abspath(args.before))] if args.before else [])
    for _ in range(args.rounds):
        for corpus in args.corpus:
            work = Path(args.work) / corpus
            gathered = Path(args.gathered) if args.gathered else work / "gather"
            gather_cpu, raw_mb, gathered_by = None, None, ""
            if not args.gathered and (corpus.startswith("warc") or args.regather
                                      or not (gathered / "stage_complete.json").exists()):
                gather_cpu, gathered_by = gather(corpus, args, gathered), ""
                if corpus.startswith("warc"):
                    raw_mb = _warc_html_mb(WARC)
            for repeat in repeats:
                for engine, tree in runs:
                    if corpus.startswith("warc") and tree != gathered_by:  # each checkout's own extraction
                        gather_cpu, gathered_by = gather(corpus, args, gathered, tree), tree
                    result = clean_run(corpus, engine, repeat, gathered, work, args, gather_cpu, tree, raw_mb)
                    print(json.dumps(result), flush=True)
                    with open(args.results, "a") as f:
                        f.write(json.dumps(result) + "\n")


def _warc_html_mb(path: Path) -> float:
    """MiB of HTTP payload (the pages' HTML) in a WARC."""
    from warcio.archiveiterator import ArchiveIterator

    total = 0
    with open(path, "rb") as f:
        for record in ArchiveIterator(f):
            if record.rec_type == "response":
                total += len(record.content_stream().read())
    return total / 2**20


if __name__ == "__main__":
    main()
