"""Turning generated token ids into text deltas for streaming, with OpenAI-style stop strings."""

from __future__ import annotations


class StreamingDetokenizer:
    """Accumulates token ids and returns the new text each token adds.

    Byte-level BPE splits multi-byte characters across tokens: text that ends in an incomplete
    character (decoded as U+FFFD) is held back until the next token completes it. Text that could be
    the start of a stop string is held back too, so a stop string is never half-sent.

    Args:
        tokenizer: the model's tokenizer.
        stop: strings that end generation; the text is cut before the first one.
    """

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already returned

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def add(self, token_id: int) -> tuple[str, bool]:
        """Adds a token; returns (text to send now, whether a stop string was reached)."""
        self.ids.append(int(token_id))
        text = self._text()
        for s in self.stop:
            at = text.find(s)
            if at != -1:
                cut = text[:at]
                delta = cut[self.sent:]
                self.sent = len(cut)
                return delta, True
        safe = len(text)
        if text.endswith("\ufffd"):
            safe = len(text.rstrip("\ufffd"))
        safe = min(safe, len(text) - self._stop_prefix_length(text))
        if safe <= self.sent:
            return "", False
        delta = text[self.sent:safe]
        self.sent = safe
        return delta, False

    def flush(self) -> str:
        """The text held back so far (at the end of generation)."""
        text = self._text()
        delta = text[self.sent:]
        self.sent = len(text)
        return delta

    @property
    def text(self) -> str:
        return self._text()[: self.sent]

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    best = max(best, n)
                    break
        return best


class TokenText:
    """The text and UTF-8 bytes of single tokens, for log-probability answers.

    A byte-level BPE token can hold part of a multi-byte character, so its text alone would be U+FFFD:
    its exact bytes come from the byte-level alphabet (GPT-2's map of the 256 bytes to printable
    characters), as OpenAI's `bytes` field reports them. Other tokenizers fall back to decoding.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
        shifted = [b for b in range(256) if b not in printable]
        self._byte_of = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(shifted)}
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token_id: int) -> tuple[str, bytes]:
        """(text, bytes) of one token; text has U+FFFD where the token ends inside a character."""
        found = self._cache.get(token_id)
        if found is None:
            piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
            if isinstance(piece, str) and piece and all(c in self._byte_of for c in piece):
                raw = bytes(self._byte_of[c] for c in piece)
            else:
                raw = self.tokenizer.decode([int(token_id)]).encode()
            found = self._cache[token_id] = (raw.decode("utf-8", errors="replace"), raw)
        return found
