"""Generation defaults that fit the model: what every saved folder's generation_config and every usage
snippet we write may ask for."""

from __future__ import annotations

# what a finished model generates by default where its context allows (about a paragraph)
DEFAULT_MAX_NEW_TOKENS = 256


def fitting_max_new_tokens(max_position_embeddings: int, wanted: int = DEFAULT_MAX_NEW_TOKENS) -> int:
    """At most half the context: a prompt of up to the other half plus the answer stays inside the positions the
    model was trained on (a 128-position model gets 64, not the 256 that ran 200 tokens past its context)."""
    return max(1, min(wanted, int(max_position_embeddings) // 2))
