"""Local lm-evaluation-harness tasks (YAML + JSONL) for the quickstart's evaluations; pass this folder as
`--include_path`. The JSONL files double as the `builtin:` sets of `llm-recipes evaluate`."""
