"""The report's text: the markdown table with its legends and notes, and the CSV, from the rows
`pdalign.reporting.stats.summarize` builds."""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

from pdalign.evaluation.ifeval import ACCURACIES
from pdalign.reporting.runs import Run, data_letters
from pdalign.reporting.stats import eval_pairs, fmt, ifeval_keys, train_constraints


def _pm(row: dict[str, Any], key: str) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    return fmt(mean) if std is None or mean is None else f"{fmt(mean)} ± {fmt(std)}"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])


def _health_cell(row: dict[str, Any], constrained: list[str], signal: bool = True) -> str:
    parts = []
    for c in constrained:
        n = sum(row.get(f"{c}/health_{f}") or 0 for f in ("pinned", "rising", "ok"))
        if not n:
            continue
        bad = [f"{f} {row[f'{c}/health_{f}']}/{n}" for f in ("pinned", "rising")
               if row.get(f"{c}/health_{f}")]
        if signal and row.get(f"{c}/signal_none"):
            bad.append(_signal_cell(row, c))
        parts.append(f"{c}: {', '.join(bad) if bad else 'ok'}")
    return "; ".join(parts) or "–"


def _signal_cell(row: dict[str, Any], c: str) -> str:
    if not row.get(f"{c}/signal_n"):
        return "–"
    k = row[f"{c}/signal_none"]
    return f"no signal {k}/{row[f'{c}/signal_n']}" if k else "ok"


def _at_budget_cell(row: dict[str, Any], c: str) -> str:
    final, run = row.get(f"{c}/at_budget_final_mean"), row.get(f"{c}/at_budget_run_mean")
    if final is None:
        return "–"
    return f"{final:.0%} (run mean {run:.0%})" if run is not None else f"{final:.0%}"


LEGEND = """\
**Columns.** Each row aggregates the finished runs of one method label over seeds: mean ± \
sample std (ddof=1; the mean alone for one seed); *seeds* is their count.
- *pref. acc.*: held-out preference accuracy (`eval/pref_accuracy`) at the last eval step.
- *c/s held-out (ε)*: the held-out estimate of constraint c on prompt set s (id = \
in-distribution, shifted = distribution-shifted prompts) at the last eval step, with its bound ε.
- *c/s pass*: seeds whose certificate passed at the last eval step (the one-sided 95% upper \
confidence bound is ≤ ε) / seeds evaluated.
- *violation drift*: the held-out violation (value − ε)⁺ over the eval steps: its *final* and \
*max* value (constraint unit) and its *area*, the trapezoid integral over steps \
(violation·steps; 0 with a single eval point).
- *wall time*: `summary.json` wall_time_s, seconds of the training loop.
- *paired by seed*: primal_dual(X) against X run with the same seed; Δ is the mean of the \
per-seed differences (method − baseline) at the last eval step with its two-sided 95% \
Student-t interval over seeds; *violation reduction* is 1 − (mean violation of the method) / \
(mean violation of the baseline). Also in `paired.csv`.
- *λ health* (constrained methods): over the last {window:.0%} of steps, *pinned* = λ_c stayed \
≥ 0.99·λ_max, *rising* = λ_c rose at every logged step (up to the cap); either means the \
constraint is not met at the policy's capacity (raise capacity, λ_max or the dual step, or \
loosen ε). Shown as seeds flagged / seeds; *ok* otherwise. *final λ* is λ after the last \
dual step.
- *data*: which set of data hashes (`manifest.json`) the runs used; letters in the list below \
(`-` = no manifest).
"""


# Added to the legend only when some run logged rollout signal, so older reports are unchanged.
SIGNAL_LEGEND = """\
- *signal* (rollout constraints): *no signal* = every sample of the last rollouts cost the \
same (the logged `signal/<c>/flat_rollouts` reached the warning threshold, or the spread was \
nil over the λ-health window), so the score-function surrogate has zero gradient and λ_c \
multiplies nothing; shown as seeds flagged / seeds (in the λ health column too). A dense \
surrogate (Length with estimator: stop) has a gradient at flat costs and is not flagged. \
*at budget*: \
share of rollout samples that used the whole generation budget (train.rollout.max_new_tokens), \
at the last step (mean over the run in brackets), mean over seeds.
"""


# Added to the legend only when some run logged IFEval, so older reports are unchanged.
IFEVAL_LEGEND = """\
- *IFEval* (`eval/ifeval/*`, `pdalign.evaluation.ifeval`): instruction following at the last \
eval step, greedy, on {n} of the 541 IFEval prompts (a fixed subset when fewer): *prompt* = \
share of prompts whose every instruction passes, *instruction* = share of all instructions \
passed; *strict* judges the response as it is, *loose* also its first or last line removed \
and its asterisks dropped (Zhou et al. 2023).
"""


