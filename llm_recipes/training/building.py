"""What the loop trains: tokenizer, model (new from a preset or continued from a folder), optimizer."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError
from ..model import config_from_preset
from ..tokenizer.bpe import round_vocab_size
from .sizing import shape_for_depth


def load_tokenizer(cfg):
    from transformers import AutoTokenizer

    path = cfg.tokenizer_path or cfg.init_from
    if path is None:
        raise ConfigError("tokenizer_path is required (the folder written by `llm-recipes train-tokenizer`)")
    if not (Path(path) / "tokenizer.json").is_file() and not (Path(path) / "tokenizer_config.json").is_file():
        raise ConfigError(f"tokenizer_path {str(path)!r} is not a tokenizer folder (no tokenizer.json or "
                          f"tokenizer_config.json); expected the output of `llm-recipes train-tokenizer`")
    tokenizer = AutoTokenizer.from_pretrained(path)
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is None:
            raise ConfigError(f"tokenizer {str(path)!r} has no {name.replace('_id', '')}: packing needs BOS and EOS")
    return tokenizer


def build_model(cfg, tokenizer):
    """A new RecipeGPT from `model_preset` (+ `model_overrides`), or the model in `init_from`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    import llm_recipes  # noqa: F401  (registers RecipeGPT with the Auto classes)

    if cfg.init_from:
        if not (Path(cfg.init_from) / "config.json").is_file():
            raise ConfigError(f"init_from {cfg.init_from!r} is not a model folder (no config.json); expected a "
                              f"folder written by save_pretrained, e.g. <run>/pretrain/final")
        if cfg.model_overrides:
            raise ConfigError(
                "model_overrides cannot change a model loaded with init_from (its weights fix its shape)")
        config = AutoConfig.from_pretrained(cfg.init_from, trust_remote_code=True)
        limit = getattr(config, "max_position_embeddings", None)
        if cfg.rope_scaling:
            config = extended_context_config(config, cfg.rope_scaling, cfg.seq_len, cfg.init_from)
        elif limit is not None and cfg.seq_len > limit:
            raise ConfigError(f"seq_len {cfg.seq_len} is longer than the context of init_from {cfg.init_from!r} "
                              f"(max_position_embeddings {limit}); to extend the context, set rope_scaling "
                              f"(e.g. {{\"rope_type\": \"yarn\"}})")
        model = AutoModelForCausalLM.from_pretrained(cfg.init_from, config=config, dtype=torch.float32,
                                                     attn_implementation=cfg.attn_implementation,
                                                     trust_remote_code=True)
    else:
        overrides = dict(cfg.model_overrides or {})
        if cfg.model_depth is not None:  # the dial's family: the depth gives the shape, overrides still win
            overrides = {**shape_for_depth(cfg.model_depth), **overrides}
        overrides.setdefault("vocab_size", round_vocab_size(len(tokenizer)))
        overrides.setdefault("max_position_embeddings", cfg.seq_len)
        limit = overrides["max_position_embeddings"]
        if not isinstance(limit, int) or cfg.seq_len > limit:
            raise ConfigError(f"seq_len {cfg.seq_len} is longer than model_overrides.max_position_embeddings "
                              f"{limit!r}: "
                              f"the saved model would claim a context shorter than it was trained on; raise "
                              f"max_position_embeddings or lower seq_len")
        try:
            config = config_from_preset(cfg.model_preset or "micro", bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                        **overrides)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"model_preset {cfg.model_preset!r} with model_overrides {cfg.model_overrides}: {e}") from e
        config._attn_implementation = cfg.attn_implementation
        torch.manual_seed(cfg.seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)
    check_vocab(model, tokenizer, cfg.tokenizer_path or cfg.init_from)
    model.config.use_cache = False  # training: no KV cache, and packed rows need no attention mask
    return model


def extended_context_config(config, rope_scaling: dict, seq_len: int, source: str):
    """The checkpoint's config stretched to `seq_len` positions with scaled RoPE (the YaRN / Code Llama recipe:
    keep the weights, rescale the rotary frequencies, continue pretraining on longer rows). The trained context
    becomes `original_max_position_embeddings`; `factor` defaults to how many times longer the new one is."""
    old = int(config.max_position_embeddings)
    if config.rope_parameters.get("rope_type", "default") != "default":
        raise ConfigError(f"init_from {source!r} already uses scaled RoPE ({config.rope_parameters}); extend a "
                          "model trained with plain RoPE")
    if seq_len <= old:
        raise ConfigError(f"rope_scaling is for a seq_len longer than the context of init_from {source!r} "
                          f"({old} positions); got seq_len {seq_len}")
    parameters = {"rope_theta": config.rope_parameters["rope_theta"], "factor": seq_len / old, **rope_scaling}
    if parameters["rope_type"] in ("yarn", "llama3", "longrope"):
        parameters.setdefault("original_max_position_embeddings", old)
    try:
        extended = type(config).from_dict({**config.to_dict(), "max_position_embeddings": seq_len,
                                           "rope_parameters": parameters})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rope_scaling {rope_scaling}: {e}") from e
    print(f"pretrain: extending the context of {source} from {old} to {seq_len} positions with "
          f"{extended.rope_parameters}")
    return extended


def check_vocab(model, tokenizer, tokenizer_path) -> None:
    """Every token id the tokenizer can produce must have an embedding row."""
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"tokenizer {str(tokenizer_path)!r} has {len(tokenizer)} tokens but the model's embedding has only "
            f"{vocab} rows: use the tokenizer the model was trained with, or a larger vocab_size")


def enable_activation_checkpointing(model) -> None:
    """Recomputes each decoder layer's activations in the backward pass (non-reentrant), under the API name
    of the installed transformers: `activation_checkpointing_enable` from 5.24 (where the old name warns),
    `gradient_checkpointing_enable` before."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (norm weights are not decayed), fused where supported; or,
    with `optim: muon`, Muon for the weight matrices inside the blocks and that AdamW for the rest."""
    muon, decay, no_decay = [], [], []
    embeddings = {id(model.get_input_embeddings().weight)}
    if model.get_output_embeddings() is not None:
        embeddings.add(id(model.get_output_embeddings().weight))
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if cfg.optim == "muon" and p.dim() == 2 and id(p) not in embeddings:
            muon.append(p)  # Muon orthogonalises matrix updates; embeddings and head are lookups, not maps
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)
    device = next(model.parameters()).device
    if device.type == "cuda":
        kwargs["fused"] = True  # one kernel for all parameters instead of a loop over them
    adamw = torch.optim.AdamW(groups, **kwargs)
    if not muon:
        return adamw
    if not hasattr(torch.optim, "Muon"):
        raise ConfigError(f"optim: muon needs torch.optim.Muon, which this torch ({torch.__version__}) does not have; "
                          "upgrade torch or use optim: adamw")
    return MuonWithAdamW(torch.optim.Muon(muon, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                          momentum=cfg.muon_momentum, adjust_lr_fn="match_rms_adamw"), adamw)


class MuonWithAdamW(torch.optim.Optimizer):
    """Two optimizers over disjoint parameters that step, checkpoint and restore as one, so that Accelerate
    prepares and saves it like any optimizer and the loop's learning-rate schedule reaches every group."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw
        super().__init__([{"params": []}], {})
        self._share_groups()

    def _share_groups(self) -> None:
        # the very dicts of the inner optimizers: a learning rate set here is the one they use
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(f"not a Muon+AdamW optimizer state (keys {sorted(state_dict)}): was the checkpoint "
                             f"written with a different `optim`?")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._share_groups()  # load_state_dict replaces the inner group dicts
