"""Evaluation of causal LMs (ours and stock ones): log-likelihood scoring, perplexity and bits per byte,
cloze and multiple-choice accuracy, generation QA, preference accuracy, comparison reports.

    from llm_recipes.evaluation import LMScorer, load_model_and_tokenizer
    model, tokenizer, device = load_model_and_tokenizer("runs/quickstart/pretrain/final")
    scorer = LMScorer(model, tokenizer, batch_size=8)
    scorer.score_continuations([("The cat sat on the", " mat")])
"""

from .measures import choice_accuracy, preference_accuracy, qa_scores
from .models import EvalInputError, load_model_and_tokenizer
from .scoring import ContinuationScore, LMScorer, TextScore, perplexity_summary

__all__ = ["ContinuationScore", "EvalInputError", "LMScorer", "TextScore", "choice_accuracy",
           "load_model_and_tokenizer", "perplexity_summary", "preference_accuracy", "qa_scores"]