def render_markdown(rows: list[dict[str, Any]], runs: Sequence[Run], notes: Sequence[str] = (),
                    window_frac: float = 0.2, paired: Sequence[dict[str, Any]] = ()) -> str:
    """The report's markdown: summary, drift, paired and dual tables, data, notes, legend.

    Args:
        rows: from `summarize`.
        runs: the runs the rows came from (for the data legend and incomplete list).
        notes: extra lines (skipped plots, warnings), listed under "Notes".
        window_frac: the λ-health window, for the legend. Default 0.2.
        paired: from `paired_comparison`; no section when empty.
    """
    pairs, constrained = eval_pairs(runs), train_constraints(runs)
    ifeval = ifeval_keys(runs)
    md = ["# pdalign sweep report", ""]
    header = ["method", "seeds", "pref. acc."] + [f"IFEval {ACCURACIES[k]}" for k in ifeval]
    header += [h for c, s in pairs for h in (f"{c}/{s} held-out (ε)", f"{c}/{s} pass")]
    header += ["wall time (s)", "λ health", "data"]
    lines = []
    for row in rows:
        n = f"{row['n_seeds']}" + (f" (+{row['n_incomplete']} incomplete)"
                                   if row["n_incomplete"] else "")
        cells = [row["method"], n, _pm(row, "pref_accuracy")]
        cells += [_pm(row, k.removeprefix("eval/")) for k in ifeval]
        for c, s in pairs:
            if not row[f"{c}/{s}/pass_n"]:
                cells += ["–", "–"]
                continue
            cells.append(f"{_pm(row, f'{c}/{s}/value')} (ε {fmt(row[f'{c}/{s}/eps'])})")
            cells.append(f"{row[f'{c}/{s}/pass_k']}/{row[f'{c}/{s}/pass_n']}")
        cells += [_pm(row, "wall_time_s"), _health_cell(row, constrained), row["data"]]
        lines.append(cells)
    md += ["## Summary", "", _table(header, lines), ""]

    if pairs:
        header = ["method"] + [f"{c}/{s} {stat}" for c, s in pairs
                               for stat in ("final", "max", "area")]
        lines = [[row["method"]] + [_pm(row, f"{c}/{s}/violation_{stat}") for c, s in pairs
                                    for stat in ("final", "max", "area")] for row in rows]
        md += ["## Held-out violation drift", "", _table(header, lines), ""]

    if paired:
        md += ["## Constrained method vs its base objective (paired by seed)", "",
               _table(["method", "vs", "metric", "seeds", "baseline", "method", "Δ (95% CI)",
                       "violation: baseline → method", "violation reduction"],
                      [_paired_cells(p) for p in paired if p["metric"] != "wall_time_s"]), ""]
        md += [f"- {p['method']} trains in {fmt(p['ratio_mean'])}× the wall time of "
               f"{p['baseline']} (mean of per-seed ratios, {p['n']} seeds; median "
               f"{fmt(p['ratio_median'])}×)."
               for p in paired if p["metric"] == "wall_time_s"] + [""]

    signalled = [c for c in constrained if any(row.get(f"{c}/signal_n") for row in rows)]
    if constrained:
        header = ["method"]
        for c in constrained:
            header += [f"{c} final λ (λ_max)", f"{c} health"]
            header += [f"{c} signal", f"{c} at budget"] if c in signalled else []
        lines = []
        for row in rows:
            if not any(row.get(f"{c}/health") for c in constrained):
                continue
            cells = [row["method"]]
            for c in constrained:
                cap = row.get(f"{c}/lambda_max")
                cells.append(f"{_pm(row, f'{c}/lambda_final')} ({fmt(cap)})")
                cells.append(_health_cell(row, [c], signal=False).split(": ", 1)[-1])
                if c in signalled:
                    cells += [_signal_cell(row, c), _at_budget_cell(row, c)]
            lines.append(cells)
        md += ["## Dual variables", "", _table(header, lines), ""]

    letters = data_letters(runs)
    if letters:
        md += ["## Data", ""]
        for hashes, letter in letters.items():
            md.append(f"- **{letter}**: " + ", ".join(f"`{p}` {h[:12]}" for p, h in sorted(hashes)))
        md.append("")
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        md += ["## Incomplete runs (no summary.json)", ""]
        md += [f"- `{r.name}` ({r.label}, seed {r.seed}): last logged step {r.last_step}"
               for r in incomplete]
        md.append("")
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    sizes = sorted({n for row in rows for n in (row.get("ifeval/n_prompts") or "").split(";")
                    if n}, key=float)
    md += ["## Legend", "", LEGEND.format(window=window_frac) + (SIGNAL_LEGEND if signalled
                                                                 else "")
           + (IFEVAL_LEGEND.format(n=" or ".join(sizes) or "?") if ifeval else "")]
    return "\n".join(md)


def _paired_cells(p: dict[str, Any]) -> list[str]:
    ci = "" if p["diff_lo"] is None else f" [{fmt(p['diff_lo'])}, {fmt(p['diff_hi'])}]"
    cells = [p["method"], p["baseline"], p["metric"], str(p["n"]), fmt(p["baseline_mean"]),
             fmt(p["method_mean"]), f"{fmt(p['diff_mean'])}{ci}"]
    if "violation_mean" not in p:
        return cells + ["", ""]
    red = p["violation_reduction"]
    return cells + [f"{fmt(p['baseline_violation_mean'])} → {fmt(p['violation_mean'])}",
                    "– (baseline within ε)" if red is None else f"{red:.0%}"]


def write_csv(rows: list[dict[str, Any]], fh: io.TextIOBase) -> None:
    """Rows as CSV, the union of their keys as columns in first-seen order; None → empty."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])


def _csv_cell(value: Any) -> Any:
    # 10 significant digits: exact for any logged metric, without 0.6499999999999999 noise.
    if value is None:
        return ""
    return f"{value:.10g}" if isinstance(value, float) else value
