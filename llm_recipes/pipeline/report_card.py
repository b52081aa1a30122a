"""The report card of a run: `runs/<name>/report.md` with PNG plots.

It only reads what the stages wrote (run_summary.json, each stage's reports, metrics.jsonl,
eval_results.json) plus a few greedy sample generations from the trained models, so it can be
rebuilt at any time: `python -m llm_recipes.pipeline.report_card runs/quickstart`. Each stage's folder is
the one run_summary.json records (a recipe may set its own output_dir), else `<run_dir>/<stage>`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import llm_recipes  # noqa: F401  (registers RecipeGPT with the Auto classes for the sample generations)

from ..fileio import atomic_write_text, read_json
from ..finetuning.heldout import verdict_text
from ..training.monitor import read_metrics
from .stages import FINETUNING, PRETRAINING, recipe_stages

SAMPLE_PROMPTS = [
    "The os.path module",
    "Return a new list",
    "This function raises ValueError if",
]
CHAT_PROMPTS = ["What does json.dumps do?", "Explain the for statement."]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_loss_curves(metrics: list[dict], path: Path) -> Path | None:
    """Train and validation loss against step (and tokens) from pretrain's metrics.jsonl."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m and "step" in m]
    val = [(m["step"], m[k]) for m in metrics for k in ("val_loss", "eval_loss") if k in m and "step" in m]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sample_generations(model_dir: Path, chat: bool, max_new_tokens: int = 40) -> list[tuple[str, str]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    samples = []
    for prompt in CHAT_PROMPTS if chat else SAMPLE_PROMPTS:
        if chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
        else:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
        room = model.config.max_position_embeddings - ids.shape[1]  # never generate past the trained context
        if room <= 0:
            continue
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=min(max_new_tokens, room), do_sample=False,
                                 repetition_penalty=1.2, pad_token_id=tokenizer.pad_token_id)
        samples.append((prompt, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()))
    return samples


