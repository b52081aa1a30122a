"""The batching engine generates exactly what one-at-a-time greedy `generate` does, while sharing steps."""

from __future__ import annotations

import os
import threading
import time

import pytest
from serve_helpers import collector, held_steps


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from llm_recipes.serving.loading import load_for_serving

    return load_for_serving(tiny_model_dir)


def test_batched_equals_one_at_a_time(model_and_tokenizer):
    import torch

    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest

    model, tok = model_and_tokenizer
    prompts = ["The os module", "for", "A long prompt about the import system and how modules are found " * 2,
               "x", "class definitions", "yield"]
    budgets = [12, 5, 12, 9, 12, 3]
    expected = []
    for p, n in zip(prompts, budgets):
        ids = tok(p)["input_ids"]
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=tok.pad_token_id)
        expected.append(out[0, len(ids):].tolist())
    released, on_step = held_steps()  # the later requests join a running batch, however fast the step
    engine = GenerationEngine(model, tok.pad_token_id, max_batch_size=3, on_step=on_step)
    results, finish, done, make = collector(len(prompts))
    try:
        for i, (p, n) in enumerate(zip(prompts, budgets)):
            engine.submit(GenerationRequest(tok(p)["input_ids"], n, make(i), temperature=0))
            time.sleep(0.005 * i)  # staggered arrivals: later requests join a running batch
        released.set()
        assert done.wait(60)
    finally:
        engine.shutdown()
    for i in range(len(prompts)):
        assert results[i] == expected[i], f"prompt {i} differs from unbatched greedy generation"
        assert finish[i] == ("done", "length")
    assert engine.peak_batch >= 2  # requests really shared forward passes
    assert engine.peak_batch <= 3


def test_stop_token_ends_row_and_cancel(model_and_tokenizer):
    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest, QueueFullError

    model, tok = model_and_tokenizer
    engine = GenerationEngine(model, tok.pad_token_id, max_batch_size=2, max_queue=1)
    try:
        ids = tok("The os module")["input_ids"]
        results, finish, done, make = collector(1)
        first = GenerationRequest(ids, 10, make(0), temperature=0)
        engine.submit(first)
        assert done.wait(30)
        # the greedy first token as a stop id: the row ends at once with "stop", nothing emitted
        stop_results, stop_finish, stop_done, make2 = collector(1)
        engine.submit(GenerationRequest(ids, 10, make2(0), temperature=0, stop_ids=frozenset({results[0][0]})))
        assert stop_done.wait(30)
        assert stop_results[0] == [] and stop_finish[0] == ("done", "stop")
        # a cancelled request is dropped without generating
        c_results, c_finish, c_done, make3 = collector(1)
        cancelled = GenerationRequest(ids, 10, make3(0), temperature=0)
        cancelled.cancel()
        engine.submit(cancelled)
        assert c_done.wait(30) and c_finish[0] == ("done", "cancelled")
    finally:
        engine.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        engine.submit(GenerationRequest(ids, 1, lambda e: None))
    assert issubclass(QueueFullError, RuntimeError)


def test_seeded_sampling_is_reproducible(model_and_tokenizer):
    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest

    model, tok = model_and_tokenizer
    engine = GenerationEngine(model, tok.pad_token_id, max_batch_size=4)
    try:
        results, finish, done, make = collector(3)
        ids = tok("The os module")["input_ids"]
        for i, seed in enumerate([7, 7, 8]):
            engine.submit(GenerationRequest(ids, 16, make(i), temperature=1.0, top_p=0.9, seed=seed))
        assert done.wait(30)
    finally:
        engine.shutdown()
    assert results[0] == results[1]
    assert results[0] != results[2]


def test_batched_sampling_equals_row_by_row(model_and_tokenizer, monkeypatch):
    """Rows with only a temperature are sampled together (`_sample_plain`): a seeded answer is the same alone,
    among batch neighbours (greedy, unseeded, filtered) and through the row-by-row path."""
    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest

    model, tok = model_and_tokenizer
    ids = tok("The os module")["input_ids"]

    def run(with_neighbours: bool) -> list[int]:
        engine = GenerationEngine(model, tok.pad_token_id, max_batch_size=8)
        requests = [dict(prompt_ids=ids, temperature=0.8, seed=7)]
        if with_neighbours:
            requests += [dict(prompt_ids=tok("for")["input_ids"], temperature=0),
                         dict(prompt_ids=tok("A class is")["input_ids"], temperature=1.3),
                         dict(prompt_ids=ids, temperature=0.8, seed=8, top_k=5)]
        results, finish, done, make = collector(len(requests))
        try:
            for i, fields in enumerate(requests):
                engine.submit(GenerationRequest(max_new_tokens=12, emit=make(i), **fields))
            assert done.wait(60)
        finally:
            engine.shutdown()
        assert all(f == ("done", "length") for f in finish.values())
        return results[0]

    alone, among_others = run(False), run(True)
    monkeypatch.setattr(GenerationEngine, "_sample_plain", lambda self, rows, logits: {})
    row_by_row = run(True)
    assert len(alone) == 12 and alone == among_others == row_by_row


