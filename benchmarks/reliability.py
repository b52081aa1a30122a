"""Bad inputs per stage and broken checkpoints, as a new user (or a killed machine) produces them (issue 18).

    HF_HUB_OFFLINE=1 python benchmarks/reliability.py [--kills 3]

Every bad input runs the stage's real `main()` in this process, on tiny data made here, and is classed:
  clear     a ConfigError, an argparse error or a non-zero exit with a one-line message (what a user reads)
  accepted  exit 0: the bad input was taken as good (for inputs that must be refused, a failure)
  traceback any other exception
Then checkpoint faults: corruptions of the newest checkpoint, all of them broken, a step that disagrees
with the folder, another tokenizer, leftovers of a killed save, and SIGKILLs mid-run followed by a resume.
Prints a table per stage and writes benchmarks/reliability.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tiny model, tokenizer and corpus helpers the tests use


def classify(call) -> tuple[str, str]:
    from llm_recipes.config import ConfigError

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = call()
    except ConfigError as e:
        return "clear", str(e)[:160]
    except SystemExit as e:  # argparse names the flag
        return ("clear", err.getvalue().strip().splitlines()[-1][:160]) if e.code else ("accepted", "")
    except Exception as e:  # noqa: BLE001
        return "traceback", f"{type(e).__name__}: {e}"[:160]
    message = err.getvalue().strip().splitlines()
    if rc:
        return "clear", (message[-1] if message else f"exit {rc}")[:160]
    return "accepted", ""


def recipe(tmp: Path, name: str, values: dict) -> list[str]:
    import yaml

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return ["--config", str(path)]


def bad_inputs(tmp: Path, model_dir: Path, tokenizer_dir: Path, clean_dir: Path) -> dict[str, list[tuple[str, list]]]:
    from llm_recipes.data.documents import write_parquet_atomic

    gathered = tmp / "gathered"
    write_parquet_atomic(gathered / "data" / "000-x-00000.parquet",
                         [{"text": f"Document {i} with a few words.", "id": str(i)} for i in range(4)])
    (tmp / "broken.json").write_text("{not json")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "qa.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    (tmp / "chats.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n"
                                             for i in range(4)))
    (tmp / "noparquet").mkdir()
    gather_out = ["--output_dir", str(tmp / "g")]
    clean_out = ["--input_dir", str(gathered), "--output_dir", str(tmp / "c")]
    pre = ["--output_dir", str(tmp / "p"), "--dataset_path", str(clean_dir), "--tokenizer_path", str(tokenizer_dir),
           "--model_preset", "test", "--seq_len", "32", "--max_steps", "1", "--report_to", "none"]
    ft = ["--model_name_or_path", str(model_dir), "--max_steps", "1", "--use_cpu", "true", "--bf16", "false",
          "--save_strategy", "no", "--report_to", "none"]
    return {
        "gather": [
            ("max_doc_chars -5", gather_out + ["--max_doc_chars", "-5"]),
            ("shard_mb 0", gather_out + ["--shard_mb", "0"]),
            ("files source without paths", gather_out + ["--sources", '[{"type": "files"}]']),
            ("unknown source type", gather_out + ["--sources", '[{"type": "ftp"}]']),
            ("fraction: half", gather_out + ["--sources", '[{"type": "files", "paths": ["x"], "fraction": "half"}]']),
            ("sources not YAML", gather_out + ["--sources", "[{unclosed"]),
            ("min_doc_chars a list (recipe)", recipe(tmp, "g1", {"output_dir": str(tmp / "g"), "min_doc_chars": [1]})),
            ("no file matches", gather_out + ["--sources", f'[{{"type": "files", "paths": ["{tmp}/none/*.txt"]}}]']),
            ("max_page_bytes -1",
             gather_out + ["--sources", '[{"type": "web", "urls": ["http://x"], "max_page_bytes": -1}]']),
        ],
        "clean": [
            ("max_chars -5", clean_out + ["--max_chars", "-5"]),
            ("min_chars a list (recipe)", recipe(tmp, "c1", {"input_dir": str(gathered), "min_chars": [1, 2]})),
            ("min_chars above max_chars", clean_out + ["--min_chars", "500", "--max_chars", "100"]),
            ("input_dir missing", ["--input_dir", str(tmp / "nowhere"), "--output_dir", str(tmp / "c")]),
            ("decontamination file missing", clean_out + ["--decontamination_files", str(tmp / "none.jsonl")]),
            ("decontamination file not JSON", clean_out + ["--decontamination_files", str(tmp / "broken.json")]),
            ("validation_fraction 1.5", clean_out + ["--validation_fraction", "1.5"]),
            ("profiles not a mapping", clean_out + ["--profiles", "web"]),
            ("profile_for_source names no profile", clean_out + ["--profile_for_source", '{"*": "nope"}']),
            ("minhash_buckets 0", clean_out + ["--minhash_buckets", "0"]),
            ("language_min_score 2", clean_out + ["--language_min_score", "2"]),
        ],
        "train-tokenizer": [
            ("dataset_path missing", ["--output_dir", str(tmp / "t"), "--dataset_path", str(tmp / "nowhere")]),
            ("folder without parquet", ["--output_dir", str(tmp / "t"), "--dataset_path", str(tmp / "noparquet")]),
            ("text_column absent", ["--output_dir", str(tmp / "t"), "--dataset_path", str(clean_dir),
                                    "--text_column", "body"]),
            ("definition folder missing", ["--output_dir", str(tmp / "t"), "--dataset_path", str(clean_dir),
                                           "--tokenizer_definition_dir", str(tmp / "nodef")]),
            ("max_train_chars -1", ["--output_dir", str(tmp / "t"), "--dataset_path", str(clean_dir),
                                    "--max_train_chars", "-1"]),
            ("vocab_size text (recipe)", recipe(tmp, "t1", {"output_dir": str(tmp / "t"), "vocab_size": "big"})),
        ],
        "pretrain": [
            ("seq_len 0", pre + ["--seq_len", "0"]),
            ("seq_len above max_position_embeddings", pre + ["--model_overrides", '{"max_position_embeddings": 16}']),
            ("tokenizer_path missing", pre + ["--tokenizer_path", str(tmp / "nowhere")]),
            ("dataset_path missing", pre + ["--dataset_path", str(tmp / "nowhere")]),
            ("unknown schedule", pre + ["--lr_scheduler_type", "cosin"]),
            ("learning_rate text (recipe)",
             recipe(tmp, "p1", {"output_dir": str(tmp / "p"), "learning_rate": "fast"})),
            ("resume from a missing folder", pre + ["--resume_from_checkpoint", str(tmp / "nowhere")]),
            ("model_overrides not JSON", pre + ["--model_overrides", "{layers: 2"]),
            ("eval_max_batches -2", pre + ["--eval_max_batches", "-2"]),
            ("weight_decay -1", pre + ["--weight_decay", "-1"]),
            ("misspelled key", pre + ["--lerning_rate", "1"]),
        ],
        "sft": [
            ("empty dataset file", ft + ["--output_dir", str(tmp / "s1"), "--dataset_name", str(tmp / "empty.jsonl")]),
            ("columns that fit no format",
             ft + ["--output_dir", str(tmp / "s2"), "--dataset_name", str(tmp / "qa.jsonl")]),
            ("dataset file missing",
             ft + ["--output_dir", str(tmp / "s3"), "--dataset_name", str(tmp / "none.jsonl")]),
            ("model folder missing",
             ft[:0] + ["--model_name_or_path", str(tmp / "nomodel"), "--output_dir", str(tmp / "s4"),
                       "--dataset_name", str(tmp / "chats.jsonl"), "--use_cpu", "true"]),
            ("LoRA target matches nothing",
             ft + ["--output_dir", str(tmp / "s5"), "--dataset_name", str(tmp / "chats.jsonl"),
                   "--use_peft", "true", "--lora_target_modules", "c_attn"]),
            ("learning_rate a list (recipe)",
             recipe(tmp, "s6", {"output_dir": str(tmp / "s6"), "learning_rate": [1]})),
            ("resume from a missing folder",
             ft + ["--output_dir", str(tmp / "s7"), "--dataset_name", str(tmp / "chats.jsonl"),
                   "--resume_from_checkpoint", str(tmp / "nowhere")]),
        ],
        "evaluate": [
            ("model missing", ["--output_dir", str(tmp / "e"), "--models", f"m={tmp / 'nomodel'}",
                               "--heldout_data", str(clean_dir)]),
            ("heldout_data missing", ["--output_dir", str(tmp / "e"), "--models", f"m={model_dir}",
                                      "--heldout_data", str(tmp / "none.jsonl")]),
            ("unknown builtin task", ["--output_dir", str(tmp / "e"), "--models", f"m={model_dir}",
                                      "--choice_tasks", "builtin:nope"]),
            ("batch size text (recipe)",
             recipe(tmp, "e1", {"output_dir": str(tmp / "e"), "per_device_eval_batch_size": "x"})),
            ("qa_data missing", ["--output_dir", str(tmp / "e"), "--models", f"m={model_dir}",
                                 "--qa_data", str(tmp / "none.jsonl")]),
        ],
    }


def checkpoint_faults(tmp: Path, clean_dir: Path, tokenizer_dir: Path, kills: int) -> list[tuple[str, bool, str]]:
    """(fault, handled, what happened) for each checkpoint fault."""
    from conftest import tiny_corpus
    from pretrain_helpers import tiny_config

    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe
    from llm_recipes.training.checkpoint import CheckpointError, find_latest, list_checkpoints
    from llm_recipes.training.loop import pretrain

    quiet = contextlib.redirect_stdout(io.StringIO())

    def run(out, **kw):
        with quiet, contextlib.redirect_stderr(io.StringIO()):
            return pretrain(tiny_config(out, clean_dir, tokenizer_dir,
                                        **{"max_steps": 4, "save_steps": 2, "save_total_limit": 3,
                                           "sample_prompts": [], **kw}))

    def fresh(name):
        out = tmp / name
        run(out)
        return out, out / "checkpoints"

    def flip(path):
        data = bytearray(path.read_bytes())
        data[-16:] = bytes(16)
        path.write_bytes(bytes(data))

    results = []
    for i, (fault, corrupt) in enumerate([("weights bytes flipped", lambda c: flip(c / "model.safetensors")),
                           ("optimizer truncated", lambda c: (c / "optimizer.bin").write_bytes(b"x")),
                           ("manifest deleted (killed while saving)", lambda c: (c / "checkpoint.json").unlink()),
                           ("trainer_state deleted", lambda c: (c / "trainer_state.json").unlink()),
                           ("data state deleted", lambda c: (c / "data_state_0.pt").unlink()),
                           ("manifest garbled", lambda c: (c / "checkpoint.json").write_text("{")),
                           ("RNG state flipped", lambda c: flip(next(c.glob("random_states_*.pkl"))))]):
        out, root = fresh(f"corrupt{i}")
        corrupt(root / "step-00000004")
        result = run(out, max_steps=3, save_steps=1, save_total_limit=1, resume_from_checkpoint="latest")
        kept = [p.name for p in list_checkpoints(root)]
        ok = len(result.losses) == 1 and "step-00000003" in kept
        results.append((f"newest checkpoint: {fault}; resume with save_total_limit 1", ok,
                        f"resumed from step 2, kept {kept}"))
    out, root = fresh("all-broken")
    for c in list_checkpoints(root):
        (c / "checkpoint.json").unlink()
    try:
        run(out, max_steps=6, resume_from_checkpoint="latest")
        results.append(("every checkpoint broken", False, "trained on"))
    except CheckpointError as e:
        results.append(("every checkpoint broken", (out / "stage_complete.json").is_file(), str(e)[:100]))
    out, root = fresh("mismatch")
    shutil.copytree(root / "step-00000002", root / "step-00000020")
    state = json.loads((root / "step-00000020" / "trainer_state.json").read_text())
    state["step"] = 3
    (root / "step-00000020" / "trainer_state.json").write_text(json.dumps(state))
    from llm_recipes.training.checkpoint import write_manifest

    write_manifest(root / "step-00000020", 20)
    found = find_latest(root, warn=lambda m: None)
    results.append(("trainer_state step 3 in folder step-20", found == root / "step-00000004",
                    f"latest = {found.name}"))
    other = save_tokenizer(train_bpe(tiny_corpus()[::2], vocab_size=512, model_max_length=256), tmp / "other_tok")
    try:
        with quiet:
            pretrain(tiny_config(out, clean_dir, other, max_steps=6, resume_from_checkpoint="latest",
                                 sample_prompts=[]))
        results.append(("resume with another tokenizer of the same size", False, "trained on"))
    except CheckpointError as e:
        results.append(("resume with another tokenizer of the same size", "tokenizer_sha256" in str(e), str(e)[:100]))
    (out / ".final.k1ll3d.tmp").mkdir()
    (root / ".step-00000030.tmp").mkdir()
    run(out, max_steps=5, resume_from_checkpoint="latest")
    left = [p.name for p in [*out.glob(".*"), *root.glob(".*")]]
    results.append(("leftover .final.*.tmp / .step-*.tmp of a killed write", not left, f"left: {left}"))

    for i in range(kills):
        out = tmp / f"kill{i}"
        args = [sys.executable, "-m", "llm_recipes.pretrain", "--output_dir", str(out),
                "--dataset_path", str(clean_dir), "--tokenizer_path", str(tokenizer_dir), "--model_preset", "test",
                "--seq_len", "64", "--per_device_train_batch_size", "4", "--max_steps", "10000", "--save_steps", "3",
                "--logging_steps", "1", "--eval_steps", "0", "--report_to", "none", "--data_mode", "shards",
                "--save_total_limit", "1"]
        proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline, target = time.time() + 120, f"step-{3 * (i + 2):08d}"
        while time.time() < deadline and not any(p.name >= target for p in list_checkpoints(out / "checkpoints")):
            time.sleep(0.1)
        time.sleep(0.05 * (i + 1))  # kill at different points after (or while) a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        from llm_recipes.training.monitor import read_metrics

        reached = max(r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r)
        last = find_latest(out / "checkpoints", warn=lambda m: None)
        saved = int(last.name.split("-")[1])
        result = run(out, max_steps=saved + 1, save_steps=3, save_total_limit=1, resume_from_checkpoint="latest",
                     model_overrides=None, seq_len=64)
        results.append((f"SIGKILL {i + 1} mid-run, then resume latest", len(result.losses) == 1,
                        f"killed at step {reached}, resumed at {saved}: {reached - saved} steps lost"))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).with_name("reliability.json")))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from conftest import make_tiny_config, tiny_corpus
    from pretrain_helpers import write_clean_dataset
    from transformers import AutoTokenizer, GenerationConfig

    import llm_recipes  # noqa: F401
    from llm_recipes.cli import STAGES
    from llm_recipes.model import RecipeGPTForCausalLM
    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe

    tmp = Path(tempfile.mkdtemp(prefix="reliability-"))
    tokenizer_dir = save_tokenizer(train_bpe(tiny_corpus(), vocab_size=512, model_max_length=256), tmp / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = RecipeGPTForCausalLM(make_tiny_config(len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                                  eos_token_id=tokenizer.eos_token_id,
                                                  pad_token_id=tokenizer.pad_token_id))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    clean_dir = write_clean_dataset(tmp / "clean")

    record = {"stages": {}, "checkpoints": []}
    for stage, cases in bad_inputs(tmp, tmp / "model", tokenizer_dir, clean_dir).items():
        module = __import__(f"llm_recipes.{STAGES[stage][0]}", fromlist=["main"])
        rows = [(name, *classify(lambda argv=argv: module.main(argv))) for name, argv in cases]
        record["stages"][stage] = [{"input": n, "outcome": o, "message": m} for n, o, m in rows]
        print(f"\n{stage}: {sum(o == 'clear' for _, o, _ in rows)} of {len(rows)} bad inputs gave a clear error")
        for name, outcome, message in rows:
            print(f"  {outcome:9s} {name}: {message}")
    record["checkpoints"] = [{"fault": f, "handled": ok, "detail": d}
                             for f, ok, d in checkpoint_faults(tmp, clean_dir, tokenizer_dir, args.kills)]
    handled = sum(r["handled"] for r in record["checkpoints"])
    print(f"\ncheckpoints: {handled} of {len(record['checkpoints'])} faults handled")
    for r in record["checkpoints"]:
        print(f"  {'ok  ' if r['handled'] else 'FAIL'} {r['fault']}: {r['detail']}")
    Path(args.output).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
