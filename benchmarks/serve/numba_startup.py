"""Start-up cost of the numba one-row step (`StaticDecoder(one_row_step="numba")`'s `numba_seconds`: importing
numba, then compiling its functions or loading them from numba's on-disk cache), each measurement in a fresh
process: `cold` with an empty cache directory (a first start), `warm` with the cache the cold start wrote.

    python benchmarks/serve/numba_startup.py runs/quickstart/dpo/final --rounds 2 --json_out numba-startup.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from rows import record  # benchmarks/serve/rows.py (the script's folder is on sys.path)


def child(model_path: str) -> dict:
    import torch

    from llm_recipes.serving.loading import load_for_serving
    from llm_recipes.serving.static_decode import StaticDecoder

    model, _ = load_for_serving(model_path)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    decoder = StaticDecoder(model, 32, model.config.max_position_embeddings, one_row_step="numba")
    assert decoder.one_row_step == "numba", decoder.one_row_reason
    return {"numba_seconds": round(decoder.numba_seconds, 3), "loadavg_1min": [round(load, 2),
                                                                                round(os.getloadavg()[0], 2)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_path")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json_out")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.model_path)))
        return 0
    for round_ in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
            for kind in ("cold", "warm"):
                out = subprocess.run([sys.executable, __file__, args.model_path, "--child"], capture_output=True,
                                     text=True, check=True, env={**os.environ, "NUMBA_CACHE_DIR": cache})
                record({"round": round_, "cache": kind, **json.loads(out.stdout.strip().splitlines()[-1])},
                       args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
