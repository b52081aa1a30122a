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
    """Three bar charts (documents per step, the commonest removal reasons, kept document lengths) drawn with
    Pillow: matplotlib cost ~0.8 CPU s per clean run (import and layout), Pillow ~0.05."""
    from PIL import Image, ImageDraw

    steps = report["steps"]
    reasons = list(report["top_removal_reasons"].items())[:10]
    edges, counts = report["length_histogram"]["edges_chars"], report["length_histogram"]["counts"]
    image = Image.new("RGB", (1700, 520), "white")
    draw = ImageDraw.Draw(image)
    small, title = _font(12), _font(15)
    _bar_panel(image, draw, (10, 0, 500, 520), "documents per step", [s["step"] for s in steps],
               [[s["docs_in"] for s in steps], [s["docs_out"] for s in steps]], ["#9ecae1", "#3182bd"],
               ["in", "out"], small, title)
    _reason_panel(draw, (520, 0, 1190, 520), reasons, small, title)
    _bar_panel(image, draw, (1210, 0, 1690, 520), "kept document length (chars, bin start)",
               [str(edges[i]) for i in range(len(counts))], [counts], ["#31a354"], [], small, title)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def _font(size: int):
    from PIL import ImageFont

    try:  # Pillow >= 10.1 with FreeType: its bundled scalable font
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # an older or FreeType-less Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _put(draw, xy, text: str, font, anchor: str) -> None:
    """Text placed by `anchor` (horizontal l/m/r, vertical t/m), computed here: a bitmap font takes no anchor."""
    w, h = _text_size(draw, text, font)
    x = xy[0] - {"l": 0, "m": w / 2, "r": w}[anchor[0]]
    y = xy[1] - {"t": 0, "m": h / 2}[anchor[1]]
    draw.text((x, y), text, fill="black", font=font)


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _ticks(top: float) -> list[int]:
    """Up to ~5 round tick values from 0 to at least `top`."""
    if top <= 0:
        return [0, 1]
    step = 1
    while top / step > 5:
        for factor in (2, 2.5, 2):  # 1, 2, 5, 10, 20, 50...
            step = int(step * factor)
            if top / step <= 5:
                break
    ticks = list(range(0, int(top) + step, step))
    return ticks if ticks[-1] >= top else ticks + [ticks[-1] + step]


def _bar_panel(image, draw, box, heading, labels, series, colors, legend, small, title) -> None:
    """Vertical bars, the series drawn over each other (the first, largest, behind), labels turned 90 degrees."""
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = box
    _put(draw, ((x0 + x1) // 2, y0 + 8), heading, title, "mt")
    label_height = max([_text_size(draw, str(label), small)[0] for label in labels] or [0]) + 8
    ticks = _ticks(max([max(values or [0]) for values in series] or [0]))
    tick_width = max(_text_size(draw, f"{t:,}", small)[0] for t in ticks) + 8
    left, right, top, bottom = x0 + tick_width, x1 - 5, y0 + 35, y1 - label_height - 5
    scale = (bottom - top) / ticks[-1]
    for t in ticks:
        y = bottom - t * scale
        draw.line([(left, y), (right, y)], fill="#e0e0e0")
        _put(draw, (left - 4, y), f"{t:,}", small, "rm")
    n = max(len(labels), 1)
    slot = (right - left) / n
    for values, color in zip(series, colors):
        for i, value in enumerate(values):
            x = left + i * slot
            draw.rectangle([x + slot * 0.15, bottom - value * scale, x + slot * 0.85, bottom], fill=color)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    for i, label in enumerate(labels):
        w, h = _text_size(draw, str(label), small)
        tag = Image.new("RGB", (w + 2, h + 6), "white")
        ImageDraw.Draw(tag).text((1, 1), str(label), fill="black", font=small)
        tag = tag.rotate(90, expand=True)
        image.paste(tag, (int(left + (i + 0.5) * slot - tag.width / 2), bottom + 4))
    for k, (name, color) in enumerate(zip(legend, colors)):
        y = top + 4 + k * 18
        draw.rectangle([right - 60, y, right - 48, y + 12], fill=color)
        _put(draw, (right - 44, y + 6), name, small, "lm")


def _reason_panel(draw, box, reasons, small, title) -> None:
    """Horizontal bars, the commonest reason on top, each labelled with its reason (first 55 characters)."""
    x0, y0, x1, y1 = box
    _put(draw, ((x0 + x1) // 2, y0 + 8), "most common removal reasons (documents)", title, "mt")
    rows = reasons or [("(none)", 0)]
    names = [reason[:55] for reason, _ in rows]
    label_width = max(_text_size(draw, name, small)[0] for name in names) + 8
    ticks = _ticks(max(count for _, count in rows))
    left, right, top, bottom = x0 + label_width, x1 - 10, y0 + 35, y1 - 25
    scale = (right - left) / ticks[-1]
    for t in ticks:
        x = left + t * scale
        draw.line([(x, top), (x, bottom)], fill="#e0e0e0")
        _put(draw, (x, bottom + 4), f"{t:,}", small, "mt")
    slot = (bottom - top) / len(rows)
    for i, (name, (_, count)) in enumerate(zip(names, rows)):
        y = top + i * slot
        draw.rectangle([left, y + slot * 0.15, left + count * scale, y + slot * 0.85], fill="#e6550d")
        _put(draw, (left - 4, y + slot / 2), name, small, "rm")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")


def write_report(report: dict, out: Path) -> None:
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    render_png(report, out / "report.png")