def test_one_row_draw_equals_the_batched_draw():
    """One stream's sampler (`_draw_one`: the same torch division, softmax and cumulative sum, the search in numpy)
    draws the same token as the batched `_draw` for the same seeded row's number (`Uniforms`), over many
    temperatures and logit scales."""
    import torch

    from llm_recipes.serving.engine import Uniforms, _draw, _draw_one

    torch.manual_seed(0)
    for i in range(400):
        logits = torch.randn(1, 500) * (1 + i % 7)
        temperature = [0.05, 0.3, 0.8, 1.0, 1.7][i % 5]
        uniform = Uniforms(torch.Generator().manual_seed(i), torch.device("cpu")).next()
        probs = torch.softmax(logits / torch.tensor([temperature])[:, None], dim=-1)
        assert _draw(probs, [uniform]) == [_draw_one(logits[0], temperature, uniform)], i
    with pytest.raises(ValueError, match="not a distribution"):
        _draw_one(torch.full((5,), float("nan")), 1.0, 0.5)


def test_a_rows_uniform_numbers_are_those_of_one_draw_at_a_time():
    """`Uniforms` takes a row's numbers 64 at a time on the CPU: the same numbers, in the same order, as one
    `torch.rand(1)` per draw, and the generator in the same state after a whole block."""
    import torch

    from llm_recipes.serving.engine import Uniforms

    for seed in (0, 7):
        source, alone = Uniforms(torch.Generator().manual_seed(seed), torch.device("cpu")), \
            torch.Generator().manual_seed(seed)
        assert [source.next() for _ in range(150)] == [torch.rand(1, generator=alone).item() for _ in range(150)]
        torch.rand(-150 % Uniforms.BLOCK, generator=alone)  # to the end of the source's third block
        assert torch.equal(source.generator.get_state(), alone.get_state())


def test_numba_draw_equals_the_batched_draw():
    """The numba step's draw (`numba_step.draw_token`, float64) picks `_draw`'s token for the same uniform number
    whenever it answers, and defers (-1) when the target is too close to a boundary to be sure; greedy is numpy's
    argmax, NaN first."""
    import numpy as np
    import torch

    numba_step = pytest.importorskip("llm_recipes.serving.numba_step")
    from llm_recipes.serving.engine import Uniforms, _draw

    torch.manual_seed(0)
    deferred = 0
    for i in range(400):
        logits = torch.randn(1, 500) * (1 + i % 7)
        temperature = [0.05, 0.3, 0.8, 1.0, 1.7][i % 5]
        uniform = Uniforms(torch.Generator().manual_seed(i), torch.device("cpu")).next()
        probs = torch.softmax(logits / torch.tensor([temperature])[:, None], dim=-1)
        token = numba_step.draw_token(logits[0].numpy(), False, temperature, uniform,
                                      numba_step.DRAW_MARGIN)
        if token < 0:
            deferred += 1
        else:
            assert token == _draw(probs, [uniform])[0], i
        assert numba_step.draw_token(logits[0].numpy(), True, 1.0, 0.0, 0.0) == int(logits.argmax())
    assert deferred < 20  # ~1% here (a few tokens of large probability, where boundaries are rare, in real use)
    probs = np.array([0.5, 0.25, 0.25], np.float32)  # a target on a boundary: deferred
    assert numba_step.draw_token(np.log(probs), False, 1.0, 0.5, numba_step.DRAW_MARGIN) == -1
    assert numba_step.draw_token(np.log(probs), False, 1.0, 0.4, numba_step.DRAW_MARGIN) == 0
    assert numba_step.draw_token(np.array([1, np.nan, 3, np.nan], np.float32), True, 1.0, 0.0, 0.0) == 1
    assert numba_step.draw_token(np.array([1, np.nan], np.float32), False, 1.0, 0.3, 0.0) == -1


def test_deferred_numba_draws_give_the_same_answer(model_and_tokenizer, monkeypatch):
    """A seeded answer on the numba step is the same whether its draws are decided in numba or, deferred, by the
    torch draw with the same uniform number (every draw deferred here)."""
    pytest.importorskip("numba")
    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest
    from llm_recipes.serving.static_decode import StaticDecoder

    model, tok = model_and_tokenizer
    ids = tok("The os module")["input_ids"]

    def run() -> list[int]:
        engine = GenerationEngine(model, tok.pad_token_id, max_batch_size=2)
        assert engine._static.one_row_step == "numba"
        results, finish, done, make = collector(1)
        try:
            engine.submit(GenerationRequest(ids, 12, make(0), temperature=0.8, seed=7))
            assert done.wait(60)
        finally:
            engine.shutdown()
        return results[0]

    decided = run()
    real = StaticDecoder.step_and_pick
    monkeypatch.setattr(StaticDecoder, "step_and_pick", lambda *args: (-1, real(*args)[1]))
    assert len(decided) == 12 and run() == decided


