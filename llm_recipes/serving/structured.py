"""Structured output: OpenAI's `response_format` (`json_object`, `json_schema` with `strict`) as
grammar-constrained decoding with xgrammar.

At every step the grammar's matcher says which tokens can continue valid JSON (a bitmask over the
vocabulary); the others get -inf before sampling, so even a tiny model writes text that parses and
validates. Once the JSON is complete only the end tokens are allowed, so the answer ends with
`finish_reason: "stop"`; an answer cut by `max_tokens` ends with `"length"` and is never presented as
complete JSON. Chosen over llguidance by measured cost per token on the CPU with our byte-level BPE
tokenizers (about 15-30 us against 40-50 us, benchmarks/README.md, `benchmarks/serve/structured_overhead.py`).
"""

from __future__ import annotations

import json
import re
import threading


class StructuredOutputError(ValueError):
    """A response_format this server cannot turn into a grammar (invalid or unsupported JSON schema)."""


class GrammarCompiler:
    """Compiles response formats for one tokenizer; compiled grammars are cached by xgrammar.

    Args:
        tokenizer: the model's tokenizer.
        vocab_size: the number of logits the model produces (may exceed the tokenizer's size).
        stop_ids: the tokens that end an answer (allowed once the JSON is complete).
    """

    def __init__(self, tokenizer, vocab_size: int, stop_ids):
        self.tokenizer, self.vocab_size, self.stop_ids = tokenizer, int(vocab_size), sorted(stop_ids)
        self._compiler = None
        self._lock = threading.Lock()

    def _get(self):
        with self._lock:
            if self._compiler is None:
                try:
                    import xgrammar as xgr
                except ImportError as e:
                    raise StructuredOutputError("structured output needs xgrammar: pip install "
                                                "'llm_recipes[serve]'") from e
                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=self.stop_ids or None)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            return self._compiler

    def compile(self, kind: str, schema: dict | None = None, strict: bool = False):
        """A compiled grammar for `json_object` (any JSON object) or `json_schema` (`schema`; with `strict`,
        no properties beyond those listed, as OpenAI's strict mode requires of the schema itself)."""
        compiler = self._get()
        try:
            if kind == "json_object":
                return compiler.compile_json_schema(json.dumps({"type": "object"}), any_whitespace=False,
                                                    strict_mode=False)
            # no free whitespace: a small model would otherwise fill its whole answer with it
            return compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=bool(strict))
        except (RuntimeError, ValueError, TypeError) as e:
            # "[23:45:52] /project/cpp/json_schema_converter.cc:5082: Unsupported type ..." -> the message
            reason = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", str(e).strip().splitlines()[0])
            raise StructuredOutputError(f"the JSON schema cannot be used: {reason}") from None


class GrammarState:
    """One answer's position in its grammar: masks the logits of each step, then advances by the token
    chosen. Used by the engine's worker thread only."""

    def __init__(self, compiled, vocab_size: int):
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def mask(self, scores):
        """Sets the scores (1, V) of tokens that cannot continue the grammar to -inf, in place."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._xgr.apply_token_bitmask_inplace(scores, self.bitmask, vocab_size=self.vocab_size)
        return scores

    def advance(self, token: int) -> None:
        if not self.matcher.accept_token(int(token)):
            raise RuntimeError(f"token {token} does not continue the grammar")
