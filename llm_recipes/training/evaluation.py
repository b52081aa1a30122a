"""Validation during pretraining: loss, perplexity, bits per byte, and sample generations."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..evaluation.scoring import next_token_logprobs


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-printable-character map used by byte-level BPE vocabularies."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_byte_lengths(tokenizer, vocab_size: int) -> torch.Tensor:
    """UTF-8 bytes each token id stands for (0 for special tokens and unused ids), so bits per byte
    counts exactly the text a target token covers: a token that is half a multi-byte character counts
    its own bytes, not a replacement character."""
    decoder = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    lengths = torch.zeros(vocab_size, dtype=torch.long)
    for token_id in range(min(len(tokenizer), vocab_size)):
        if token_id in special:
            continue
        token = tokenizer.convert_ids_to_tokens(token_id)
        if token is None:
            continue
        if all(ch in decoder for ch in token):
            lengths[token_id] = len(token)  # one printable character per byte
        else:  # not a byte-level vocabulary: fall back to the decoded text
            lengths[token_id] = len(tokenizer.decode([token_id]).encode("utf-8"))
    return lengths


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with the logits: position t predicts labels[t + 1] (labels are the HF convention,
    aligned with input_ids, -100 where nothing is predicted)."""
    return F.pad(labels[:, 1:], (0, 1), value=-100)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy over predicted tokens in float32, number of predicted tokens)."""
    targets = shifted_targets(labels)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    return loss, (targets != -100).sum()


@torch.no_grad()
def evaluate(model, batches: list[dict[str, torch.Tensor]], accelerator, byte_lengths: torch.Tensor,
             document_masking: bool = True) -> dict[str, float]:
    """Validation loss (nats per token), perplexity and bits per byte over this process's batches,
    summed over all processes."""
    was_training = model.training
    model.eval()
    device = accelerator.device
    byte_lengths = byte_lengths.to(device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    for batch in batches:
        input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        kwargs = {"position_ids": batch["position_ids"].to(device)} if document_masking else {}
        with accelerator.autocast():
            logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits
        targets = shifted_targets(labels)
        counted = targets != -100
        nats = -next_token_logprobs(logits, targets.clamp(min=0)).masked_fill(~counted, 0).sum()
        count = counted.sum()
        n_bytes = byte_lengths[targets.clamp(min=0)].masked_fill(targets == -100, 0).sum()
        totals += torch.stack([nats.double(), count.double(), n_bytes.double()])
    totals = accelerator.reduce(totals, reduction="sum")
    if was_training:
        model.train()
    nats, tokens, n_bytes = (float(x) for x in totals)
    loss = nats / max(tokens, 1)
    return {
        "val_loss": loss,
        "val_perplexity": math.exp(min(loss, 700.0)),
        "val_bits_per_byte": nats / (math.log(2) * n_bytes) if n_bytes else float("nan"),
        "val_tokens": int(tokens),
    }


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float,
                     seed: int, eos_token_ids: list[int]) -> list[dict[str, Any]]:
    """Continues each prompt; the global RNG is left untouched (a resumed run must see the same
    random numbers as an uninterrupted one), sampling uses its own seeded state."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt").to(device)
            sampling = ({"do_sample": True, "temperature": temperature, "top_k": 50} if temperature > 0
                        else {"do_sample": False})
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, use_cache=True, eos_token_id=eos_token_ids,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
            text = tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out.append({"prompt": prompt, "completion": text})
    if was_training:
        model.train()
    return out
