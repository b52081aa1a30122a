"""Preference accuracy as an offline `evaluate` module: how often the chosen response scores higher than
the rejected one (ties count half), and the mean margin.

    pref = evaluate.load("llm_recipes/evaluation/metrics/preference_accuracy")
    pref.compute(predictions=[-10.2, -8.0], references=[-12.5, -7.1])   # chosen, rejected log-likelihoods
    # {'accuracy': 0.5, 'margin': 0.7, 'n': 2}
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy of ranking the chosen response above the rejected one by model score."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[float]`): the score (e.g. summed log-likelihood) of each chosen response.
    references (`list[float]`): the score of the matching rejected response.
Returns:
    accuracy, margin (mean chosen - rejected), n.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PreferenceAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64"),
                                        "references": datasets.Value("float64")}),
        )

    def _compute(self, predictions, references):
        from llm_recipes.evaluation.measures import preference_accuracy

        return preference_accuracy(predictions, references)
