"""The pretraining loop: one function on Accelerate primitives, read top to bottom.

Per optimizer step: set the learning rate, fetch `gradient_accumulation_steps` micro-batches, count
their target tokens over all processes, backpropagate each micro-batch's summed loss divided by that
global count (so 8 x 1 and 1 x 8 give the same update), clip, skip the update on a NaN/inf or outlier
gradient norm, step. Once in a while: log, evaluate (+ samples), checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ConfigError, config_to_dict
from ..fileio import atomic_write_json, read_json, remove_leftovers
from ..pipeline.envelope import StageRun
from ..runtime.threads import ThreadGovernor
from ..tokenizer.bpe import end_of_turn_token_ids
from .building import build_model, check_vocab, enable_activation_checkpointing, load_tokenizer, make_optimizer
from .checkpoint import (
    check_resume,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    tokenizer_fingerprint,
)
from .data import build_eval_batches, build_train_batches, corpus_tokens
from .evaluation import evaluate, generate_samples, shifted_targets, token_byte_lengths, token_loss_sum
from .model_folder import save_model_folder
from .monitor import MetricsLog, OutlierGuard, model_flops_utilization, peak_flops, skipped_updates_warning
from .processes import check_process_group
from .schedule import learning_rate_at
from .sizing import SIZING_FILE, record_plan, shortfall, size_run


@dataclass
class PretrainResult:
    """What a pretraining run did (returned by `pretrain`, also in stage_complete.json)."""

    step: int = 0
    tokens: int = 0
    skipped_steps: int = 0
    final_dir: Path | None = None
    last_checkpoint: Path | None = None
    eval_metrics: dict[str, Any] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def _make_accelerator(cfg):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    out = Path(cfg.output_dir)
    return Accelerator(
        mixed_precision="bf16" if bf16 else "no",
        log_with=cfg.trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def _check_output_dir(cfg, checkpoints: Path) -> None:
    """Refuses to silently restart over existing checkpoints (nothing is touched yet)."""
    existing = list_checkpoints(checkpoints)
    if existing and not cfg.resume_from_checkpoint and not cfg.overwrite_output_dir:
        raise ConfigError(
            f"output_dir {cfg.output_dir!r} already holds checkpoints ({existing[-1].name}); set "
            f"resume_from_checkpoint: latest to continue that run, or overwrite_output_dir: true to start over")


def _start_output_dir(cfg, run: StageRun, accelerator, checkpoints: Path) -> None:
    """After every check passed: starts the stage's envelope (marker cleared, resolved config written),
    deletes the checkpoints of an overwrite, clears the leftovers of killed checkpoint saves."""
    if accelerator.is_main_process:
        run.start()
        if cfg.overwrite_output_dir:
            shutil.rmtree(checkpoints, ignore_errors=True)
        remove_leftovers(checkpoints)
    accelerator.wait_for_everyone()


def _tracker_config(cfg) -> dict[str, Any]:
    # TensorBoard's hparams accept only scalars
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
            for k, v in config_to_dict(cfg).items()}


def pretrain(cfg, model=None, on_batch: Callable[[int, list[dict]], None] | None = None,
             run: StageRun | None = None) -> PretrainResult:
    """Trains a causal LM on the packed text of `cfg.dataset_path`; see `PretrainConfig` for the knobs.

    Args:
        cfg: a `PretrainConfig`.
        model: an already built model to train instead of `model_preset` / `init_from` (tests use it to
            inject faults); the tokenizer still comes from cfg.
        on_batch: called with (step, micro-batches) on every process before each step (tests record
            which rows each process saw).
        run: the stage envelope (default: a new one for cfg.output_dir).

    Returns:
        A `PretrainResult`. The model is saved in `output_dir/final` (loads with plain transformers).
    """
    from accelerate.utils import broadcast, is_compiled_module, set_seed
    from tqdm.auto import tqdm

    accelerator = _make_accelerator(cfg)
    check_process_group(accelerator.num_processes, "pretrain")
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"
    say = accelerator.print
    _check_output_dir(cfg, checkpoints)
    set_seed(cfg.seed)
    # CPU threads from the CPUs actually free (one process on the CPU; several share the cores already)
    threads = ThreadGovernor("pretrain", say, cfg.torch_num_threads,
                             active=accelerator.device.type == "cpu" and accelerator.num_processes == 1)

    # ---- the compute-budget dial, model, data, optimizer ---------------------------------------------
    tokenizer = load_tokenizer(cfg)
    resume = None
    if not cfg.overwrite_output_dir:  # an overwrite deletes the checkpoints instead
        resume = resolve_resume(cfg.resume_from_checkpoint, checkpoints, warn=lambda m: say(f"pretrain: {m}"))
    plan = None
    if cfg.compute_budget_seconds is not None:
        if model is not None:
            raise ConfigError("compute_budget_seconds sizes a new model; it cannot size a model passed in")
        if cfg.dataset_path is None:
            raise ConfigError("dataset_path is required (the folder written by `llm-recipes clean`)")
        saved = read_json(out / SIZING_FILE) if resume is not None else None
        plan = size_run(cfg, tokenizer, accelerator, corpus_tokens(cfg, tokenizer, accelerator), say,
                        saved=saved.get("plan") if isinstance(saved, dict) else None)
    if model is None:
        model = build_model(cfg, tokenizer)
    else:
        check_vocab(model, tokenizer, cfg.tokenizer_path)
        model.config.use_cache = False
    if cfg.dataset_path is None:
        raise ConfigError("dataset_path is required (the folder written by `llm-recipes clean`)")
    train_batches = build_train_batches(cfg, tokenizer, accelerator)
    eval_batches = build_eval_batches(cfg, tokenizer, accelerator)
    # what a checkpoint must share with this run to be continued by it
    run_identity = {"model_shape": _model_shape(model),
                    "max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
                    "tokenizer_sha256": tokenizer_fingerprint(cfg.tokenizer_path or cfg.init_from),
                    **{k: getattr(cfg, k) for k in ("seq_len", "data_mode", "per_device_train_batch_size")}}
    if resume is not None:
        check_resume(resume, run_identity, accelerator.num_processes)
    run = run or StageRun("pretrain", cfg.output_dir, cfg)
    _start_output_dir(cfg, run, accelerator, checkpoints)  # every check passed: from here on the old output goes
    if plan is not None and accelerator.is_main_process:
        record_plan(out, plan)
    byte_lengths = token_byte_lengths(tokenizer, model.config.vocab_size)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    model.to(accelerator.device)
    optimizer = make_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.torch_compile and not is_compiled_module(model):  # `accelerate launch --dynamo_backend` compiles in prepare
        # compiled here, not through Accelerator(dynamo_plugin=...): that setting lives in AcceleratorState, a
        # process-wide singleton, so it was silently ignored whenever an earlier stage in the same process had
        # created an Accelerator without it. Compiling the prepared (DDP-wrapped) model is what Accelerate does.
        model = torch.compile(model)
    # the loss compiled too: the float32 upcast, log-softmax and NLL fuse instead of writing two float32
    # copies of the logits (at a 50K vocabulary 15-20% of a small model's step on CPU; benchmarks/README.md)
    loss_fn = torch.compile(token_loss_sum) if cfg.torch_compile else token_loss_sum
    raw_model = accelerator.unwrap_model(model, keep_torch_compile=False)
    flops_per_token = (raw_model.flops_per_token(cfg.seq_len) if hasattr(raw_model, "flops_per_token")
                       else 6 * sum(p.numel() for p in raw_model.parameters()))
    peak = peak_flops(accelerator.device)
    world = accelerator.num_processes
    tokens_per_step = cfg.per_device_train_batch_size * cfg.seq_len * cfg.gradient_accumulation_steps * world
    guard = OutlierGuard(cfg.outlier_zscore, cfg.outlier_window, skip_nonfinite=cfg.skip_nonfinite)
    metrics = MetricsLog(out / "metrics.jsonl")
    result = PretrainResult()

    # ---- resume ------------------------------------------------------------------------------------
    step, tokens, elapsed_before, skipped = 0, 0, 0.0, 0
    if resume is not None:
        state, data_state = load_checkpoint(accelerator, resume, run_identity)
        step, tokens, elapsed_before, skipped = state["step"], state["tokens"], state["elapsed"], state["skipped"]
        guard.load_state_dict(state["guard"])
        if data_state is not None:
            train_batches.load_state_dict(data_state)
        result.last_checkpoint = resume
        say(f"pretrain: resumed from {resume} at step {step} ({tokens:,} tokens)")
    elif cfg.resume_from_checkpoint == "latest":
        say(f"pretrain: no checkpoint in {checkpoints} yet, starting fresh")
    if accelerator.is_main_process:
        if resume is not None:
            metrics.truncate_after(step)
        elif metrics.path.exists():
            metrics.path.unlink()
    if cfg.trackers:
        accelerator.init_trackers("pretrain", config=_tracker_config(cfg))
    if step >= cfg.max_steps:
        say(f"pretrain: checkpoint step {step} already reaches max_steps {cfg.max_steps}; nothing to train")

    def trainer_state() -> dict[str, Any]:
        return {"step": step, "tokens": tokens, "elapsed": elapsed_before + (time.time() - start), "skipped": skipped,
                "guard": guard.state_dict(), "world_size": world, **run_identity,
                **{k: getattr(cfg, k) for k in ("gradient_accumulation_steps", "max_steps", "learning_rate")}}

    def run_eval() -> dict[str, Any]:
        scores = evaluate(model, eval_batches, accelerator, byte_lengths, cfg.document_masking)
        record = {"step": step, "tokens": tokens, **scores}
        if accelerator.is_main_process:
            metrics.write(record)
            if cfg.sample_prompts and cfg.sample_max_new_tokens > 0:
                samples = generate_samples(raw_model, tokenizer, cfg.sample_prompts, cfg.sample_max_new_tokens,
                                           cfg.sample_temperature, cfg.seed, end_of_turn_token_ids(tokenizer))
                with open(out / "samples.jsonl", "a", encoding="utf-8") as f:
                    for s in samples:
                        f.write(json.dumps({"step": step, **s}, ensure_ascii=False) + "\n")
                for s in samples:
                    tqdm.write(f"  sample | {s['prompt']}{s['completion']!r}"[:300])
        accelerator.log(dict(scores), step=step)
        if accelerator.is_main_process:
            tqdm.write(f"step {step}: val loss {scores['val_loss']:.4f}, perplexity {scores['val_perplexity']:.2f}, "
                       f"bits/byte {scores['val_bits_per_byte']:.4f}")
        return scores

    # ---- the loop ----------------------------------------------------------------------------------
    model.train()
    start = time.time()
    budget = cfg.max_train_seconds
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True,
               disable=not accelerator.is_local_main_process)
    window_tokens, window_time = 0, 0.0
    last_eval_step = -1
    while step < cfg.max_steps:
        progress = None
        if budget is not None:
            elapsed = torch.tensor([elapsed_before + time.time() - start], dtype=torch.float64,
                                   device=accelerator.device)
            elapsed = float(broadcast(elapsed)[0]) if world > 1 else float(elapsed[0])  # every process decides alike
            if elapsed >= budget:
                say(f"pretrain: wall-clock budget of {budget:g}s reached at step {step}")
                if threads.busy():
                    free = threads.summary()
                    say(f"pretrain: the machine was busy: {free['cpus_free_mean']:.1f} of {free['cpus']} CPUs free on "
                        f"average, so this budget trained {tokens:,} tokens, fewer than a quiet machine gives")
                short = shortfall(tokens, plan.planned_tokens if plan else None)
                if short:
                    say(f"pretrain: warning: {short}")
                break
            progress = elapsed / budget
        t0 = time.perf_counter()
        lr = learning_rate_at(step, cfg.max_steps, cfg.learning_rate, cfg.warmup_steps, cfg.lr_scheduler_type,
                              cfg.min_lr_ratio, cfg.decay_ratio, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr

        micro_batches = [next(train_batches) for _ in range(cfg.gradient_accumulation_steps)]
        if on_batch is not None:
            on_batch(step, micro_batches)
        # normalise by the target tokens of the whole step on all processes, not per micro-batch
        count = sum((shifted_targets(b["labels"]) != -100).sum() for b in micro_batches)
        global_count = accelerator.reduce(torch.as_tensor(count, device=accelerator.device), reduction="sum")
        loss_sum = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            # DDP all-reduces gradients only on the last micro-batch
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                input_ids = batch["input_ids"].to(accelerator.device, non_blocking=True)
                labels = batch["labels"].to(accelerator.device, non_blocking=True)
                kwargs = {"position_ids": batch["position_ids"].to(accelerator.device)} if cfg.document_masking else {}
                with accelerator.autocast():
                    logits = model(input_ids=input_ids, use_cache=False, **kwargs).logits
                micro_loss, _ = loss_fn(logits, labels)
                # DDP averages gradients over processes, so scale by world: the result is sum / global count
                accelerator.backward(micro_loss * world / global_count.clamp(min=1))
            loss_sum += micro_loss.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(),
                                                cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        loss = float(accelerator.reduce(loss_sum, reduction="sum") / global_count.clamp(min=1))
        grad_norm = float(grad_norm)
        reason = guard.check(loss, grad_norm)
        if reason is None:
            optimizer.step()
        else:
            skipped += 1
            say(f"pretrain: step {step + 1}: skipped the update: {reason} (loss {loss:.4g})")
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += tokens_per_step
        result.losses.append(loss)

        # ---- once in a while: log, evaluate, save ------------------------------------------------
        dt = time.perf_counter() - t0
        window_tokens, window_time = window_tokens + tokens_per_step, window_time + dt
        tokens_per_sec = window_tokens / max(window_time, 1e-9)
        mfu = model_flops_utilization(flops_per_token, tokens_per_sec / world, peak)
        bar.update(1)
        if budget is not None and progress:
            # with a wall-clock budget, the bar's total is the step the budget will end at (so is its ETA)
            bar.total = min(cfg.max_steps, max(step + 1, round(step / progress)))
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_sec:,.0f}",
                        mfu=f"{mfu:.1%}" if mfu is not None else "n/a", lr=f"{lr:.2e}", refresh=False)
        if reason is not None or (cfg.logging_steps and step % cfg.logging_steps == 0) or step == cfg.max_steps:
            record = {"step": step, "tokens": tokens, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_sec": round(tokens_per_sec, 1), "mfu": mfu,
                      "elapsed": round(elapsed_before + time.time() - start, 2)}
            if reason is not None:
                record["skipped"] = reason
            if accelerator.is_main_process:
                metrics.write(record)
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and v is not None},
                            step=step)
            window_tokens, window_time = 0, 0.0
            threads.recheck()
        if cfg.eval_steps and step % cfg.eval_steps == 0:
            result.eval_metrics = run_eval()
            last_eval_step = step
        if cfg.save_steps and step % cfg.save_steps == 0:
            result.last_checkpoint = save_checkpoint(accelerator, checkpoints, step, trainer_state(),
                                                     train_batches.state_dict(), cfg.save_total_limit)
    bar.close()

    # ---- the end: final evaluation, checkpoint, model folder ---------------------------------------
    if last_eval_step != step:
        result.eval_metrics = run_eval()
    if cfg.save_steps and (result.last_checkpoint is None or not result.last_checkpoint.name.endswith(f"{step:08d}")):
        result.last_checkpoint = save_checkpoint(accelerator, checkpoints, step, trainer_state(),
                                                 train_batches.state_dict(), cfg.save_total_limit)
    result.step, result.tokens, result.skipped_steps = step, tokens, skipped
    result.final_dir = save_final_model(accelerator, model, tokenizer, out / "final", cfg, result)
    # Drop the DDP wrapper while its process group is still alive. Freed after end_training, its
    # Reducer would hold the last reference to the gloo group, whose destructor joins a worker thread
    # that waits for the GIL this thread holds: a hang at exit (seen on 2-process CPU runs).
    model = optimizer = raw_model = None
    accelerator.free_memory()
    accelerator.end_training()
    if accelerator.is_main_process:
        cpu = threads.summary()
        skipped_warning = skipped_updates_warning(skipped, step)
        summary = {"steps": step, "tokens": tokens, "skipped_steps": skipped,
                   **({"skipped_warning": skipped_warning} if skipped_warning else {}),
                   "eval": result.eval_metrics, "final_dir": str(result.final_dir),
                   **({"cpu": {**cpu, "busy": threads.busy()}} if cpu else {})}
        if plan is not None:
            summary["sizing"] = {"parameters": plan.parameters, "depth": plan.depth,
                                 "planned_tokens": plan.planned_tokens, "planned_steps": plan.planned_steps,
                                 "shortfall": shortfall(tokens, plan.planned_tokens)}
        atomic_write_json(out / "train_summary.json", summary)
        run.complete(**summary)
        say(f"pretrain: {step} steps, {tokens:,} tokens, {skipped} skipped updates; "
            f"val loss {result.eval_metrics.get('val_loss', float('nan')):.4f}, "
            f"bits/byte {result.eval_metrics.get('val_bits_per_byte', float('nan')):.4f}\n"
            f"pretrain: wrote the model to {result.final_dir}, metrics to {metrics.path}, "
            f"checkpoints to {checkpoints}")
        if skipped_warning:
            say(f"pretrain: warning: {skipped_warning}")
    return result


def _model_shape(model) -> dict[str, Any]:
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads")
    return {k: getattr(model.config, k, None) for k in keys}


def save_final_model(accelerator, model, tokenizer, final_dir: Path, cfg, result: PretrainResult) -> Path:
    """The model folder (`training.model_folder.save_model_folder`); every process must call this (gathering a
    sharded state dict is collective)."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        # a compiled model's keys carry torch.compile's wrapper prefix; the saved folder must not
        state_dict = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
        raw = accelerator.unwrap_model(model, keep_torch_compile=False)
        card = ({"library_name": "transformers", "tags": ["llm-recipes", "text-generation"]},
                _card_lines(cfg, result, raw))
        save_model_folder(raw, tokenizer, final_dir, state_dict=state_dict, card=card, fresh_generation=True)
        raw.config.use_cache = False  # training goes on with the same model object in tests
    accelerator.wait_for_everyone()
    return final_dir


