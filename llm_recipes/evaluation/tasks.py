"""Scoring one model on one task: perplexity, choice tasks, generation QA, preference pairs."""

from __future__ import annotations

import math
from typing import Any, Sequence

from .data import ChoiceTask, PreferencePair, QAItem, chat_messages
from .measures import QA_METRICS, choice_credits, preference_items, qa_item_scores
from .scoring import LMScorer, perplexity_summary


def evaluate_perplexity(scorer: LMScorer, texts: Sequence[str], stride: int | None = None) -> dict[str, float]:
    """Perplexity, loss per token, bits per byte, byte and word perplexity over held-out documents."""
    if not texts:
        raise ValueError("perplexity needs at least one held-out text; got an empty set")
    scores = scorer.score_texts(texts, stride=stride, desc="held-out text")
    result = perplexity_summary(scores)
    # per document, for bootstrap intervals over documents (intervals.py)
    result["per_item"] = {"nll": [s.nll for s in scores], "tokens": [s.tokens for s in scores],
                          "bytes": [s.bytes for s in scores]}
    result["stride"] = stride or scorer.max_length
    result["max_length"] = scorer.max_length
    return result


def evaluate_choice_task(scorer: LMScorer, task: ChoiceTask) -> dict[str, float]:
    """Accuracy by log-likelihood: the model 'answers' with the choice it finds most likely."""
    if not task.items:
        raise ValueError(f"choice task {task.name!r} has no items (empty set)")
    pairs = [(item.context, choice) for item in task.items for choice in item.choices]
    scores = scorer.score_continuations(pairs, desc=task.name)
    logprobs, position = [], 0
    for item in task.items:
        logprobs.append([s.logprob for s in scores[position:position + len(item.choices)]])
        position += len(item.choices)
    per_item = choice_credits(logprobs, [item.gold for item in task.items], [item.lengths for item in task.items])
    return _means(per_item)


def format_prompt(tokenizer, messages: list[dict[str, str]], prompt_format: str = "auto") -> str:
    """A chat-templated prompt ending where the assistant's answer starts, or a plain Q/A prompt."""
    use_chat = prompt_format == "chat" or (prompt_format == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    question = "\n\n".join(m["content"] for m in messages if m.get("role") != "system")
    return f"Question: {question}\nAnswer:"


def evaluate_qa(scorer: LMScorer, items: Sequence[QAItem], max_new_tokens: int = 48, prompt_format: str = "auto",
                samples: int = 3) -> dict[str, Any]:
    """Greedy answers scored against references: exact match, token F1, ROUGE; plus a few samples."""
    if not items:
        raise ValueError("QA needs at least one item; got an empty set")
    prompts = [format_prompt(scorer.tokenizer, item.messages, prompt_format) for item in items]
    answers = scorer.generate(prompts, max_new_tokens=max_new_tokens, desc="qa")
    per_item = qa_item_scores(answers, [item.references for item in items])
    result: dict[str, Any] = _means({key: per_item[key] for key in QA_METRICS})
    result["samples"] = [{"prompt": item.messages[-1]["content"], "reference": item.references[0], "prediction": a}
                         for item, a in list(zip(items, answers))[:samples]]
    return result


def preference_request(tokenizer, prompt: Any, response: Any) -> tuple[str, str]:
    """(context, continuation) for scoring a response to a prompt; chat messages go through the template."""
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt, response  # TRL's standard (non-chat) format: the response follows the prompt directly
    messages = chat_messages(prompt, "user")
    context = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + chat_messages(response, "assistant"), tokenize=False)
    if not full.startswith(context):
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + response")
    return context, full[len(context):]


def evaluate_preferences(scorer: LMScorer, pairs: Sequence[PreferencePair]) -> dict[str, float]:
    """Preference accuracy: log p(chosen | prompt) > log p(rejected | prompt) under the model alone
    (no reference model, so it measures the policy's own ranking, not DPO's implicit reward)."""
    if not pairs:
        raise ValueError("preference accuracy needs at least one pair; got an empty set")
    requests = []
    for pair in pairs:
        requests.append(preference_request(scorer.tokenizer, pair.prompt, pair.chosen))
        requests.append(preference_request(scorer.tokenizer, pair.prompt, pair.rejected))
    scores = scorer.score_continuations(requests, desc="preferences")
    return _means(preference_items([s.logprob for s in scores[0::2]], [s.logprob for s in scores[1::2]]))


def _means(per_item: dict[str, list[float]]) -> dict[str, Any]:
    """Each metric's mean over the items, the item count, and the items themselves (for intervals)."""
    n = len(next(iter(per_item.values())))
    return {**{key: math.fsum(values) / n for key, values in per_item.items()}, "n": n, "per_item": per_item}
