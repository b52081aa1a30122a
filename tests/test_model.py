"""Invariants of RecipeGPT: save/load, remote code, cache, attention kernels, packing, padding,
gradient checkpointing, PEFT, and config validation."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_tiny_config
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import llm_recipes  # noqa: F401  (registers RecipeGPT)
from llm_recipes.model import PRESETS, RecipeGPTConfig, RecipeGPTForCausalLM, config_from_preset


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return RecipeGPTForCausalLM(make_tiny_config(**overrides)).eval()


def test_save_load_identical_logits(tmp_path):
    model = tiny_model()
    ids = torch.randint(0, 512, (2, 17))
    model.save_pretrained(tmp_path)
    saved = os.listdir(tmp_path)
    assert "model.safetensors" in saved
    assert "modeling_recipe_gpt.py" in saved and "configuration_recipe_gpt.py" in saved
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "recipe_gpt"
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("RecipeGPTForCausalLM")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, RecipeGPTForCausalLM)
    # RoPE buffers are not saved: from_pretrained must recompute them, not leave empty_like garbage
    torch.testing.assert_close(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_untied_embeddings_round_trip(tmp_path):
    model = tiny_model(tie_word_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 512, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_remote_code_loads_without_llm_recipes(tiny_model_dir, tmp_path):
    """A fresh interpreter that cannot import llm_recipes loads the checkpoint from its own code."""
    script = textwrap.dedent(f"""
        import sys, builtins
        real_import = builtins.__import__
        def guarded(name, *a, **k):
            if name == "llm_recipes" or name.startswith("llm_recipes."):
                raise ImportError("llm_recipes must not be importable here")
            return real_import(name, *a, **k)
        builtins.__import__ = guarded
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained({str(tiny_model_dir)!r})
        ids = tok("def main():", return_tensors="pt").input_ids
        with torch.no_grad():
            torch.save(model(ids).logits, {str(tmp_path / "logits.pt")!r})
        print(type(model).__module__)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "transformers_modules" in out.stdout  # the copied remote code, not our package
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)("def main():", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(ids).logits)


def test_pipeline_text_and_chat(tiny_model_dir):
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(tiny_model_dir), device="cpu")
    out = generator("The cat sat on the", max_new_tokens=5, do_sample=False)
    assert out[0]["generated_text"].startswith("The cat sat on the")
    chat = generator([{"role": "user", "content": "What does os.path.join do?"}], max_new_tokens=5, do_sample=False)
    messages = chat[0]["generated_text"]
    assert messages[0]["role"] == "user" and messages[-1]["role"] == "assistant"


