"""`llm-recipes evaluate`: score one or more models on held-out text, cloze, multiple-choice, QA and
preference data; write eval_results.json, a comparison table and plot, and each model card's model-index.

    llm-recipes evaluate --config recipes/quickstart/evaluate.yaml
    llm-recipes evaluate --models base=runs/quickstart/pretrain/final gpt2=gpt2 \\
        --heldout_data runs/quickstart/clean --choice_tasks builtin:english_cloze --output_dir runs/eval

(`import evaluate` in this package's code reaches the Hugging Face library: imports are absolute.)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .cli import entry_point
from .config import check_range, parse_config
from .evaluation.models import EvalInputError
from .evaluation.suite import run_evaluation
from .pipeline.envelope import StageRun


@dataclass
class EvaluateConfig:
    output_dir: str = field(default="runs/default/evaluate",
                            metadata={"help": "Folder for eval_results.json, comparison.md, comparison.png."})
    models: list[str] = field(default_factory=list, metadata={
        "help": "Models to score, as name=path (a model folder or Hub id); a bare path is named after its folder. "
                "Any AutoModelForCausalLM works, so a stock baseline is scored the same way."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={
        "help": "Tokenizer for model folders that have none (e.g. training checkpoints)."})
    heldout_data: str | None = field(default=None, metadata={
        "help": "Held-out text for perplexity and bits per byte: a clean stage folder (its validation split), "
                "or parquet/jsonl/txt files (globs allowed)."})
    text_field: str = field(default="text", metadata={"help": "Column of heldout_data holding the text."})
    max_documents: int | None = field(default=None, metadata={"help": "Score at most this many held-out documents."})
    max_heldout_bytes: int | None = field(default=None, metadata={
        "help": "Score held-out documents (in file order) up to about this many UTF-8 bytes."})
    max_length: int | None = field(default=None, metadata={
        "help": "Longest sequence per forward pass (default: the model's context length)."})
    stride: int | None = field(default=None, metadata={
        "help": "Sliding-window step for texts longer than max_length; default max_length (disjoint windows, as "
                "lm-evaluation-harness does). Smaller gives every token more context, at more compute."})
    choice_tasks: list[str] = field(default_factory=list, metadata={
        "help": "Cloze / multiple-choice tasks: generated:next_word and generated:continuation (built from "
                "heldout_data: frequency-matched word cloze, true vs other documents' continuations), "
                "builtin:everyday_cloze (208 everyday sentences, see docs/evaluate.md), builtin:english_cloze, "
                "builtin:python_docs_cloze, builtin:python_docs_mc, a .jsonl/.json/.parquet file, or "
                "hub:path[:config][@split]; name=spec "
                "renames. Layout is detected from the fields (see docs/evaluate.md)."})
    max_items_per_task: int | None = field(default=None, metadata={"help": "Use at most this many items per task."})
    generated_items: int = field(default=500, metadata={
        "help": "Items of each generated:* choice task (built from heldout_data with a fixed seed)."})
    qa_data: str | None = field(default=None, metadata={
        "help": "Generation QA file (prompt/question + answer, or messages); scored by exact match, token F1, ROUGE."})
    qa_max_items: int | None = field(default=50, metadata={"help": "Use at most this many QA items."})
    max_new_tokens: int = field(default=48, metadata={"help": "Generated tokens per QA answer (greedy)."})
    qa_prompt_format: str = field(default="auto", metadata={
        "help": "auto (chat template when the tokenizer has one), chat, or plain ('Question: ...\\nAnswer:')."})
    preference_data: str | None = field(default=None, metadata={
        "help": "prompt/chosen/rejected file: accuracy = how often log p(chosen) > log p(rejected)."})
    preference_max_items: int | None = field(default=200, metadata={"help": "Use at most this many pairs."})
    harness_tasks: list[str] = field(default_factory=list, metadata={
        "help": "lm-evaluation-harness tasks scored by the harness itself (e.g. hellaswag arc_easy piqa "
                "lambada_openai; standard tasks fetch their data from the Hub once), with intervals and a "
                "centred average over them (harness_core, CORE-style). The shipped english_cloze, "
                "python_docs_cloze and python_docs_mc work offline."})
    harness_include_path: str | None = field(default=None, metadata={
        "help": "A folder of your own lm-evaluation-harness task YAMLs, searched besides the harness's and ours."})
    harness_limit: int | None = field(default=None, metadata={
        "help": "Score at most this many documents of each harness task (default: all)."})
    harness_num_fewshot: int = field(default=0, metadata={"help": "Few-shot examples for every harness task."})
    metrics_files: list[str] = field(default_factory=list, metadata={
        "help": "Training logs to plot against step, as name=path/metrics.jsonl."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, mps."})
    torch_num_threads: int | None = field(default=None, metadata={
        "help": "CPU threads for torch (default: the CPUs free at the start). On a machine shared with other "
                "busy processes, 1 is often several times faster for small models."})
    torch_dtype: str = field(default="auto", metadata={
        "help": "auto (bfloat16 on a GPU that has it, else float32), float32, bfloat16, float16."})
    trust_remote_code: bool = field(default=True, metadata={"help": "Allow model code saved next to the weights."})
    update_model_card: bool = field(default=True, metadata={
        "help": "Merge the results into each local model folder's README.md model-index."})
    seed: int = field(default=0, metadata={"help": "Random seed (generation is greedy; kept for reproducibility)."})

    def __post_init__(self):
        check_range(self, "generated_items", 1)
        check_range(self, "harness_num_fewshot", 0)
        check_range(self, "harness_limit", 1)


def config_classes() -> tuple[type, ...]:
    return (EvaluateConfig,)


def main(argv=None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="evaluate")
    run = StageRun("evaluate", cfg.output_dir, cfg)
    try:
        results = run_evaluation(cfg, start=run.start)
    except (EvalInputError, FileNotFoundError) as e:
        print(f"llm-recipes evaluate: error: {e}", file=sys.stderr)
        return 2
    run.complete(models=list(results["models"]), tasks=list(results["tasks"]))
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("evaluate", main))
