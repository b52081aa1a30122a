"""Log-likelihood scoring of text under any causal LM, batched: the one primitive behind every score
(`evaluate`'s tasks, the fine-tuning stages' held-out measurement through `LMScorer.score_masked`, and
pretraining's validation loss through `next_token_logprobs`).

Every sequence starts with a prefix token (the tokenizer's BOS, else EOS, as GPT-2 separates documents
with it), so the first real token is predicted too and scores do not depend on whether a tokenizer
adds BOS by itself. Context/continuation pairs are split the way lm-evaluation-harness splits them:
trailing spaces of the context move to the continuation, the pair is encoded as one string and the
continuation's tokens are what follows the context's tokens, so a word is tokenized as it is in
running text.

Texts longer than the model's context are scored with a sliding window: a window of `max_length`
tokens advances `stride` tokens at a time and only the tokens not scored before count, each with up to
`max_length - stride` tokens of extra context. `stride == max_length` gives disjoint windows (what
lm-evaluation-harness's rolling log-likelihood does); a smaller stride gives a better estimate for more
compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


def next_token_logprobs(logits, targets):
    """log p(targets[..., t]) under logits[..., t, :] in float32 (callers align targets: the logits at position
    t predict the token at t + 1), as logit - logsumexp: no full log-softmax tensor is made."""
    import torch

    logits = logits.float()
    return logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)


@dataclass
class TextScore:
    """Summed negative log-likelihood (nats) of a text's tokens, with the counts that normalise it."""

    nll: float
    tokens: int
    bytes: int
    words: int


@dataclass
class ContinuationScore:
    logprob: float  # summed log-probability (nats) of the continuation given the context
    tokens: int  # continuation length in tokens
    greedy: bool  # every continuation token is the model's argmax


def prefix_token_id(tokenizer) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("tokenizer has neither a BOS nor an EOS token to start a sequence with")


