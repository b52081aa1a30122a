#!/usr/bin/env bash
# The compute-budget dial on a lent GPU machine (the `device` tool's `run`; steps in benchmarks/README.md,
# "Pretraining (issue 5)"): what the dial picks there from its own probe, then the quickstart's pretrain stage with
# the dial for real, to check that the plan's steps and tokens are what the GPU delivers.
# That machine's python3 has CUDA torch, transformers, accelerate, tokenizers and pyarrow but no `datasets`, and it
# reaches no registry: the wheels in .whl/ and a finished quickstart's clean/ and tokenizer/ in .devdata/quickstart/
# are prepared here and travel with the working tree (`carry`). Everything comes back in $OUT.
set -euo pipefail
: "${OUT:?set OUT to a folder for the results (the device tool sets it)}"
BUDGET="${BUDGET:-120}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${WHEELS:-.whl}"/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 HF_HUB_OFFLINE=1
python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| datasets', datasets.__version__)" | tee "$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/log.txt" || true
# 1. the plan from the device's own probe, for the quickstart's 360 s and for this script's shorter run
python3 benchmarks/pretrain/dial_plan.py --budget 360 "$BUDGET" 2>&1 | tee "$OUT/plans.jsonl"
# 2. the quickstart's pretrain stage, sized by the dial to $BUDGET seconds on this GPU
LLM_RECIPES_RUN_DIR="$PWD/.devdata/quickstart" python3 -m llm_recipes.pretrain --config recipes/quickstart/pretrain.yaml \
    --compute_budget_seconds "$BUDGET" --output_dir /tmp/qs-pretrain --report_to none --save_steps 0 \
    --resume_from_checkpoint none --overwrite_output_dir true 2>&1 | grep -v "step/s" | tee -a "$OUT/log.txt"
cp /tmp/qs-pretrain/sizing.json /tmp/qs-pretrain/train_summary.json /tmp/qs-pretrain/metrics.jsonl "$OUT/"
