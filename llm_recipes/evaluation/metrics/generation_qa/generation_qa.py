"""Generation QA scores as an offline `evaluate` module: exact match and token F1 (SQuAD normalisation:
lower case, no punctuation or articles) and ROUGE-1/2/L F-measure, each the best over an item's references.

    qa = evaluate.load("llm_recipes/evaluation/metrics/generation_qa")
    qa.compute(predictions=["Paris"], references=[["Paris", "Paris, France"]])
"""

import datasets
import evaluate

_DESCRIPTION = "Exact match, token F1 and ROUGE between generated answers and reference answers."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): generated answers.
    references (`list[list[str]]` or `list[str]`): acceptable answers per item.
Returns:
    exact_match, f1, rouge1, rouge2, rougeL (all in [0, 1]), n.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GenerationQA(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"),
                                   "references": datasets.Sequence(datasets.Value("string"))}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, references):
        from llm_recipes.evaluation.measures import qa_scores

        return qa_scores(predictions, references)
