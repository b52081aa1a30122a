"""Per-token cost of grammar-constrained decoding on the CPU with our byte-level BPE tokenizers:
xgrammar vs llguidance (the libraries vLLM uses), for a JSON schema and for any JSON object.

    python benchmarks/serve/structured_overhead.py --vocab_sizes 512 4096 --tokens 400

Trains a byte-level BPE tokenizer of each size on the pydoc topics (what the tests use), compiles the
grammars, then decodes constrained text from random logits: each step computes the allowed-token mask,
applies it to the logits, picks the best allowed token and advances the matcher. Reports compile time and
microseconds per token (mask + apply + advance), the overhead a served request pays per generated token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "year": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string", "maxLength": 10},
                                                    "maxItems": 3}},
          "required": ["name", "year", "tags"], "additionalProperties": False}


def tokenizer_of_size(vocab_size: int):
    import pydoc_data.topics

    from transformers import AutoTokenizer

    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe

    corpus = [t for t in pydoc_data.topics.topics.values() if len(t) > 200]
    path = tempfile.mkdtemp()
    save_tokenizer(train_bpe(corpus, vocab_size=vocab_size, model_max_length=2048), path)
    return AutoTokenizer.from_pretrained(path)


def run_xgrammar(tokenizer, schema, tokens: int, seed: int):
    import torch
    import xgrammar as xgr

    vocab = len(tokenizer)
    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info)
    compiled = (compiler.compile_json_schema(json.dumps(schema)) if schema
                else compiler.compile_builtin_json_grammar())
    compile_s = time.perf_counter() - start
    bitmask = xgr.allocate_token_bitmask(1, vocab)
    generator = torch.Generator().manual_seed(seed)
    per_token, produced = [], 0
    while produced < tokens:
        matcher = xgr.GrammarMatcher(compiled)
        while not matcher.is_terminated() and produced < tokens:
            logits = torch.randn(1, vocab, generator=generator)
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            token = int(logits.argmax())
            assert matcher.accept_token(token)
            per_token.append(time.perf_counter() - t0)
            produced += 1
    return compile_s, per_token


def run_llguidance(tokenizer, schema, tokens: int, seed: int):
    import llguidance
    import llguidance.hf
    import llguidance.torch
    import torch

    vocab = len(tokenizer)
    start = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema or {"type": "object"})
    compile_s = time.perf_counter() - start
    bitmask = llguidance.torch.allocate_token_bitmask(1, vocab)
    generator = torch.Generator().manual_seed(seed)
    per_token, produced = [], 0
    while produced < tokens:
        matcher = llguidance.LLMatcher(lltok, grammar)
        while not matcher.is_stopped() and produced < tokens:
            logits = torch.randn(1, vocab, generator=generator)
            t0 = time.perf_counter()
            llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
            llguidance.torch.apply_token_bitmask_inplace(logits, bitmask)
            token = int(logits.argmax())
            assert matcher.consume_token(token), matcher.get_error()
            per_token.append(time.perf_counter() - t0)
            produced += 1
    return compile_s, per_token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab_sizes", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--tokens", type=int, default=400, help="constrained tokens decoded per measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    for vocab_size in args.vocab_sizes:
        tokenizer = tokenizer_of_size(vocab_size)
        for label, schema in (("json_schema", SCHEMA), ("json_object", None)):
            for library, run in (("xgrammar", run_xgrammar), ("llguidance", run_llguidance)):
                compile_s, per_token = run(tokenizer, schema, args.tokens, args.seed)
                print(json.dumps({"vocab": vocab_size, "grammar": label, "library": library,
                                  "compile_ms": round(compile_s * 1000, 1), "tokens": len(per_token),
                                  "us_per_token_median": round(statistics.median(per_token) * 1e6, 1),
                                  "us_per_token_p90": round(sorted(per_token)[int(0.9 * len(per_token))] * 1e6, 1)}),
                      flush=True)


if __name__ == "__main__":
    main()
