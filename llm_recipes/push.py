"""`llm-recipes push DIR --repo_id user/name`: publish a model folder with its model card on the Hub.

    llm-recipes push runs/quickstart/sft/final --repo_id you/python-docs-chat --dry_run true   # see what goes up
    HF_TOKEN=hf_... llm-recipes push runs/quickstart/sft/final --repo_id you/python-docs-chat --private true

The token comes from $HF_TOKEN or `hf auth login`, never from a recipe. `HF_ENDPOINT` points at
another Hub (self-hosted, or a test stand-in).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.errors import HfHubHTTPError

from .cli import entry_point
from .config import ConfigError, beside_model, parse_config
from .fileio import atomic_write_json
from .pipeline.envelope import StageRun
from .publishing.hub import PushError, prepare_upload, upload
from .publishing.model_card import CardError, CardInfo


@dataclass
class PushConfig:
    model_path: str = field(metadata={"help": "model folder to publish (safetensors, config, tokenizer); also "
                                              "accepted as the first bare argument"})
    repo_id: str = field(metadata={"help": "Hub repository, 'user/name' or 'org/name'"})
    output_dir: str | None = field(default=None, metadata={
        "help": "where the staged upload (upload/ with README.md) and push_result.json are written; default: push/ "
                "beside the model's stage folder (runs/quickstart/dpo/final -> runs/quickstart/push), else "
                "runs/default/push"})
    private: bool = field(default=False, metadata={"help": "create the repository private (an existing one keeps its "
                                                           "visibility)"})
    dry_run: bool = field(default=False, metadata={"help": "prepare and list what would be uploaded, upload nothing"})
    revision: str | None = field(default=None, metadata={"help": "branch to commit to; default: main"})
    commit_message: str = field(default="Upload model with llm_recipes", metadata={"help": "commit message"})
    license: str = field(default="apache-2.0", metadata={"help": "license of the weights for the card's metadata "
                                                                 "(Hub license id, e.g. apache-2.0, mit, other)"})
    datasets: list[str] = field(default_factory=list, metadata={
        "help": "Hub ids of the training datasets, listed in the card's metadata"})
    language: list[str] = field(default_factory=lambda: ["en"], metadata={"help": "language codes for the card"})
    base_model: str | None = field(default=None, metadata={"help": "Hub id of the model this one was fine-tuned from"})
    tags: list[str] = field(default_factory=list, metadata={"help": "extra card tags (llm_recipes, the model type, "
                                                                    "text-generation and custom_code are added)"})
    eval_results: str | None = field(default=None, metadata={
        "help": "eval_results.json from `llm-recipes evaluate`: a results table in the card, uploaded alongside"})
    intended_use: str | None = field(
        default=None, metadata={"help": "the card's intended-use text (a default is given)"})
    limitations: str | None = field(
        default=None, metadata={"help": "the card's limitations text (a default is given)"})


def config_classes() -> tuple[type, ...]:
    return (PushConfig,)


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="push", positional="model_path")
    cfg.output_dir = cfg.output_dir or beside_model(cfg.model_path, "push")
    run = StageRun("push", cfg.output_dir, cfg)
    if cfg.repo_id.count("/") != 1 or not all(cfg.repo_id.split("/")):
        raise ConfigError(f"repo_id {cfg.repo_id!r} must look like 'user/name'")
    staging = Path(cfg.output_dir) / "upload"
    info = CardInfo(repo_id=cfg.repo_id, license=cfg.license, datasets=list(cfg.datasets), language=list(cfg.language),
                    base_model=cfg.base_model, tags=list(cfg.tags), eval_results_path=cfg.eval_results,
                    intended_use=cfg.intended_use, limitations=cfg.limitations)
    try:
        files = prepare_upload(cfg.model_path, staging, info, start=run.start)
        sizes = {name: (staging / name).stat().st_size for name in files}
        print(f"[push] {'would upload' if cfg.dry_run else 'uploading'} {len(files)} files "
              f"({sum(sizes.values()) / 1e6:.1f} MB) to {cfg.repo_id}{' (private)' if cfg.private else ''}:")
        for name in files:
            print(f"  {name:<32} {sizes[name]:>12,} bytes")
        result = {"repo_id": cfg.repo_id, "dry_run": cfg.dry_run, "files": sizes}
        if not cfg.dry_run:
            result.update(upload(staging, cfg.repo_id, private=cfg.private, revision=cfg.revision,
                                 commit_message=cfg.commit_message))
    except (PushError, CardError) as e:
        print(f"llm-recipes push: error: {e}", file=sys.stderr)
        return 2
    except (HfHubHTTPError, OSError) as e:  # the Hub said no (401, 403, 404, 5xx) or could not be reached
        print(f"llm-recipes push: the upload to {cfg.repo_id} failed: {e}", file=sys.stderr)
        return 1
    atomic_write_json(Path(cfg.output_dir) / "push_result.json", result)
    run.complete(repo_id=cfg.repo_id, dry_run=cfg.dry_run, commit=result.get("commit_url"))
    if cfg.dry_run:
        print(f"[push] dry run: nothing uploaded; the staged files and model card are in {staging}")
    else:
        print(f"[push] uploaded to {result['repo_url']} (commit {result['commit_url']}); record in "
              f"{Path(cfg.output_dir) / 'push_result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("push", main))
