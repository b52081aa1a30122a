"""`llm-recipes export --to gguf`: one GGUF file that llama.cpp reads as our model (same tokens, same
logits), or a clear refusal. The llama.cpp checks run where llama-cpp-python is installed (it compiles
llama.cpp, so it is not a test dependency); the file's contents are checked with gguf's reader always."""

from __future__ import annotations

import json

import pytest
from test_export_llama import _save_model

# text that exercises the pre-tokenizer: digits (split one by one), runs of spaces and newlines,
# contractions, punctuation runs, non-ASCII letters, emoji
PROBES = ["The cat sat on the mat.", "def f(x):\n    return x ** 2\n\n\nprint(f(12345))",
          "I've been told he'll say 'RE you sure?' ... !!!", "naïve café — 3.14 ≈ π, 日本語のテキスト 🦙🦙",
          "  leading spaces\t\ttabs\r\nand CRLF", "x" * 40]


def _export(tmp_path, tokenizer_dir, dtype=None, **overrides):
    from llm_recipes.cli import main

    source = tmp_path / "model"
    model = _save_model(source, tokenizer_dir, **overrides)
    out = tmp_path / "gguf"
    args = ["export", str(source), "--to", "gguf", "--output_dir", str(out)] + (["--dtype", dtype] if dtype else [])
    assert main(args) == 0
    (path,) = out.glob("*.gguf")
    return model, path


