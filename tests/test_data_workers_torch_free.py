"""Data workers do not import torch: `import llm_recipes` registers the model lazily (llm_recipes/__init__.py),
so a process that only gathers and cleans never loads torch, while `import llm_recipes` then the Auto classes
still find RecipeGPT without trust_remote_code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, tmp_path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_clean_run_in_one_process_never_imports_torch(tmp_path):
    """The whole clean stage (one worker: every task runs in this process: repair, the spaCy-word filters,
    exact and near dedup, PII, split) and gather's readers leave torch and transformers' models unloaded."""
    code = f"""
import json, random, sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from test_clean import prose, row, write_input
from llm_recipes.data.cleaning import CleanConfig, clean
from llm_recipes.data import sources, books  # gather's readers
rng = random.Random(0)
rows = [row(prose(rng, 200), f"d{{i}}") for i in range(12)] + [row(prose(rng, 150), f"p{{i}}", "python-docs")
                                                             for i in range(6)]
write_input(__import__("pathlib").Path("in"), [rows[:9], rows[9:]])
report = clean(CleanConfig(input_dir="in", output_dir="out", num_workers=1, progress=False))
print(json.dumps({{"kept": report["output_documents"], "torch": "torch" in sys.modules,
                  "matplotlib": "matplotlib" in sys.modules, "pandas": "pandas" in sys.modules,
                  "models": sorted(m for m in sys.modules if m.startswith("transformers.models"))}}))
"""
    result = run_python(code, tmp_path)
    assert result["kept"] > 0
    assert result["torch"] is False
    assert result["matplotlib"] is False  # the report's chart is drawn with Pillow (~0.8 CPU s less per run)
    assert result["pandas"] is False  # shards are written from string buffers: pyarrow never probes for pandas
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["models"] == []


def test_import_llm_recipes_then_auto_classes_load_our_model_without_remote_code(tmp_path):
    code = """
import json, sys
import llm_recipes
assert "torch" not in sys.modules  # importing the package alone loads no model code
from transformers import AutoConfig, AutoModelForCausalLM
cfg = AutoConfig.for_model("recipe_gpt", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, intermediate_size=64)
model = AutoModelForCausalLM.from_config(cfg)
model.save_pretrained("m")
loaded = AutoModelForCausalLM.from_pretrained("m", trust_remote_code=False)
print(json.dumps({"class": type(loaded).__name__, "config": type(cfg).__name__,
                  "exported": llm_recipes.RecipeGPTConfig.__name__}))
"""
    result = run_python(code, tmp_path)
    assert result == {"class": "RecipeGPTForCausalLM", "config": "RecipeGPTConfig", "exported": "RecipeGPTConfig"}


def test_auto_classes_imported_before_llm_recipes_are_registered_at_once(tmp_path):
    code = """
import json
from transformers import AutoConfig
import llm_recipes
print(json.dumps({"config": type(AutoConfig.for_model("recipe_gpt")).__name__}))
"""
    assert run_python(code, tmp_path) == {"config": "RecipeGPTConfig"}


def test_model_package_imported_first_registers_once_it_is_complete(tmp_path):
    """Our model package imports transformers' Auto machinery half-way through its own import (the training
    stages import it first): registering there would find it half loaded; it happens once it is complete."""
    code = """
import json
import llm_recipes.model.configuration_recipe_gpt
from transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.for_model("recipe_gpt")
print(json.dumps({"model": AutoModelForCausalLM._model_mapping[type(config)].__name__}))
"""
    assert run_python(code, tmp_path) == {"model": "RecipeGPTForCausalLM"}


def test_the_clean_stage_entry_point_never_imports_torch(tmp_path):
    """The stage as `llm-recipes clean` runs it (config parsing, the envelope's run info and hardware line, the
    report), so the local workers it forks inherit no torch either."""
    code = f"""
import json, random, sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from test_clean import prose, row, write_input
from llm_recipes.clean import main
rng = random.Random(0)
write_input(__import__("pathlib").Path("in"), [[row(prose(rng, 200), f"d{{i}}") for i in range(8)]])
code = main(["--input_dir", "in", "--output_dir", "out", "--num_workers", "1", "--progress", "false"])
info = json.load(open("out/run_info.json"))
print(json.dumps({{"code": code, "torch": "torch" in sys.modules, "hardware": info["hardware"]}}))
"""
    result = run_python(code, tmp_path)
    assert result["code"] == 0
    assert result["torch"] is False
    assert "CPU cores" in result["hardware"]


def test_the_report_chart_draws_any_report(tmp_path):
    """The chart of a report with no steps or removals, and of one with long reasons and large counts."""
    from PIL import Image

    from llm_recipes.data.report import render_png

    empty = {"steps": [], "top_removal_reasons": {}, "length_histogram": {"edges_chars": [0, 100], "counts": [0]}}
    full = {"steps": [{"step": f"step {i}", "docs_in": 10**7 - i, "docs_out": 10**6 * i} for i in range(8)],
            "top_removal_reasons": {"quality: [docs] gopher_repetition: " + "x" * (80 + i): 10**i for i in range(12)},
            "length_histogram": {"edges_chars": [0, 100, 200, 10**12], "counts": [3, 0, 12345]}}
    for name, report in (("empty", empty), ("full", full)):
        render_png(report, tmp_path / f"{name}.png")
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.format == "PNG" and image.size == (1700, 520)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "full.png"]  # no temporary file left


def test_string_arrays_and_shards_are_as_pyarrow_builds_them(tmp_path):
    """`string_array` gives pyarrow's own array of the same strings, and a shard written with it is the file
    pyarrow's `from_pydict` table gives, byte for byte."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llm_recipes.data.documents import COLUMNS, schema, string_array, write_parquet_atomic

    values = ["", "plain", "café ünïcode", "emoji \U0001F600", "x" * 5000, "", "line\nbreak\x00nul"]
    for sample in ([], values, values * 300):
        assert string_array(sample).equals(pa.array(sample, pa.string()))
    rows = [{name: f"{name} {i} é" if i % 3 else "" for name in COLUMNS} for i in range(500)]
    write_parquet_atomic(tmp_path / "ours.parquet", rows)
    table = pa.Table.from_pydict({name: [r[name] for r in rows] for name in COLUMNS}, schema=schema())
    pq.write_table(table, tmp_path / "pyarrow.parquet", compression="zstd")
    assert (tmp_path / "ours.parquet").read_bytes() == (tmp_path / "pyarrow.parquet").read_bytes()
