"""`write_report`: a sweep directory → ``report.md``, ``report.csv``, ``paired.csv`` and the three
plots (`pdalign.reporting`)."""

from __future__ import annotations

import io
from pathlib import Path

from pdalign.reporting.plots import plot_g_vs_eps, plot_heldout_violation, plot_lambda
from pdalign.reporting.render import render_markdown, write_csv
from pdalign.reporting.runs import collect_runs
from pdalign.reporting.stats import (
    eval_pairs,
    paired_comparison,
    signal_notes,
    summarize,
    train_constraints,
)
from pdalign.runfiles.atomic import write_text


def write_report(root: str | Path, out: str | Path | None = None, window_frac: float = 0.2,
                 include_incomplete: bool = False) -> dict[str, Path]:
    """Read a multirun dir and write report.md, report.csv and the plots, atomically.

    Args:
        root: the Hydra multirun directory.
        out: output directory; default ``root``. Created if missing.
        window_frac: share of the last steps the λ-health window covers. Default 0.2.
        include_incomplete: aggregate and plot runs without ``summary.json`` too. Default False.

    Returns:
        ``{"md", "csv"}`` plus ``"lambda"``, ``"g_vs_eps"``, ``"heldout_violation"`` for the
        plots that had data, and ``"paired_csv"`` (`paired_comparison`) when a constrained
        method and its base objective both ran.

    Raises:
        NoRunsError: ``root`` holds no run.
    """
    if not 0.0 < window_frac <= 1.0:
        raise ValueError(f"window_frac must be in (0, 1], got {window_frac}")
    runs = collect_runs(root)
    out = Path(out) if out is not None else Path(root)
    out.mkdir(parents=True, exist_ok=True)
    used = [r for r in runs if r.complete or include_incomplete]
    rows = summarize(runs, window_frac, include_incomplete)
    notes: list[str] = []
    hash_sets = {r.data_hashes for r in runs} - {None}
    if len(hash_sets) > 1:
        notes.append(f"**warning**: runs of this sweep used {len(hash_sets)} different data sets "
                     "(see Data): their rows are not comparable on equal data.")
    if any(r.data_hashes is None for r in runs) and hash_sets:
        notes.append("some runs have no manifest.json, so their data cannot be checked.")
    if not include_incomplete and any(not r.complete for r in runs):
        notes.append("incomplete runs are left out of the tables and plots "
                     "(--include-incomplete adds them).")
    split = sorted({r.label for r in runs if " [" in r.label})
    if split:
        notes.append("runs of one method that differ beyond the seed are reported as separate "
                     "rows, labelled with the differing config keys.")

    labels = sorted({r.label for r in runs})
    palette = [f"C{i % 10}" for i in range(len(labels))]
    colors = dict(zip(labels, palette))
    by_label = {k: [r for r in used if r.label == k] for k in labels}
    by_label = {k: g for k, g in by_label.items() if g}
    constrained = train_constraints(used)
    pairs = eval_pairs(used)
    paths: dict[str, Path] = {"md": out / "report.md", "csv": out / "report.csv"}
    if constrained:
        paths["lambda"] = out / "lambda.png"
        plot_lambda(by_label, colors, constrained, paths["lambda"])
        paths["g_vs_eps"] = out / "g_vs_eps.png"
        plot_g_vs_eps(by_label, colors, constrained, paths["g_vs_eps"])
    else:
        notes.append("no constrained runs (no `lambda/<c>` keys): lambda.png and g_vs_eps.png "
                     "were not drawn.")
    if pairs:
        paths["heldout_violation"] = out / "heldout_violation.png"
        plot_heldout_violation(by_label, colors, pairs, paths["heldout_violation"])
    else:
        notes.append("no held-out constraint records (`eval/<c>/<s>/value`): "
                     "heldout_violation.png was not drawn.")

    notes += signal_notes(rows, train_constraints(runs))
    paired = paired_comparison(runs)
    write_text(paths["md"], render_markdown(rows, runs, notes, window_frac, paired))
    buf = io.StringIO()
    write_csv(rows, buf)
    write_text(paths["csv"], buf.getvalue())
    if paired:
        paths["paired_csv"] = out / "paired.csv"
        buf = io.StringIO()
        write_csv(paired, buf)
        write_text(paths["paired_csv"], buf.getvalue())
    return paths
