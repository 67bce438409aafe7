"""``pdalign-report``: a sweep's report (`pdalign.reporting`), or a ``pdalign-iterate`` run's round
table.

Examples:
    pdalign-report multirun/2026-01-01/12-00-00
    pdalign-report outputs/iter
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pdalign.cli.common import usage_error
from pdalign.reporting.runs import NoRunsError
from pdalign.reporting.sweep import write_report
from pdalign.runfiles.rounds import is_iterative_run, write_round_table


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``pdalign-report MULTIRUN_DIR [--out DIR] [--window-frac 0.2] [--include-incomplete]``.

    A ``pdalign-iterate`` run dir gets its round table instead (`pdalign.iterative.loop`).

    Prints the markdown report and the written paths; exit 2 with one line when no run is found.
    """
    parser = argparse.ArgumentParser(
        prog="pdalign-report",
        description="Summarize a Hydra multirun dir of pdalign runs: report.md, report.csv, "
                    "lambda.png, g_vs_eps.png, heldout_violation.png.")
    parser.add_argument("multirun_dir", type=Path, help="the sweep dir (holds run subdirs)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: the multirun dir)")
    parser.add_argument("--window-frac", type=_fraction, default=0.2,
                        help="share of the last steps the λ-health check looks at (default 0.2)")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="also aggregate runs that have no summary.json")
    args = parser.parse_args(argv)

    if is_iterative_run(args.multirun_dir):  # a pdalign-iterate run: its table by round
        path = write_round_table(args.multirun_dir, args.out)
        print(path.read_text(encoding="utf-8"))
        print(f"wrote md: {path}\nwrote csv: {path.with_suffix('.csv')}")
        return 0
    try:
        paths = write_report(args.multirun_dir, args.out, args.window_frac,
                             args.include_incomplete)
    except NoRunsError as err:
        return usage_error("pdalign-report", err)
    print(paths["md"].read_text(encoding="utf-8"))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
