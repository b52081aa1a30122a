"""What the loop reports and guards: MFU, gradient-norm outliers, metrics.jsonl."""

from __future__ import annotations

import json
import math
import os
from collections import deque
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

# Dense bf16 tensor-core peak per GPU in FLOP/s (vendor data sheets, without sparsity). Matched by
# substring of torch.cuda.get_device_name(), most specific first.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("A6000", 155e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16: V100 has no bf16
    ("T4", 65e12),
]


def peak_flops(device) -> float | None:
    """Peak bf16 FLOP/s of one accelerator, or None where unknown (CPU, unlisted GPUs): MFU is then n/a."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS:
        if key in name:
            return flops
    return None


def model_flops_utilization(flops_per_token: float, tokens_per_second_per_device: float,
                            peak: float | None) -> float | None:
    """Achieved model FLOP/s over the peak (PaLM's MFU: recomputation does not count)."""
    if peak is None or tokens_per_second_per_device <= 0:
        return None
    return flops_per_token * tokens_per_second_per_device / peak


class OutlierGuard:
    """Decides whether an update is skipped: non-finite loss or gradient norm, or a gradient norm more
    than `zscore` standard deviations above the mean of the recent window (llm.c's rule). Every finite norm
    joins the window, skipped or not, as in llm.c: were only taken updates remembered, a lasting rise of the
    norm (common while the learning rate warms up) would make every later step an outlier and stall training
    for good (a quickstart run skipped 2,259 of 2,313 steps that way).

    Args:
        zscore: threshold; 0 disables the outlier test (non-finite values are still caught).
        window: how many recent gradient norms form the reference.
        min_history: no outlier test before this many norms are known (early steps vary wildly).
        skip_nonfinite: skip NaN/inf updates (False lets them through, for debugging).
    """

    def __init__(self, zscore: float = 6.0, window: int = 128, min_history: int = 32, skip_nonfinite: bool = True):
        self.zscore = zscore
        self.min_history = min_history
        self.skip_nonfinite = skip_nonfinite
        self.history: deque[float] = deque(maxlen=max(2, window))

    def check(self, loss: float, grad_norm: float) -> str | None:
        """Returns the reason to skip this update, or None to take it; a finite norm is remembered either way."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return "non-finite loss or gradient norm" if self.skip_nonfinite else None
        reason = None
        if self.zscore > 0 and len(self.history) >= self.min_history:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / len(self.history))
            z = (grad_norm - mean) / std if std > 0 else 0.0
            if z > self.zscore:
                reason = f"gradient norm {grad_norm:.3g} is an outlier (z-score {z:.1f} > {self.zscore:g})"
        self.history.append(grad_norm)
        return reason

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend(state.get("history", []))


def skipped_updates_warning(skipped: int, steps: int, ratio: float = 0.05) -> str | None:
    """A sentence when `skipped` of `steps` updates is a large share (at least `ratio`), else None. A few skipped
    updates are the guard doing its job; a large share means the model trained on far fewer updates than the run
    reports, which must not pass as a normal run (a guard that locked up once skipped 2,259 of 2,313 quietly)."""
    if steps <= 0 or skipped < max(1, ratio * steps):
        return None
    return (f"{skipped:,} of {steps:,} updates ({skipped / steps:.0%}) were skipped as non-finite or outlier "
            f"gradient norms (metrics.jsonl's `skipped` rows say why): the model trained on far fewer updates than "
            f"its step count; lower the learning rate or raise `outlier_zscore`")


class MetricsLog:
    """`metrics.jsonl`: one JSON object per logged step or evaluation, appended and flushed at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines of steps after the checkpoint, so the file tells one consistent run."""
        if not self.path.is_file():
            return

        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_finite(record), default=str) + "\n")
            f.flush()


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    # NaN/inf are not JSON: write null (the record's `skipped` field says why)
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file; a line cut by a kill is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
