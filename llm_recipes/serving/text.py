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
