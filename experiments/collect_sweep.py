# Run:  .venv/bin/python experiments/collect_sweep.py multirun/compare/<dir> experiments/results/compare
#       [--extra path/to/run ...] [--keep base_eval.json ...]
"""Copy a sweep's small per-run files into experiments/results/ and report on the copy.

Per run: metrics.jsonl, posthoc.jsonl (checkpoints evaluated after training), config.yaml,
summary.json, manifest.json, train.log — not checkpoints or W&B dirs. ``--extra`` adds runs from elsewhere (the ablation reuses a compare run).
``--keep`` names files already in the destination to carry over (e.g. base_eval.json). The
new directory is built beside the destination and swapped in only when complete, so an
interrupted collect leaves the old results as they were. Then `pdalign.reporting.sweep.write_report`
writes report.md, report.csv, paired.csv and the plots into it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pdalign.reporting.runs import collect_runs
from pdalign.reporting.sweep import write_report

RUN_FILES = ("metrics.jsonl", "posthoc.jsonl", "config.yaml", "summary.json", "manifest.json",
             "train.log")


def collect(sweep: Path, dest: Path, extra: list[Path] = (), keep: list[str] = ()) -> list[Path]:
    """Copy the runs' small files to ``dest`` (replaced atomically); returns the run dirs."""
    runs = [r.path for r in collect_runs(sweep)] + [Path(p) for p in extra]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for run in runs:
        (tmp / run.name).mkdir()
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, tmp / run.name / name)
    for name in keep:
        shutil.copy2(dest / name, tmp / name)
    if (dest / "README.md").is_file():
        shutil.copy2(dest / "README.md", tmp / "README.md")
    write_report(tmp)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return sorted(p for p in dest.iterdir() if (p / "metrics.jsonl").is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the Hydra multirun dir")
    parser.add_argument("dest", type=Path, help="e.g. experiments/results/compare")
    parser.add_argument("--extra", action="append", default=[], type=Path,
                        help="another run dir to include (repeatable)")
    parser.add_argument("--keep", action="append", default=[],
                        help="a file in dest to carry over (repeatable)")
    args = parser.parse_args(argv)
    for run in collect(args.sweep, args.dest, args.extra, args.keep):
        print(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
