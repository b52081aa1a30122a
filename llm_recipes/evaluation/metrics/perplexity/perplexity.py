"""Perplexity and bits per byte of texts under a causal LM, as an `evaluate` module that loads offline:

    import evaluate
    perplexity = evaluate.load("llm_recipes/evaluation/metrics/perplexity")   # a local folder, no Hub needed
    perplexity.compute(predictions=texts, model_id="runs/quickstart/pretrain/final")

Each text is scored on its own, starting from the BOS token (EOS for tokenizers without one), with a
sliding window of `max_length` tokens advancing `stride` tokens for texts longer than the context.
"""

import datasets
import evaluate

_DESCRIPTION = """Corpus perplexity (exp of the mean negative log-likelihood per token), loss (nats/token),
bits per byte (total nats / (ln 2 * UTF-8 bytes), comparable across tokenizers), byte and word perplexity."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the texts to score.
    model_id (`str`): a model folder or Hub id loadable with AutoModelForCausalLM.
    batch_size (`int`): sequences per forward pass (default 8).
    max_length (`int`, *optional*): window length in tokens (default: the model's context).
    stride (`int`, *optional*): window step (default: max_length, disjoint windows).
    device (`str`): "auto", "cpu", "cuda" ...
Returns:
    perplexity, loss, bits_per_byte, byte_perplexity, word_perplexity, tokens, bytes, documents.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://huggingface.co/docs/transformers/perplexity"],
        )

    def _compute(self, predictions, model_id, batch_size=8, max_length=None, stride=None, device="auto",
                 trust_remote_code=True):
        from llm_recipes.evaluation.models import load_model_and_tokenizer
        from llm_recipes.evaluation.scoring import LMScorer, perplexity_summary

        model, tokenizer, device = load_model_and_tokenizer(model_id, device=device,
                                                            trust_remote_code=trust_remote_code)
        scorer = LMScorer(model, tokenizer, batch_size=batch_size, max_length=max_length, device=device)
        return perplexity_summary(scorer.score_texts(list(predictions), stride=stride))
