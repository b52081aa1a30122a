"""The clean report: per-step documents and bytes in and out, removal reasons with examples, the
web-vs-docs profile comparison, the length histogram; as report.json, report.md and report.png."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json, atomic_write_text
from .steps import EXAMPLES_PER_REASON, HIST_EDGES


def _merge_step(acc: dict | None, step: dict) -> dict:
    if acc is None:
        acc = {"step": step["step"], "docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "modified": 0,
               "removed": Counter(), "removed_bytes": Counter(), "extra": Counter(), "examples": {}}
    for key in ("docs_in", "bytes_in", "docs_out", "bytes_out", "modified"):
        acc[key] += step[key]
    for key in ("removed", "removed_bytes", "extra"):
        acc[key].update(step[key])
    for reason, examples in step["examples"].items():
        kept = acc["examples"].setdefault(reason, [])
        kept.extend(examples[: EXAMPLES_PER_REASON - len(kept)])
    return acc


def merge_ledgers(folder: Path, n: int) -> tuple[list[dict], list[int]]:
    """Sums the per-task tallies of one phase, keeping step order."""
    merged: dict[str, dict] = {}
    order: list[str] = []
    lengths = [0] * (len(HIST_EDGES) - 1)
    for rank in range(n):
        path = folder / f"{rank:05d}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: task {rank} did not finish")
        ledger = json.loads(path.read_text())
        for step in ledger["steps"]:
            if step["step"] not in merged:
                order.append(step["step"])
            merged[step["step"]] = _merge_step(merged.get(step["step"]), step)
        for i, c in enumerate(ledger.get("lengths", [])):
            lengths[i] += c
    steps = []
    for name in order:
        s = merged[name]
        steps.append({**s, "removed": dict(s["removed"].most_common()), "removed_bytes": dict(s["removed_bytes"]),
                      "extra": dict(sorted(s["extra"].items()))})
    return steps, lengths


def check_counts(steps: list[dict]) -> list[str]:
    """Every document is accounted for: in = out + removed at each step, and each step's out is the next one's in."""
    problems = []
    for s in steps:
        if s["docs_in"] != s["docs_out"] + sum(s["removed"].values()):
            problems.append(f"{s['step']}: {s['docs_in']} in != {s['docs_out']} out "
                            f"+ {sum(s['removed'].values())} removed")
    for a, b in zip(steps, steps[1:]):
        if a["docs_out"] != b["docs_in"]:
            problems.append(f"{a['step']} -> {b['step']}: {a['docs_out']} out != {b['docs_in']} in")
    return problems


def build_report(ledger_dir: Path, n: int, settings, timings: dict, gather_report: Path | None) -> dict[str, Any]:
    filter_steps, _ = merge_ledgers(ledger_dir / "filter", n)
    final_steps, lengths = merge_ledgers(ledger_dir / "final", n)
    steps = filter_steps + final_steps
    split = final_steps[-1]["extra"]
    reasons = Counter()
    for s in steps:
        reasons.update({f"{s['step']}: {r}": c for r, c in s["removed"].items()})
    quality = next((s for s in steps if s["step"] == "quality"), None)
    report = {
        "input_documents": steps[0]["docs_in"], "input_bytes": steps[0]["bytes_in"],
        "output_documents": steps[-1]["docs_out"], "output_bytes": steps[-1]["bytes_out"],
        "train_documents": split.get("train documents", 0),
        "validation_documents": split.get("validation documents", 0),
        "train_bytes": split.get("train bytes", 0), "validation_bytes": split.get("validation bytes", 0),
        "steps": steps, "top_removal_reasons": dict(reasons.most_common(15)),
        "profile_comparison": profile_comparison(quality) if quality else {},
        "length_histogram": {"edges_chars": HIST_EDGES, "counts": lengths},
        "count_problems": check_counts(steps),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "mb_per_s": round(steps[0]["bytes_in"] / 2**20 / max(timings.get("total", 1e-9), 1e-9), 3),
        "workers": settings.num_workers, "shards": n,
        "gather": json.loads(gather_report.read_text()) if gather_report else None,
    }
    return report


def profile_comparison(quality: dict) -> dict[str, Any]:
    """Per non-web profile: how many documents it kept, and how many the web thresholds would have dropped."""
    extra = quality["extra"]
    out = {}
    for key, value in extra.items():
        if not key.startswith("profile ") or not key.endswith(": documents"):
            continue
        profile = key[len("profile "):-len(": documents")]
        dropped = extra.get(f"profile {profile}: dropped", 0)
        entry = {"documents": value, "dropped": dropped,
                 "kept_fraction": round(1 - dropped / value, 4) if value else None}
        sampled = extra.get(f"profile {profile}: sampled for web comparison", 0)
        if sampled:
            would = extra.get(f"profile {profile}: web would drop", 0)
            entry.update({"sampled_for_web_comparison": sampled, "web_would_drop": would,
                          "web_kept_fraction": round(1 - would / sampled, 4),
                          "web_would_drop_by_filter": {k.split(" by ", 1)[1]: v for k, v in extra.items()
                                                       if k.startswith(f"profile {profile}: web would drop by ")}})
        out[profile] = entry
    return out


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f}"


def render_markdown(report: dict) -> str:
    lines = ["# Clean report", "",
             f"{report['input_documents']} documents ({_mb(report['input_bytes'])} MB) in, "
             f"{report['output_documents']} documents ({_mb(report['output_bytes'])} MB) out: "
             f"{report['train_documents']} train, {report['validation_documents']} validation. "
             f"{report['shards']} shards on {report['workers']} workers in {report['seconds'].get('total', 0):.1f} s "
             f"({report['mb_per_s']} MB/s).", ""]
    if report["count_problems"]:
        lines += ["**Counts do not add up:** " + "; ".join(report["count_problems"]), ""]
    lines += ["## Steps", "", "| step | docs in | docs out | removed | modified | MB in | MB out |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {s['docs_in']} | {s['docs_out']} | {sum(s['removed'].values())} "
                     f"| {s['modified']} | {_mb(s['bytes_in'])} | {_mb(s['bytes_out'])} |")
    lines += ["", "## Most common removal reasons", "", "| reason | documents |", "|---|---:|"]
    lines += [f"| {r} | {c} |" for r, c in report["top_removal_reasons"].items()] or ["| (none) | 0 |"]
    if report["profile_comparison"]:
        lines += ["", "## Filter profiles", "",
                  "Documents whose source maps to a non-web profile are also checked, on a sample, against the web "
                  "(FineWeb) thresholds:", "",
                  "| profile | documents | kept by own profile | sampled | kept by web thresholds "
                  "| web drops by filter |",
                  "|---|---:|---:|---:|---:|---|"]
        for name, p in report["profile_comparison"].items():
            web = ", ".join(f"{k} {v}" for k, v in p.get("web_would_drop_by_filter", {}).items())
            kept = f"{p['kept_fraction']:.1%}" if p["kept_fraction"] is not None else "-"
            web_kept = f"{p['web_kept_fraction']:.1%}" if "web_kept_fraction" in p else "-"
            lines.append(f"| {name} | {p['documents']} | {kept} | {p.get('sampled_for_web_comparison', '-')} "
                         f"| {web_kept} | {web} |")
    details = [(s["step"], k, v) for s in report["steps"] for k, v in s["extra"].items()
               if not k.startswith("profile ")]
    if details:
        lines += ["", "## Changes inside documents", "", "| step | what | count |", "|---|---|---:|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in details]
    gather = report.get("gather")
    if gather and gather.get("skipped"):
        lines += ["", "## Inputs skipped by gather", "", "| reason | count |", "|---|---:|"]
        lines += [f"| {r} | {c} |" for r, c in sorted(gather["skipped"].items(), key=lambda x: -x[1])]
    hist = report["length_histogram"]
    lines += ["", "## Length of kept documents (characters)", "", "| length | documents |", "|---|---:|"]
    edges = hist["edges_chars"]
    for i, c in enumerate(hist["counts"]):
        upper = f"< {edges[i + 1]}" if i + 2 < len(edges) else "and more"
        lines.append(f"| {edges[i]} {upper} | {c} |")
    lines += ["", "## Removed examples", ""]
    for s in report["steps"]:
        for reason, examples in s["examples"].items():
            lines.append(f"### {s['step']}: {reason}")
            for ex in examples[:2]:
                snippet = ex["text"].replace("\n", " ")[:300].replace("|", "\\|")
                lines.append(f"- `{ex['id'][:80]}` ({ex['source']}): {snippet}")
            lines.append("")
    lines += ["![clean report](report.png)", ""]
    return "\n".join(lines)


def render_png(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    steps = report["steps"]
    names = [s["step"] for s in steps]
    axes[0].bar(names, [s["docs_in"] for s in steps], label="in", color="#9ecae1")
    axes[0].bar(names, [s["docs_out"] for s in steps], label="out", color="#3182bd")
    axes[0].set_title("documents per step")
    axes[0].tick_params(axis="x", rotation=45)
    axes[0].legend()
    reasons = list(report["top_removal_reasons"].items())[:10][::-1]
    axes[1].barh([r[:55] for r, _ in reasons] or ["(none)"], [c for _, c in reasons] or [0], color="#e6550d")
    axes[1].set_title("most common removal reasons (documents)")
    axes[1].tick_params(axis="y", labelsize=7)
    edges, counts = report["length_histogram"]["edges_chars"], report["length_histogram"]["counts"]
    labels = [f"{edges[i]}" for i in range(len(counts))]
    axes[2].bar(labels, counts, color="#31a354")
    axes[2].set_title("kept document length (chars, bin start)")
    axes[2].tick_params(axis="x", rotation=45)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def write_report(report: dict, out: Path) -> None:
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    render_png(report, out / "report.png")
