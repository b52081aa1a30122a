"""The evaluate stage's work: every model on every task, results cached per (model, task) so a killed run
resumes where it stopped, then eval_results.json, the comparison and the model cards."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_write_json, atomic_write_text
from ..publishing.model_card import readable_dataset_id, update_model_index
from ..runtime.threads import ThreadGovernor
from .data import heldout_files, load_choice_task, load_heldout_texts, load_preferences, load_qa
from .everyday import NAME as EVERYDAY
from .everyday import everyday_task
from .generated import generated_task
from .harness import (
    CORE,
    check_task_names,
    core_result,
    describe,
    evaluate_harness_task,
    load_harness_task,
    task_manager,
)
from .intervals import metric_intervals, paired_difference, small_set_warning
from .models import EvalInputError, check_model_dir, count_parameters, load_model_and_tokenizer
from .report import (
    HEADLINE,
    comparison_markdown,
    comparison_plot,
    format_with_interval,
    headline_columns,
    read_metrics_file,
)
from .scoring import LMScorer
from .tasks import evaluate_choice_task, evaluate_perplexity, evaluate_preferences, evaluate_qa

PARTIAL = "partial_results.json"


def parse_models(specs: list[str]) -> dict[str, str]:
    """`name=path` (or a bare path, named after its folder) -> {name: path}, in order. A path with a glob
    (`ckpt=runs/x/pretrain/checkpoints/step-*`) gives one model per match, named after its folder."""
    import glob

    if not specs:
        raise EvalInputError("models is empty: give at least one model as name=path (e.g. base=runs/x/pretrain/final)")
    models: dict[str, str] = {}
    for spec in specs:
        name, path = spec.split("=", 1) if "=" in spec else (None, spec)
        path = path.strip()
        if not path:
            raise EvalInputError(f"models entry {spec!r} has no path; expected name=path")
        if any(c in path for c in "*?["):
            matches = sorted(p for p in glob.glob(path) if Path(p).is_dir())
            if not matches:
                raise EvalInputError(f"models entry {spec!r}: no folder matches {path!r}")
            pairs = [(Path(p).name, p) for p in matches]
        else:
            if not name:
                parts = Path(path).parts
                stage_folder = len(parts) > 1 and parts[-1] in ("final", "model")
                name = parts[-2] if stage_folder else (parts[-1] if parts else path)
            pairs = [(name, path)]
        for model_name, model_path in pairs:
            if model_name in models:
                raise EvalInputError(f"models: the name {model_name!r} is used twice; give each model its own "
                                     "name=path")
            models[model_name] = model_path
    return models


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def model_fingerprint(path: str) -> str:
    """Changes when the weights change: file names, sizes and modification times of a local folder."""
    folder = Path(path)
    if not folder.is_dir():
        return path
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
    return _digest([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


@dataclasses.dataclass
class Task:
    name: str
    kind: str  # perplexity | choice | qa | preferences | harness
    source: str
    payload: Any
    info: dict[str, Any]
    signature: str


def load_tasks(cfg) -> list[Task]:
    """Reads and checks every task before any model is loaded, so a bad file fails in seconds."""
    tasks: list[Task] = []
    if cfg.heldout_data:
        texts = load_heldout_texts(cfg.heldout_data, cfg.text_field, cfg.max_documents, cfg.max_heldout_bytes)
        info = {"kind": "perplexity", "source": cfg.heldout_data, "n": len(texts),
                "bytes": sum(len(t.encode("utf-8")) for t in texts)}
        tasks.append(Task("heldout", "perplexity", cfg.heldout_data, texts, info,
                          _digest([texts, cfg.stride, cfg.max_length])))
    full_heldout = None
    for spec in cfg.choice_tasks:
        if spec.split("=", 1)[-1].startswith("generated:"):  # generated:<set> or name=generated:<set>

            if full_heldout is None and cfg.heldout_data:  # the whole held-out split, not the perplexity budget
                full_heldout = load_heldout_texts(cfg.heldout_data, cfg.text_field)
            task = generated_task(spec, full_heldout, cfg.generated_items, cfg.seed)
        elif spec.split("=", 1)[-1] == f"builtin:{EVERYDAY}":  # written by our code, not read from a file
            task = everyday_task(spec, cfg.max_items_per_task)
        else:
            task = load_choice_task(spec, cfg.max_items_per_task)
        chance = sum(1 / len(i.choices) for i in task.items) / len(task.items)
        info = {"kind": "choice", "source": task.source, "layout": task.layout, "n": len(task.items), "chance": chance}
        tasks.append(Task(task.name, "choice", task.source, task, info,
                          _digest([dataclasses.asdict(i) for i in task.items] + [cfg.max_length])))
    if cfg.qa_data:
        items = load_qa(cfg.qa_data, cfg.qa_max_items)
        info = {"kind": "qa", "source": cfg.qa_data, "n": len(items)}
        tasks.append(Task("qa", "qa", cfg.qa_data, items, info,
                          _digest([dataclasses.asdict(i) for i in items]
                                  + [cfg.max_new_tokens, cfg.qa_prompt_format])))
    if cfg.preference_data:
        pairs = load_preferences(cfg.preference_data, cfg.preference_max_items)
        info = {"kind": "preferences", "source": cfg.preference_data, "n": len(pairs), "chance": 0.5}
        tasks.append(Task("preferences", "preferences", cfg.preference_data, pairs, info,
                          _digest([dataclasses.asdict(p) for p in pairs] + [cfg.max_length])))
    if cfg.harness_tasks:
        manager = task_manager(cfg.harness_include_path)
        check_task_names(cfg.harness_tasks, manager)
        for name in cfg.harness_tasks:
            task = load_harness_task(name, manager, cfg.harness_num_fewshot, cfg.seed)
            info = {"kind": "harness", "source": task.config.dataset_path or name, **describe(task),
                    "limit": cfg.harness_limit}
            tasks.append(Task(name, "harness", info["source"], task, info,
                              _digest([info, cfg.max_length])))
    names = [t.name for t in tasks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise EvalInputError(f"two tasks are named {duplicate!r}; rename one with name=spec in choice_tasks")
    if not tasks:
        raise EvalInputError("nothing to evaluate: set heldout_data, choice_tasks, qa_data, preference_data or "
                             "harness_tasks")
    return tasks


def run_task(scorer, task: Task, cfg) -> dict[str, Any]:
    if task.kind == "perplexity":
        return evaluate_perplexity(scorer, task.payload, stride=cfg.stride)
    if task.kind == "choice":
        return evaluate_choice_task(scorer, task.payload)
    if task.kind == "qa":
        return evaluate_qa(scorer, task.payload, cfg.max_new_tokens, cfg.qa_prompt_format)
    if task.kind == "harness":
        return evaluate_harness_task(scorer.model, scorer.tokenizer, task.name, task.payload,
                                     cfg.per_device_eval_batch_size, cfg.max_length, cfg.harness_limit)
    return evaluate_preferences(scorer, task.payload)


# what each kind of task measures, as the model card's model-index names it
TASK_NAMES = {"perplexity": "Language modeling (held-out text)", "choice": "Multiple choice",
              "qa": "Question answering", "preferences": "Preference accuracy",
              "harness": "Multiple choice (lm-evaluation-harness)",
              "harness_core": "Centred average of lm-evaluation-harness tasks (CORE-style)"}


def model_index_entries(task: Task, result: dict[str, Any]) -> list[dict[str, Any]]:
    """EvalResult fields for the model card, one per headline metric; dataset ids, not local paths."""
    entries = []
    for metric, _ in HEADLINE[task.kind]:
        if isinstance(result.get(metric), (int, float)):
            entries.append(dict(task_type="text-generation", task_name=TASK_NAMES.get(task.kind, task.kind),
                                dataset_type=readable_dataset_id(str(task.source)), dataset_name=task.name,
                                dataset_split="validation" if task.kind == "perplexity" else task.info.get("split"),
                                metric_type=metric, metric_value=round(float(result[metric]), 6)))
    return entries


def write_lm_eval_heldout_task(output_dir: Path, cfg) -> Path | None:
    """A task YAML for lm-evaluation-harness's rolling log-likelihood on the same held-out files."""
    if not cfg.heldout_data:
        return None

    files = [str(Path(f).resolve()) for f in heldout_files(cfg.heldout_data)]
    kind = "parquet" if files[0].endswith(".parquet") else ("text" if files[0].endswith(".txt") else "json")
    folder = output_dir / "lm_eval_tasks"
    text = (f"# written by llm-recipes evaluate: lm_eval's perplexity on our held-out text\n"
            f"task: heldout_text\ndataset_path: {kind}\ndataset_kwargs:\n  data_files:\n    test:\n"
            + "".join(f"      - {json.dumps(f)}\n" for f in files)
            + "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: \"\"\n"
            f"doc_to_target: \"{{{{{cfg.text_field}}}}}\"\nmetric_list:\n  - metric: word_perplexity\n"
            "  - metric: byte_perplexity\n  - metric: bits_per_byte\nmetadata:\n  version: 1.0\n")
    atomic_write_text(folder / "heldout_text.yaml", text)
    return folder


