"""Held-out measurements that show whether fine-tuning helped, written to `output_dir/eval_heldout.json`.

- SFT: answer loss, the mean negative log-likelihood (nats per token) of the answer tokens given the
  prompt (assistant turns of a conversation, the completion of a prompt/completion row, every token of
  a text row), for the base model and the fine-tuned one. Lower is better.
- DPO: on held-out preference pairs, how often the model gives the chosen answer a higher log-probability
  than the rejected one (preference accuracy, base vs trained), and the DPO reward accuracy: how often
  the implicit reward log pi(chosen)/ref(chosen) - log pi(rejected)/ref(rejected) is positive, the
  reference being the input model.
- KTO: the gap between the mean per-token log-probability of desirable and undesirable completions
  (base vs trained), and how often the implicit reward's sign matches the thumbs up/down label.

Log-probabilities are summed over completion tokens (what DPO optimises), with tokenization following
TRL: the chat template for conversations, BOS + text + EOS for plain strings.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..evaluation.intervals import paired_difference
from ..evaluation.scoring import LMScorer


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _chat_ids(tokenizer, messages, **kwargs) -> dict[str, list[int]]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return {k: list(v) for k, v in out.items()}


def encode_prompt_completion(tokenizer, prompt, completion) -> tuple[list[int], list[int]]:
    """(input ids, completion mask) of a prompt and its completion, strings or conversations."""
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt)["input_ids"]
        text = completion if completion.endswith(tokenizer.eos_token) else completion + tokenizer.eos_token
        full = tokenizer(prompt + text)["input_ids"]
    else:
        prompt_ids = _chat_ids(tokenizer, list(prompt), add_generation_prompt=True)["input_ids"]
        full = _chat_ids(tokenizer, list(prompt) + list(completion))["input_ids"]
    start = _common_prefix(prompt_ids, full)
    return full, [0] * start + [1] * (len(full) - start)


def encode_row(tokenizer, row: dict[str, Any], fmt: str) -> tuple[list[int], list[int]]:
    """(input ids, loss mask) of one SFT row: assistant tokens, completion tokens, or all text tokens."""
    if fmt == "messages":
        out = _chat_ids(tokenizer, row["messages"], return_assistant_tokens_mask=True)
        mask = out.get("assistant_masks") or []
        if 1 in mask:
            return out["input_ids"], mask
        # a template without {% generation %} markers: score the last assistant turn given the rest
        messages = row["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return encode_prompt_completion(tokenizer, messages[:last], [messages[last]])
    if fmt == "prompt_completion":
        return encode_prompt_completion(tokenizer, row["prompt"], row["completion"])
    if fmt == "text":
        ids = tokenizer(row["text"] + tokenizer.eos_token)["input_ids"]
        return ids, [1] * len(ids)
    raise ValueError(f"answer loss needs a messages, prompt_completion or text row, got format {fmt!r}")


def sequence_logps(model, tokenizer, encoded: list[tuple[list[int], list[int]]], batch_size: int = 8,
                   max_length: int | None = None) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of the masked tokens of each sequence, in input order
    (`evaluation.scoring.LMScorer.score_masked`)."""
    max_length = max_length or getattr(model.config, "max_position_embeddings", None)
    scorer = LMScorer(model, tokenizer, batch_size=batch_size, max_length=max_length, progress=False)
    return scorer.score_masked(encoded)


def answer_loss(model, tokenizer, rows: Sequence[dict[str, Any]], fmt: str, batch_size: int = 8,
                max_length: int | None = None) -> dict[str, float]:
    """Mean NLL (nats per answer token) over held-out rows, token-weighted, with its perplexity."""
    scored = sequence_logps(model, tokenizer, [encode_row(tokenizer, r, fmt) for r in rows], batch_size, max_length)
    tokens = sum(c for _, c in scored)
    if tokens == 0:
        raise ValueError("the held-out rows have no answer tokens to score")
    loss = -sum(s for s, _ in scored) / tokens
    per_example = [-s / c for s, c in scored if c > 0]
    return {"answer_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "answer_tokens": tokens,
            "examples": len(rows), "answer_loss_mean_per_example": sum(per_example) / len(per_example),
            # per row, for a paired bootstrap of base vs trained (evaluation/intervals.py)
            "per_item": {"nll": [-s for s, _ in scored], "tokens": [c for _, c in scored]}}


