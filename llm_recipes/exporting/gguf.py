"""RecipeGPT -> one GGUF file for llama.cpp (and the tools built on it: Ollama, LM Studio, llama-server).

llama.cpp's own converter (`convert_hf_to_gguf.py`) identifies a BPE tokenizer's pre-tokenizer by hashing
the token ids of a probe text, and refuses every tokenizer it has not seen ("BPE pre-tokenizer was not
recognized"): any tokenizer trained by `llm-recipes train_tokenizer` is such a tokenizer, because the ids
depend on the learned vocabulary. The split rule itself is one llama.cpp implements: our pattern is
GPT-4's with single digits, which llama.cpp knows as `bailingmoe`. So this module writes the GGUF file
itself with `gguf`, llama.cpp's own Python writer, naming that pre-tokenizer, after checking that the
tokenizer really uses our pattern.

The weights are the Llama export's (see `llama_export`), with one change llama.cpp's Llama graph needs:
it rotates adjacent pairs of each query/key head, Hugging Face rotates the two halves, so the rows of
q_proj and k_proj are permuted per head (the permutation llama.cpp's converter applies to every Llama).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..config import default_model_name
from ..fileio import atomic_directory
from ..model.modeling_recipe_gpt import RecipeGPTRotaryEmbedding
from ..pipeline.envelope import RECORD_FILES
from ..tokenizer.bpe import SPLIT_PATTERN, end_of_turn_token_id
from .llama import ExportError, check_model_folder, llama_config_from, llama_state_dict

LLAMA_CPP_PRE_TOKENIZER = "bailingmoe"  # llama.cpp's name for SPLIT_PATTERN (same regular expression)
GGUF_DTYPES = {"float32": "ALL_F32", "float16": "MOSTLY_F16", "bfloat16": "MOSTLY_BF16"}


# the rope types llama.cpp computes, and how each is written: linear and yarn as rope.scaling.* keys (what
# llama.cpp's converter writes), llama3 as a `rope_freqs` tensor; dynamic NTK has no llama.cpp equivalent
GGUF_ROPE_TYPES = ("default", "linear", "yarn", "llama3")


def write_rope_scaling(writer, config) -> None:
    import gguf

    rope = config.rope_parameters
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        writer.add_rope_scaling_yarn_beta_fast(float(rope.get("beta_fast") or 32.0))
        writer.add_rope_scaling_yarn_beta_slow(float(rope.get("beta_slow") or 1.0))


def rope_frequency_factors(config):
    """Per rotary frequency, the plain frequency over the scaled one (transformers' llama3 rule), float32."""
    import numpy as np
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    plain, _ = RecipeGPTRotaryEmbedding.compute_default_rope_parameters(config)
    scaled, _ = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config)
    return (plain / scaled).numpy().astype(np.float32)


