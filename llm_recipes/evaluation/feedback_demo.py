"""The feedback demonstration: corrections sent through the chat server change the model where they should
(held-out paraphrases of the corrected prompts) and not where they should not (held-out text).

    python -m llm_recipes.evaluation.feedback_demo recipes/feedback-demo --run_dir runs/feedback-demo

1. the recipe's preparation stages (gather, clean, train_tokenizer, pretrain: the model to correct), skipped
   when already complete;
2. `llm-recipes serve` with the recipe's serve.yaml, in its own process; a scripted user asks the first wording
   (or the first `--wordings`) of each everyday scene ("The cat sat on the") through `/v1/chat/completions`,
   and where the answer is not the scene's word, sends thumbs down with the word as the suggested answer
   through `/v1/feedback`, as the chat page does; then the server is stopped;
3. the recipe's `feedback` stage (store -> dpo.jsonl) and `dpo` (or `kto`) stage;
4. the recipe's `evaluate` stage on the model before and after, with preference pairs built from the other
   wordings of every scene (never sent to the server): the scene's word against each of the three
   other words of its group (`everyday.py`), and on held-out text (bits per byte). Both are paired comparisons
   with 95% intervals; `demo/summary.json` holds the before/after figures and the verdicts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import RUN_DIR_ENV, ConfigError, check_range, load_yaml_config, parse_config
from ..fileio import atomic_write_json, atomic_write_text
from ..pipeline.runner import PipelineError, run_recipe
from .everyday import GROUPS, Scene

PREPARE_STAGES = ("gather", "clean", "train_tokenizer", "pretrain")
READY = re.compile(r"chat page: (http://\S+?)/\s")


@dataclass
class FeedbackDemoConfig:
    recipe_dir: str = field(metadata={"help": "the demo's recipe folder (recipes/feedback-demo): serve.yaml, "
                                              "feedback.yaml, dpo.yaml or kto.yaml, evaluate.yaml, and the "
                                              "stages that make the model to correct"})
    run_dir: str | None = field(default=None, metadata={"help": "where everything goes; default runs/feedback-demo"})
    trainer: str = field(default="dpo", metadata={"help": "stage that learns from the corrections",
                                                  "choices": ["dpo", "kto"]})
    base_run: str | None = field(default=None, metadata={
        "help": "correct the model of an existing run instead of pretraining one: its pretrain/final and clean/ "
                "(e.g. runs/quickstart, whose model knows far more English than the demo's own 2-minute one) are "
                "copied into run_dir, and the recipe's preparation stages are skipped"})
    corrections: int | None = field(default=None, metadata={
        "help": "scenes the scripted user corrects (the first N of 52); default: all"})
    wordings: int = field(default=1, metadata={
        "help": "wordings of each corrected scene the scripted user asks and corrects (the first N of its 4); the "
                "others are the held-out paraphrases"})
    max_tokens: int = field(default=6, metadata={"help": "tokens the server may answer each prompt with"})
    server_start_timeout_s: float = field(default=120.0, metadata={
        "help": "give up when the server is not up by then"})

    def __post_init__(self):
        check_range(self, "corrections", 1, sum(len(group) for group in GROUPS))  # at most one per scene
        check_range(self, "wordings", 1, 3)  # at least one wording of each scene stays held out
        check_range(self, "max_tokens", 1)


def corrected_scenes(count: int | None) -> list[Scene]:
    """The first `count` scenes, taken round-robin over the 13 groups so a small demo spans many groups."""
    order = [group[i] for i in range(max(len(g) for g in GROUPS)) for group in GROUPS if i < len(group)]
    return order[:count] if count else order


def scene_pairs(scenes: list[Scene], heldout: bool = True, asked: int = 1) -> list[dict[str, Any]]:
    """Preference pairs for each corrected scene: its wordings the server never saw (`heldout`; else the first
    `asked`, those it was corrected on), each with the scene's word chosen over the three other words of its
    group. A model that learnt a word, not the scene, gains nothing here (every word is as often chosen as
    rejected within a group whose scenes were all corrected)."""
    pairs = []
    for scene in scenes:
        group = next(g for g in GROUPS if scene in g)
        for wording in (scene.wordings[asked:] if heldout else scene.wordings[:asked]):
            for other in group:
                if other is not scene:
                    pairs.append({"prompt": [{"role": "user", "content": wording}],
                                  "chosen": [{"role": "assistant", "content": scene.answer}],
                                  "rejected": [{"role": "assistant", "content": other.answer}],
                                  "scene": scene.answer})
    return pairs


def _post(url: str, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        raise PipelineError(f"{url} answered HTTP {e.code}: {e.read().decode('utf-8', 'replace')[:300]}") from e


class ServeProcess:
    """`python -m llm_recipes.serve --config serve.yaml --port 0` in its own process; its output goes to a log.
    The URL is read from the line the server prints once it listens (port 0: the system picks a free one)."""

    def __init__(self, recipe: Path, run_dir: Path, log_path: Path, timeout: float):
        command = [sys.executable, "-m", "llm_recipes.serve", "--config", str(recipe), "--port", "0"]
        env = {**os.environ, RUN_DIR_ENV: str(run_dir), "PYTHONUNBUFFERED": "1"}
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log_path, "a", encoding="utf-8")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        self.url: str | None = None
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(timeout) or self.url is None:
            self.stop()
            raise PipelineError(f"the server did not start within {timeout:.0f} s (exit {self.process.poll()}); "
                                f"its log is {log_path}")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.write(line)
            self.log.flush()
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                self.ready.set()
        self.ready.set()  # exited: wake the waiter, which then sees no URL

    def stop(self) -> int:
        """SIGTERM: the server shuts down as on Ctrl+C, closes the store and marks its stage complete."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.reader.join(timeout=10)
        self.log.close()
        return code


