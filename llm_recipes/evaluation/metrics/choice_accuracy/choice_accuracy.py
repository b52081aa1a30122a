"""Multiple-choice / cloze accuracy from per-choice log-likelihoods, as an offline `evaluate` module:

    acc = evaluate.load("llm_recipes/evaluation/metrics/choice_accuracy")
    acc.compute(predictions=[[-3.1, -7.0, -5.2]], references=[0], choice_lengths=[[3, 5, 4]])
    # {'acc': 1.0, 'chance': 0.333, 'n': 1, 'acc_norm': 1.0}

The model's answer is the choice with the highest log-likelihood; ties share the credit (expected accuracy
with random tie-breaking). `acc_norm` divides log-likelihoods by the choices' lengths in characters.
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy of picking the most likely choice (cloze, HellaSwag/ARC/MMLU-style multiple choice)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): per item, the log-likelihood of each choice given the context.
    references (`list[int]`): per item, the index of the correct choice.
    choice_lengths (`list[list[int]]`, *optional*): per item, each choice's length; adds acc_norm.
Returns:
    acc, chance, n, and acc_norm when lengths are given.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ChoiceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, choice_lengths=None):
        from llm_recipes.evaluation.measures import choice_accuracy

        return choice_accuracy(predictions, references, choice_lengths)
