"""The fine-tuning stages (one per row of `methods.METHODS`: sft, dpo, kto, orpo) share one flow around TRL's
trainers:

    load data -> convert + check -> split held-out -> write data/ -> load model -> measure the base
    -> train (full or LoRA) -> save adapter/ + merged final/ -> measure the trained model
    -> eval_heldout.json, metrics.jsonl -> mark complete

Our own options (model, data, LoRA) live in `FinetuneArguments`; everything about training is TRL's
own config class (`SFTConfig`, `DPOConfig`, ...: the method's row names it), parsed together from one recipe.
Nothing here branches on a method's name: what differs between methods is data in its row.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, parse_config
from ..evaluation.scoring import LMScorer
from ..fileio import atomic_directory, atomic_write_json, atomic_write_text
from ..pipeline.envelope import StageRun
from ..publishing.model_card import write_stage_card
from ..runtime.threads import ThreadGovernor
from ..training.model_folder import save_model_folder
from ..training.processes import check_process_group
from ..training.resume import resolve_resume as resume_from
from . import heldout, text_mix
from .data import BUILTIN_DATASETS, DatasetFormatError, convert_for_stage, load_raw_dataset, split_heldout, write_jsonl
from .heldout import summarize, verdict_text
from .lora import LoraTargetError, build_lora_config, merge_adapter
from .methods import BUILTIN_KIND, METHODS, PAIRED, UNPAIRED, Method, method
from .python_docs import build_python_docs_data, load_corpus


@dataclass
class FinetuneArguments:
    """Model, data and LoRA options of the fine-tuning stages (training options are TRL's)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model to fine-tune: an HF model folder (e.g. ${run_dir}/pretrain/final) or "
                                        "a Hub id. Other models than RecipeGPT may need trust_remote_code: true."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer folder or Hub id; defaults to model_name_or_path."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Training data: a local .json/.jsonl/.parquet/.csv file, a folder (data files "
                                        "or save_to_disk), a Hub dataset id, or a built-in set made from corpus_path: "
                                        f"{', '.join(BUILTIN_DATASETS)}."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    data_files: list[str] | None = field(
        default=None, metadata={"help": "Explicit data files (json/jsonl/parquet/csv) instead of dataset_name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={"help": "Split used as held-out data; default: 'test' or 'validation' when the dataset "
                          "has one, else a deterministic heldout_fraction of the training rows."})
    corpus_path: str | None = field(
        default=None, metadata={"help": "For the built-in python-docs datasets: the clean stage's output folder "
                                        "(columns text, title), e.g. ${run_dir}/clean."})
    heldout_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of rows (built-in data: of documents) held out for measuring the result."})
    max_heldout_samples: int | None = field(
        default=200, metadata={"help": "Cap on held-out rows that are scored (scoring costs a forward pass each)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Cap on training rows (a seeded sample); for quick runs."})
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message put before the user turn of converted Alpaca records."})
    questions_per_document: int = field(
        default=2, metadata={"help": "Built-in data: differently phrased questions per documentation item."})
    max_answer_chars: int = field(
        default=400, metadata={"help": "Built-in data: answers are the documentation's start, cut near this length."})
    max_documents: int | None = field(
        default=None, metadata={"help": "Built-in data: use at most this many documents (a seeded sample)."})
    preference_negatives: str = field(
        default="random",
        metadata={"help": "Rejected answers. Built-in preference/KTO data: from any other document "
                          "('random') or a sibling in the same module ('sibling', harder). Any "
                          "dpo/kto data: 'model' replaces them with the input model's own greedy "
                          "answer to the prompt (its wrong answer vs the right one: the feedback loop).",
                  "choices": ["random", "sibling", "model"]})
    negatives_max_new_tokens: int = field(
        default=64, metadata={"help": "preference_negatives: model: longest generated answer, in tokens."})
    text_mix_fraction: float = field(
        default=0.0,
        metadata={"help": "SFT with packing: share of the packed training rows that are plain text from "
                          "text_mix_path's train split, trained with LM loss on every token, so fine-tuning keeps "
                          "what pretraining taught (0 = none; 0.5 = as many text rows as fine-tuning rows)."})
    text_mix_path: str | None = field(
        default=None, metadata={"help": "Clean stage output folder whose train split is mixed in "
                                        "(text_mix_fraction, text_loss_weight); defaults to corpus_path."})
    text_loss_weight: float = field(
        default=0.0,
        metadata={"help": "Preference stages (dpo, kto, orpo): add this x the LM loss of a batch of plain text from "
                          "text_mix_path's train split to every training step's loss, so the preference training "
                          "does not erode the text model (0 = off; one process only)."})
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (updates are scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get adapters, e.g. q_proj v_proj; 'all-linear' = every Linear but the head."})
    lora_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full next to the adapter (e.g. embed_tokens)."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling (alpha / sqrt(r))."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    max_train_seconds: float | None = field(
        default=None,
        metadata={"help": "Stop training after this many seconds (checked after every step); the model "
                          "trained so far is saved and measured as usual. A budget guard for quick runs: "
                          "the learning-rate schedule still follows max_steps."})
    evaluate_heldout: bool = field(
        default=True, metadata={"help": "Score base and trained model on the held-out data (eval_heldout.json)."})
    torch_num_threads: int | None = field(
        default=None, metadata={"help": "CPU threads for torch on the CPU; default: the CPUs free at the stage's "
                                        "start (other busy processes make extra threads spin and wait), "
                                        "re-checked at every log line."})

    def __post_init__(self):
        if not 0.0 <= self.text_mix_fraction < 1.0:
            raise ConfigError(f"text_mix_fraction must be in [0, 1), got {self.text_mix_fraction}")
        if not (self.text_loss_weight >= 0.0 and math.isfinite(self.text_loss_weight)):
            raise ConfigError(f"text_loss_weight must be a finite number >= 0, got {self.text_loss_weight}")
        negatives = self.__dataclass_fields__["preference_negatives"].metadata["choices"]
        if self.preference_negatives not in negatives:
            raise ConfigError(f"preference_negatives must be one of {', '.join(negatives)}, "
                              f"got {self.preference_negatives!r}")


# -- data --------------------------------------------------------------------------------------------


def prepare_data(m: Method, args: FinetuneArguments, seed: int = 42):
    """Loads, converts, checks and splits the method's data.

    Returns:
        (train Dataset, held-out Dataset or None, format name).
    """
    from datasets import Dataset

    name = args.dataset_name or (args.data_files[0] if args.data_files else None)
    if name is None:
        raise ConfigError(f"stage {m.name!r} needs dataset_name (a file, folder, Hub id or one of "
                          f"{', '.join(BUILTIN_DATASETS)}) or data_files")
    if args.dataset_name in BUILTIN_DATASETS:
        if not args.corpus_path:
            raise ConfigError(f"dataset_name {args.dataset_name!r} is made from the python-docs corpus: set "
                              "corpus_path to the clean stage's output folder (e.g. ${run_dir}/clean)")
        rows_train, rows_held = build_python_docs_data(
            load_corpus(args.corpus_path), kind=BUILTIN_KIND[args.dataset_name],
            heldout_fraction=args.heldout_fraction, questions_per_document=args.questions_per_document,
            max_answer_chars=args.max_answer_chars, max_documents=args.max_documents, seed=seed,
            negatives="random" if args.preference_negatives == "model" else args.preference_negatives)
        if not rows_train:
            raise DatasetFormatError(f"{args.dataset_name}: no training rows could be made from {args.corpus_path!r}")
        train = Dataset.from_list(rows_train)
        held = Dataset.from_list(rows_held) if rows_held else None
    else:
        loaded = load_raw_dataset(name, args.dataset_config, args.data_files)
        if args.dataset_train_split not in loaded:
            raise DatasetFormatError(f"dataset {name!r} has no split {args.dataset_train_split!r} "
                                     f"(splits: {list(loaded)}); set dataset_train_split")
        train = loaded[args.dataset_train_split]
        held_split = args.dataset_test_split
        if held_split is None:
            held_split = next((s for s in ("test", "validation") if s in loaded and s != args.dataset_train_split),
                              None)
        elif held_split not in loaded:
            raise DatasetFormatError(f"dataset {name!r} has no split {held_split!r} (splits: {list(loaded)})")
        held = loaded[held_split] if held_split else None
    train, fmt = convert_for_stage(train, m, name=f"{name} [{args.dataset_train_split}]",
                                   system_prompt=args.system_prompt)
    if held is not None:
        held, _ = convert_for_stage(held, m, name=f"{name} [held-out]", system_prompt=args.system_prompt)
    elif args.heldout_fraction > 0:
        train, held = split_heldout(train, args.heldout_fraction)
    if held is not None and args.max_heldout_samples is not None and len(held) > args.max_heldout_samples:
        held = held.shuffle(seed=seed).select(range(args.max_heldout_samples))
    if args.max_train_samples is not None and len(train) > args.max_train_samples:
        train = train.shuffle(seed=seed).select(range(args.max_train_samples))
    return train, held, fmt


def model_answers_as_negatives(m: Method, dataset, model, tokenizer, max_new_tokens: int, batch_size: int):
    """The input model's own greedy answers become the rejected side: `rejected` of preference pairs, the
    `completion` of unpaired (KTO) undesirable rows. Pairs whose generated answer equals the chosen one are
    dropped (nothing to learn from them). `m` is a `methods.Method` or its name. Returns (dataset, number of rows
    dropped)."""
    from datasets import Dataset

    m = method(m) if isinstance(m, str) else m

    rows = list(dataset)
    if m.measure == UNPAIRED:
        targets = [i for i, r in enumerate(rows) if not r["label"]]
        answer_key = "completion"
    else:
        targets, answer_key = list(range(len(rows))), "rejected"

    def as_prompt(prompt):
        if isinstance(prompt, str):
            return prompt
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)

    def content(value) -> str:
        return value if isinstance(value, str) else value[-1]["content"]

    scorer = LMScorer(model, tokenizer, batch_size=batch_size)
    answers = scorer.generate([as_prompt(rows[i]["prompt"]) for i in targets], max_new_tokens,
                              desc=f"[{m.name}] own answers")
    drop = set()
    for i, answer in zip(targets, answers):
        row = rows[i]
        if m.measure == PAIRED and answer.strip() == content(row["chosen"]).strip():
            drop.add(i)
        row[answer_key] = answer if isinstance(row[answer_key], str) else [{"role": "assistant", "content": answer}]
    kept = [r for i, r in enumerate(rows) if i not in drop]
    if not kept:
        raise DatasetFormatError(f"preference_negatives: model: the model's answer equals the chosen one for all "
                                 f"{len(rows)} rows; there is nothing to prefer")
    return Dataset.from_list(kept), len(drop)


# -- model -------------------------------------------------------------------------------------------


def load_model_and_tokenizer(args: FinetuneArguments, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not args.model_name_or_path:
        raise ConfigError("model_name_or_path is required: an HF model folder such as ${run_dir}/pretrain/final")
    path = args.model_name_or_path
    if path.startswith((".", "/", "~")) and not Path(path).expanduser().is_dir():
        raise ConfigError(f"model_name_or_path {path!r} does not exist (expected an HF model folder, e.g. the "
                          "pretrain stage's final/)")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path or path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=torch.float32)
    return model, tokenizer


def _is_conversational(dataset) -> bool:
    from trl.data_utils import is_conversational

    return is_conversational(dataset[0])


# -- measuring -----------------------------------------------------------------------------------------


class HeldoutScorer:
    """Scores models on the held-out rows with the method's measure; keeps the base model's scores as reference."""

    def __init__(self, m: Method, rows: list[dict[str, Any]], fmt: str, tokenizer, batch_size: int, max_length):
        self.method, self.rows, self.fmt, self.tokenizer = m, rows, fmt, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.reference = None

    def score(self, model, is_base: bool) -> dict[str, Any]:
        kw = dict(batch_size=self.batch_size, max_length=self.max_length)
        if self.method.measure == PAIRED:
            chosen, rejected = heldout.preference_logps(model, self.tokenizer, self.rows, **kw)
            if is_base:
                self.reference = (chosen, rejected)
                return heldout.preference_metrics(chosen, rejected)
            return heldout.preference_metrics(chosen, rejected, *self.reference)
        if self.method.measure == UNPAIRED:
            logps = heldout.unpaired_logps(model, self.tokenizer, self.rows, **kw)
            if is_base:
                self.reference = logps
                return heldout.unpaired_metrics(self.rows, logps)
            return heldout.unpaired_metrics(self.rows, logps, self.reference)
        return heldout.answer_loss(model, self.tokenizer, self.rows, self.fmt, **kw)

    def summary(self, base: dict, trained: dict, **info) -> dict[str, Any]:
        return summarize(self.method.name, self.method.metric, self.method.higher_is_better, base, trained, **info)


# -- the stage ---------------------------------------------------------------------------------------------


def build_trainer(trainer_class: type, model, tokenizer, train_cfg, train, held, peft_config):
    eval_dataset = (held if held is not None and str(train_cfg.eval_strategy) not in ("no", "IntervalStrategy.NO")
                    else None)
    return trainer_class(model=model, args=train_cfg, train_dataset=train, eval_dataset=eval_dataset,
                             processing_class=tokenizer, peft_config=peft_config)


def run_stage(m: Method, args: FinetuneArguments, train_cfg) -> dict[str, Any]:
    """Runs one fine-tuning stage end to end; returns the eval_heldout record (or {} without held-out data)."""
    from accelerate import PartialState

    stage = m.name
    if args.preference_negatives == "model" and not m.own_answers:  # before any data or model is loaded
        takers = ", ".join(x.name for x in METHODS if x.own_answers)
        raise ConfigError(f"preference_negatives: model is for the preference stages ({takers}), not {stage!r}")
    if args.text_mix_fraction and not getattr(train_cfg, "packing", False):  # SFTConfig's option
        raise ConfigError(f"text_mix_fraction is for sft with packing: true (text rows join its packed batches); "
                          f"stage {stage!r} {'has packing off' if hasattr(train_cfg, 'packing') else 'packs nothing'}")
    if args.text_loss_weight and not m.own_answers:
        raise ConfigError(f"text_loss_weight is for the preference stages; {stage!r} mixes text with "
                          "text_mix_fraction")
    text_path = args.text_mix_path or args.corpus_path  # the clean folder whose train split is the plain text
    for key in ("text_mix_fraction", "text_loss_weight"):
        if getattr(args, key) and not text_path:
            raise ConfigError(f"{key} needs text_mix_path (or corpus_path): the clean stage's output folder")
    # under `accelerate launch` every process runs this function; only the main process writes files
    state = PartialState()
    check_process_group(state.num_processes, stage)
    if args.text_loss_weight and state.num_processes > 1:
        # DDP expects one forward pass per backward; the text loss is a second one
        raise ConfigError(f"text_loss_weight runs on one process; this launch has {state.num_processes}")
    main = state.is_main_process
    output_dir = Path(train_cfg.output_dir)
    # CPU threads from the CPUs actually free, before the first forward pass (negatives, base scores): with busy
    # neighbours torch's default of a thread per core made a quickstart DPO step 10x slower (13 s vs 1.2 s)
    threads = ThreadGovernor(stage, lambda line: print(f"[{stage}] {line.split(': ', 1)[1]}"),
                             args.torch_num_threads,
                             active=state.device.type == "cpu" and state.num_processes == 1)

    # Load datasets and model (nothing in output_dir changes until every check has passed)
    train, held, fmt = prepare_data(m, args, seed=train_cfg.seed)
    model, tokenizer = load_model_and_tokenizer(args, train_cfg.trust_remote_code)
    conversational = _is_conversational(train)
    if conversational and not tokenizer.chat_template and not getattr(train_cfg, "chat_template_path", None):
        raise ConfigError("the training data is conversational but tokenizer "
                          f"{args.tokenizer_name_or_path or args.model_name_or_path!r} "
                          "has no chat template; set chat_template_path (sft) or use a tokenizer with one")
    if getattr(train_cfg, "assistant_only_loss", False) and not conversational:  # SFTConfig's option
        raise ConfigError(f"assistant_only_loss: true needs conversational data (messages), but the data is {fmt!r}; "
                          "set assistant_only_loss: false "
                          "(prompt/completion data gets completion-only loss by default)")
    resume = resolve_resume(train_cfg.resume_from_checkpoint, output_dir)
    if args.preference_negatives == "model":
        # every process generates the same greedy answers, so no broadcast is needed
        model.to(state.device)
        train, dropped = model_answers_as_negatives(m, train, model, tokenizer, args.negatives_max_new_tokens,
                                                    train_cfg.per_device_eval_batch_size)
        print(f"[{stage}] rejected answers are the model's own "
              f"({dropped} training rows dropped: answer already right)")
        if held is not None:
            held, _ = model_answers_as_negatives(m, held, model, tokenizer, args.negatives_max_new_tokens,
                                                 train_cfg.per_device_eval_batch_size)
    data_dir = output_dir / "data"
    run = StageRun(stage, output_dir, args, train_cfg)
    if main:
        run.start()
        if resume:
            set_aside_broken_checkpoints(output_dir, after=resume)
        write_jsonl(train, data_dir / "train.jsonl")
        if held is not None:
            write_jsonl(held, data_dir / "heldout.jsonl")
    state.wait_for_everyone()
    print(f"[{stage}] data: {len(train)} training rows ({fmt}), {len(held) if held is not None else 0} held-out rows "
          f"-> {data_dir}")

    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and train_cfg.max_length and train_cfg.max_length > limit:
        print(f"[{stage}] max_length {train_cfg.max_length} exceeds the model's max_position_embeddings {limit}; "
              f"using {limit}")
        train_cfg.max_length = limit
    scorer, base_scores = None, None
    if held is not None and args.evaluate_heldout:
        scorer = HeldoutScorer(m, list(held), fmt, tokenizer, train_cfg.per_device_eval_batch_size,
                               train_cfg.max_length)
        base_scores = scorer.score(model.to(state.device), is_base=True)
        print(f"[{stage}] base model on held-out: {json.dumps(_short(base_scores))}")

    # Training loop (TRL)
    peft_config = None
    if args.use_peft:
        peft_config = build_lora_config(model, args.lora_r, args.lora_alpha, args.lora_dropout,
                                        args.lora_target_modules, args.lora_modules_to_save,
                                        args.use_rslora, args.use_dora)
    trainer_class = m.trainer_class()
    if args.text_loss_weight:
        rows = train_cfg.per_device_train_batch_size
        steps = min(train_cfg.max_steps, 1000) if train_cfg.max_steps > 0 else 1000  # rows beyond are reused
        chunks = text_mix.text_rows(text_path, tokenizer, rows * steps, train_cfg.max_length, seed=train_cfg.seed)
        trainer_class = text_mix.with_text_loss(trainer_class, chunks, args.text_loss_weight, rows)
        print(f"[{stage}] text loss: {args.text_loss_weight} x LM loss on {rows} rows of {train_cfg.max_length} "
              f"tokens of plain text per step ({len(chunks)} rows in turn)")
    trainer = build_trainer(trainer_class, model, tokenizer, train_cfg, train, held, peft_config)
    if args.text_mix_fraction:
        rows = text_mix.rows_for_fraction(args.text_mix_fraction, len(trainer.train_dataset))
        chunks = text_mix.text_rows(text_path, tokenizer, rows, train_cfg.max_length, seed=train_cfg.seed)
        trainer.train_dataset = text_mix.mix_into(trainer.train_dataset, chunks, seed=train_cfg.seed)
        print(f"[{stage}] text mix: {len(chunks)} rows of {train_cfg.max_length} tokens of plain text among "
              f"{len(trainer.train_dataset)} packed rows")
    trainer.add_callback(thread_callback(threads))
    if args.max_train_seconds:
        trainer.add_callback(time_budget_callback(args.max_train_seconds, stage, threads))
    if resume:
        print(f"[{stage}] resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)

    # Save adapter, merged model, data and metrics
    state.wait_for_everyone()
    if not main:
        return {}
    trained = trainer.model
    if args.use_peft:
        with atomic_directory(output_dir / "adapter") as tmp:
            trained.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        trained = merge_adapter(trained)
    save_model_folder(trained, tokenizer, output_dir / "final")
    write_metrics(trainer.state.log_history, output_dir / "metrics.jsonl")

    record: dict[str, Any] = {}
    if scorer is not None:
        trained_scores = scorer.score(trained, is_base=False)
        record = scorer.summary(base_scores, trained_scores, base_model=args.model_name_or_path,
                                model=str(output_dir / "final"), heldout_file="data/heldout.jsonl",
                                dataset=args.dataset_name, format=fmt)
        atomic_write_json(output_dir / "eval_heldout.json", record)
        print(f"[{stage}] held-out {record['metric']}: base {record['base_value']:.4f} -> trained "
              f"{record['trained_value']:.4f} ({verdict_text(record)})")
    write_model_card(output_dir / "final", stage, args, fmt, len(train), record)
    cpu = threads.summary()
    run.complete(stage=stage, train_rows=len(train), train_tokens=tokens_trained(trainer),
                  heldout=record.get("trained_value"), steps=trainer.state.global_step,
                  torch_num_threads=torch_threads(),
                  **({"cpu": {**cpu, "busy": threads.busy()}} if cpu else {}))
    wrote = ["final/", "data/", "metrics.jsonl"] + (["adapter/"] if args.use_peft else []) + \
        (["eval_heldout.json"] if record else [])
    print(f"[{stage}] wrote {', '.join(wrote)} in {output_dir}")
    return record


TOKEN_COLUMNS = ("input_ids", "prompt_ids", "completion_ids", "chosen_ids", "rejected_ids")  # TRL's processed rows


def tokens_trained(trainer, sample: int = 1000) -> int | None:
    """About how many tokens training fed the model: rows drawn (steps x batch x accumulation x processes) times
    the mean tokens of a processed row (prompt + chosen + rejected for DPO), from up to `sample` rows."""
    dataset, args = trainer.train_dataset, trainer.args
    columns = [c for c in TOKEN_COLUMNS if c in (getattr(dataset, "column_names", None) or [])]
    if not columns or len(dataset) == 0:
        return None
    head = dataset.select(range(min(sample, len(dataset)))).select_columns(columns)
    mean = sum(len(row[c]) for row in head for c in columns) / len(head)
    rows = (trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps
            * args.world_size)
    return round(rows * mean)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def thread_callback(threads: ThreadGovernor):
    """A TrainerCallback that re-checks the CPU threads at every log line (`ThreadGovernor.recheck`)."""
    from transformers import TrainerCallback

    class Threads(TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            threads.recheck()

    return Threads()


def time_budget_callback(seconds: float, stage: str, threads: ThreadGovernor | None = None):
    """A TrainerCallback that ends training once `seconds` of training have passed; when other processes kept
    the CPUs busy (`threads`), it says the budget trained fewer steps than a quiet machine gives."""
    import time

    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.start > seconds and not control.should_training_stop:
                print(f"[{stage}] time budget of {seconds:.0f} s reached at step {state.global_step} of "
                      f"{state.max_steps}; stopping")
                if threads is not None and threads.busy():
                    free = threads.summary()
                    print(f"[{stage}] the machine was busy: {free['cpus_free_mean']:.1f} of {free['cpus']} CPUs "
                          f"free on average, so this budget trained {state.global_step} of {state.max_steps} "
                          "steps, fewer than a quiet machine gives")
                control.should_training_stop = True
            return control

    return TimeBudget()


def resolve_resume(value: str | None, output_dir: Path) -> str | None:
    """The Trainer checkpoint to resume from (`training.resume.resolve_resume`'s rules): an explicit path;
    "latest" = the newest checkpoint-N in output_dir that is complete (see `checkpoint_problem`), so a killed
    stage continues where it stopped; unset = start fresh.

    Raises:
        ConfigError: an explicit path that is not a complete checkpoint, or "latest" when output_dir holds
            checkpoints but none is complete.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                   if p.is_dir() and p.name.split("-")[1].isdigit()) if output_dir.is_dir() else []
    folder = resume_from(value, [p for _, p in found], checkpoint_problem, where=str(output_dir), error=ConfigError,
                         warn=lambda m: print(f"[finetune] {m}"),
                         start_over="move or delete them to start over, or point resume_from_checkpoint at a good one")
    return None if folder is None else str(folder)


def checkpoint_problem(folder: Path) -> str | None:
    """What makes a Trainer checkpoint folder unusable (None when it looks complete): its trainer_state.json
    must parse and name the step in the folder name, and it must hold model or adapter weights."""
    if not folder.is_dir():
        return "is not a checkpoint folder"
    try:
        step = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"has no readable trainer_state.json ({type(e).__name__}); it is partial"
    named = folder.name.rsplit("-", 1)[-1]
    if named.isdigit() and step != int(named):
        return f"is inconsistent: its trainer_state.json says step {step}, its name says {int(named)}"
    weights = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    if not any((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in weights):
        return "holds no model or adapter weights; it is partial"
    return None


def set_aside_broken_checkpoints(output_dir: Path, after: str) -> list[Path]:
    """Renames broken checkpoints newer than the one resumed from to `checkpoint-N.broken`: the Trainer's
    rotation (save_total_limit) goes by step number, so it would keep them and delete the good checkpoints
    this run writes. Returns the new names."""
    resumed = int(Path(after).name.rsplit("-", 1)[-1]) if Path(after).name.rsplit("-", 1)[-1].isdigit() else None
    moved = []
    for folder in output_dir.glob("checkpoint-*"):
        number = folder.name.split("-", 1)[1]
        if resumed is None or not number.isdigit() or int(number) <= resumed or checkpoint_problem(folder) is None:
            continue
        target = folder.with_name(folder.name + ".broken")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(folder, target)
        print(f"[finetune] moved the broken checkpoint {str(folder)!r} aside to {str(target)!r}")
        moved.append(target)
    return moved


def _short(scores: dict) -> dict:
    """The summary numbers for the log line; the item-level lists stay in eval_heldout.json."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items() if k != "per_item"}


def write_metrics(log_history: list[dict], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(entry) + "\n" for entry in log_history))


def write_model_card(folder: Path, stage: str, args: FinetuneArguments, fmt: str, rows: int, record: dict) -> None:
    """A short README.md model card (`publishing.model_card.write_stage_card`); evaluate adds its model-index later."""
    base = args.model_name_or_path if args.model_name_or_path and not os.path.isdir(args.model_name_or_path) else None
    lines = [f"# {folder.parent.name}: {stage.upper()} fine-tune", "",
             f"Fine-tuned by `llm-recipes {stage}` from `{args.model_name_or_path}` on `{args.dataset_name}` "
             f"({rows} rows, format `{fmt}`{', LoRA merged' if args.use_peft else ', full fine-tuning'}).", ""]
    if record:
        lines += [f"Held-out {record['metric']}: base {record['base_value']:.4f}, this model "
                  f"{record['trained_value']:.4f} ({verdict_text(record)}).", ""]
    lines += ["Load with `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`.", ""]
    write_stage_card(folder, {"library_name": "transformers", "pipeline_tag": "text-generation",
                              "tags": ["llm-recipes", stage], "base_model": base}, lines)


def device_defaults() -> dict[str, Any]:
    """TRL turns bf16 on by default, which on a CPU means slow emulated bf16 (or an error): use the GPU with
    bf16 where there is one, the CPU in float32 where there is none. A recipe's own values still win."""
    import torch

    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported()}


def config_classes(name: str) -> tuple[type, ...]:
    """The config dataclasses of fine-tuning stage `name`: ours, then the method's TRL config."""
    return FinetuneArguments, method(name).config_class()


def stage_main(name: str, argv=None) -> int:
    """Parses the recipe for fine-tuning stage `name` and runs it; data and LoRA errors exit with status 2."""
    args, train_cfg = parse_config(config_classes(name), argv, stage=name, defaults=device_defaults())
    try:
        run_stage(method(name), args, train_cfg)
    except (DatasetFormatError, LoraTargetError) as e:
        print(f"llm-recipes {name}: error: {e}", file=sys.stderr)
        return 2
    return 0
