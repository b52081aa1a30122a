"""What the compute-budget dial (llm_recipes/training/sizing.py) picks for a budget, on this device or an assumed one.

    python benchmarks/pretrain/dial_plan.py --budget 360                       # probes this machine's device
    python benchmarks/pretrain/dial_plan.py --budget 360 --flops_per_s 4e14 --overhead_s 0.02 --memory_gb 130 --bf16
                                                                                # an assumed device, no probe

Vocabulary and corpus size default to the quickstart's (4,096; 6,008,417 training tokens). Prints one JSON object per
budget: the plan as the pretrain stage would apply it (the stage then writes the same plan to sizing.json).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, nargs="+", default=[360.0], help="seconds of training")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--unique_tokens", type=float, default=6_008_417,
                        help="training tokens in the corpus (0: unknown)")
    parser.add_argument("--flops_per_s", type=float, help="assume this sustained FLOP/s instead of probing")
    parser.add_argument("--overhead_s", type=float, default=0.0, help="with --flops_per_s: seconds per step on top")
    parser.add_argument("--memory_gb", type=float, help="memory free for training (default: measured)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default: on a GPU that supports it)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)

    import torch

    from llm_recipes.runtime.threads import usable_cpus
    from llm_recipes.training.monitor import peak_flops
    from llm_recipes.training.sizing import Throughput, available_memory, plan_run, probe_and_plan

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = args.bf16 or (device.type == "cuda" and torch.cuda.is_bf16_supported())
    memory = int(args.memory_gb * 2**30) if args.memory_gb else available_memory(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for budget in args.budget:
        if args.flops_per_s:
            throughput = Throughput(args.overhead_s, args.flops_per_s, device.type, False, "assumed (--flops_per_s)")
            plan = plan_run(budget, args.vocab, throughput, memory, args.unique_tokens or None, bf16=bf16)
        else:  # the stage's own probe and plan (two depths around a first guess, probed again if extrapolated)
            plan = probe_and_plan(device, budget, args.vocab, memory, args.unique_tokens or None, bf16=bf16,
                                  peak=peak_flops(device), cpus=usable_cpus())
        print(json.dumps({"device": name, "budget_s": budget, "summary": plan.describe(), "plan": plan.as_dict()}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
