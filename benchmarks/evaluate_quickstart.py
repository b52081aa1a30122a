"""Times `llm-recipes evaluate --config recipes/quickstart/evaluate.yaml` on stand-in stage outputs.

Builds a run folder with what the earlier stages would leave there: three ~6M-parameter RecipeGPT
models (micro preset, random weights: the cost of scoring does not depend on what the weights are),
a clean/validation parquet of Python documentation (standard-library docstrings), SFT held-out
questions and DPO held-out pairs in the formats those stages write, and a pretraining metrics.jsonl.

    python benchmarks/evaluate_quickstart.py [--threads N]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pydoc_data.topics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stdlib_docs(limit: int = 3000) -> list[dict]:
    import importlib

    docs = []
    for name in ("os", "os.path", "json", "re", "collections", "itertools", "functools", "pathlib", "shutil", "string",
                 "subprocess", "random", "math", "textwrap", "typing", "argparse", "logging", "csv", "datetime"):
        module = importlib.import_module(name)
        for attr in dir(module):
            doc = inspect.getdoc(getattr(module, attr, None)) or ""
            if len(doc) > 200 and not attr.startswith("_"):
                docs.append({"text": doc, "title": f"{name}.{attr}"})
    docs += [{"text": t, "title": f"pydoc topic: {k}"} for k, t in pydoc_data.topics.topics.items() if len(t) > 200]
    return docs[:limit]


def build_run(run: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    import llm_recipes  # noqa: F401
    from llm_recipes.model import RecipeGPTForCausalLM, config_from_preset
    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe

    docs = stdlib_docs()
    held = docs[::10]
    (run / "clean" / "validation").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(held), run / "clean" / "validation" / "part-0.parquet")
    tokenizer = train_bpe([d["text"] for d in docs], vocab_size=8192, model_max_length=512)
    for i, stage in enumerate(("pretrain", "sft", "dpo")):
        torch.manual_seed(i)
        model = RecipeGPTForCausalLM(config_from_preset("micro", vocab_size=8192, bos_token_id=tokenizer.bos_token_id,
                                                        eos_token_id=tokenizer.eos_token_id,
                                                        pad_token_id=tokenizer.pad_token_id))
        model.save_pretrained(run / stage / "final")
        save_tokenizer(tokenizer, run / stage / "final")
    n_params = sum(p.numel() for p in model.parameters())
    qa, prefs = [], []
    for d, other in zip(held, held[1:] + held[:1]):
        question = f"What does {d['title']} do?"
        answer, wrong = d["text"].split("\n\n")[0][:300], other["text"].split("\n\n")[0][:300]
        qa.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
        prefs.append({"prompt": [{"role": "user", "content": question}],
                      "chosen": [{"role": "assistant", "content": answer}],
                      "rejected": [{"role": "assistant", "content": wrong}], "title": d["title"]})
    for path, rows in ((run / "sft" / "data" / "heldout.jsonl", qa), (run / "dpo" / "data" / "heldout.jsonl", prefs)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "pretrain" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 9 * 0.99 ** s,
                    **({"val_loss": 9 * 0.99 ** s + 0.1} if s % 50 == 0 else {})}) + "\n"
        for s in range(0, 500, 10)))
    print(f"stand-in run: {len(held)} held-out docs, 3 models x {n_params / 1e6:.1f}M parameters, "
          f"{len(qa)} QA items, {len(prefs)} preference pairs")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from llm_recipes.evaluate import main as evaluate_main

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "quickstart"
        build_run(run)
        os.environ["LLM_RECIPES_RUN_DIR"] = str(run)
        started = time.time()
        code = evaluate_main(["--config", str(REPO / "recipes" / "quickstart" / "evaluate.yaml")])
        seconds = time.time() - started
        results = json.loads((run / "evaluate" / "eval_results.json").read_text())
        for name, model in results["models"].items():
            held = model["results"]["heldout"]
            print(name, {t: r["seconds"] for t, r in model["results"].items()},
                  f"held-out: {held['tokens']} tokens, {held['tokens'] / held['seconds']:.0f} tokens/s")
        print(f"evaluate stage: exit {code}, {seconds:.1f}s wall; load average {os.getloadavg()}")
    return code


if __name__ == "__main__":
    sys.exit(main())