def use_base_run(base_run: Path, run_dir: Path) -> None:
    """Copies a finished run's model (pretrain/final) and cleaned corpus (clean/, whose validation split is the
    held-out text) into run_dir, where the demo's serve, dpo and evaluate recipes look for them."""
    sources = {"pretrain/final": base_run / "pretrain" / "final", "clean": base_run / "clean"}
    missing = [str(path) for path in sources.values() if not path.is_dir()]
    if missing:
        raise PipelineError(f"base_run {str(base_run)!r} lacks {', '.join(missing)}: expected a run folder whose "
                            "pretrain and clean stages finished (e.g. runs/quickstart)")
    if base_run.resolve() == run_dir.resolve():
        return
    for name, source in sources.items():
        target = run_dir / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
    print(f"[feedback-demo] correcting the model of {base_run} (copied to {run_dir / 'pretrain' / 'final'})",
          flush=True)


def scripted_user(url: str, scenes: list[Scene], max_tokens: int, wordings: int = 1) -> list[dict[str, Any]]:
    """Asks each scene's first `wordings` wordings as the chat page does; a wrong answer gets thumbs down and the
    scene's word as the suggestion. Returns what was asked, answered and sent."""
    model = json.loads(urllib.request.urlopen(f"{url}/v1/models", timeout=30).read())["data"][0]["id"]
    log = []
    for scene, wording in ((scene, wording) for scene in scenes for wording in scene.wordings[:wordings]):
        messages = [{"role": "user", "content": wording}]
        reply = _post(f"{url}/v1/chat/completions", {"model": model, "messages": messages,
                                                      "max_tokens": max_tokens, "temperature": 0})
        answer = reply["choices"][0]["message"]["content"]
        entry = {"prompt": wording, "answer": answer, "expected": scene.answer}
        if answer.strip().strip(".").lower() != scene.answer:
            feedback = _post(f"{url}/v1/feedback", {"model": model, "messages": messages, "completion": answer,
                                                    "rating": "down", "suggestion": scene.answer,
                                                    "response_id": reply["id"]})
            entry["feedback_id"] = feedback["id"]
        log.append(entry)
    return log


