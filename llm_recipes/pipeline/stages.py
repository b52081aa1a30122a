"""The stage registry: every stage declared once.

`llm-recipes <stage>` (cli), `llm-recipes run` (the pipeline order, optional and service stages, which
stages `accelerate launch` starts), the report card, docs/architecture.md's stage table and the tests all
read this table. A stage's entry module `llm_recipes.<module>` has `main(argv)` and `config_classes()`
(the dataclasses its recipe parses into, as TRL's scripts expose `make_parser()`); importing it is left to
the caller, so `llm-recipes --help` stays quick.

Adding a stage: one `Stage(...)` here and its entry module. Adding a fine-tuning method: one row in
`llm_recipes.finetuning.methods.METHODS` and a three-line entry module; `STAGES` lists the methods in
that table's order.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..finetuning.methods import METHODS  # a plain table: importing it loads no torch, TRL or transformers

# kinds of stage: what the pipeline does with them
DATA, TOKENIZER, PRETRAINING, FINETUNING, EVALUATION, DEPLOYMENT, SERVICE, PIPELINE = (
    "data", "tokenizer", "pretraining", "fine-tuning", "evaluation", "deployment", "service", "pipeline")


@dataclass(frozen=True)
class Stage:
    name: str  # the subcommand: `llm-recipes <name>`
    module: str  # entry module under llm_recipes: `python -m llm_recipes.<module>`
    description: str
    kind: str
    reads: str
    writes: str
    optional: bool = False  # `llm-recipes run` runs it only when named with --stages
    in_recipes: bool = True  # a recipe folder may hold `<recipe>.yaml` for it

    @property
    def recipe(self) -> str:
        """The stem of its YAML file in a recipe folder (`train_tokenizer.yaml`)."""
        return self.module

    @property
    def training(self) -> bool:
        """Started under `accelerate launch` when `llm-recipes run --launcher accelerate` asks for it."""
        return self.kind in (PRETRAINING, FINETUNING)

    @property
    def service(self) -> bool:
        """Runs until stopped: never skipped as complete, and stopping it is not a failure."""
        return self.kind == SERVICE

    def entry_module(self):
        return importlib.import_module(f"llm_recipes.{self.module}")

    def config_classes(self) -> tuple[type, ...]:
        return tuple(self.entry_module().config_classes())


def _finetuning_stages() -> list[Stage]:
    return [Stage(m.name, m.name, m.description, FINETUNING, reads=f"a model folder; {m.data_description}",
                  writes="final/ (model folder), data/, metrics.jsonl, eval_heldout.json (+ adapter/ with LoRA)",
                  optional=m.optional) for m in METHODS]


# pipeline order
STAGES: list[Stage] = [
    Stage("gather", "gather", "collect text from Hub datasets, local files, web pages, books or the built-in "
          "python-docs corpus", DATA, reads="sources (Hub ids, files, URLs, WARC, PDF/EPUB/DOCX)",
          writes="data/*.parquet shards, gather_report.json"),
    Stage("clean", "clean", "repair, filter, deduplicate, scrub and split the gathered text; write a report", DATA,
          reads="gather shards", writes="train/*.parquet, validation/*.parquet, report.md/.json/.png"),
    Stage("train-tokenizer", "train_tokenizer", "train a byte-level BPE tokenizer with chat template on the cleaned "
          "text", TOKENIZER, reads="clean splits", writes="tokenizer.json, tokenizer_config.json, "
          "chat_template.jinja, tokenizer_report.md/.json"),
    Stage("pretrain", "pretrain", "pretrain a GPT on the tokenized text with Accelerate", PRETRAINING,
          reads="clean splits, tokenizer", writes="final/ (model folder), checkpoints/, metrics.jsonl, "
          "train_summary.json"),
    *_finetuning_stages(),
    Stage("evaluate", "evaluate", "score models: perplexity, bits per byte, cloze, multiple choice, QA, preferences",
          EVALUATION, reads="model folders, clean validation split, task files",
          writes="eval_results.json, comparison.md/.png, model cards' model-index"),
    Stage("push", "push", "upload a model folder with its card to the Hugging Face Hub", DEPLOYMENT,
          reads="a model folder (+ eval_results.json)", writes="upload/ (staged files, README.md), push_result.json"),
    Stage("export", "export", "export a model as a standard Llama checkpoint (vLLM, TGI) or a GGUF file (llama.cpp)",
          DEPLOYMENT, reads="a model folder", writes="a LlamaForCausalLM folder or one .gguf file"),
    Stage("serve", "serve", "serve a model over an OpenAI-compatible API with a chat page that collects feedback",
          SERVICE, reads="a model folder", writes="feedback.sqlite (the feedback store)", optional=True),
    Stage("feedback", "feedback", "export collected feedback as DPO or KTO datasets", DATA,
          reads="the feedback store", writes="dpo.jsonl, kto.jsonl, feedback_summary.json", optional=True),
    Stage("run", "run", "run every stage of a recipe folder in order, skipping finished ones", PIPELINE,
          reads="a recipe folder", writes="every stage's folder, run_summary.json, report.md, logs/",
          in_recipes=False),
]
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    """A stage by its subcommand or recipe-file name (`train-tokenizer` or `train_tokenizer`)."""
    for s in STAGES:
        if name in (s.name, s.recipe):
            return s
    raise KeyError(name)


def recipe_stages() -> list[Stage]:
    """The stages a recipe folder can hold, in pipeline order."""
    return [s for s in STAGES if s.in_recipes]


def stage_table() -> str:
    """The stage table of docs/architecture.md (a test keeps the document equal to it)."""
    lines = ["| stage | kind | reads | writes | `run` |", "|---|---|---|---|---|"]
    for s in STAGES:
        when = "no (the runner)" if not s.in_recipes else "when named" if s.optional else "yes"
        lines.append(f"| `{s.name}` | {s.kind} | {s.reads} | {s.writes} | {when} |")
    return "\n".join(lines)
