"""Fine-tuning methods as data: one row per method, read by the shared fine-tuning flow
(`finetuning.training`), the data conversion (`finetuning.data`), the held-out measurement
(`finetuning.heldout`) and the stage registry (`pipeline.stages`).

A row names TRL's trainer and config class by import path (importing TRL costs seconds, and this
table is read by `llm-recipes --help`), the data formats the method trains on (first = preferred), the
held-out measure and its headline metric, and where "the model's own answers" go when
`preference_negatives: model` asks for them. Adding a method TRL provides is one row here plus an entry
module like `llm_recipes/orpo.py`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# held-out measures (finetuning.heldout): answer loss on held-out answers; chosen vs rejected log-probabilities
# of held-out pairs (with rewards against the base model); desirable vs undesirable rows of unpaired data
ANSWER_LOSS, PAIRED, UNPAIRED = "answer_loss", "paired", "unpaired"


@dataclass(frozen=True)
class Method:
    name: str  # stage name and recipe file stem
    description: str
    trainer: str  # "module:Class" of the TRL trainer
    config: str  # "module:Class" of its config dataclass
    formats: tuple[str, ...]  # finetuning.data formats it trains on, preferred first
    measure: str  # ANSWER_LOSS, PAIRED or UNPAIRED
    metric: str  # the headline held-out metric of that measure
    higher_is_better: bool
    optional: bool = False  # `llm-recipes run` runs it only when named

    @property
    def own_answers(self) -> bool:
        """Whether `preference_negatives: model` applies: the model's own answers become the negatives."""
        return self.measure != ANSWER_LOSS

    @property
    def data_description(self) -> str:
        from .data import FORMAT_COLUMNS  # data imports this module at its top

        return " or ".join("/".join(FORMAT_COLUMNS[f]) for f in self.formats) + " rows"

    def trainer_class(self):
        return _load(self.trainer)

    def config_class(self):
        return _load(self.config)


def _load(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


METHODS: list[Method] = [
    Method("sft", "supervised fine-tuning (domain text or instructions/chat) with TRL, full or LoRA",
           "trl:SFTTrainer", "trl:SFTConfig", ("messages", "prompt_completion", "text"), ANSWER_LOSS,
           "answer_loss", False),
    Method("dpo", "direct preference optimization from prompt/chosen/rejected with TRL",
           "trl:DPOTrainer", "trl:DPOConfig", ("preference",), PAIRED, "preference_accuracy", True),
    Method("kto", "KTO alignment from thumbs-up/down feedback with TRL",
           "trl:KTOTrainer", "trl:KTOConfig", ("unpaired",), UNPAIRED, "desirable_logp_gap", True,
           optional=True),
    # ORPO (Hong et al. 2024): SFT and an odds-ratio preference term in one loss, no reference model
    Method("orpo", "ORPO: supervised and preference learning in one loss, no reference model (TRL)",
           "trl.experimental.orpo:ORPOTrainer", "trl.experimental.orpo:ORPOConfig", ("preference",), PAIRED,
           "preference_accuracy", True, optional=True),
]
BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}
# built-in python-docs dataset -> the kind of rows finetuning.python_docs makes for it
BUILTIN_KIND = {"python-docs-qa": "qa", "python-docs-preferences": "preferences", "python-docs-kto": "kto"}


def method(name: str) -> Method:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown fine-tuning method {name!r}; expected one of: {', '.join(BY_NAME)}") from None
