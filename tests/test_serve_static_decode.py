"""The static KV cache and fused decode step (serving/static_decode.py) generate exactly what transformers' own
greedy `generate` does, rows joining and leaving the batch included; models it cannot run keep the
transformers path, and a failed compilation leaves the step eager, with the reason in `decode_path`.

The step is tested eager only: compiling it takes tens of seconds on 2 cores (benchmarks/README.md, "Serving
throughput"); the compiled step is checked against the eager one by the benchmark, not here."""

from __future__ import annotations

import time

import pytest
from serve_helpers import collector, held_steps

PROMPTS = [[5, 9, 11], [7] * 12, [20, 21, 22, 23, 24, 25, 26], [3], [8, 30]]
BUDGETS = [10, 3, 8, 6, 5]  # rows end at different steps: slots are emptied and refilled


def _model(**overrides):
    import torch
    from conftest import make_tiny_config

    from llm_recipes.model import RecipeGPTForCausalLM

    torch.manual_seed(0)
    return RecipeGPTForCausalLM(make_tiny_config(vocab_size=96, max_position_embeddings=64, **overrides)).eval()


def _expected(model, prompts=PROMPTS, budgets=BUDGETS):
    import torch

    return [model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(p):].tolist() for p, n in zip(prompts, budgets)]


def _run(engine, prompts=PROMPTS, budgets=BUDGETS, released=None):
    from llm_recipes.serving.engine import GenerationRequest

    tokens, finish, done, make = collector(len(prompts))

    try:
        for i, (p, n) in enumerate(zip(prompts, budgets)):
            engine.submit(GenerationRequest(p, n, make(i), temperature=0))
            time.sleep(0.003 * i)  # staggered: later requests join a running batch
        if released is not None:
            released.set()
        assert done.wait(60)
    finally:
        engine.shutdown()
    return [tokens[i] for i in range(len(prompts))], finish


@pytest.mark.parametrize("overrides", [
    {"qk_norm": True},  # query/key norms, grouped-query attention (4 heads, 2 key/value heads)
    {"num_key_value_heads": 4, "rope_parameters": {"rope_type": "linear", "factor": 2.0}},  # scaled rotary table
])
def test_static_decode_equals_transformers_greedy(overrides):
    from llm_recipes.serving.engine import GenerationEngine

    model = _model(**overrides)
    expected = _expected(model)
    released, on_step = held_steps()  # the later requests join the first one's batch, however fast the step
    engine = GenerationEngine(model, pad_token_id=0, max_batch_size=2, on_step=on_step)
    assert engine.decode_path.startswith("static KV cache, eager decode step")
    results, finish = _run(engine, released=released)
    assert results == expected
    assert all(event == ("done", "length") for event in finish.values())
    assert engine.peak_batch == 2  # rows shared steps (5 requests through 2 slots: slots were reused)


def _numba_or_skip(kind: str) -> None:
    if kind == "numba":
        pytest.importorskip("numba")