def write_report_card(run_dir: str | Path, recipe_dir: str | None = None, samples: bool = True) -> Path:
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "run_summary.json") or {"stages": {}}
    lines = [f"# Report card: `{run_dir}`", ""]
    if recipe_dir or summary.get("recipe"):
        lines += [f"Recipe: `{recipe_dir or summary.get('recipe')}`", ""]

    # -- stages: wall time and what each produced
    lines += ["## Stages", "", "| stage | wall time (s) | output | details |", "|---|---|---|---|"]
    total = 0.0
    order = {s.recipe: i for i, s in enumerate(recipe_stages())}

    def folder(stage: str) -> Path:
        """Where stage `stage` wrote its output in this run."""
        output_dir = summary.get("stages", {}).get(stage, {}).get("output_dir")
        return Path(output_dir) if output_dir else run_dir / stage

    def link(path: Path) -> str:
        return os.path.relpath(path, run_dir)

    for name, info in sorted(summary.get("stages", {}).items(), key=lambda kv: order.get(kv[0], 99)):
        seconds = info.get("seconds")
        total += seconds or 0
        details = ", ".join(f"{k}={_fmt(v)}" for k, v in info.items()
                            if k not in ("seconds", "output_dir", "skipped_last_run")
                            and not isinstance(v, (dict, list)))
        lines.append(f"| {name} | {_fmt(seconds) if seconds is not None else '-'} | "
                     f"`{info.get('output_dir', '')}` | {details} |")
    lines += ["", f"Total wall time of the stages run: {total:.0f} s.", ""]

    # -- cleaning summary
    clean_report = folder("clean") / "report.md"
    if clean_report.is_file():
        lines += ["## Cleaning", "", f"Full report: [`{link(clean_report)}`]({link(clean_report)})", ""]
        clean_json = read_json(folder("clean") / "report.json")
        if isinstance(clean_json, dict):
            lines += [f"{clean_json.get('input_documents')} documents "
                      f"({clean_json.get('input_bytes', 0) / 1e6:.1f} MB) in, "
                      f"{clean_json.get('train_documents')} train + "
                      f"{clean_json.get('validation_documents')} validation "
                      f"documents ({clean_json.get('output_bytes', 0) / 1e6:.1f} MB) out.", ""]
            steps = clean_json.get("steps") or []
            if steps:
                lines += ["| step | documents in | documents out | bytes in | bytes out | modified |",
                          "|---|---|---|---|---|---|"]
                lines += [f"| {st.get('step')} | {st.get('docs_in')} | {st.get('docs_out')} | {st.get('bytes_in')} | "
                          f"{st.get('bytes_out')} | {st.get('modified')} |" for st in steps] + [""]
        if (folder("clean") / "report.png").is_file():
            lines += [f"![cleaning]({link(folder('clean') / 'report.png')})", ""]

    # -- tokenizer compression
    tokenizer_dir = folder("train_tokenizer")
    if not (tokenizer_dir / "tokenizer_report.json").is_file():
        tokenizer_dir = run_dir / "tokenizer"  # the recipes' usual output_dir, for a run_summary that lacks it
    tok_json = read_json(tokenizer_dir / "tokenizer_report.json")
    if isinstance(tok_json, dict):
        lines += ["## Tokenizer", "", "| tokenizer | key | value |", "|---|---|---|"]
        for section in ("tokenizer", "validation", "reference", "vocabulary", "training"):
            block = tok_json.get(section)
            if isinstance(block, dict):
                lines += [f"| {section} | {k} | {_fmt(v)} |" for k, v in block.items()
                          if not isinstance(v, (dict, list))]
        report = link(tokenizer_dir / "tokenizer_report.md")
        lines += ["", f"Full report: [`{report}`]({report})", ""]

    # -- loss curves
    metrics_path = folder("pretrain") / "metrics.jsonl"
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else []
    if metrics:
        plot = plot_loss_curves(metrics, run_dir / "report_loss.png")
        last_val = next((m for m in reversed(metrics) if "val_loss" in m or "eval_loss" in m), None)
        lines += ["## Pretraining", ""]
        if last_val:
            lines += ["Last validation: " + ", ".join(f"{k}={_fmt(v)}" for k, v in last_val.items()
                                                      if isinstance(v, (int, float))), ""]
        if plot:
            lines += ["![loss curves](report_loss.png)", ""]
        train_summary = read_json(folder("pretrain") / "train_summary.json") or {}
        cpu = train_summary.get("cpu") or {}
        if cpu.get("busy"):
            lines += [f"**The machine was busy while pretraining**: {cpu['cpus_free_mean']} of {cpu['cpus']} CPUs "
                      "were free on average, so a time-budgeted run trained on fewer tokens than a quiet machine "
                      "gives (`pretrain/train_summary.json`).", ""]
        if train_summary.get("skipped_warning"):
            lines += [f"**Updates skipped**: in pretraining {train_summary['skipped_warning']}.", ""]
        sizing = train_summary.get("sizing") or {}
        if sizing:
            lines += [f"Sized by the compute-budget dial: {sizing['parameters'] / 1e6:.2f}M parameters (depth "
                      f"{sizing['depth']}), {sizing['planned_tokens']:,} tokens planned, "
                      f"{train_summary.get('tokens', 0):,} trained (`pretrain/sizing.json`).", ""]
        if sizing.get("shortfall"):
            lines += [f"**Fewer tokens than planned**: pretraining {sizing['shortfall']}.", ""]

    # -- evaluation across stages
    comparison = folder("evaluate") / "comparison.md"
    if comparison.is_file():
        body = "\n".join("##" + line if line.startswith("#") else line
                         for line in comparison.read_text(encoding="utf-8").strip().splitlines())
        lines += ["## Evaluation", "", body, ""]
        if (folder("evaluate") / "comparison.png").is_file():
            lines += [f"![evaluation]({link(folder('evaluate') / 'comparison.png')})", ""]
    finetuned = [s.recipe for s in recipe_stages() if s.kind == FINETUNING]
    for stage in finetuned:
        heldout = read_json(folder(stage) / "eval_heldout.json")
        if isinstance(heldout, dict) and "metric" in heldout:
            lines += [f"Held-out {heldout['metric']} of `{stage}` ({link(folder(stage) / 'eval_heldout.json')}): base "
                      f"{_fmt(heldout['base_value'])} -> trained {_fmt(heldout['trained_value'])}; "
                      f"{verdict_text(heldout)}.", ""]

    # -- sample generations
    if samples:
        lines += ["## Sample generations (greedy)", ""]
        trained = [(s.recipe, s.kind == FINETUNING) for s in recipe_stages() if s.kind in (PRETRAINING, FINETUNING)]
        for stage, chat in trained:
            model_dir = folder(stage) / "final"
            if not (model_dir / "config.json").is_file():
                continue
            try:
                pairs = sample_generations(model_dir, chat)
            except Exception as e:  # a report must not fail the run it reports on
                lines += [f"- `{stage}`: could not generate ({type(e).__name__}: {e})", ""]
                continue
            lines += [f"### `{link(model_dir)}`", ""]
            for prompt, completion in pairs:
                lines += [f"- **{prompt}** {completion}"]
            lines += [""]

    # -- what to use
    # the last fine-tuned model of the run is the one to serve
    last = next((folder(s) / "final" for s in reversed(finetuned) if (folder(s) / "final" / "config.json").is_file()),
                None)
    deliverables = [(folder("push") / "upload", "Hub-ready folder (model, code, tokenizer, card): "
                     "`llm-recipes push --config <recipe>/push.yaml --repo_id you/name --dry_run false`"),
                    (folder("export"), "standard `LlamaForCausalLM` checkpoint for vLLM / TGI / llama.cpp")]
    if last is not None:
        deliverables.append((last, f"the aligned model: `llm-recipes serve {last}`"))
    present = [(p, what) for p, what in deliverables if (p / "config.json").is_file()]
    if present:
        lines += ["## Deliverables", ""] + [f"- `{p}`: {what}" for p, what in present] + [""]

    # -- versions and configs
    info = next((i for i in (read_json(p) for p in sorted(run_dir.glob("*/run_info.json"))) if i), None)
    if info:
        lines += ["## Versions", "", "| package | version |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in info.get("versions", {}).items()]
        lines += ["", f"Python {info.get('python')} on {info.get('platform')}", ""]
    configs = sorted(run_dir.glob("*/resolved_config.yaml"))
    if configs:
        lines += (["## Configs", ""] + [f"- [`{p.relative_to(run_dir)}`]({p.relative_to(run_dir)})" for p in configs]
                  + [""])
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


if __name__ == "__main__":
    print(write_report_card(sys.argv[1]))