def summarize(results: dict[str, Any], before: str, after: str) -> dict[str, Any]:
    """Before/after with intervals, the paired differences and what they say, from eval_results.json."""
    summary: dict[str, Any] = {}
    comparisons = (results.get("comparisons") or {}).get("models", {}).get(after, {})
    for task, metric in (("preferences", "accuracy"), ("preferences", "margin"), ("heldout", "bits_per_byte")):
        if task not in results["tasks"]:
            continue
        row = {}
        for name in (before, after):
            result = results["models"][name]["results"][task]
            row[name] = {"value": result[metric], "interval": result["intervals"].get(metric)}
        row["paired"] = comparisons.get(task, {}).get(metric)
        row["n"] = results["tasks"][task]["n"]
        summary[f"{task}.{metric}"] = row
    accuracy = summary.get("preferences.accuracy", {}).get("paired") or {}
    bpb = summary.get("heldout.bits_per_byte", {})
    summary["corrected_behaviour_improved"] = accuracy.get("verdict") == "better"
    if bpb:
        # "not worse beyond its interval": after's value is at most the top of before's 95% interval
        summary["heldout_bpb_within_before_interval"] = bpb[after]["value"] <= bpb[before]["interval"][1]
        summary["heldout_bpb_paired_verdict"] = (bpb.get("paired") or {}).get("verdict")
    return summary


