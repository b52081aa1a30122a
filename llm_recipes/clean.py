"""`llm-recipes clean`: repair, filter, deduplicate, scrub and split gathered text, with a report.

Reads a gather output (`data/*.parquet`), writes `train/*.parquet`, `validation/*.parquet` (same
columns) and `report.md` / `report.png` / `report.json`. The work runs as datatrove pipelines on local
processes; an interrupted run resumes with the tasks it had not finished.
"""

from __future__ import annotations

import sys

from .cli import entry_point
from .config import ConfigError, parse_config
from .data.cleaning import CleanConfig, clean
from .pipeline.envelope import StageRun


def config_classes() -> tuple[type, ...]:
    return (CleanConfig,)


def main(argv=None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="clean")
    run = StageRun("clean", cfg.output_dir, cfg)
    try:
        report = clean(cfg, start=run.start)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    run.complete(documents=report["output_documents"], bytes=report["output_bytes"])
    print(f"clean: kept {report['output_documents']} of {report['input_documents']} documents "
          f"({report['output_bytes'] / 2**20:.1f} of {report['input_bytes'] / 2**20:.1f} MB) in "
          f"{report['seconds']['total']:.0f} s: {report['train_documents']} train -> {cfg.output_dir}/train/, "
          f"{report['validation_documents']} validation -> {cfg.output_dir}/validation/; "
          f"report: {cfg.output_dir}/report.md (+ report.png, report.json)")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("clean", main))
