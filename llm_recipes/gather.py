"""`llm-recipes gather`: collect text from the python-docs corpus, local files, Hub datasets and web pages.

Writes `output_dir/data/*.parquet` (columns `text, id, source, location, title, license`) and
`gather_report.json` (documents, bytes and skipped inputs per source, with reasons). An interrupted
run resumes where its last shard ended.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional, Union

import yaml

from .cli import entry_point
from .config import ConfigError, check_range, parse_config
from .data.gathering import gather
from .pipeline.envelope import StageRun

DEFAULT_SOURCES = [{"type": "python-docs"}]


@dataclass
class GatherConfig:
    output_dir: str = field(
        default="runs/default/gather",
        metadata={"help": "Stage folder: data/*.parquet and gather_report.json go here."})
    sources: Optional[Union[list, str]] = field(
        default=None,
        metadata={"help": "List of sources (YAML mappings with a `type`: python-docs, files, hub or web; see "
                          "docs/data.md). On the command line: a JSON list. Default: the python-docs corpus "
                          "(standard library)."})
    total_mb: Optional[float] = field(
        default=None,
        metadata={"help": "Optional total MB of text; split over the sources in proportion to their `weight`."})
    max_doc_chars: int = field(
        default=1_000_000,
        metadata={"help": "Documents longer than this are skipped and counted as 'document too large'."})
    min_doc_chars: int = field(
        default=1,
        metadata={"help": "Documents shorter than this (after stripping whitespace) are skipped as 'empty document'."})
    shard_mb: float = field(
        default=2.0,
        metadata={"help": "MB of text per parquet shard; clean runs one task per shard, so keep several shards per "
                          "core."})
    num_proc: int = field(
        default=2, metadata={"help": "Processes used to parse sources (python-docs parses files in parallel)."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over when output_dir holds a gather of other sources (otherwise that is an "
                          "error)."})

    def __post_init__(self):
        if self.sources is None:
            self.sources = DEFAULT_SOURCES
        elif isinstance(self.sources, str):
            try:
                self.sources = yaml.safe_load(self.sources)
            except yaml.YAMLError as e:
                raise ConfigError(f"sources must be a list of source mappings (JSON or YAML): {e}") from e
        check_range(self, "total_mb", 0, low_open=True)
        check_range(self, "shard_mb", 0, low_open=True)
        check_range(self, "max_doc_chars", 1)
        check_range(self, "min_doc_chars", 0)
        check_range(self, "num_proc", 1)


def config_classes() -> tuple[type, ...]:
    return (GatherConfig,)


def main(argv=None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="gather")
    run = StageRun("gather", cfg.output_dir, cfg)
    try:
        report = gather(cfg.sources, cfg.output_dir, total_mb=cfg.total_mb, max_doc_chars=cfg.max_doc_chars,
                        min_doc_chars=cfg.min_doc_chars, shard_mb=cfg.shard_mb, num_proc=cfg.num_proc,
                        overwrite=cfg.overwrite_output_dir,
                        start=run.start)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if report["documents"] == 0:
        print(f"gather: no documents were gathered (skipped: {report['skipped']}); "
              f"see {cfg.output_dir}/gather_report.json",
              file=sys.stderr)
        return 1
    run.complete(documents=report["documents"], bytes=report["bytes"])
    skipped = sum(report["skipped"].values())
    print(f"gather: wrote {report['documents']} documents ({report['bytes'] / 2**20:.1f} MB) "
          f"in {report['shards']} shards "
          f"to {cfg.output_dir}/data/ ; skipped {skipped} inputs ({report['skipped'] or 'none'}); "
          + (f"kept with a note: {report['notes']}; " if report["notes"] else "") +
          f"report: {cfg.output_dir}/gather_report.json")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("gather", main))