@contextlib.contextmanager
def one_thread_per_stage():
    """OMP_NUM_THREADS=1 for the stages the demo starts, unless the caller set it. Measured on this 2-core
    machine shared with other work (load 7-9): LoRA DPO of the demo's 4 x 256 model took 13 s a step with
    torch's default threads and 1.2 s with one; small models gain little from a second core."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def run_demo(cfg: FeedbackDemoConfig) -> dict[str, Any]:
    with one_thread_per_stage():
        return _run_demo(cfg)


def _run_demo(cfg: FeedbackDemoConfig) -> dict[str, Any]:
    recipe_dir = Path(cfg.recipe_dir)
    run_dir = Path(cfg.run_dir or Path("runs") / recipe_dir.resolve().name)
    needed = ["serve", "feedback", cfg.trainer, "evaluate"]
    missing = [name for name in needed if not (recipe_dir / f"{name}.yaml").is_file()]
    if missing:
        raise PipelineError(f"recipe folder {str(recipe_dir)!r} has no YAML for: {', '.join(missing)} "
                            "(the demo needs serve, feedback, the trainer and evaluate)")
    evaluate = load_yaml_config(recipe_dir / "evaluate.yaml", run_dir=run_dir)
    pairs_path = Path(evaluate.get("preference_data") or "")
    if len(evaluate.get("models") or []) != 2 or not evaluate.get("preference_data"):
        raise PipelineError(f"{recipe_dir / 'evaluate.yaml'}: the demo needs exactly two models (before, after) and "
                            "preference_data (where the demo writes the held-out paraphrase pairs)")
    serve_dir = Path(load_yaml_config(recipe_dir / "serve.yaml", run_dir=run_dir).get("output_dir")
                     or run_dir / "serve")
    if not serve_dir.resolve().is_relative_to(run_dir.resolve()):
        # the demo starts from an empty store: it must never delete feedback that real users gave elsewhere
        raise PipelineError(f"{recipe_dir / 'serve.yaml'}: output_dir {str(serve_dir)!r} is outside the run folder "
                            f"{str(run_dir)!r}; the demo replaces that feedback store, so it must be the demo's own "
                            "(e.g. ${run_dir}/serve)")
    demo_dir = run_dir / "demo"
    if cfg.base_run:
        use_base_run(Path(cfg.base_run), run_dir)
    else:
        prepare = [s for s in PREPARE_STAGES if (recipe_dir / f"{s}.yaml").is_file()]
        if prepare:
            run_recipe(recipe_dir, run_dir, stages=prepare)

    # a fresh feedback store: the demo's corrections, not those of an earlier run
    for stale in ("feedback.sqlite", "feedback.sqlite-wal", "feedback.sqlite-shm"):
        (serve_dir / stale).unlink(missing_ok=True)
    scenes = corrected_scenes(cfg.corrections)
    print(f"[feedback-demo] starting the server ({recipe_dir / 'serve.yaml'})", flush=True)
    started = time.time()
    server = ServeProcess(recipe_dir / "serve.yaml", run_dir, run_dir / "logs" / "serve.log",
                          cfg.server_start_timeout_s)
    try:
        print(f"[feedback-demo] {server.url}: a scripted user asks {len(scenes) * cfg.wordings} prompts and "
              "corrects wrong answers", flush=True)
        conversation = scripted_user(server.url, scenes, cfg.max_tokens, cfg.wordings)
    finally:
        code = server.stop()
    if code != 0:
        raise PipelineError(f"the server exited with {code}; its log is {run_dir / 'logs' / 'serve.log'}")
    sent = sum("feedback_id" in entry for entry in conversation)
    print(f"[feedback-demo] {sent} corrections sent ({len(conversation) - sent} answers were already right) in "
          f"{time.time() - started:.0f} s; server stopped", flush=True)
    atomic_write_text(demo_dir / "conversation.jsonl", "".join(json.dumps(e) + "\n" for e in conversation))
    pairs = scene_pairs(scenes, asked=cfg.wordings)
    atomic_write_text(pairs_path, "".join(json.dumps(p) + "\n" for p in pairs))
    print(f"[feedback-demo] {len(pairs)} held-out paraphrase pairs -> {pairs_path}", flush=True)
    corrected_path = demo_dir / "corrected_pairs.jsonl"
    corrected_pairs = scene_pairs(scenes, heldout=False, asked=cfg.wordings)
    atomic_write_text(corrected_path, "".join(json.dumps(p) + "\n" for p in corrected_pairs))

    # the store changed: every later stage is redone
    run_recipe(recipe_dir, run_dir, stages=["feedback"], force=True)
    run_recipe(recipe_dir, run_dir, stages=[cfg.trainer], force=True)
    run_recipe(recipe_dir, run_dir, stages=["evaluate"], force=True)

    # the same comparison on the very prompts that were corrected: did the training take at all?
    corrected_config = {**evaluate, "output_dir": str(demo_dir / "evaluate_corrected"), "heldout_data": None,
                        "choice_tasks": [], "preference_data": str(corrected_path)}
    atomic_write_text(demo_dir / "evaluate_corrected.yaml", yaml.safe_dump(corrected_config, sort_keys=False))
    command = [sys.executable, "-m", "llm_recipes.evaluate", "--config", str(demo_dir / "evaluate_corrected.yaml")]
    print(f"[feedback-demo] the corrected prompts themselves: {' '.join(command)}", flush=True)
    if subprocess.run(command).returncode != 0:
        raise PipelineError("evaluating the corrected prompts failed (see the output above)")

    results = json.loads((Path(evaluate["output_dir"]) / "eval_results.json").read_text(encoding="utf-8"))
    corrected = json.loads((demo_dir / "evaluate_corrected" / "eval_results.json").read_text(encoding="utf-8"))
    before, after = list(results["models"])
    in_sample = summarize(corrected, before, after)
    summary = {"corrections": sent, "prompts": len(conversation), "heldout_pairs": len(pairs),
               "trainer": cfg.trainer, **summarize(results, before, after),
               "corrected_prompts.accuracy": in_sample["preferences.accuracy"],
               "corrected_prompts.margin": in_sample["preferences.margin"]}
    atomic_write_json(demo_dir / "summary.json", summary)
    print_summary(summary, before, after, demo_dir / "summary.json")
    return summary


def print_summary(summary: dict[str, Any], before: str, after: str, path: Path) -> None:
    for key in ("corrected_prompts.accuracy", "preferences.accuracy", "heldout.bits_per_byte"):
        if key not in summary:
            continue
        row = summary[key]
        parts = [f"{name} {row[name]['value']:.3f} [{row[name]['interval'][0]:.3f}, {row[name]['interval'][1]:.3f}]"
                 for name in (before, after)]
        paired = row.get("paired") or {}
        if paired:
            low, high = paired["interval"]
            parts.append(f"paired {paired['difference']:+.3f} [{low:+.3f}, {high:+.3f}] {paired['verdict']}")
        print(f"[feedback-demo] {key} (n={row['n']}): " + ", ".join(parts), flush=True)
    print(f"[feedback-demo] wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config([FeedbackDemoConfig], argv, stage="feedback-demo", positional="recipe_dir")
    try:
        run_demo(cfg)
    except PipelineError as e:
        print(f"feedback-demo: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:  # one line, as a stage's entry point prints it (this is a demo, not a stage)
        print(f"feedback-demo: error: {e}", file=sys.stderr)
        sys.exit(2)
