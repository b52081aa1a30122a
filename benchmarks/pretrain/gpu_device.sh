#!/usr/bin/env bash
# Runs gpu_mfu.py on a lent GPU machine (the `device` tool's `run`; steps in benchmarks/README.md).
# That machine's python3 has CUDA torch, transformers, accelerate, tokenizers and pyarrow but no
# `datasets`, and it reaches no registry: the wheels in .whl/ and the text in .devdata/ are prepared here
# and travel with the working tree (`carry`). Results and the log come back in $OUT.
set -euo pipefail
: "${OUT:?set OUT to a folder for the results (the device tool sets it)}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${WHEELS:-.whl}"/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1
python3 -c "import torch, transformers, accelerate, datasets, pyarrow; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| datasets', datasets.__version__, '| pyarrow', pyarrow.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv || true
# extra arguments go to gpu_mfu.py (default: batch 16 then 32, the gpt2-small preset at context 1024)
python3 benchmarks/pretrain/gpu_mfu.py --text .devdata/input.txt --work /tmp/mfu --results "$OUT/results.jsonl" \
    --batch 16 32 "$@" 2>&1 | tee "$OUT/log.txt"
