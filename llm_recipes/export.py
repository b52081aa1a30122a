"""`llm-recipes export DIR --to llama`: a standard Llama checkpoint (no custom code) with identical logits,
for serving at scale with vLLM or TGI; `--to gguf`: one GGUF file for llama.cpp (llama-server, Ollama).

    llm-recipes export runs/quickstart/sft/final --to llama --output_dir runs/quickstart/export
    vllm serve runs/quickstart/export
    llm-recipes export runs/quickstart/sft/final --to gguf --output_dir runs/quickstart/gguf
    llama-server -m runs/quickstart/gguf/sft.gguf
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from .cli import entry_point
from .config import ConfigError, beside_model, parse_config
from .exporting.gguf import export_to_gguf
from .exporting.llama import ExportError, export_to_llama
from .pipeline.envelope import StageRun

FORMATS = ("llama", "gguf")


@dataclass
class ExportConfig:
    model_path: str = field(metadata={"help": "RecipeGPT model folder to export; also accepted as the first bare "
                                              "argument"})
    output_dir: str | None = field(default=None, metadata={
        "help": "where the exported model folder is written (replaced atomically); default: export/ (gguf/ for "
                "--to gguf) beside the model's stage folder (runs/quickstart/dpo/final -> runs/quickstart/export), "
                "else runs/default/export"})
    to: str = field(default="llama", metadata={"help": f"target format; one of: {', '.join(FORMATS)}"})
    dtype: str | None = field(default=None, metadata={
        "help": "weights dtype of the export: float32, bfloat16 or float16; default: the checkpoint's (GGUF keeps "
                "norm weights in float32, as llama.cpp's converter does)"})


def config_classes() -> tuple[type, ...]:
    return (ExportConfig,)


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="export", positional="model_path")

    if cfg.to not in FORMATS:
        raise ConfigError(f"--to {cfg.to!r} is not a supported export format; expected one of: {', '.join(FORMATS)}")
    if cfg.dtype not in (None, "float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype {cfg.dtype!r} is not supported; expected float32, bfloat16 or float16")
    cfg.output_dir = cfg.output_dir or beside_model(cfg.model_path, "export" if cfg.to == "llama" else cfg.to)
    run = StageRun("export", cfg.output_dir, cfg)
    try:
        if cfg.to == "gguf":
            summary = export_to_gguf(cfg.model_path, cfg.output_dir, dtype=cfg.dtype, start=run.start)
        else:
            summary = export_to_llama(cfg.model_path, cfg.output_dir, dtype=cfg.dtype, start=run.start)
    except ExportError as e:
        print(f"llm-recipes export: error: {e}", file=sys.stderr)
        return 2
    run.complete(format=cfg.to, **summary)
    if cfg.to == "gguf":
        print(f"wrote a GGUF file for llama.cpp ({summary['parameters']:,} parameters, {summary['dtype']}, "
              f"{summary['bytes'] / 2**20:.1f} MiB, pre-tokenizer {summary['pre_tokenizer']!r}) to {summary['file']}")
    else:
        print(f"wrote a LlamaForCausalLM checkpoint ({summary['parameters']:,} parameters, max logit difference "
              f"{summary['max_abs_logit_diff']:.2g}) to {cfg.output_dir}: {', '.join(summary['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("export", main))