def test_one_row_on_the_numba_step_ends_as_on_the_batch_path(model_and_tokenizer):
    """One plain row alone on the numba step (`_numba_step_alone`) and on the torch step (`_sample_and_emit`) end
    their tokens alike (both through `_emit_token`): log-probabilities, an end token met mid-answer, a cancel from
    the callback, a callback that fails, the length limit; and a row that ends keeps its keys and values."""
    pytest.importorskip("numba")
    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest

    model, tok = model_and_tokenizer
    ids = tok("The os module")["input_ids"]

    def run(one_row_step: str) -> list[list[tuple]]:
        engine = GenerationEngine(model, tok.pad_token_id, max_batch_size=2, one_row_step=one_row_step)
        assert engine._static.one_row_step == one_row_step
        answers = []

        def ask(stop_ids=frozenset(), cancel_at=None, fail_at=None, **values) -> list[tuple]:
            events, done = [], threading.Event()
            request = None

            def emit(event):
                events.append(event)
                tokens = sum(e[0] == "token" for e in events)
                if event[0] != "token":
                    done.set()
                elif tokens == cancel_at:
                    request.cancel()
                elif tokens == fail_at:
                    raise RuntimeError("callback broke")
            request = GenerationRequest(ids, 8, emit, stop_ids=stop_ids, **values)
            engine.submit(request)
            assert done.wait(30)
            answers.append(events)
            return events

        try:
            sampled = [e[1] for e in ask(temperature=0.8, seed=5, logprobs=0)[:-1]]
            # an end token met mid-answer: the first token of the seeded answer not seen before in it
            first_new = next(i for i in range(1, len(sampled)) if sampled[i] not in sampled[:i])
            ask(temperature=0.8, seed=5, stop_ids=frozenset({sampled[first_new]}))
            ask(temperature=0, cancel_at=2)
            ask(temperature=0, fail_at=3)
            greedy = ask(temperature=0, logprobs=2)
        finally:
            engine.shutdown()  # the worker keeps a row's keys and values after its last event: read them after this
        kept = engine._static.prefix.entries
        # every answer after its first token ran alone on the step asked for (7 + first_new + 2 + 2 + 7 steps); the
        # last answer's end kept its keys and values: the prompt and the 7 answer tokens fed
        assert engine._static.numpy_steps == (18 + first_new if one_row_step == "numba" else 0)
        assert tuple(ids) + tuple(e[1] for e in greedy[:7]) in kept.values()
        return answers, first_new

    (numba, first_new), (torch_step, _) = run("numba"), run("torch")
    sampled, stopped, cancelled, failed, greedy = numba
    assert [e[0] for e in greedy] == ["token"] * 8 + ["done"] and greedy[-1] == ("done", "length")
    assert all(len(e[2][1]) == 2 for e in greedy[:-1])  # the chosen token's log-probability and the 2 most likely
    assert [e[:2] for e in stopped] == [e[:2] for e in sampled[:first_new]] + [("done", "stop")]
    assert all(len(e[2][1]) == 0 for e in sampled[:-1])  # logprobs=0: the chosen token's alone
    assert [e[0] for e in cancelled] == ["token", "token", "done"] and cancelled[-1] == ("done", "cancelled")
    assert [e[0] for e in failed] == ["token"] * 3 + ["error"] and "callback broke" in failed[-1][1]
    for ours, theirs in zip(numba, torch_step):  # the same events; log-probabilities up to the steps' rounding
        assert [e[:2] for e in ours] == [e[:2] for e in theirs]
        for a, b in zip(ours, theirs):
            if a[0] == "token" and a[2] is not None:
                assert a[2][0] == pytest.approx(b[2][0], abs=1e-4)
                assert [t for t, _ in a[2][1]] == [t for t, _ in b[2][1]]


