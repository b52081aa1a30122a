"""The tokenizer: byte-level BPE training with our special tokens and chat template, and its report."""
