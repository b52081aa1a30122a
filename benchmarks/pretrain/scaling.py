"""The scaling sweep behind the compute-budget dial (`llm_recipes/training/sizing.py`): small pretraining runs on
this CPU at several depths and token counts, then a fit of held-out loss to model size and tokens.

    python benchmarks/pretrain/scaling.py sweep --run_dir runs/quickstart     # appends to scaling_runs.jsonl
    python benchmarks/pretrain/scaling.py fit          # prints the fit, writes scaling_fit.json

`sweep` trains the dial's own shapes (depth d: d layers, 64 * d wide, `sizing.shape_for_depth`) on the quickstart's
cleaned corpus and tokenizer (`--run_dir`: a finished quickstart run's folder, or any folder with clean/ and
tokenizer/), for a fixed number of steps (not a time budget, so the result does not depend on the machine's load;
the load is recorded), cosine schedule to 10%, 16 x 128 tokens per step, and scores the final model on the WHOLE
validation split (bits per byte and nats per token). Each run is one JSON line in scaling_runs.jsonl.

`fit` fits L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022's form; N = parameters, D = training
tokens) to those lines: E, A, B >= 0 by non-negative least squares with Chinchilla's exponents (alpha 0.34, beta
0.28; `--free_exponents` searches a grid for them too: on the 2026-12-05 sweep that fit as well but put E, the
irreducible loss, at 0.06 nats/token, which no corpus has). The result goes to scaling_fit.json; sizing.py's
CPU_FIT must equal it (tests/test_sizing.py checks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "scaling_runs.jsonl"
FIT = HERE / "scaling_fit.json"


def one_run(run_dir: Path, depth: int, steps: int, learning_rate: float, work: Path, seed: int) -> dict:
    import torch

    from llm_recipes.training import PretrainConfig
    from llm_recipes.training.loop import pretrain
    from llm_recipes.training.sizing import shape_for_depth

    shape = shape_for_depth(depth)
    out = work / f"d{depth}-s{steps}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PretrainConfig(
        output_dir=str(out), dataset_path=str(run_dir / "clean"), tokenizer_path=str(run_dir / "tokenizer"),
        data_mode="shards", tokenized_path=str(work / "tokens"), model_preset="micro",
        model_overrides={**shape, "max_position_embeddings": 128}, seq_len=128, per_device_train_batch_size=16,
        max_steps=steps, learning_rate=learning_rate, warmup_steps=min(30, steps // 10), min_lr_ratio=0.1,
        weight_decay=0.1, adam_beta2=0.99, eval_steps=0, eval_max_batches=-1, per_device_eval_batch_size=32,
        sample_prompts=[], save_steps=0, report_to=["none"], logging_steps=50, seed=seed)
    load_start = os.getloadavg()
    start = time.time()
    result = pretrain(cfg)
    wall = time.time() - start
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {"depth": depth, **shape, "parameters": n_params, "flops_per_token": model.flops_per_token(128),
            "steps": steps, "tokens": result.tokens, "learning_rate": learning_rate, "seed": seed,
            "val_loss": round(result.eval_metrics["val_loss"], 5),
            "val_bits_per_byte": round(result.eval_metrics["val_bits_per_byte"], 5),
            "val_tokens": result.eval_metrics["val_tokens"], "wall_s": round(wall, 1),
            "load_avg_start": [round(x, 2) for x in load_start],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
            "machine": f"{platform.machine()} {os.cpu_count()} cores"}


def sweep(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="scaling-"))
    for steps in args.steps:
        for depth in args.depths:
            row = one_run(Path(args.run_dir), depth, steps, args.learning_rate, work, args.seed)
            print(json.dumps(row), flush=True)
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def fit(args) -> None:
    from llm_recipes.training.sizing import CHINCHILLA_EXPONENTS, fit_scaling_law

    rows = [json.loads(line) for line in Path(args.runs).read_text().splitlines() if line.strip()]
    alpha, beta = (None, None) if args.free_exponents else ([CHINCHILLA_EXPONENTS[0]], [CHINCHILLA_EXPONENTS[1]])
    law = fit_scaling_law([r["parameters"] for r in rows], [r["tokens"] for r in rows],
                          [r["val_loss"] for r in rows], alphas=alpha, betas=beta)
    record = {**law.as_dict(), "runs": len(rows), "source": Path(args.runs).name,
              "exponents": "fitted" if args.free_exponents else "Chinchilla's (Hoffmann et al. 2022), fixed"}
    print(json.dumps(record, indent=1))
    for r in rows:
        print(f"  d{r['depth']} N={r['parameters'] / 1e6:.2f}M D={r['tokens'] / 1e6:.2f}M "
              f"loss {r['val_loss']:.3f} fit {law.loss(r['parameters'], r['tokens']):.3f}")
    if args.write:
        Path(args.write).write_text(json.dumps(record, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sweep", help="train the sweep's models, one JSON line each")
    s.add_argument("--run_dir", required=True, help="folder with clean/ and tokenizer/ (a quickstart run)")
    s.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3, 4])
    s.add_argument("--steps", type=int, nargs="+", default=[100, 300])
    s.add_argument("--learning_rate", type=float, default=3e-3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    s.add_argument("--out", default=str(RUNS))
    f = sub.add_parser("fit", help="fit the scaling law to the sweep's lines")
    f.add_argument("--runs", default=str(RUNS))
    f.add_argument("--write", default=str(FIT), help="where the fit goes ('' to only print)")
    f.add_argument("--free_exponents", action="store_true",
                   help="fit alpha and beta too (default: Chinchilla's; a few small runs cannot pin five numbers)")
    args = parser.parse_args(argv)
    sweep(args) if args.command == "sweep" else fit(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
