"""`llm-recipes <stage> [--config recipe.yaml] [--key value ...]`: one subcommand per stage.

Each stage is a module `llm_recipes.<module>` with a `main(argv)`; the CLI only dispatches, so
`python -m llm_recipes.pretrain ...` and `accelerate launch -m llm_recipes.pretrain ...` run the very
same code. Heavy imports happen inside the stage, so `llm-recipes --help` stays quick.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line description), in pipeline order
STAGES: dict[str, tuple[str, str]] = {
    "gather": ("gather", "collect text from Hub datasets, local files, web pages or the built-in python-docs corpus"),
    "clean": ("clean", "repair, filter, deduplicate, scrub and split the gathered text; write a report"),
    "train-tokenizer": ("train_tokenizer", "train a byte-level BPE tokenizer with chat template on the cleaned text"),
    "pretrain": ("pretrain", "pretrain a GPT on the tokenized text with Accelerate"),
    "sft": ("sft", "supervised fine-tuning (domain text or instructions/chat) with TRL, full or LoRA"),
    "dpo": ("dpo", "direct preference optimization from prompt/chosen/rejected with TRL"),
    "kto": ("kto", "KTO alignment from thumbs-up/down feedback with TRL"),
    "evaluate": ("evaluate", "score a model: perplexity, bits per byte, cloze, multiple choice, QA, preferences"),
    "push": ("push", "upload a model folder with its card to the Hugging Face Hub"),
    "serve": ("serve", "serve a model over an OpenAI-compatible API with a chat page that collects feedback"),
    "feedback": ("feedback", "export collected feedback as DPO or KTO datasets"),
    "export": ("export", "export a model as a standard Llama checkpoint for vLLM / TGI / llama.cpp"),
    "run": ("run", "run every stage of a recipe folder in order, skipping finished ones"),
}


def usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: llm-recipes <stage> [--config recipe.yaml] [--key value ...]", "", "stages:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, (_, desc) in STAGES.items()]
    lines += ["", "`llm-recipes <stage> --help` lists a stage's keys."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in STAGES:
        print(f"llm-recipes: unknown stage {name!r}; expected one of: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module_name = f"llm_recipes.{STAGES[name][0]}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"llm-recipes: stage {name!r} is not built yet (no module {module_name})", file=sys.stderr)
        return 3
    from .launch import entry_point

    return entry_point(name, lambda: module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
