"""The compute-budget dial against the hand-tuned quickstart it replaced, at the same wall-clock budget, seeds
interleaved (tuned seed 1, dial seed 1, tuned seed 2, ...) so that a shared machine's load falls on both alike.

    python benchmarks/pretrain/dial_vs_tuned.py --run_dir runs/quickstart --seeds 1 2 3

`--run_dir`: a quickstart run's folder (its clean/ and tokenizer/). Each run is the real stage
(`python -m llm_recipes.pretrain`) with one recipe: benchmarks/pretrain/quickstart_hand_tuned.yaml (4 x 256, 16 x 128
tokens, lr 3e-3, max_train_seconds 360) or recipes/quickstart/pretrain.yaml (compute_budget_seconds 360), with
checkpoints and trackers off. The held-out score is the evaluate stage's measure (`LMScorer.score_texts`: each
validation document from its start, 128-token windows) over the WHOLE validation split, with a 95% bootstrap
interval over documents. One JSON line per run (load averages, steps, tokens, plan, held-out bits per byte) goes to
--out; the summary prints means over seeds with t intervals and the paired per-seed differences.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECIPES = {"hand-tuned": HERE / "quickstart_hand_tuned.yaml", "dial": REPO / "recipes/quickstart/pretrain.yaml"}


def heldout(model_dir: Path, clean: Path, seed: int = 0) -> dict:
    """Bits per byte of the whole validation split, as the evaluate stage scores held-out text, with the per-document
    numbers and a 95% bootstrap interval over documents."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llm_recipes  # noqa: F401  (registers RecipeGPT)
    from llm_recipes.evaluation.data import load_heldout_texts
    from llm_recipes.evaluation.scoring import LMScorer, perplexity_summary

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scorer = LMScorer(model, AutoTokenizer.from_pretrained(model_dir), batch_size=16, max_length=128, progress=False)
    scores = scorer.score_texts(load_heldout_texts(str(clean)))
    nll = np.array([s.nll for s in scores])
    n_bytes = np.array([s.bytes for s in scores])
    rng = np.random.default_rng(seed)
    draws = [nll[i].sum() / n_bytes[i].sum() / math.log(2)
             for i in (rng.integers(0, len(nll), len(nll)) for _ in range(2000))]
    low, high = np.quantile(draws, [0.025, 0.975])
    summary = perplexity_summary(scores)
    return {"bits_per_byte": round(summary["bits_per_byte"], 4), "interval": [round(low, 4), round(high, 4)],
            "loss": round(summary["loss"], 4), "documents": summary["documents"], "bytes": summary["bytes"]}


def one_run(name: str, seed: int, run_dir: Path, work: Path) -> dict:
    out = work / f"{name}-seed{seed}"
    env = {**os.environ, "LLM_RECIPES_RUN_DIR": str(run_dir), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "llm_recipes.pretrain", "--config", str(RECIPES[name]), "--output_dir", str(out),
               "--tokenized_path", str(work / "tokens"), "--seed", str(seed), "--save_steps", "0",
               "--report_to", "none", "--resume_from_checkpoint", "none", "--overwrite_output_dir", "true"]
    load_start, start = os.getloadavg(), time.time()
    log = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - start
    (work / f"{name}-seed{seed}.log").write_text(log.stdout + log.stderr)
    if log.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{log.stderr[-3000:]}")
    summary = json.loads((out / "train_summary.json").read_text())
    plan = json.loads((out / "sizing.json").read_text())["plan"] if (out / "sizing.json").is_file() else None
    config = json.loads((out / "final" / "config.json").read_text())
    row = {"config": name, "seed": seed, "load_avg_start": [round(x, 2) for x in load_start],
           "load_avg_end": [round(x, 2) for x in os.getloadavg()], "stage_wall_s": round(wall, 1),
           "steps": summary["steps"], "tokens": summary["tokens"], "cpu": summary.get("cpu"),
           "shape": f"{config['num_hidden_layers']} x {config['hidden_size']}",
           "in_loop_val_bits_per_byte": round(summary["eval"]["val_bits_per_byte"], 4),
           "plan": plan and {k: plan[k] for k in ("depth", "parameters", "seq_len", "per_device_train_batch_size",
                                                  "learning_rate", "warmup_steps", "planned_tokens", "throughput")},
           "shortfall": (summary.get("sizing") or {}).get("shortfall"),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    row["heldout"] = heldout(out / "final", run_dir / "clean")
    return row


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t interval (two-sided) of a few values."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def summarize(rows: list[dict]) -> None:
    for name in RECIPES:
        mine = [r for r in rows if r["config"] == name]
        if mine:
            mean, low, high = t_interval([r["heldout"]["bits_per_byte"] for r in mine])
            tokens = sum(r["tokens"] for r in mine) / len(mine)
            print(f"{name}: held-out bits/byte {mean:.3f} [{low:.3f}, {high:.3f}] over {len(mine)} seeds; "
                  f"{tokens / 1e6:.2f}M tokens on average")
    pairs = {}
    for r in rows:
        pairs.setdefault(r["seed"], {})[r["config"]] = r["heldout"]["bits_per_byte"]
    diffs = [p["dial"] - p["hand-tuned"] for p in pairs.values() if len(p) == 2]
    if diffs:
        mean, low, high = t_interval(diffs)
        print(f"dial - hand-tuned, paired by seed: {mean:+.3f} [{low:+.3f}, {high:+.3f}] ({len(diffs)} pairs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="folder with clean/ and tokenizer/ (a quickstart run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--configs", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--work", required=True, help="scratch folder for the runs")
    parser.add_argument("--out", default=str(HERE / "dial_vs_tuned.jsonl"))
    parser.add_argument("--summary", action="store_true", help="only summarize the lines already in --out")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        for seed in args.seeds:
            for name in args.configs:
                row = one_run(name, seed, Path(args.run_dir).resolve(), work)
                print(json.dumps(row), flush=True)
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines() if line.strip()]
    summarize(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