@pytest.mark.parametrize("kind", ["numpy", "numba"])
@pytest.mark.parametrize("overrides", [
    {"qk_norm": True},  # query/key norms (the numpy norm over rows), grouped-query attention
    {"num_key_value_heads": 4, "rope_parameters": {"rope_type": "linear", "factor": 2.0}},
])
def test_one_row_step_equals_the_torch_step_and_the_forward(overrides, kind):
    """The numpy and numba steps for one row give the torch step's logits and write its keys and values, up to
    rounding (sums in another order, the norm's mean as a dot product): 1e-5 here, ~1.5e-5 over 96 positions of
    the quickstart model (benchmarks/serve/numpy_step_ab.py); and the transformers forward's over the same tokens.
    The numba step's greedy token is the logits' argmax."""
    import torch

    from llm_recipes.serving.static_decode import StaticDecoder

    _numba_or_skip(kind)
    model = _model(**overrides)
    decoders = [StaticDecoder(model, 2, 64, one_row_step=name) for name in ("torch", kind)]
    assert [d.one_row_step for d in decoders] == ["torch", kind]
    tokens = torch.randint(96, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    with torch.inference_mode():
        for position, token in enumerate(tokens):
            expected, logits = (d.step(torch.tensor([token]), torch.tensor([position]), position + 1, position)
                                for d in decoders)
            assert logits.shape == expected.shape == (1, 96) and logits.dtype == torch.float32
            torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
            assert logits.argmax() == expected.argmax()
            if position % 13 == 0:
                forward = model(input_ids=torch.tensor([tokens[:position + 1]])).logits[:, -1]
                torch.testing.assert_close(logits, forward, rtol=0, atol=1e-5)
        if kind == "numba":  # one more position, with its greedy token in the same call
            chosen, logits = decoders[1].step_and_pick(3, len(tokens), 0.0, 0.0)
            assert chosen == int(logits.argmax())
            forward = model(input_ids=torch.tensor([tokens + [3]])).logits[:, -1]
            torch.testing.assert_close(torch.from_numpy(logits)[None], forward, rtol=0, atol=1e-5)
            decoders[0].step(torch.tensor([3]), torch.tensor([len(tokens)]), len(tokens) + 1, len(tokens))
    assert decoders[1].numpy_steps == len(tokens) + (kind == "numba") and decoders[0].numpy_steps == 0
    for cache in ("keys", "values"):
        for ours, theirs in zip(getattr(decoders[1], cache), getattr(decoders[0], cache)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["numpy", "numba"])
def test_one_request_alone_decodes_through_the_numpy_or_numba_step(kind):
    from llm_recipes.serving.engine import GenerationEngine

    _numba_or_skip(kind)
    model = _model()
    engine = GenerationEngine(model, pad_token_id=0, max_batch_size=2, one_row_step=kind)
    path = "static KV cache, eager decode step (compile_decode off); one row: the "
    if kind == "numba":  # the default where numba is installed: its start-up time in the line
        assert engine.decode_path.startswith(path + "numba step (ready in ") and engine.decode_path.endswith(" s)")
        assert GenerationEngine.__init__.__defaults__[-1] == "numba"
    else:
        assert engine.decode_path == path + "numpy step"
    results, _ = _run(engine, PROMPTS[:1], [12])
    assert results == _expected(model, PROMPTS[:1], [12])
    assert engine._static.numpy_steps == 11  # the first token comes from the prefill
    assert engine._static.numpy_prefills == 1  # alone: prefilled in numpy, not by the transformers forward


def test_a_long_prompt_alone_takes_the_forward(monkeypatch):
    """The numpy prefill holds a prompt's attention scores whole: past NUMPY_PREFILL_MAX_TOKENS the transformers
    forward prefills it (here the limit is lowered below the prompt's length); the answer is the same."""
    from llm_recipes.serving import engine as engine_module

    monkeypatch.setattr(engine_module, "NUMPY_PREFILL_MAX_TOKENS", len(PROMPTS[0]) - 1)
    model = _model()
    engine = engine_module.GenerationEngine(model, pad_token_id=0, max_batch_size=2)
    results, _ = _run(engine, PROMPTS[:1], [12])
    assert results == _expected(model, PROMPTS[:1], [12])
    assert engine._static.numpy_prefills == 0 and engine._static.numpy_steps == 11


@pytest.mark.parametrize("overrides", [
    {"qk_norm": True},  # query/key norms over rows and heads, grouped-query attention
    {"num_key_value_heads": 4, "rope_parameters": {"rope_type": "linear", "factor": 2.0}},
])
def test_numpy_prefill_equals_the_transformers_forward(overrides):
    """The numpy prefill of one prompt (`StaticDecoder.prefill_alone`) gives the forward's last logits and writes
    its keys and values, up to rounding; a prompt whose first tokens' keys and values are kept (a prefix slot)
    prefills only the rest, from their position on, to the same logits."""
    import torch
    from transformers.cache_utils import DynamicCache

    from llm_recipes.model.modeling_recipe_gpt import CACHE_KEY
    from llm_recipes.serving.static_decode import StaticDecoder

    model = _model(**overrides)
    decoder = StaticDecoder(model, 2, 64, prefix_slots=1, one_row_step="numpy")
    prompt = torch.randint(96, (37,), generator=torch.Generator().manual_seed(2)).tolist()
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        expected = model(input_ids=torch.tensor([prompt]), use_cache=True, **{CACHE_KEY: cache}).logits[:, -1]
        logits = decoder.prefill_alone(prompt)
        assert logits.shape == (1, 96) and logits.dtype == torch.float32 and decoder.numpy_prefills == 1
        torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
        assert logits.argmax() == expected.argmax()
        for layer, keys, values in zip(cache.layers, decoder.keys, decoder.values):
            torch.testing.assert_close(keys[0, :, :len(prompt)], layer.keys[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(values[0, :, :len(prompt)], layer.values[0], rtol=0, atol=1e-5)
        decoder.keep(0, prompt[:20])  # a finished row's first 20 positions, kept in the prefix slot
        for keys in decoder.keys + decoder.values:
            keys[0].zero_()  # slot 0 forgets them: only the kept copy can bring them back
        assert decoder.prefill_alone(prompt[:20] + [4, 5]).shape == (1, 96)  # reuses 20, prefills 2
        assert decoder.prefix.hits == 1 and decoder.prefix.reused_tokens == 20
        longer = model(input_ids=torch.tensor([prompt[:20] + [4, 5]])).logits[:, -1]
        torch.testing.assert_close(decoder.prefill_alone(prompt[:20] + [4, 5]), longer, rtol=0, atol=1e-5)


def test_one_row_step_refuses_bad_values_and_keeps_torch_where_numpy_cannot_run(tmp_path):
    import torch

    from llm_recipes.serving import build_server
    from llm_recipes.serving.config import ServeConfig
    from llm_recipes.serving.engine import GenerationEngine
    from llm_recipes.serving.loading import ModelLoadError
    from llm_recipes.serving.static_decode import StaticDecoder

    model = _model()
    with pytest.raises(ValueError, match="one_row_step must be one of numba, numpy, torch; got 'fast'"):
        GenerationEngine(model, pad_token_id=0, one_row_step="fast")
    with pytest.raises(ModelLoadError, match="one_row_step must be one of numba, numpy, torch; got 'fast'"):
        build_server(ServeConfig(model_path=str(tmp_path), one_row_step="fast"), tmp_path / "feedback.sqlite")
    assert not (tmp_path / "feedback.sqlite").exists()  # refused before the store was opened
    for kind in ("numpy", "numba"):
        decoder = StaticDecoder(model.to(torch.bfloat16), 1, 16, one_row_step=kind)
        assert decoder.one_row_step == "torch"
        assert decoder.one_row_reason == "the numpy step runs float32 on the CPU, not bfloat16 on cpu"


def test_blas_threads_are_limited_for_the_numpy_step_and_only_around_the_numba_prefill(monkeypatch):
    """numpy's BLAS gets the decoding thread count (1 here): with the numba step only while it prefills (the step
    itself calls no BLAS), so the process's own numpy keeps its threads; with the numpy step for good."""
    import torch
    from threadpoolctl import ThreadpoolController

    from llm_recipes.serving import static_decode

    _numba_or_skip("numba")
    blas = ThreadpoolController().select(user_api="blas")
    before = [lib["num_threads"] for lib in blas.info()]
    seen = []
    prefill = static_decode.numpy_prefill_for

    def watched(config):
        inner = prefill(config)
        return lambda *args: (seen.append([lib["num_threads"] for lib in blas.info()]), inner(*args))[1]

    monkeypatch.setattr(static_decode, "numpy_prefill_for", watched)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decoder = static_decode.StaticDecoder(_model(), 1, 64, one_row_step="numba")
        decoder.prefill_alone([5, 9, 11])
        assert seen == [[1] * len(before)]
        assert [lib["num_threads"] for lib in blas.info()] == before
        static_decode.StaticDecoder(_model(), 1, 64, one_row_step="numpy")
        assert [lib["num_threads"] for lib in blas.info()] == [1] * len(before)
    finally:
        torch.set_num_threads(threads)
        blas.limit(limits=before[0])  # what the numpy step's decoder limited for good


def test_without_numba_the_numpy_step_runs(monkeypatch):
    """numba is optional (the serve extra installs it): where it cannot be imported the default one-row step is the
    numpy one, the start-up line says why, and answers are the same."""
    import sys

    from llm_recipes.serving.engine import GenerationEngine

    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` raises ImportError
    monkeypatch.setitem(sys.modules, "llm_recipes.serving.numba_step", None)
    monkeypatch.delattr(sys.modules["llm_recipes.serving"], "numba_step", raising=False)  # imported by another test
    model = _model()
    engine = GenerationEngine(model, pad_token_id=0, max_batch_size=2)
    assert engine._static.one_row_step == "numpy"
    assert engine.decode_path.startswith("static KV cache, eager decode step (compile_decode off); one row: the "
                                         "numpy step (numba is not installed (pip install llm-recipes[serve]): ")
    results, _ = _run(engine, PROMPTS[:1], [12])
    assert results == _expected(model, PROMPTS[:1], [12])
    assert engine._static.numpy_steps == 11


def test_unsupported_model_keeps_the_transformers_path():
    from llm_recipes.serving.engine import GenerationEngine

    model = _model(rope_parameters={"rope_type": "dynamic", "factor": 2.0})
    engine = GenerationEngine(model, pad_token_id=0, max_batch_size=2)
    assert engine.decode_path == ("transformers forward (no static KV cache: dynamic NTK rotary frequencies "
                                  "change with the sequence length)")
    results, _ = _run(engine, PROMPTS[:3], BUDGETS[:3])
    assert results == _expected(model, PROMPTS[:3], BUDGETS[:3])


def test_failed_compilation_leaves_the_step_eager(monkeypatch):
    import torch

    from llm_recipes.serving.engine import GenerationEngine

    def no_compiler(*args, **kwargs):  # as when inductor finds no C++ compiler
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    model = _model()
    engine = GenerationEngine(model, pad_token_id=0, max_batch_size=2, compile_decode=True)
    assert engine.decode_path.startswith("static KV cache, eager decode step (torch.compile failed after ")
    assert "RuntimeError: no working C++ compiler found); one row: the num" in engine.decode_path  # numba or numpy
    results, _ = _run(engine, PROMPTS[:2], BUDGETS[:2])
    assert results == _expected(model, PROMPTS[:2], BUDGETS[:2])


def test_request_longer_than_the_context_fails_alone():
    from llm_recipes.serving.engine import GenerationEngine

    model = _model()
    engine = GenerationEngine(model, pad_token_id=0, max_batch_size=2, context=16)
    results, finish = _run(engine, [[5] * 10, [6, 7]], [7, 5])
    assert finish[0] == ("error", "generation failed: ValueError: the prompt (10 tokens) plus max_new_tokens (7) "
                                  "exceeds the engine's context of 16")
    assert results[1] == _expected(model, [[6, 7]], [5])[0] and finish[1] == ("done", "length")


def test_prefix_cache_reuses_a_previous_turn_and_answers_as_without_it():
    """A chat re-sends the conversation: each turn's prompt starts with the previous prompt and answer, whose
    keys and values the engine kept; only the rest is prefilled, and the greedy answer is transformers' own."""
    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest

    model = _model()
    engine = GenerationEngine(model, pad_token_id=0, max_batch_size=2, prefix_cache=2)
    prompt, reused = list(range(5, 21)), []  # 16 tokens: MIN_REUSED_TOKENS
    try:
        for turn, question in enumerate([[], [17, 18, 19], [23, 5]]):
            prompt = prompt + question
            tokens, finish, done, make = collector(1)
            engine.submit(GenerationRequest(list(prompt), 6, make(0), temperature=0))
            assert done.wait(60)
            assert tokens[0] == _expected(model, [prompt], [6])[0], f"turn {turn}"
            reused.append(engine.prefix_reused_tokens)
            prompt = prompt + tokens[0]
        # turn 2 reused turn 1's prompt and the 5 answer tokens it fed (the 6th was never fed); turn 3 likewise
        assert engine.prefix_hits == 2 and reused == [0, 16 + 5, 21 + (16 + 6 + 3 + 5)]
        # a prompt that leaves the conversation part-way reuses the shared part only, and still answers right
        other = prompt[:18] + [70, 71]
        tokens, finish, done, make = collector(1)
        engine.submit(GenerationRequest(other, 4, make(0), temperature=0))
        assert done.wait(60)
        assert tokens[0] == _expected(model, [other], [4])[0]
        assert engine.prefix_hits == 3 and engine.prefix_reused_tokens == reused[-1] + 18
        # a prompt sharing fewer than 16 first tokens is prefilled whole (with the batch's other prompts)
        tokens, finish, done, make = collector(1)
        engine.submit(GenerationRequest(prompt[:10] + [70], 2, make(0), temperature=0))
        assert done.wait(60)
        assert engine.prefix_hits == 3
    finally:
        engine.shutdown()
