"""Exporting a model for other engines: a plain Llama checkpoint (vLLM, TGI) and GGUF (llama.cpp)."""