def model_max_length(model, tokenizer, default: int = 2048) -> int:
    """The longest sequence to feed the model: its position limit, else the tokenizer's, else default."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 1_000_000:
        return value
    return default


def count_words(text: str) -> int:
    # same definition as lm-evaluation-harness's word_perplexity: whitespace-separated pieces
    import re

    return len(re.split(r"\s+", text))


class LMScorer:
    """Scores texts and continuations with a causal LM in batches.

    Args:
        model: any `PreTrainedModel` with a causal LM head, in eval mode.
        tokenizer: its tokenizer.
        batch_size: sequences per forward pass.
        max_length: longest sequence per forward pass (default: the model's context length).
        device: where the model is.
        progress: show tqdm bars.
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int | None = None, device=None,
                 progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length or model_max_length(model, tokenizer))
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens, got {self.max_length}")
        self.device = device if device is not None else next(model.parameters()).device
        self.prefix_id = prefix_token_id(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.prefix_id
        self.progress = progress

    # -- tokenization ------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids with the prefix token, continuation ids)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context) if context else []
        # the context's tokens are normally a prefix of the whole's; where a merge crosses the boundary,
        # split at the context's length so the continuation still gets its own tokens
        cut = len(context_ids)
        if whole[:cut] != context_ids:
            cut = max(0, min(cut, len(whole) - 1))
        return self._prefix(context) + whole[:cut], whole[cut:]

    def _prefix(self, text: str) -> list[int]:
        # chat-templated text already starts with the BOS token: do not start it twice
        bos = self.tokenizer.bos_token
        return [] if bos and text.startswith(bos) else [self.prefix_id]

    # -- the forward pass ---------------------------------------------------------------------------

    def _token_logprobs(self, sequences: list[list[int]], keeps: list[int]) -> list[tuple[list[float], list[bool]]]:
        """For each sequence of ids, log p(ids[t] | ids[:t]) for its last `keep` targets, and whether each
        target is the argmax."""
        import torch

        longest = max(len(s) for s in sequences) - 1
        input_ids = torch.full((len(sequences), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, seq in enumerate(sequences):
            n = len(seq) - 1
            input_ids[row, :n] = torch.tensor(seq[:-1])
            attention_mask[row, :n] = 1
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device),
                                attention_mask=attention_mask.to(self.device), use_cache=False).logits
        out = []
        for row, (seq, keep) in enumerate(zip(sequences, keeps)):
            n = len(seq) - 1
            row_logits = logits[row, n - keep:n].float()  # (keep, V); row by row keeps the float32 copy small
            targets = torch.tensor(seq[len(seq) - keep:], device=row_logits.device)
            picked = next_token_logprobs(row_logits, targets)
            greedy = row_logits.argmax(-1) == targets
            out.append((picked.tolist(), greedy.tolist()))
        return out

    def _batches(self, items: list, desc: str, unit: str):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True)
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            yield batch
            bar.update(len(batch))
        bar.close()

    def _score_windows(self, windows: list[tuple[list[int], int]], desc: str, unit: str
                       ) -> list[tuple[list[float], list[bool]]]:
        """windows: (ids, number of trailing targets that count) -> those targets' logprobs and greedy flags.
        Windows are run longest first, so a batch holds sequences of similar length (little padding)."""
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
        results: list = [None] * len(windows)
        was_training = self.model.training  # a model fresh from training would score with dropout on
        self.model.eval()
        try:
            for batch in self._batches(order, desc, unit):
                scored = self._token_logprobs([windows[i][0] for i in batch], [windows[i][1] for i in batch])
                for i, result in zip(batch, scored):
                    results[i] = result
        finally:
            self.model.train(was_training)
        return results

    # -- public scoring -----------------------------------------------------------------------------

    def windows_for(self, ids: list[int], stride: int | None = None) -> list[tuple[list[int], int]]:
        """Sliding windows over prefix + ids: (window ids, how many of its last targets are new)."""
        length = self.max_length
        stride = length if stride is None else int(stride)
        if not 0 < stride <= length:
            raise ValueError(f"stride must be in 1..max_length ({length}), got {stride}")
        full = [self.prefix_id] + ids
        n = len(ids)  # targets are full[1..n]
        windows, done = [], 0
        while done < n:
            end = min(done + (length if done == 0 else stride), n)  # last target index of this window
            start = max(0, end - length)  # window input is full[start:end], targets full[start+1:end+1]
            windows.append((full[start:end + 1], end - done))
            done = end
        return windows

    def score_texts(self, texts: Sequence[str], stride: int | None = None, desc: str = "perplexity"
                    ) -> list[TextScore]:
        """Negative log-likelihood of whole texts, each scored on its own (document-wise) with a sliding
        window where a text is longer than max_length."""
        windows, owner = [], []
        encoded = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"text #{index} is {type(text).__name__}, expected a string")
            ids = self.encode(text)
            encoded.append(ids)
            for window in self.windows_for(ids, stride):
                windows.append(window)
                owner.append(index)
        scored = self._score_windows(windows, desc, "window")
        nll = [0.0] * len(texts)
        for index, (logprobs, _) in zip(owner, scored):
            nll[index] -= math.fsum(logprobs)
        return [TextScore(nll=nll[i], tokens=len(encoded[i]), bytes=len(t.encode("utf-8")), words=count_words(t))
                for i, t in enumerate(texts)]

    def continuation_windows(self, full: list[int], first_target: int) -> list[tuple[list[int], int]]:
        """Windows that score full[first_target:] given everything before it, each at most max_length long.

        Usually one window: the continuation plus as much of the context as fits (the far end of a long
        context is dropped). A continuation longer than max_length is cut into windows from its end
        backwards, so the first piece still sees the context."""
        windows, end = [], len(full) - 1
        while end >= first_target:
            start = max(0, end - self.max_length)  # window input is full[start:end], targets full[start+1:end+1]
            low = max(first_target, start + 1)
            windows.append((full[start:end + 1], end - low + 1))
            end = low - 1
        return windows[::-1]

    def score_continuations(self, pairs: Sequence[tuple[str, str]], desc: str = "log-likelihood"
                            ) -> list[ContinuationScore]:
        """log p(continuation | context) for each (context, continuation) pair."""
        windows, owner, lengths = [], [], []
        for index, (context, continuation) in enumerate(pairs):
            context_ids, continuation_ids = self.encode_pair(context, continuation)
            if not continuation_ids:
                raise ValueError(f"continuation {continuation!r} encodes to no tokens")
            for window in self.continuation_windows(context_ids + continuation_ids, len(context_ids)):
                windows.append(window)
                owner.append(index)
            lengths.append(len(continuation_ids))
        scored = self._score_windows(windows, desc, "request")
        logprobs: list[list[float]] = [[] for _ in pairs]
        greedy = [True] * len(pairs)
        for index, (window_logprobs, window_greedy) in zip(owner, scored):
            logprobs[index] += window_logprobs
            greedy[index] = greedy[index] and all(window_greedy)
        return [ContinuationScore(logprob=math.fsum(lp), tokens=len(lp), greedy=g) for lp, g in zip(logprobs, greedy)]

    def score_masked(self, encoded: Sequence[tuple[list[int], list[int]]], desc: str = "log-likelihood"
                     ) -> list[tuple[float, int]]:
        """(summed log-probability, token count) of the tokens whose mask is 1, for sequences given as token
        ids (scored as they are, no prefix token added, cut to max_length), in input order."""
        cut = [(list(ids[:self.max_length]), list(mask[:self.max_length])) for ids, mask in encoded]
        scorable = [i for i, (ids, _) in enumerate(cut) if len(ids) > 1]  # one token predicts nothing
        scored = self._score_windows([(cut[i][0], len(cut[i][0]) - 1) for i in scorable], desc, "sequences")
        results = [(0.0, 0)] * len(cut)
        for i, (logps, _) in zip(scorable, scored):
            counted = cut[i][1][1:]  # logps[j] is log p(ids[j + 1])
            results[i] = (float(sum(lp for lp, m in zip(logps, counted) if m)), int(sum(bool(m) for m in counted)))
        return results

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 64, desc: str = "generate") -> list[str]:
        """Greedy completions of prompts (already formatted, e.g. by a chat template), batched with left padding."""
        import torch

        tokenizer = self.tokenizer
        eos = getattr(self.model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        outputs: list[str] = []
        for batch in self._batches(list(prompts), desc, "prompt"):
            encoded = [self._prefix(p) + self.encode(p) for p in batch]
            encoded = [ids[-max(1, self.max_length - max_new_tokens):] for ids in encoded]
            longest = max(map(len, encoded))
            input_ids = torch.full((len(encoded), longest), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, ids in enumerate(encoded):
                input_ids[row, longest - len(ids):] = torch.tensor(ids)
                attention_mask[row, longest - len(ids):] = 1
            with torch.inference_mode():
                generated = self.model.generate(
                    input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                    max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=self.pad_id)
            for row in generated[:, longest:]:
                outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
        return outputs


def perplexity_summary(scores: Sequence[TextScore]) -> dict[str, float]:
    """Corpus-level numbers: every token (byte, word) of every text weighs the same.

    bits_per_byte = total nll / (ln 2 * total UTF-8 bytes): independent of the tokenizer, so models with
    different vocabularies compare; perplexity = exp(total nll / total tokens) is per token.
    """
    if not scores:
        raise ValueError("no texts were scored: the held-out set is empty")
    nll = math.fsum(s.nll for s in scores)
    tokens = sum(s.tokens for s in scores)
    n_bytes = sum(s.bytes for s in scores)
    words = sum(s.words for s in scores)
    if tokens == 0 or n_bytes == 0:
        raise ValueError("the held-out texts hold no tokens: every text is empty")
    return {
        "perplexity": math.exp(nll / tokens),
        "loss": nll / tokens,
        "bits_per_byte": nll / (math.log(2) * n_bytes),
        "byte_perplexity": math.exp(nll / n_bytes),
        "word_perplexity": math.exp(nll / words),
        "tokens": tokens,
        "bytes": n_bytes,
        "documents": len(scores),
    }
