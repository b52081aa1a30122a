"""The pretraining stage's configuration: HF Trainer key names where one exists, our own keys otherwise."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Union

from ..config import RESUME_LATEST, RESUME_OFF, ConfigError, check_range

SCHEDULES = ("cosine", "wsd", "linear", "constant")
DATA_MODES = ("stream", "shards")
OPTIMIZERS = ("adamw", "muon")
# what the keys the compute-budget dial chooses are without it
FIXED_DEFAULTS = {"model_preset": "micro", "seq_len": 256, "per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": 1, "learning_rate": 6e-4, "warmup_steps": 100, "max_steps": 1000}


@dataclass
class PretrainConfig:
    # -- where things are --------------------------------------------------------------------------
    output_dir: str = field(metadata={"help": "Folder for checkpoints/, final/, metrics.jsonl and logs."})
    dataset_path: Optional[str] = field(default=None, metadata={
        "help": "Clean dataset folder with train/*.parquet and validation/*.parquet (output of `clean`)."})
    tokenizer_path: Optional[str] = field(default=None, metadata={
        "help": "Tokenizer folder (output of `train-tokenizer`); defaults to init_from when that is set."})
    text_column: str = field(default="text", metadata={"help": "Column of the parquet files that holds the text."})
    data_mode: str = field(default="stream", metadata={
        "help": "'stream': tokenize and pack on the fly (no preparation, any size); 'shards': tokenize once into "
                "memory-mapped uint16/uint32 token shards under tokenized_path (fastest steps, exact resume)."})
    tokenized_path: Optional[str] = field(default=None, metadata={
        "help": "Where data_mode 'shards' writes and reuses token shards (default: <output_dir>/tokens)."})
    tokenize_num_proc: Optional[int] = field(default=None, metadata={
        "help": "Processes for pre-tokenizing in data_mode 'shards' (default: all cores)."})
    shuffle_buffer: int = field(default=10_000, metadata={
        "help": "Documents held in the stream shuffle buffer (data_mode 'stream'); 0 keeps file order."})

    # -- the model ---------------------------------------------------------------------------------
    compute_budget_seconds: Optional[float] = field(default=None, metadata={
        "help": "The dial: seconds of training on this device. Sizes a new model (depth, hence width), its seq_len, "
                "batch, learning rate, warmup and token count from a timing probe of the device and a scaling "
                "law fitted on CPU sweeps (llm_recipes/training/sizing.py), and sets max_train_seconds. Keys set "
                "in the recipe win over the dial's choice; the choice is logged and written to sizing.json and "
                "run_info.json."})
    model_depth: Optional[int] = field(default=None, metadata={
        "help": "Layers of a new model in the dial's family (64 x depth wide, 64-wide heads; depth 4 is 4 x 256, "
                "12 is GPT-2 small's 12 x 768); replaces model_preset. With compute_budget_seconds: fixes the "
                "depth and the dial derives the rest."})
    model_preset: Optional[str] = field(default=None, metadata={
        "help": "Size preset of a new RecipeGPT: test, nano, micro, gpt2-small, gpt2-medium, 1b (default micro; "
                "with compute_budget_seconds the dial picks the size unless this is set)."})
    init_from: Optional[str] = field(default=None, metadata={
        "help": "HF model folder to continue pretraining from (domain-adaptive pretraining); replaces model_preset."})
    model_overrides: Optional[Union[dict, str]] = field(default=None, metadata={
        "help": "Per-key overrides of the preset config, a mapping (YAML) or JSON string, e.g. "
                "{\"num_hidden_layers\": 4, \"hidden_size\": 128}."})
    seq_len: Optional[int] = field(default=None, metadata={
        "help": "Tokens per packed training row (context length); default 256, or the dial's choice."})
    rope_scaling: Optional[Union[dict, str]] = field(default=None, metadata={
        "help": "Context extension with init_from: continue pretraining at a seq_len longer than the checkpoint's "
                "context with scaled RoPE, a mapping (YAML) or JSON string of transformers' rope_parameters, e.g. "
                "{\"rope_type\": \"yarn\"} (linear, dynamic, yarn, llama3; `factor` defaults to seq_len / the "
                "old context, `original_max_position_embeddings` to the old context)."})
    torch_num_threads: Optional[int] = field(default=None, metadata={
        "help": "CPU threads for torch on the CPU; default: the CPUs free at the start (other busy processes "
                "make extra threads spin and wait), re-checked at every log line."})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "Attention kernel: sdpa, eager, flash_attention_2, ..."})
    document_masking: bool = field(default=True, metadata={
        "help": "Keep packed documents from attending to each other (position_ids restart per document). "
                "False lets attention cross document boundaries (GPT-2 style), which allows the fastest "
                "causal kernels on GPU."})

    # -- optimisation ------------------------------------------------------------------------------
    learning_rate: Optional[float] = field(default=None, metadata={
        "help": "Peak learning rate of AdamW; default 6e-4, or the dial's choice."})
    min_lr_ratio: float = field(default=0.1, metadata={"help": "Final learning rate as a fraction of the peak."})
    lr_scheduler_type: str = field(default="cosine", metadata={
        "help": "Schedule after linear warmup: cosine, wsd (warmup-stable-decay), linear, constant."})
    warmup_steps: Optional[int] = field(default=None, metadata={
        "help": "Linear warmup steps from 0 to the peak learning rate; default 100, or the dial's choice."})
    decay_ratio: float = field(default=0.2, metadata={
        "help": "wsd only: fraction of training spent in the final (linear) decay."})
    optim: str = field(default="adamw", metadata={
        "help": "adamw, or muon: Muon (orthogonalised momentum, torch.optim.Muon with AdamW-matched update RMS, "
                "so the same learning_rate and weight_decay apply) for the weight matrices inside the blocks, "
                "AdamW for embeddings, head and norms."})
    muon_momentum: float = field(default=0.95, metadata={"help": "optim muon: momentum of the Muon matrices."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on matrices (not norms)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables clipping)."})
    per_device_train_batch_size: Optional[int] = field(default=None, metadata={
        "help": "Packed rows per micro-batch per process; default 8, or the dial's choice."})
    per_device_eval_batch_size: Optional[int] = field(default=None, metadata={
        "help": "Rows per evaluation batch per process (default: the train batch size)."})
    gradient_accumulation_steps: Optional[int] = field(default=None, metadata={
        "help": "Micro-batches per optimizer step; the loss is normalised by the token count of all of them "
                "(default 1, or the dial's choice)."})
    max_steps: Optional[int] = field(default=None, metadata={
        "help": "Optimizer steps to train (an upper bound with max_train_seconds); default 1000, with the dial "
                "ten times its planned steps."})
    max_train_seconds: Optional[float] = field(default=None, metadata={
        "help": "Wall-clock training budget in seconds; the learning-rate schedule then runs on elapsed time, "
                "so the decay completes within the budget (CPU benchmarks). Not exactly reproducible."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation and data order."})

    # -- numerics and speed ------------------------------------------------------------------------
    bf16: Optional[bool] = field(default=None, metadata={
        "help": "bf16 autocast (default: on where the GPU supports it, off on CPU)."})
    torch_compile: bool = field(default=False, metadata={"help": "torch.compile the model."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in the backward pass (less memory, ~30% slower)."})
    dataloader_num_workers: int = field(default=0, metadata={
        "help": "Data loader worker processes for data_mode 'shards' (stream mode tokenizes in the main process)."})

    # -- faults ------------------------------------------------------------------------------------
    skip_nonfinite: bool = field(default=True, metadata={
        "help": "Skip the optimizer update (and log it) when the loss or gradient norm is NaN/inf."})
    outlier_zscore: float = field(default=6.0, metadata={
        "help": "Skip the update when the gradient norm is this many standard deviations above the mean of "
                "the last outlier_window steps (llm.c); 0 disables."})
    outlier_window: int = field(default=128, metadata={"help": "Steps of gradient-norm history for outlier_zscore."})

    # -- evaluation, samples, logging, checkpoints -------------------------------------------------
    logging_steps: int = field(default=10, metadata={"help": "Write a metrics.jsonl line every this many steps."})
    eval_steps: int = field(default=200, metadata={
        "help": "Evaluate (val loss, perplexity, bits per byte) every this many steps; 0: only at the end."})
    eval_max_batches: int = field(default=20, metadata={
        "help": "Validation batches per evaluation and process (-1: the whole validation split)."})
    sample_prompts: list[str] = field(default_factory=lambda: ["The", "def "], metadata={
        "help": "Prompts continued at every evaluation (written to samples.jsonl and the log)."})
    sample_max_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per sample prompt."})
    sample_temperature: float = field(default=0.8, metadata={
        "help": "Sampling temperature of the samples (0: greedy)."})
    save_steps: int = field(default=500, metadata={"help": "Write a checkpoint every this many steps (0: none)."})
    save_total_limit: int = field(default=2, metadata={"help": "Complete checkpoints kept (older ones are deleted)."})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={
        "help": "Checkpoint folder to continue from, or 'latest' (the newest complete checkpoint in "
                "output_dir/checkpoints; starts fresh when there is no checkpoint at all, and stops with an error "
                "when there are checkpoints but none is complete: overwrite_output_dir: true then starts over)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start from scratch even though output_dir already holds checkpoints (they are deleted)."})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={
        "help": "Accelerate trackers: tensorboard, wandb, mlflow, ... or none."})

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError naming the key for values that cannot work."""
        if self.compute_budget_seconds is not None:
            if self.compute_budget_seconds <= 0:
                raise ConfigError(f"compute_budget_seconds must be positive, got {self.compute_budget_seconds}")
            if self.init_from:
                raise ConfigError("compute_budget_seconds sizes a new model; with init_from the model's size is "
                                  "fixed: set max_train_seconds instead")
        else:  # no dial: what is not set takes the fixed defaults
            for key, value in FIXED_DEFAULTS.items():
                if getattr(self, key) is None and not (key == "model_preset" and self.model_depth is not None):
                    setattr(self, key, value)
        if self.model_depth is not None and self.model_depth < 1:
            raise ConfigError(f"model_depth must be at least 1, got {self.model_depth}")
        if self.model_depth is not None and self.model_preset is not None:
            raise ConfigError("set model_depth or model_preset, not both (a depth defines the whole shape)")
        # keys the dial chooses are None until it has (loop.pretrain sizes the run, then validates again)
        for key in ("max_steps", "seq_len", "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.seq_len is not None and self.seq_len < 2:
            raise ConfigError(f"seq_len must be at least 2 (one input and one target token), got {self.seq_len}")
        if self.data_mode not in DATA_MODES:
            raise ConfigError(f"data_mode must be one of {', '.join(DATA_MODES)}, got {self.data_mode!r}")
        if self.optim not in OPTIMIZERS:
            raise ConfigError(f"optim must be one of {', '.join(OPTIMIZERS)}, got {self.optim!r}")
        if self.lr_scheduler_type not in SCHEDULES:
            raise ConfigError(
                f"lr_scheduler_type must be one of {', '.join(SCHEDULES)}, got {self.lr_scheduler_type!r}")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 < self.decay_ratio <= 1:
            raise ConfigError(f"decay_ratio must be in (0, 1], got {self.decay_ratio}")
        if (self.warmup_steps or 0) < 0 or self.save_steps < 0 or self.eval_steps < 0 or self.logging_steps < 0:
            raise ConfigError("warmup_steps, save_steps, eval_steps and logging_steps must not be negative")
        if self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit must be at least 1, got {self.save_total_limit}")
        if self.max_train_seconds is not None and self.max_train_seconds <= 0:
            raise ConfigError(f"max_train_seconds must be positive, got {self.max_train_seconds}")
        for key in ("shuffle_buffer", "weight_decay", "max_grad_norm", "outlier_zscore", "dataloader_num_workers",
                    "sample_max_new_tokens", "sample_temperature"):
            check_range(self, key, 0)
        for key in ("tokenize_num_proc", "per_device_eval_batch_size", "outlier_window"):
            check_range(self, key, 1)
        for key in ("adam_beta1", "adam_beta2", "muon_momentum"):
            check_range(self, key, 0, 1, high_open=True)
        check_range(self, "adam_epsilon", 0, low_open=True)
        if not (self.eval_max_batches == -1 or self.eval_max_batches >= 1):
            raise ConfigError(f"eval_max_batches must be -1 (the whole validation split) or >= 1, "
                              f"got {self.eval_max_batches}")
        if isinstance(self.model_overrides, str):
            try:
                self.model_overrides = json.loads(self.model_overrides)
            except json.JSONDecodeError as e:
                raise ConfigError(f"model_overrides must be a mapping or a JSON object string: {e}") from e
        if self.model_overrides is not None and not isinstance(self.model_overrides, dict):
            raise ConfigError(f"model_overrides must be a mapping, got {type(self.model_overrides).__name__}")
        if isinstance(self.rope_scaling, str):
            try:
                self.rope_scaling = json.loads(self.rope_scaling)
            except json.JSONDecodeError as e:
                raise ConfigError(f"rope_scaling must be a mapping or a JSON object string: {e}") from e
        if self.rope_scaling is not None:
            if not isinstance(self.rope_scaling, dict) or "rope_type" not in self.rope_scaling:
                raise ConfigError(f"rope_scaling must be a mapping with a rope_type (linear, dynamic, yarn, llama3), "
                                  f"got {self.rope_scaling!r}")
            if not self.init_from:
                raise ConfigError("rope_scaling extends the context of a trained model: set init_from to its folder "
                                  "(a new model takes its RoPE from model_overrides.rope_parameters)")
        if isinstance(self.resume_from_checkpoint, str):  # the spellings fine-tuning's resume accepts too
            lowered = self.resume_from_checkpoint.lower()
            if lowered in ("", *RESUME_OFF):
                self.resume_from_checkpoint = None
            elif lowered in RESUME_LATEST:
                self.resume_from_checkpoint = "latest"
        if isinstance(self.report_to, str):
            self.report_to = [self.report_to]
        if isinstance(self.sample_prompts, str):
            self.sample_prompts = [self.sample_prompts]

    @property
    def sized(self) -> bool:
        """Every key the compute-budget dial may choose has a value (always so without compute_budget_seconds)."""
        return all(getattr(self, key) is not None for key in FIXED_DEFAULTS if key != "model_preset")

    @property
    def trackers(self) -> list[str]:
        return [t for t in self.report_to if t and t not in ("none", "None")]
