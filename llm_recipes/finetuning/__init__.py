"""Fine-tuning and feedback alignment with TRL and PEFT: data, LoRA, held-out measurement, the shared
stage flow (`training.run_stage`) behind `llm-recipes sft`, `dpo` and `kto`."""

from .data import DatasetFormatError, convert_for_stage, detect_format, load_raw_dataset, split_heldout, validate
from .lora import LoraTargetError, build_lora_config, merge_adapter
from .python_docs import build_python_docs_data, load_corpus

__all__ = ["DatasetFormatError", "LoraTargetError", "build_lora_config", "build_python_docs_data", "convert_for_stage",
           "detect_format", "load_corpus", "load_raw_dataset", "merge_adapter", "split_heldout",
           "validate"]
