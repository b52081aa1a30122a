"""Times the quickstart fine-tuning recipes (sft, then dpo from its output) on an existing pretrained model and
clean corpus, and prints the held-out figures each stage measured.

    python benchmarks/finetune.py --run_dir runs/quickstart            # needs run_dir/pretrain/final and run_dir/clean
    python benchmarks/finetune.py --run_dir /tmp/bench --override max_steps=20

Writes into run_dir/sft and run_dir/dpo (removed first, so the stages run from scratch).
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

REPO = Path(__file__).resolve().parent.parent


def run_stage(stage: str, run_dir: Path, recipe_dir: str, overrides: list[str]) -> dict:
    shutil.rmtree(run_dir / stage, ignore_errors=True)
    argv = [sys.executable, "-m", f"llm_recipes.{stage}",
            "--config", str(REPO / "recipes" / recipe_dir / f"{stage}.yaml")]
    for item in overrides:
        key, value = item.split("=", 1)
        argv += [f"--{key}", value]
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
            "extra": {k: v for k, v in record["trained"].items() if k in ("reward_accuracy", "mean_reward_margin")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--recipes", default="quickstart", help="recipe folder under recipes/")
    parser.add_argument("--override", action="append", default=[], help="key=value passed to both stages")
    parser.add_argument("--stages", default="sft,dpo")
    a = parser.parse_args()
    run_dir = Path(a.run_dir).resolve()
    results = [run_stage(stage, run_dir, a.recipes, a.override) for stage in a.stages.split(",")]
    print(json.dumps(results, indent=2))
    with open("/proc/loadavg") as f:
        print("load average:", f.read().split()[:3])
    return 0


if __name__ == "__main__":
    sys.exit(main())
