# Run:  .venv/bin/python experiments/certificates.py experiments/results/study
#         (writes experiments/results/study/certificates.md and prints it)
"""Every held-out certificate of a sweep, per run: n, value, one-sided upper bound, ε, verdict.

`pdalign-report` aggregates over seeds (mean ± std, passes / seeds); a claim such as "passes in
2 of 3 seeds" is checked against the rows here, one per run, read from each run's last held-out
evaluation in ``metrics.jsonl``: every (constraint, prompt set) row the evaluation wrote,
sampled and exact (``.opener``) alike, with the bound that produced it, then the run's held-out
preference accuracy and, where it was scored, IFEval's prompt-level strict accuracy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pdalign.evaluation.ifeval import N_PROMPTS, PROMPT_STRICT
from pdalign.reporting.runs import collect_runs
from pdalign.runfiles.atomic import write_text
from pdalign.runfiles.metrics import SET_ORDER, parse_eval_key

FIELDS = ("n", "value", "upper", "eps", "pass")


def _last_eval(records: list[dict]) -> dict:
    evals = [r for r in records if "eval/confidence" in r]
    return evals[-1] if evals else {}


def rows_of(record: dict) -> dict[tuple[str, str], dict]:
    """{(constraint, set): {field: value, "bound": name}} of one evaluation record."""
    rows: dict[tuple[str, str], dict] = {}
    for key, value in record.items():
        parsed = parse_eval_key(key)
        if parsed is None:
            continue
        c, s, field = parsed
        row = rows.setdefault((c, s), {})
        if field in FIELDS:
            row[field] = value
        elif field.startswith("bound/"):
            row["bound"] = field.removeprefix("bound/")
    return rows


def _set_key(item):
    (c, s), _ = item
    base = s.split(".")[0]
    return c, SET_ORDER.get(base, 9), base, s


def table(sweep: Path) -> str:
    runs = collect_runs(sweep)
    lines = [f"# Certificates per run: `{sweep}`", "",
             "From each run's last held-out evaluation (`metrics.jsonl`); value and upper are the "
             "estimate and its one-sided upper bound at the evaluation's confidence; a `.opener` "
             "set is the exact opener-probability row beside the sampled one.", ""]
    for run in sorted(runs, key=lambda r: r.name):
        record = _last_eval(run.records)
        if not record:
            continue
        step = record.get("step", "?")
        name = run.name if run.name not in ("", ".") else run.path.resolve().name
        lines += [f"## {name} (step {step})", "",
                  "| constraint | set | n | value | upper | bound | ε | certificate |",
                  "|---|---|---:|---:|---:|---|---:|---|"]
        for (c, s), row in sorted(rows_of(record).items(), key=_set_key):
            verdict = "**pass**" if row.get("pass") == 1.0 else "fail"
            lines.append(f"| {c} | {s} | {row.get('n', float('nan')):.0f} | "
                         f"{row.get('value', float('nan')):.4g} | "
                         f"{row.get('upper', float('nan')):.4g} | {row.get('bound', '?')} | "
                         f"{row.get('eps', float('nan')):g} | {verdict} |")
        extra = [f"preference accuracy {record['eval/pref_accuracy']:.3f}"
                 if "eval/pref_accuracy" in record else None]
        if PROMPT_STRICT in record:
            extra.append(f"IFEval prompt-level strict {record[PROMPT_STRICT]:.3f} "
                         f"({record.get(N_PROMPTS, float('nan')):.0f} prompts)")
        lines += ["", "; ".join(e for e in extra if e) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, help="a sweep dir or a collected results dir")
    p.add_argument("--out", type=Path, default=None,
                   help="default: <sweep>/certificates.md")
    args = p.parse_args(argv)
    text = table(args.sweep)
    write_text(args.out or args.sweep / "certificates.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