def test_greedy_generation_cache_equals_no_cache():
    model = tiny_model(seed=1)
    prompt = torch.randint(3, 512, (1, 7))
    kwargs = dict(max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
    with_cache = model.generate(prompt, use_cache=True, **kwargs)
    without_cache = model.generate(prompt, use_cache=False, **kwargs)
    assert with_cache.shape[1] == 27
    assert torch.equal(with_cache, without_cache)


def test_cache_forward_matches_full_forward():
    from transformers import DynamicCache

    from llm_recipes.model.modeling_recipe_gpt import CACHE_KEY

    model = tiny_model(seed=2)
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :8], use_cache=True, **{CACHE_KEY: DynamicCache(config=model.config)})
        # the cache comes back under the installed transformers' name (`cache` from 5.24, else `past_key_values`)
        second = model(ids[:, 8:], use_cache=True, **{CACHE_KEY: getattr(first, CACHE_KEY)})
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_eager_and_sdpa_agree(qk_norm):
    ids = torch.randint(0, 512, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second row
    logits = {}
    for impl in ("eager", "sdpa"):
        model = tiny_model(seed=3, qk_norm=qk_norm)
        model.config._attn_implementation = impl
        with torch.no_grad():
            logits[impl] = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(logits["eager"][0], logits["sdpa"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits["eager"][1, 5:], logits["sdpa"][1, 5:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_packed_documents_do_not_see_each_other(impl):
    model = tiny_model(seed=4)
    model.config._attn_implementation = impl
    doc_a, doc_b = torch.randint(3, 512, (1, 6)), torch.randint(3, 512, (1, 9))
    packed = torch.cat([doc_a, doc_b], 1)
    position_ids = torch.cat([torch.arange(6), torch.arange(9)]).unsqueeze(0)  # restart at the second document
    with torch.no_grad():
        out = model(packed, position_ids=position_ids, use_cache=False).logits
        alone_a = model(doc_a, use_cache=False).logits
        alone_b = model(doc_b, use_cache=False).logits
    torch.testing.assert_close(out[:, :6], alone_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:, 6:], alone_b, atol=1e-5, rtol=1e-4)


def test_left_padded_batch_matches_single_sequence():
    model = tiny_model(seed=5)
    short, long = torch.randint(3, 512, (1, 5)), torch.randint(3, 512, (1, 11))
    batch = torch.cat([torch.cat([torch.full((1, 6), 2), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :6] = 0
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        alone = model(short).logits
    torch.testing.assert_close(logits[0, 6:], alone[0], atol=1e-5, rtol=1e-4)
    # and batched greedy generation gives each row what it gets alone
    kwargs = dict(max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=2)
    gen_batch = model.generate(batch, attention_mask=mask, **kwargs)
    gen_alone = model.generate(short, **kwargs)
    assert torch.equal(gen_batch[0, 6:], gen_alone[0])


def test_gradient_checkpointing_same_gradients():
    from llm_recipes.training.building import enable_activation_checkpointing

    ids = torch.randint(0, 512, (2, 16))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(seed=6).train()
        if checkpointing:
            enable_activation_checkpointing(model)
        model(ids, labels=ids, use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_loss_is_next_token_cross_entropy():
    model = tiny_model(seed=7)
    ids = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        out = model(ids, labels=ids)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 512), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_peft_lora_all_linear():
    from peft import LoraConfig, get_peft_model

    model = tiny_model(seed=8)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    wrapped = {n.split(".lora_A")[0].split(".")[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < sum(p.numel() for p in peft_model.parameters()) / 2
    ids = torch.randint(0, 512, (1, 8))
    peft_model(ids, labels=ids).loss.backward()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=100, num_attention_heads=3),
         r"hidden_size \(100\) must be divisible by num_attention_heads \(3\)"),
        (dict(num_attention_heads=4, num_key_value_heads=3),
         r"num_key_value_heads \(3\) must divide num_attention_heads \(4\)"),
        (dict(num_hidden_layers=0), r"num_hidden_layers must be a positive integer"),
        (dict(hidden_dropout=1.0), r"hidden_dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecipeGPTConfig(**{**dict(hidden_size=64, num_attention_heads=4), **kwargs})


def test_presets_and_flops():
    assert set(PRESETS) >= {"test", "nano", "micro", "gpt2-small", "gpt2-medium", "1b"}
    config = config_from_preset("gpt2-small")
    with torch.device("meta"):
        model = RecipeGPTForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    assert 115e6 < n_params < 135e6  # GPT-2 small class
    # 6N + 12 L H hd T with N = all matmul parameters (tied head counted once, as the output matmul)
    n = model.num_parameters_for_flops()
    assert n == n_params  # tied: the embedding matrix is the head
    assert model.flops_per_token(1024) == 6 * n + 12 * 12 * 12 * 64 * 1024
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        config_from_preset("huge")
    # PretrainedConfig would keep a misspelt key as a harmless attribute: a recipe's typo must not pass
    with pytest.raises(ValueError,
                       match=r"unknown model setting\(s\) 'hiden_dropout'; expected any of: .*hidden_dropout"):
        config_from_preset("nano", hiden_dropout=0.1)


def test_hidden_dropout_acts_in_training_only():
    torch.manual_seed(0)
    model = RecipeGPTForCausalLM(make_tiny_config(hidden_dropout=0.5))
    plain = RecipeGPTForCausalLM(make_tiny_config())
    plain.load_state_dict(model.state_dict())  # same weights: dropout adds no parameters
    ids = torch.randint(0, 512, (2, 16))
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain(ids).logits)
        model.train()
        first, second = model(ids).logits, model(ids).logits
    assert not torch.allclose(first, second)  # a fresh mask per forward pass
    assert not torch.allclose(first, plain(ids).logits)


def test_auto_config_round_trip(tmp_path):
    config = make_tiny_config(qk_norm=True, num_key_value_heads=1)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, RecipeGPTConfig)
    assert loaded.qk_norm is True and loaded.num_key_value_heads == 1 and loaded.head_dim == 16


def test_transformers_continuous_batching_matches_generate():
    """transformers' own continuous batching (paged KV cache) runs our model and agrees with generate()."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    from llm_recipes.model.modeling_recipe_gpt import CACHE_KEY

    if CACHE_KEY != "cache":
        pytest.skip("before transformers 5.24 continuous batching hands its paged cache to the attention kernel "
                    "under the name our model uses for the KV cache; supported from 5.24")

    model = tiny_model(seed=9)
    prompts = [torch.randint(3, 512, (n,)).tolist() for n in (5, 9, 3)]
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=2)
    # a small paged cache: left to itself, transformers sizes it (and fills its index tensors) from the free
    # memory of the whole machine, ~20 s on a CPU with 24 GB
    paged = ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64)
    batched = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=paged,
                                   progress_bar=False)
    outputs = sorted(batched.values(), key=lambda o: o.request_id)
    for prompt, output in zip(prompts, outputs):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                               pad_token_id=2)
        assert output.generated_tokens == alone[0, len(prompt):].tolist()
