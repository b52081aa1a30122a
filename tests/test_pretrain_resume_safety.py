"""Checkpoints never silently start over: retention by validity, all-broken checkpoints, step/name
consistency, tokenizer and context checks on resume, leftovers of killed writes, refused re-runs."""

from __future__ import annotations

import json
import shutil

import pytest
from pretrain_helpers import one_torch_thread, tiny_config, write_clean_dataset  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    return write_clean_dataset(tmp_path_factory.mktemp("clean"))


def _run(out, clean_dir, tokenizer_dir, **kw):
    from llm_recipes.training.loop import pretrain

    kw = {"max_steps": 4, "save_steps": 2, "save_total_limit": 3, "sample_prompts": [], **kw}
    return pretrain(tiny_config(out, clean_dir, tokenizer_dir, **kw))


def _corrupt(folder):
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-16:] = bytes(16)
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("fault", ["corrupt", "partial"])
def test_retention_keeps_the_newest_valid_checkpoints(tmp_path, clean_dir, tiny_tokenizer_dir, fault):
    """A corrupt (or partial: no manifest) newer checkpoint never costs the good ones written after resuming
    (save_total_limit 1)."""
    root = tmp_path / "checkpoints"
    _run(tmp_path, clean_dir, tiny_tokenizer_dir)
    if fault == "corrupt":
        _corrupt(root / "step-00000004")
    else:
        (root / "step-00000004" / "checkpoint.json").unlink()
    result = _run(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=3, save_steps=1, save_total_limit=1,
                  resume_from_checkpoint="latest")
    assert len(result.losses) == 1
    names = [p.name for p in sorted(root.iterdir())]
    assert names == ["step-00000003", "step-00000004"]  # the good step 3 kept; step 2 (older) pruned
    result = _run(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=5, save_steps=1, save_total_limit=1,
                  resume_from_checkpoint="latest")
    assert len(result.losses) == 2  # continued from step 3, not from scratch
    assert [p.name for p in root.iterdir()] == ["step-00000005"]  # step 4 was re-saved good, then pruned


def test_all_checkpoints_broken_is_an_error_unless_starting_over(tmp_path, clean_dir, tiny_tokenizer_dir):
    from llm_recipes.training.checkpoint import CheckpointError

    root = tmp_path / "checkpoints"
    _run(tmp_path, clean_dir, tiny_tokenizer_dir)
    _corrupt(root / "step-00000004")
    (root / "step-00000002" / "checkpoint.json").unlink()
    resolved = (tmp_path / "resolved_config.yaml").read_text()
    with pytest.raises(CheckpointError, match=f"none of the 2 checkpoint.*{root}.*overwrite_output_dir: true"):
        _run(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=6, resume_from_checkpoint="latest")
    # refused before touching anything: the finished run is still marked finished, its checkpoints are kept
    assert (tmp_path / "stage_complete.json").is_file()
    assert (tmp_path / "resolved_config.yaml").read_text() == resolved
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000004"]
    result = _run(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=2, resume_from_checkpoint="latest",
                  overwrite_output_dir=True)
    assert len(result.losses) == 2 and [p.name for p in root.iterdir()] == ["step-00000002"]


def test_trainer_state_step_must_match_the_folder(tmp_path, clean_dir, tiny_tokenizer_dir):
    from llm_recipes.training.checkpoint import CheckpointError, find_latest, verify_checkpoint, write_manifest

    root = tmp_path / "checkpoints"
    _run(tmp_path, clean_dir, tiny_tokenizer_dir)
    shutil.copytree(root / "step-00000002", root / "step-00000020")
    state_path = root / "step-00000020" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["step"] = 3
    state_path.write_text(json.dumps(state))
    write_manifest(root / "step-00000020", 20)  # a manifest that checks out: only the step is wrong
    with pytest.raises(CheckpointError, match="trainer_state.json says step 3, its name says step 20"):
        verify_checkpoint(root / "step-00000020")
    warnings = []
    assert find_latest(root, warn=warnings.append) == root / "step-00000004" and "step 3" in warnings[0]


def test_resume_checks_tokenizer_and_context_length(tmp_path, clean_dir, tiny_tokenizer_dir):
    from conftest import tiny_corpus

    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe
    from llm_recipes.training.checkpoint import CheckpointError

    _run(tmp_path, clean_dir, tiny_tokenizer_dir)
    # same vocabulary size, different merges
    other = save_tokenizer(train_bpe(tiny_corpus()[::2], vocab_size=512, model_max_length=256),
                           tmp_path / "other_tokenizer")
    with pytest.raises(CheckpointError, match="tokenizer_sha256"):
        _run(tmp_path, clean_dir, other, max_steps=6, resume_from_checkpoint="latest")
    overrides = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)
    with pytest.raises(CheckpointError, match="max_position_embeddings=64, this run has 128"):
        _run(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=6, resume_from_checkpoint="latest",
             model_overrides={**overrides, "max_position_embeddings": 128})
    assert (tmp_path / "stage_complete.json").is_file()  # refused re-runs leave the finished run marked


def test_seq_len_above_overridden_context_is_an_error(tmp_path, clean_dir, tiny_tokenizer_dir):
    from llm_recipes.config import ConfigError

    overrides = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=32)
    with pytest.raises(ConfigError, match="seq_len 64 is longer than model_overrides.max_position_embeddings 32"):
        _run(tmp_path, clean_dir, tiny_tokenizer_dir, model_overrides=overrides)
    assert not (tmp_path / "resolved_config.yaml").exists()


def test_leftovers_of_killed_writes_are_cleaned_at_the_next_start(tmp_path, clean_dir, tiny_tokenizer_dir):
    root = tmp_path / "checkpoints"
    _run(tmp_path, clean_dir, tiny_tokenizer_dir)
    (tmp_path / ".final.k1ll3d.tmp").mkdir()  # atomic_directory killed while writing final/
    (tmp_path / ".final.k1ll3d.tmp" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".train_summary.json.x9.tmp").write_text("{")  # atomic_open killed
    (root / ".step-00000006.tmp").mkdir()  # a checkpoint save killed
    (root / ".step-00000002.old").mkdir()  # a re-save killed after both renames, before the cleanup
    _run(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=5, resume_from_checkpoint="latest")
    assert not list(tmp_path.glob(".*")) and not list(root.glob(".*"))


def test_remove_leftovers_puts_back_a_copy_moved_aside(tmp_path):
    """A kill between the two renames of a replacement leaves `<name>` missing and `.<name>.old-<pid>`
    holding the previous version: that one is restored, not deleted."""
    from llm_recipes.fileio import remove_leftovers

    (tmp_path / ".final.old-1234").mkdir()
    (tmp_path / ".final.old-1234" / "config.json").write_text("{}")
    (tmp_path / ".final.ab12.tmp").mkdir()
    (tmp_path / ".hidden_user_file").write_text("mine")
    removed = remove_leftovers(tmp_path)
    assert [p.name for p in removed] == [".final.ab12.tmp"]
    assert (tmp_path / "final" / "config.json").is_file() and (tmp_path / ".hidden_user_file").is_file()
