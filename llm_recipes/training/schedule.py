"""Learning-rate schedules as plain functions of training progress.

The learning rate is set on the optimizer each step from `learning_rate_at(...)`: no scheduler object,
so nothing to checkpoint and nothing that Accelerate could step once per process (its
`AcceleratedScheduler` advances `num_processes` times per step unless batches are split).
"""

from __future__ import annotations

import math


def learning_rate_at(step: int, max_steps: int, peak_lr: float, warmup_steps: int, schedule: str = "cosine",
                     min_lr_ratio: float = 0.1, decay_ratio: float = 0.2, progress: float | None = None) -> float:
    """The learning rate for optimizer step `step` (0-based).

    Args:
        step: the step about to be taken.
        max_steps: total steps of the run.
        peak_lr: learning rate at the end of warmup.
        warmup_steps: linear warmup from peak_lr / warmup_steps to peak_lr over this many steps.
        schedule: after warmup: "cosine" (half cosine down to min_lr), "wsd" (constant, then a linear decay
            over the last `decay_ratio` of training), "linear" (straight line to min_lr) or "constant".
        min_lr_ratio: final learning rate as a fraction of peak_lr.
        decay_ratio: wsd only, fraction of training spent decaying.
        progress: fraction of training done in [0, 1]; overrides step / max_steps (a wall-clock budget
            passes elapsed / budget here so the decay finishes in time).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    min_lr = peak_lr * min_lr_ratio
    if progress is None:
        progress = step / max(1, max_steps)
        # progress after warmup runs from 0 to 1 over the remaining steps
        post = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    else:
        post = progress
    post = min(max(post, 0.0), 1.0)
    if schedule == "constant":
        return peak_lr
    if schedule == "linear":
        return peak_lr + (min_lr - peak_lr) * post
    if schedule == "cosine":
        return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * post))
    if schedule == "wsd":
        progress = min(max(progress, 0.0), 1.0)
        decay_start = 1.0 - decay_ratio
        if progress < decay_start:
            return peak_lr
        return peak_lr + (min_lr - peak_lr) * (progress - decay_start) / decay_ratio
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected cosine, wsd, linear or constant")