def _card_lines(cfg, result: PretrainResult, model) -> list[str]:
    """The body of the pretrained model's card (`publishing.model_card.write_stage_card` adds the metadata)."""
    m = result.eval_metrics
    n_params = sum(p.numel() for p in model.parameters())
    source = (f"continued from `{cfg.init_from}`" if cfg.init_from else f"preset `{cfg.model_preset}`"
              if cfg.model_preset else f"depth {cfg.model_depth}")
    lines = [
        "# Pretrained with llm_recipes", "",
        f"A {n_params / 1e6:.1f}M-parameter {model.config.model_type} ({source}) pretrained with "
        f"`llm-recipes pretrain` on `{cfg.dataset_path}`.", "",
        f"- steps: {result.step}, tokens: {result.tokens:,}, context: {cfg.seq_len}",
        f"- peak learning rate {cfg.learning_rate}, schedule {cfg.lr_scheduler_type}, "
        f"global batch {cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps} rows per process",
    ]
    warning = skipped_updates_warning(result.skipped_steps, result.step)
    if warning:
        lines.append(f"- **updates skipped**: {warning}")
    if m:
        lines.append(f"- validation: loss {m.get('val_loss', float('nan')):.4f}, perplexity "
                     f"{m.get('val_perplexity', float('nan')):.2f}, "
                     f"bits per byte {m.get('val_bits_per_byte', float('nan')):.4f}")
    lines += ["", "```python", "import llm_recipes  # or pass trust_remote_code=True",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained(PATH)", "tokenizer = AutoTokenizer.from_pretrained(PATH)",
              "```", ""]
    return lines