def _field(reader, key):
    field = reader.fields[key]
    values = [field.parts[i] for i in field.data]
    decoded = [bytes(v).decode() if v.dtype.kind == "u" and v.dtype.itemsize == 1 else v.tolist()[0] for v in values]
    return decoded if len(decoded) != 1 or key.endswith(("tokens", "merges", "token_type")) else decoded[0]


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_holds_the_model_and_its_tokenizer(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, tied):
    import numpy as np
    from gguf import GGUFReader

    from llm_recipes.exporting.gguf import rotate_pairs

    model, path = _export(tmp_path, tiny_tokenizer_dir, tie_word_embeddings=tied, rope_theta=500000.0)
    reader = GGUFReader(path)
    config = model.config
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "bailingmoe"
    assert _field(reader, "llama.block_count") == config.num_hidden_layers
    assert _field(reader, "llama.attention.head_count_kv") == config.num_key_value_heads
    assert _field(reader, "llama.rope.freq_base") == 500000.0
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config.vocab_size
    vocab = tiny_tokenizer.get_vocab()
    assert all(tokens[i] == t for t, i in vocab.items())
    merges = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(merges)
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tiny_tokenizer.bos_token_id
    # llama.cpp ends a chat turn at <|im_end|> only when the file names it as the end-of-turn token
    assert _field(reader, "tokenizer.ggml.eot_token_id") == tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "chat_template" in "".join(reader.fields)

    tensors = {t.name: t for t in reader.tensors}
    state = model.state_dict()
    assert ("output.weight" in tensors) is not tied
    assert len(tensors) == 2 + 9 * config.num_hidden_layers + (0 if tied else 1)
    q = np.asarray(tensors["blk.0.attn_q.weight"].data)
    assert np.array_equal(q, rotate_pairs(state["model.layers.0.self_attn.q_proj.weight"], config.num_attention_heads)
                          .numpy())
    assert not np.array_equal(q, state["model.layers.0.self_attn.q_proj.weight"].numpy())  # really permuted
    assert np.array_equal(np.asarray(tensors["blk.1.ffn_down.weight"].data),
                          state["model.layers.1.mlp.down_proj.weight"].numpy())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_gguf_is_half_the_size(tmp_path, tiny_tokenizer_dir, dtype):
    from gguf import GGMLQuantizationType, GGUFReader

    _, full = _export(tmp_path / "f32", tiny_tokenizer_dir)
    _, half = _export(tmp_path / dtype, tiny_tokenizer_dir, dtype=dtype)
    tensors = {t.name: t for t in GGUFReader(half).tensors}
    expected = GGMLQuantizationType.F16 if dtype == "float16" else GGMLQuantizationType.BF16
    assert tensors["blk.0.attn_v.weight"].tensor_type == expected
    assert tensors["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32  # norms stay float32
    assert half.stat().st_size < 0.7 * full.stat().st_size


def test_refuses_what_llama_cpp_would_compute_differently(tmp_path, tiny_tokenizer_dir, capsys):
    from llm_recipes.cli import main

    # a tokenizer split by another rule: llama.cpp's `bailingmoe` would cut its text differently
    source = tmp_path / "other_split"
    _save_model(source, tiny_tokenizer_dir)
    spec = json.loads((source / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\w+|[^\s\w]+"
    (source / "tokenizer.json").write_text(json.dumps(spec))
    assert main(["export", str(source), "--to", "gguf", "--output_dir", str(tmp_path / "out")]) == 2
    assert "pre-tokenizer" in capsys.readouterr().err and not (tmp_path / "out").exists()

    qk = tmp_path / "qk"
    _save_model(qk, tiny_tokenizer_dir, qk_norm=True)
    assert main(["export", str(qk), "--to", "gguf", "--output_dir", str(tmp_path / "out")]) == 2
    assert "qk_norm" in capsys.readouterr().err

    dynamic = tmp_path / "dynamic"  # dynamic NTK has no llama.cpp equivalent
    _save_model(dynamic, tiny_tokenizer_dir, rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    assert main(["export", str(dynamic), "--to", "gguf", "--output_dir", str(tmp_path / "out")]) == 2
    assert "rope_type 'dynamic', which llama.cpp does not compute" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    assert main(["export", str(tmp_path / "nothing"), "--to", "gguf"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["export", str(qk), "--to", "onnx"]) == 2
    assert "gguf" in capsys.readouterr().err


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-3), ("float16", 0.05), ("bfloat16", 0.2)])
def test_llama_cpp_tokenizes_and_scores_like_the_model(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, dtype,
                                                      tolerance):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (compiles llama.cpp) is not installed")
    import numpy as np
    import torch

    model, path = _export(tmp_path, tiny_tokenizer_dir, dtype=dtype, tie_word_embeddings=False)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0)
    for text in PROBES:  # the pre-tokenizer and BPE merges reproduce ours, special tokens included
        ours = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
    assert llm.tokenize(b"hi", add_bos=True)[0] == tiny_tokenizer.bos_token_id
    # the embedded chat template renders the same prompt in llama-cpp-python's chat formatter
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What does len do?"}]
    formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token=tiny_tokenizer.eos_token,
        bos_token=tiny_tokenizer.bos_token)
    assert formatter(messages=messages).prompt == tiny_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False)

    ids = tiny_tokenizer(PROBES[1])["input_ids"]
    llm.reset()
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    with torch.inference_mode():
        expected = model.eval()(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(theirs - expected).max() < tolerance


def test_llama_cpp_benchmark_script(tmp_path, tiny_tokenizer_dir):
    """benchmarks/serve/gguf_llama_cpp.py, on the tiny model (where llama-cpp-python is installed)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (compiles llama.cpp) is not installed")
    import subprocess
    import sys

    from conftest import REPO_ROOT

    _, path = _export(tmp_path, tiny_tokenizer_dir)
    text = tmp_path / "probes.txt"
    text.write_text("\n\n".join(PROBES), encoding="utf-8")
    script = REPO_ROOT / "benchmarks" / "serve" / "gguf_llama_cpp.py"
    run = subprocess.run([sys.executable, str(script), str(tmp_path / "model"), str(path), "--text", str(text),
                          "--windows", "2"],
                         capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["same_ids"] == result["documents"] >= len(PROBES)  # a blank line splits one probe in two
    assert result["max_abs_logit_diff"] < 1e-3 and result["greedy_16_agree"] == 2


def test_padded_vocabulary_rows_become_unused_tokens(tmp_path, tiny_tokenizer_dir, tiny_tokenizer):
    """A model whose embedding has more rows than the tokenizer has tokens (vocabularies padded to a multiple
    of 64 for speed): the extra rows are unused `[PAD<id>]` tokens, and llama.cpp still loads and scores it."""
    import numpy as np
    from gguf import GGUFReader, TokenType

    model, path = _export(tmp_path, tiny_tokenizer_dir, vocab_size=576)
    reader = GGUFReader(path)
    tokens, types = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 576 and tokens[len(tiny_tokenizer)] == f"[PAD{len(tiny_tokenizer)}]"
    assert set(types[len(tiny_tokenizer):]) == {TokenType.UNUSED}
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (compiles llama.cpp) is not installed")
    import torch

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    ids = tiny_tokenizer(PROBES[0])["input_ids"]
    llm.eval(ids)
    with torch.inference_mode():
        expected = model.eval()(torch.tensor([ids])).logits[0].numpy()
    assert np.asarray(llm.scores[: len(ids)]).shape == expected.shape
    assert np.abs(np.asarray(llm.scores[: len(ids)]) - expected).max() < 1e-3


SCALED_ROPE = [{"rope_type": "linear", "factor": 2.0},
               {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
               {"rope_type": "llama3", "factor": 4.0, "original_max_position_embeddings": 16}]


@pytest.mark.parametrize("rope", SCALED_ROPE, ids=lambda r: r["rope_type"])
def test_scaled_rope_is_written_the_way_llama_cpp_reads_it(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, rope):
    import numpy as np
    from gguf import GGUFReader

    model, path = _export(tmp_path, tiny_tokenizer_dir, max_position_embeddings=64, rope_parameters=rope)
    reader = GGUFReader(path)
    keys = set(reader.fields)
    tensors = {t.name: t for t in reader.tensors}
    if rope["rope_type"] == "llama3":
        # Llama 3's rule as divisors of the plain frequencies: rising from ~1 (fast) to the factor (slowest)
        factors = np.asarray(tensors["rope_freqs.weight"].data)
        assert factors.shape == (model.config.head_dim // 2,) and np.all(np.diff(factors) >= 0)
        assert (1.0 <= factors[0] < factors[-1] == pytest.approx(rope["factor"])
                and "llama.rope.scaling.type" not in keys)
    else:
        assert _field(reader, "llama.rope.scaling.type") == rope["rope_type"]
        assert _field(reader, "llama.rope.scaling.factor") == rope["factor"]
        assert "rope_freqs.weight" not in tensors
    if rope["rope_type"] == "yarn":
        assert _field(reader, "llama.rope.scaling.original_context_length") == 16


@pytest.mark.parametrize("rope", SCALED_ROPE, ids=lambda r: r["rope_type"])
def test_llama_cpp_computes_our_scaled_rope(tmp_path, tiny_tokenizer_dir, tiny_tokenizer, rope):
    """Its logits over 48 positions, 3x the trained 16, equal ours (where llama-cpp-python is installed)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (compiles llama.cpp) is not installed")
    import numpy as np
    import torch

    model, path = _export(tmp_path, tiny_tokenizer_dir, max_position_embeddings=64, rope_parameters=rope)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2, seed=0)
    ids = tiny_tokenizer(" ".join(PROBES))["input_ids"][:48]
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)])
    with torch.inference_mode():
        expected = model.eval()(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(theirs - expected).max() < 1e-3