def test_growing_cache_layer_equals_concatenation():
    """The engine's cache layer writes into spare room instead of `torch.cat`: the same keys and values after
    every append, past its room (reallocation), and after its tensors are replaced from outside (the engine
    dropping a finished row, trimming left padding)."""
    import torch

    from llm_recipes.serving.engine import growing_layer_class

    torch.manual_seed(0)
    layer = growing_layer_class()()
    expected_k = expected_v = torch.empty(3, 2, 0, 4)
    for step in range(200):  # more steps than SPARE: reallocates
        width, rows = (5 if step == 0 else 1), expected_k.shape[0]
        k, v = torch.randn(rows, 2, width, 4), torch.randn(rows, 2, width, 4)
        expected_k, expected_v = torch.cat([expected_k, k], dim=-2), torch.cat([expected_v, v], dim=-2)
        keys, values = layer.update(k, v)
        assert torch.equal(keys, expected_k) and torch.equal(values, expected_v), step
        if step == 40:  # a finished row leaves the batch
            index = torch.tensor([0, 2])
            layer.batch_select_indices(index)
            expected_k, expected_v = expected_k[index], expected_v[index]
        if step == 90:  # left padding no row uses any more is trimmed
            layer.keys, layer.values = layer.keys[..., 3:, :], layer.values[..., 3:, :]
            expected_k, expected_v = expected_k[..., 3:, :], expected_v[..., 3:, :]
    assert layer.get_seq_length() == expected_k.shape[-2] == 5 + 199 - 3


def test_streaming_detokenizer(tiny_tokenizer):
    from llm_recipes.serving.text import StreamingDetokenizer

    text = "Café naïve — the os.path module joins paths"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = StreamingDetokenizer(tiny_tokenizer)
    pieces = [detok.add(i)[0] for i in ids] + [detok.flush()]
    assert "".join(pieces) == tiny_tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)  # split UTF-8 characters are held back, never sent broken

    detok = StreamingDetokenizer(tiny_tokenizer, stop=["os.path"])
    sent, stopped = "", False
    for i in ids:
        delta, stopped = detok.add(i)
        sent += delta
        if stopped:
            break
    assert stopped and sent == "Café naïve — the "


def test_scoring_and_generating_requests_together(model_and_tokenizer):
    """A prompt-scoring request (max_new_tokens 0) submitted with a generating one (usually one prefill): its
    scores are a plain forward pass's, and the other's answer is unchanged by its company."""
    import torch

    from llm_recipes.serving.engine import GenerationEngine, GenerationRequest

    model, tok = model_and_tokenizer
    scored = tok("A long prompt about the import system and how modules are found")["input_ids"]
    generating = tok("The os module")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([scored])).logits[0].float(), dim=-1)
        expected_tokens = model.generate(torch.tensor([generating]), max_new_tokens=6, do_sample=False,
                                         eos_token_id=None,
                                         pad_token_id=tok.pad_token_id)[0, len(generating):].tolist()
    events = {0: [], 1: []}
    done = threading.Event()

    def make(i):
        def emit(event):
            events[i].append(event)
            if sum(e[0] in ("done", "error") for k in events for e in events[k]) == 2:
                done.set()
        return emit

    engine = GenerationEngine(model, tok.pad_token_id, max_batch_size=4)
    try:
        engine.submit(GenerationRequest(generating, 6, make(1), temperature=0, logprobs=2))
        engine.submit(GenerationRequest(scored, 0, make(0), temperature=0, logprobs=2, prompt_logprobs=True))
        assert done.wait(30)
    finally:
        engine.shutdown()
    (kind, entries), finish = events[0]
    assert kind == "prompt_logprobs" and finish == ("done", "length") and entries[0] is None
    for t, (logprob, top) in enumerate(entries[1:], start=1):
        assert logprob == pytest.approx(float(logp[t - 1, scored[t]]), abs=1e-4)
        assert [i for i, _ in top] == logp[t - 1].topk(2).indices.tolist()
    tokens = [e for e in events[1] if e[0] == "token"]
    assert [e[1] for e in tokens] == expected_tokens
    for _, token, (logprob, top) in tokens:
        assert top[0] == (token, logprob)  # greedy: the chosen token is the most likely one
    with pytest.raises(ValueError, match="0 or more"):
        engine.submit(GenerationRequest(scored, -1, lambda e: None))


def test_decoding_threads(model_and_tokenizer, monkeypatch):
    """A small model on the CPU decodes on one thread (faster: benchmarks/README.md), a larger one with torch's
    setting capped at the CPUs free at start (OpenMP threads on a busy machine spin and wait on each other);
    an explicit number wins."""
    import torch

    from llm_recipes.serving import engine as engine_module
    from llm_recipes.serving.engine import GenerationEngine, decode_threads

    model, tok = model_and_tokenizer
    assert decode_threads(model) == 1
    monkeypatch.setattr(engine_module, "SMALL_MODEL_PARAMETERS", 1000)  # the tiny model counts as large
    assert decode_threads(model, free=64) == torch.get_num_threads()
    assert decode_threads(model, free=1) == 1 and decode_threads(model, free=0) == 1
    assert 0 <= engine_module.free_cpus(sample_s=0.05) <= (os.cpu_count() or 1)  # the real measurement
    engine = GenerationEngine(model, tok.pad_token_id, num_threads=3)
    try:
        assert engine.num_threads == 3
    finally:
        engine.shutdown()

