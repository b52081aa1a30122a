"""Comparison of models (checkpoints, stages) as a markdown table and a PNG, plus training curves
read from `metrics.jsonl` files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..training.monitor import read_metrics

# the numbers worth a column, per kind of task, with whether lower is better
HEADLINE = {
    "perplexity": [("bits_per_byte", True), ("perplexity", True)],
    "choice": [("acc", False), ("acc_norm", False)],
    "qa": [("exact_match", False), ("f1", False), ("rougeL", False)],
    "preferences": [("accuracy", False), ("margin", False)],
    "harness": [("acc", False), ("acc_norm", False), ("centred", False)],
    "harness_core": [("centred", False)],
}
CURVE_WORDS = ("loss", "bpb", "bits_per_byte", "perplexity", "ppl")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def format_with_interval(result: dict[str, Any], metric: str) -> str:
    """`0.312 [0.27, 0.35]`: the value and its 95% interval where eval_results has one."""
    text = _fmt(result.get(metric))
    interval = (result.get("intervals") or {}).get(metric)
    return f"{text} [{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else text


def headline_columns(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(task, metric, lower_is_better) for every column of the comparison, in task order."""
    columns = []
    for task, info in results["tasks"].items():
        for metric, lower in HEADLINE.get(info["kind"], []):
            if any(metric in m["results"].get(task, {}) for m in results["models"].values()):
                columns.append((task, metric, lower))
    return columns


def comparison_lines(results: dict[str, Any]) -> list[str]:
    """Paired differences against the first model: the change, its 95% interval, and what it means."""
    comparisons = results.get("comparisons") or {}
    if not comparisons.get("models"):
        return []
    lines = ["", f"## Paired differences against {comparisons['reference']}", "",
             "The same items scored by both models; the difference is the model's value minus "
             f"{comparisons['reference']}'s. Better or worse only when the 95% interval excludes zero; otherwise "
             "the set cannot tell.", "", "| model | task | metric | difference | 95% interval | verdict |",
             "|---|---|---|---:|---|---|"]
    for name, tasks in comparisons["models"].items():
        for task, metrics in tasks.items():
            for metric, d in metrics.items():
                lines.append(f"| {name} | {task} | {metric} | {d['difference']:+.4g} | "
                             f"[{_fmt(d['interval'][0])}, {_fmt(d['interval'][1])}] | {d['verdict']} |")
    return lines


def comparison_markdown(results: dict[str, Any], curves: dict[str, list[dict]] | None = None) -> str:
    """A table with one row per model and one column per headline metric; the best value is bold."""
    columns = headline_columns(results)
    models = results["models"]
    lines = ["# Evaluation", "",
             "One row per model; bold marks the best value of each column (lower is better for bits per byte "
             "and perplexity, higher for the rest), brackets its 95% interval (bootstrap over the task's items "
             "or documents). Choice tasks are scored by log-likelihood; chance is the accuracy of guessing.", ""]
    header = ["model", "parameters"] + [f"{task} {metric}" for task, metric, _ in columns]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for task, metric, lower in columns:
        values = [m["results"].get(task, {}).get(metric) for m in models.values()]
        values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        if len(values) > 1 and len(set(values)) > 1:  # nothing to mark when every model scores the same
            best[(task, metric)] = min(values) if lower else max(values)
    for name, model in models.items():
        row = [name, f"{model.get('parameters', 0) / 1e6:.2f}M" if model.get("parameters") else ""]
        for task, metric, _ in columns:
            value = model["results"].get(task, {}).get(metric)
            text = _fmt(value)
            text = f"**{text}**" if best.get((task, metric)) == value and value is not None else text
            interval = (model["results"].get(task, {}).get("intervals") or {}).get(metric)
            row.append(f"{text} [{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else text)
        lines.append("| " + " | ".join(row) + " |")
    lines += comparison_lines(results)
    if results.get("warnings"):
        lines += ["", "## Warnings", "", *[f"- {w}" for w in results["warnings"]]]
    lines += ["", "## Tasks", "", "| task | kind | source | items | chance |", "|---|---|---|---|---|"]
    for task, info in results["tasks"].items():
        lines.append(f"| {task} | {info['kind']} | {info.get('source', '')} | {info.get('n', '')} | "
                     f"{_fmt(info.get('chance'))} |")
    samples = [(name, m["results"][t]["samples"]) for name, m in models.items() for t in m["results"]
               if m["results"][t].get("samples")]
    if samples:
        lines += ["", "## QA samples (greedy)", ""]
        for name, items in samples:
            for s in items[:2]:
                lines.append(f"- **{name}**: {s['prompt'][:80]!r} -> {s['prediction'][:100]!r} "
                             f"(reference {s['reference'][:60]!r})")
    if curves:
        lines += ["", "## Training curves", ""]
        for name, records in curves.items():
            keys = curve_keys(records)
            rows = [r for r in records if any(k in r for k in keys)]
            if not rows:
                continue
            # evaluation records are rarer than training ones: thin each kind to about ten rows on its own
            evals = [r for r in rows if any(k in r for k in keys if k != "loss")]
            trains = [r for r in rows if not any(k in r for k in keys if k != "loss")]
            picked = sorted(_thin(evals) + _thin(trains), key=lambda r: r.get("step", 0))
            lines += [f"### {name}", "", "| step | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
            for r in picked:
                lines.append(f"| {r.get('step', '')} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _thin(rows: list[dict], keep: int = 10) -> list[dict]:
    if len(rows) <= keep:
        return rows
    every = len(rows) / keep
    return [rows[int(i * every)] for i in range(keep - 1)] + [rows[-1]]


def read_metrics_file(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl; lines cut by a kill are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file {str(path)!r} does not exist (expected a metrics.jsonl)")
    return read_metrics(path)


def curve_keys(records: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and any(w in key for w in CURVE_WORDS):
                keys[key] = None
    return list(keys)


def comparison_plot(results: dict[str, Any], path: str | Path, curves: dict[str, list[dict]] | None = None) -> Path:
    """Bar charts of each headline metric across models, and loss curves against step when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = headline_columns(results)
    curves = {k: v for k, v in (curves or {}).items() if curve_keys(v)}
    panels = len(columns) + len(curves)
    cols = min(3, max(1, panels))
    rows = max(1, math.ceil(panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    names = list(results["models"])
    colors = [plt.cm.tab10(i % 10) for i in range(len(names))]
    panel = 0
    for task, metric, lower in columns:
        ax = axes[panel // cols][panel % cols]
        values = [results["models"][n]["results"].get(task, {}).get(metric, float("nan")) for n in names]
        ax.bar(names, values, color=colors)
        chance = results["tasks"][task].get("chance")
        if metric in ("acc", "acc_norm") and chance:
            ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
            ax.legend(fontsize=7)
        ax.set_title(f"{task}: {metric} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
        panel += 1
    for name, records in curves.items():
        ax = axes[panel // cols][panel % cols]
        for key in curve_keys(records):
            points = [(r.get("step", i), r[key]) for i, r in enumerate(records)
                      if isinstance(r.get(key), (int, float))]
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, ms=3, lw=1, label=key)
        ax.set_title(f"{name}: training curves", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        panel += 1
    for extra in range(panel, rows * cols):
        axes[extra // cols][extra % cols].axis("off")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
