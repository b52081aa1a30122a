"""Where a serving run's CPU goes: `llm-recipes serve` (PYTHONPATH=TREE) under 32 streaming clients (vllm_check's
requests, 128 of 48 tokens), with /health polled every 0.1 s for the running and waiting answers, and the cores
each process of the server (HTTP process, engine process) used over the run.

    python benchmarks/serve/cpu_share_probe.py runs/quickstart/dpo/final .
"""

import os
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vllm_check  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    model, tree = Path(sys.argv[1]), sys.argv[2]
    with vllm_check.ours_server(model, Path(f"/tmp/cpu-share-probe-{os.getpid()}"), 32,
                                tree=Path(tree).resolve()) as (proc, url):
        samples, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                health = httpx.get(url + "/health").json()
                samples.append((health["running"], health["waiting"]))
                time.sleep(0.1)

        vllm_check._load(url, [1], [2], 8)  # warm-up
        children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
        pids = [proc.pid] + children
        before, started = {p: cpu_seconds(p) for p in pids}, time.time()
        poller = threading.Thread(target=poll)
        poller.start()
        row = vllm_check._load(url, [32], [128], 48)[0]
        stop.set()
        poller.join()
        wall = time.time() - started
        cores = {p: round((cpu_seconds(p) - before[p]) / wall, 2) for p in pids}
    running, waiting = [s[0] for s in samples], [s[1] for s in samples]
    print(f"{row['output_tokens_per_s']:.0f} output tok/s, TTFT p50 {row['ttft_p50_s'] * 1000:.0f} ms; running "
          f"{sum(running) / len(running):.1f} on average (max {max(running)}), "
          f"waiting {sum(waiting) / len(waiting):.1f}; "
          f"cores used: HTTP process {cores[proc.pid]}, its children {[cores[p] for p in children]}; "
          f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