def preference_logps(model, tokenizer, rows, batch_size: int = 8, max_length: int | None = None):
    """Summed log-probabilities of chosen and rejected completions: two lists of (logp, tokens)."""
    chosen = [encode_prompt_completion(tokenizer, r["prompt"], r["chosen"]) for r in rows]
    rejected = [encode_prompt_completion(tokenizer, r["prompt"], r["rejected"]) for r in rows]
    return (sequence_logps(model, tokenizer, chosen, batch_size, max_length),
            sequence_logps(model, tokenizer, rejected, batch_size, max_length))


def preference_metrics(chosen, rejected, ref_chosen=None, ref_rejected=None) -> dict[str, float]:
    """Preference accuracy and mean log-prob margin; with reference log-probs also DPO's reward accuracy
    and reward margin (rewards without the beta factor, which only scales them)."""
    n = len(chosen)
    margins = [c[0] - r[0] for c, r in zip(chosen, rejected)]
    out = {"pairs": n, "preference_accuracy": sum(m > 0 for m in margins) / n,
           "mean_logp_margin": sum(margins) / n,
           "preference_accuracy_per_token": sum(c[0] / max(c[1], 1) > r[0] / max(r[1], 1)
                                                for c, r in zip(chosen, rejected)) / n,
           "per_item": {"preference_accuracy": [float(m > 0) for m in margins], "mean_logp_margin": margins}}
    if ref_chosen is not None:
        rewards = [(c[0] - rc[0]) - (r[0] - rr[0]) for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
        out["reward_accuracy"] = sum(x > 0 for x in rewards) / n
        out["mean_reward_margin"] = sum(rewards) / n
    return out


def unpaired_logps(model, tokenizer, rows, batch_size: int = 8, max_length: int | None = None):
    return sequence_logps(model, tokenizer, [encode_prompt_completion(tokenizer, r["prompt"], r["completion"])
                                             for r in rows], batch_size, max_length)


def unpaired_metrics(rows, logps, ref_logps=None) -> dict[str, float]:
    """Mean per-token log-probability of desirable and undesirable completions and their gap; with
    reference log-probs, how often the implicit reward's sign matches the label."""
    good = [s / max(c, 1) for (s, c), r in zip(logps, rows) if r["label"]]
    bad = [s / max(c, 1) for (s, c), r in zip(logps, rows) if not r["label"]]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    out = {"examples": len(rows), "desirable": len(good), "undesirable": len(bad),
           "desirable_logp_per_token": mean(good), "undesirable_logp_per_token": mean(bad),
           "desirable_logp_gap": mean(good) - mean(bad),
           "per_item": {"logp_per_token": [s / max(c, 1) for s, c in logps],
                        "label": [float(bool(r["label"])) for r in rows]}}
    if ref_logps is not None:
        rewards = [s - rs for (s, _), (rs, _) in zip(logps, ref_logps)]
        out["reward_label_accuracy"] = sum((x > 0) == bool(r["label"]) and x != 0
                                           for x, r in zip(rewards, rows)) / len(rows)
    return out


# the name of each headline metric among the per-item statistics of evaluation/intervals.py
PAIRED_STATISTIC = {"answer_loss": "loss", "preference_accuracy": "preference_accuracy",
                    "desirable_logp_gap": "labelled_gap"}


def summarize(stage: str, metric: str, higher_is_better: bool, base: dict, trained: dict, **info) -> dict[str, Any]:
    """The eval_heldout.json record: both models' metrics, the paired difference of the headline metric with its
    95% interval (bootstrap over the same held-out rows), and `improved` only when that interval excludes zero
    on the good side (`verdict`: better, worse or cannot tell)."""
    b, t = base[metric], trained[metric]
    difference = paired_difference(base.get("per_item") or {}, trained.get("per_item") or {},
                                   PAIRED_STATISTIC[metric], lower_is_better=not higher_is_better)
    verdict = difference["verdict"] if difference else "cannot tell"
    return {"stage": stage, "metric": metric, "higher_is_better": higher_is_better, "base_value": b,
            "trained_value": t, "improved": verdict == "better", "verdict": verdict,
            "difference": difference, "base": base, "trained": trained, **info}


def verdict_text(record: dict[str, Any]) -> str:
    """`better: -0.41 [-0.52, -0.30], 64 rows` for logs and cards."""
    d = record.get("difference")
    if not d:
        return record.get("verdict", "cannot tell")
    low, high = d["interval"]
    return f"{d['verdict']}: {d['difference']:+.4g} [{low:+.4g}, {high:+.4g}] over {d['items']} rows (paired, 95%)"