def check_tokenizer(model_dir: Path) -> dict:
    """The folder's tokenizer.json, if llama.cpp's `bailingmoe` pre-tokenizer reproduces it: byte-level BPE
    split by our pattern. Raises ExportError otherwise (llama.cpp would cut the text differently)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError(f"{str(model_dir)!r} has no tokenizer.json (GGUF embeds the tokenizer)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    split = [s for s in steps if s.get("type") == "Split"]
    ours = (spec.get("model", {}).get("type") == "BPE"
            and len(split) == 1 and split[0].get("pattern", {}).get("Regex") == SPLIT_PATTERN
            and any(s.get("type") == "ByteLevel" for s in steps)
            and (spec.get("decoder") or {}).get("type") == "ByteLevel")
    if not ours:
        raise ExportError(f"{str(path)!r} is not a byte-level BPE tokenizer split by llm_recipes' pattern, so the "
                          "GGUF export cannot name a llama.cpp pre-tokenizer that matches it; use `--to llama` and "
                          "llama.cpp's convert_hf_to_gguf.py (which knows the tokenizers of published models)")
    return spec


def gguf_vocabulary(tokenizer, vocab_size: int):
    """Token strings (byte-level form) and llama.cpp token types for ids 0..vocab_size-1; rows past the
    tokenizer (a vocabulary padded for speed) become unused `[PAD<id>]` tokens, as llama.cpp's converter
    writes them."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise ExportError(f"the tokenizer has {len(by_id)} tokens but the model only {vocab_size} embedding rows")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def rotate_pairs(weight, n_head: int):
    """Rows of a q/k projection reordered per head from Hugging Face's half-split rotary layout to the
    interleaved pairs llama.cpp rotates (the same permutation as llama.cpp's converter)."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def export_to_gguf(model_dir: str | os.PathLike, output_dir: str | os.PathLike, dtype: str | None = None,
                   start: Callable[[], object] | None = None) -> dict:
    """Writes `output_dir/<model name>.gguf` (replacing output_dir atomically).

    Args:
        model_dir: a RecipeGPT model folder with its tokenizer (e.g. runs/quickstart/dpo/final).
        output_dir: the folder for the GGUF file.
        dtype: "float32", "float16" or "bfloat16" for the matrices (norm weights stay float32, as in
            llama.cpp's converter); default: float16 for a float16 checkpoint, bfloat16 for bfloat16, else float32.

        start: called once every check has passed, before the folder is replaced (the stage envelope's
            start: its record files are carried into the new folder).

    Returns:
        a summary: parameters, file, size in bytes, tensors, pre-tokenizer.
    """
    try:
        import gguf
    except ImportError:
        raise ExportError("--to gguf needs llama.cpp's `gguf` package: pip install -e '.[export]' (or pip install "
                          "gguf)") from None
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llm_recipes  # noqa: F401  (registers RecipeGPT)

    model_dir, output_dir = Path(model_dir), Path(output_dir)
    check_model_folder(model_dir, "GGUF")
    check_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    config = model.config
    llama_config_from(config)  # refuses what Llama (and so llama.cpp's Llama graph) cannot compute
    rope = config.rope_parameters
    if rope["rope_type"] not in GGUF_ROPE_TYPES:
        raise ExportError(f"this model uses rope_type {rope['rope_type']!r}, which llama.cpp does not compute (it has "
                          f"{', '.join(GGUF_ROPE_TYPES)}); use `--to llama` (Llama computes every type) or serve it "
                          "with `llm-recipes serve`.")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if dtype is None:
        dtype = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(model.dtype, "float32")
    file_type = getattr(gguf.LlamaFileType, GGUF_DTYPES[dtype])
    name = default_model_name(model_dir)  # runs/quickstart/dpo/final -> dpo, as `serve` names it

    tokens, token_types = gguf_vocabulary(tokenizer, config.vocab_size)
    tensor_names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    if start is not None:
        start()
    with atomic_directory(output_dir, keep=RECORD_FILES) as tmp:
        path = tmp / f"{name}.gguf"
        writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        write_rope_scaling(writer, config)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
        writer.add_tokenizer_pre(LLAMA_CPP_PRE_TOKENIZER)
        writer.add_token_list(tokens)
        writer.add_token_types(token_types)
        special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=config.vocab_size)
        special.add_to_gguf(writer)  # merges, BOS/EOS/PAD ids, add_bos_token, the chat template
        end_of_turn = end_of_turn_token_id(tokenizer)
        if end_of_turn is not None:
            # llama.cpp stops a chat turn at the end-of-turn token (tokenizer.ggml.eot_token_id)
            writer.add_eot_token_id(end_of_turn)

        count = 0
        # the Llama export's tensors: no RoPE buffers, no tied head (llama.cpp reuses token_embd for it)
        for hf_name, tensor in llama_state_dict(model).items():
            stem, _, suffix = hf_name.rpartition(".")
            target = tensor_names.get_name(stem)
            if target is None:
                raise ExportError(f"no GGUF name for the tensor {hf_name!r}")
            data = tensor.detach().float()
            if stem.endswith("q_proj"):
                data = rotate_pairs(data, config.num_attention_heads)
            elif stem.endswith("k_proj"):
                data = rotate_pairs(data, config.num_key_value_heads)
            array = data.numpy()
            if array.ndim == 1 or dtype == "float32":  # norms stay float32
                writer.add_tensor(f"{target}.{suffix}", array.astype(np.float32))
            elif dtype == "float16":
                writer.add_tensor(f"{target}.{suffix}", array.astype(np.float16))
            else:
                writer.add_tensor(f"{target}.{suffix}", gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16),
                                  raw_dtype=gguf.GGMLQuantizationType.BF16)
            count += 1
        if rope["rope_type"] == "llama3":
            # llama.cpp applies Llama 3's per-frequency scaling as divisors of the plain frequencies
            writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                              rope_frequency_factors(config))
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=True)  # a tqdm bar: a 124M model is ~0.5 GB in float32
        writer.close()
    final = output_dir / path.name
    return {"parameters": sum(p.numel() for p in model.parameters()), "file": str(final),
            "bytes": final.stat().st_size, "tensors": count, "dtype": dtype, "pre_tokenizer": LLAMA_CPP_PRE_TOKENIZER}