def run_evaluation(cfg, start: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Scores every model of `cfg.models` on every task; returns what eval_results.json holds.

    Args:
        start: called once the models, tasks and data have been checked, before anything is written (the
            stage clears its completion marker there).
    """
    import torch

    started = time.time()
    torch.manual_seed(cfg.seed)
    on_cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    ThreadGovernor("[evaluate]", print, cfg.torch_num_threads, active=on_cpu)  # the CPUs actually free
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    models = parse_models(cfg.models)
    curves = {}
    for spec in cfg.metrics_files:
        name, path = spec.split("=", 1) if "=" in spec else (Path(spec).parent.name, spec)
        curves[name] = read_metrics_file(path)
    tasks = load_tasks(cfg)
    for path in models.values():
        check_model_dir(path, cfg.tokenizer_name_or_path)  # a missing tokenizer fails now, not after an hour
    if start is not None:
        start()

    partial_path = output_dir / PARTIAL
    partial = json.loads(partial_path.read_text(encoding="utf-8")) if partial_path.is_file() else {}
    results: dict[str, Any] = {"models": {}, "tasks": {t.name: t.info for t in tasks}}
    for name, path in models.items():
        fingerprint = model_fingerprint(path)
        cached = partial.get(name, {})
        if cached.get("path") != path or cached.get("fingerprint") != fingerprint:
            cached = {"path": path, "fingerprint": fingerprint, "tasks": {}}
        # results cached before item-level numbers were kept have no intervals: score those again
        todo = [t for t in tasks if cached["tasks"].get(t.name, {}).get("signature") != t.signature
                or "per_item" not in cached["tasks"][t.name].get("result", {})]
        entry = {"path": path, "parameters": cached.get("parameters"), "results": {}}
        if todo:
            print(f"[evaluate] {name}: loading {path}")
            model, tokenizer, device = load_model_and_tokenizer(path, cfg.tokenizer_name_or_path, cfg.device,
                                                                cfg.torch_dtype, cfg.trust_remote_code)
            entry["parameters"] = cached["parameters"] = count_parameters(model)
            scorer = LMScorer(model, tokenizer, cfg.per_device_eval_batch_size, cfg.max_length, device)
            for task in todo:
                t0 = time.time()
                result = run_task(scorer, task, cfg)
                result["seconds"] = round(time.time() - t0, 2)
                cached["tasks"][task.name] = {"signature": task.signature, "result": result}
                partial[name] = cached
                atomic_write_json(partial_path, partial)  # a killed run keeps every finished (model, task)
            del model, scorer
        else:
            print(f"[evaluate] {name}: every task already scored (from {partial_path})")
        for task in tasks:
            entry["results"][task.name] = cached["tasks"][task.name]["result"]
        results["models"][name] = entry

    add_harness_core(results, [t.name for t in tasks if t.kind == "harness"])
    add_intervals(results, seed=cfg.seed)
    # not atomic_write_json: it sorts keys, and the order of models and tasks is the order asked for
    atomic_write_text(output_dir / "eval_results.json", json.dumps(results, indent=2, default=str) + "\n")
    atomic_write_text(output_dir / "comparison.md", comparison_markdown(results, curves))
    comparison_plot(results, output_dir / "comparison.png", curves)
    lm_eval_dir = write_lm_eval_heldout_task(output_dir, cfg)

    cards = []
    if cfg.update_model_card:
        core = [Task(CORE, "harness_core", CORE, None, {}, "")] if CORE in results["tasks"] else []
        for name, path in models.items():
            if Path(path).is_dir():
                scored = results["models"][name]["results"]
                entries = [e for t in tasks + core for e in model_index_entries(t, scored[t.name])]
                cards.append(update_model_index(path, entries))
    print_summary(results, output_dir, cards, lm_eval_dir, time.time() - started)
    return results


def add_harness_core(results: dict[str, Any], names: list[str]) -> None:
    """The centred average over the lm-evaluation-harness tasks, as one more task of every model."""
    if not names:
        return
    for model in results["models"].values():
        core = core_result(model["results"], names)
        if core is not None:
            model["results"][CORE] = core
    first = next(iter(results["models"].values()))["results"].get(CORE)
    if first is not None:
        results["tasks"][CORE] = {"kind": "harness_core", "source": ", ".join(names), "n": first["n"],
                                  "tasks": names}


def add_intervals(results: dict[str, Any], seed: int = 0) -> None:
    """Adds to eval_results: each result's 95% `intervals` (bootstrap over its items), `comparisons` of every
    model with the first one (paired: the same items, the difference and its interval, a verdict), and
    `warnings` for sets too small to tell models apart."""
    warnings = []
    for task, info in results["tasks"].items():
        metrics = [metric for metric, _ in HEADLINE.get(info["kind"], [])]
        for model in results["models"].values():
            result = model["results"][task]
            result["intervals"] = metric_intervals(result.get("per_item") or {}, metrics, seed)
        first = next(iter(results["models"].values()))["results"][task]
        warning = small_set_warning(task, first.get("per_item") or {}, first["intervals"], info["kind"])
        if warning:
            warnings.append(warning)
    names = list(results["models"])
    reference = names[0]
    comparisons: dict[str, Any] = {}
    for name in names[1:]:
        for task, info in results["tasks"].items():
            a = results["models"][reference]["results"][task].get("per_item") or {}
            b = results["models"][name]["results"][task].get("per_item") or {}
            for metric, lower in HEADLINE.get(info["kind"], []):
                difference = paired_difference(a, b, metric, lower, seed)
                if difference is not None:
                    comparisons.setdefault(name, {}).setdefault(task, {})[metric] = difference
    results["comparisons"] = {"reference": reference, "models": comparisons} if comparisons else {}
    results["warnings"] = warnings


def print_summary(results, output_dir: Path, cards, lm_eval_dir, seconds: float) -> None:
    print(f"[evaluate] {len(results['models'])} model(s) x {len(results['tasks'])} task(s) in {seconds:.1f}s")
    for name, model in results["models"].items():
        parts = [f"{task} {metric}={format_with_interval(model['results'][task], metric)}"
                 for task, metric, _ in headline_columns(results) if metric in model["results"][task]]
        print(f"  {name}: " + ", ".join(parts))
    for name, tasks in (results.get("comparisons") or {}).get("models", {}).items():
        verdicts = [f"{task} {metric} {d['verdict']} ({d['difference']:+.3g})" for task, metrics in tasks.items()
                    for metric, d in metrics.items()]
        print(f"  {name} vs {results['comparisons']['reference']} (paired, 95%): " + ", ".join(verdicts))
    for warning in results.get("warnings", []):
        print(f"[evaluate] warning: {warning}")
    print(f"[evaluate] wrote {output_dir / 'eval_results.json'}, {output_dir / 'comparison.md'}, "
          f"{output_dir / 'comparison.png'}")
    for card in cards:
        print(f"[evaluate] updated model-index in {card}")
    if lm_eval_dir:
        print(f"[evaluate] lm-evaluation-harness task for the same held-out text: lm_eval --model hf --model_args "
              f"pretrained=MODEL_DIR,trust_remote_code=True,add_bos_token=False --tasks heldout_text "
              f"--include_path {lm_eval_dir}")
