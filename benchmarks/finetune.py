"""Times the quickstart fine-tuning recipes (sft, then dpo from its output) on an existing pretrained model and
clean corpus, and prints the held-out figures each stage measured.

    python benchmarks/finetune.py --run_dir runs/quickstart            # needs run_dir/pretrain/final and run_dir/clean
    python benchmarks/finetune.py --run_dir /tmp/bench --override max_steps=20 --override sft:text_mix_fraction=0
    python benchmarks/finetune.py --run_dir /tmp/bench --override max_train_seconds=0 --bpb   # A/B: fixed steps

Writes into run_dir/sft and run_dir/dpo (removed first, so the stages run from scratch). An override
`stage:key=value` applies to that stage only; a list value is several words (`"dpo:loss_weights=1.0 0.5"`).
`--bpb` then runs `llm-recipes evaluate` on held-out text (60 KB of the clean stage's validation split, or all of it
with `--whole_split`) for the pretrained model and each stage's model, and prints each model's paired difference in
bits per byte against the pretrained one with its 95% interval (run_dir/evaluate_bpb). `--out FILE` appends the
whole record (overrides, each stage's held-out measure with its paired interval, bits per byte, load) as a JSON line.
For A/B comparisons on a shared machine set `max_train_seconds=0` (fixed steps, not a time budget) and
`torch_num_threads=1`: the figures then do not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_stage(stage: str, run_dir: Path, recipe_dir: str, overrides: list[str]) -> dict:
    shutil.rmtree(run_dir / stage, ignore_errors=True)
    argv = [sys.executable, "-m", f"llm_recipes.{stage}",
            "--config", str(REPO / "recipes" / recipe_dir / f"{stage}.yaml")]
    for item in overrides:
        key, value = item.split("=", 1)
        only, _, key = key.rpartition(":")
        if only in ("", stage):  # a list value is several words: "dpo:loss_weights=1.0 0.5"
            argv += [f"--{key}", *shlex.split(value)]
    env = {**os.environ, "LLM_RECIPES_RUN_DIR": str(run_dir)}
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, cwd=REPO)
    seconds = time.perf_counter() - start
    out = run_dir / stage
    record = json.loads((out / "eval_heldout.json").read_text())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = next((e for e in log if "train_runtime" in e), {})
    return {"stage": stage, "wall_seconds": round(seconds, 1), "train_runtime": summary.get("train_runtime"),
            "steps": summary.get("step"), "metric": record["metric"], "base": record["base_value"],
            "trained": record["trained_value"], "improved": record["improved"],
            "paired": record.get("difference"),
            "extra": {k: v for k, v in record["trained"].items() if k in ("reward_accuracy", "mean_reward_margin")}}


def heldout_bpb(run_dir: Path, stages: list[str], whole_split: bool = False) -> list[dict]:
    """Paired held-out bits per byte of each stage's model against the pretrained one (llm-recipes evaluate):
    60 KB of the validation split at even steps, or the whole split."""
    out = run_dir / "evaluate_bpb"
    shutil.rmtree(out, ignore_errors=True)
    sample = {} if whole_split else {"max_documents": 200, "max_heldout_bytes": 60000}
    config = {"output_dir": str(out), "heldout_data": str(run_dir / "clean"), **sample,
              "max_length": 128, "choice_tasks": [], "torch_num_threads": 1,
              "update_model_card": False,
              "models": [f"base={run_dir / 'pretrain' / 'final'}"] + [f"{s}={run_dir / s / 'final'}" for s in stages]}
    out.mkdir(parents=True)
    (out.parent / "evaluate_bpb.json").write_text(json.dumps(config))  # YAML is a superset of JSON
    subprocess.run([sys.executable, "-m", "llm_recipes.evaluate", "--config", str(out.parent / "evaluate_bpb.json")],
                   check=True, cwd=REPO)
    results = json.loads((out / "eval_results.json").read_text())
    rows = []
    for name in stages:
        paired = results["comparisons"]["models"][name]["heldout"]["bits_per_byte"]
        rows.append({"model": name, "bits_per_byte": results["models"][name]["results"]["heldout"]["bits_per_byte"],
                     "vs_base": paired["difference"], "interval": paired["interval"], "verdict": paired["verdict"]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--recipes", default="quickstart", help="recipe folder under recipes/")
    parser.add_argument("--override", action="append", default=[],
                        help="key=value passed to every stage, or stage:key=value to one")
    parser.add_argument("--stages", default="sft,dpo")
    parser.add_argument("--bpb", action="store_true", help="then measure held-out bits per byte against the base")
    parser.add_argument("--whole_split", action="store_true", help="--bpb over the whole validation split")
    parser.add_argument("--out", type=Path, help="append one JSON line (overrides, stages, bits per byte, load) here")
    a = parser.parse_args()
    run_dir = Path(a.run_dir).resolve()
    stages = a.stages.split(",")
    load_start = os.getloadavg()
    results = [run_stage(stage, run_dir, a.recipes, a.override) for stage in stages]
    print(json.dumps(results, indent=2))
    bpb = heldout_bpb(run_dir, stages, a.whole_split) if a.bpb else None
    if bpb is not None:
        print(json.dumps(bpb, indent=2))
    print("load average:", [round(x, 2) for x in os.getloadavg()])
    if a.out:
        row = {"run_dir": str(run_dir), "overrides": a.override, "stages": results, "heldout_bpb": bpb,
               "whole_split": a.whole_split, "load_avg_start": [round(x, 2) for x in load_start],
               "load_avg_end": [round(x, 2) for x in os.getloadavg()],
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
