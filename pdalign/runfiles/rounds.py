"""The files of a ``pdalign-iterate`` run and its round table: one writer and one parser.

``round-K/round.json`` is written last in a round directory, so its presence marks a complete
round; ``rounds.jsonl`` and ``rounds.md`` (and ``rounds.csv``, from ``pdalign-report``) list every
complete round; ``initial.json`` holds the starting policy's held-out evaluation. The loop that
writes them is `pdalign.iterative.loop`; the report reads them through `read_rounds`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from pdalign.runfiles.atomic import atomic_open, write_text
from pdalign.runfiles.metrics import parse_eval_key, set_order

ROUND_FILE = "round.json"  # written last in a round directory: the round is complete
ROUNDS_JSONL = "rounds.jsonl"
ROUNDS_MD = "rounds.md"
ROUNDS_CSV = "rounds.csv"
INITIAL_FILE = "initial.json"


def round_dir(run_dir: str | Path, k: int) -> Path:
    return Path(run_dir) / f"round-{k}"


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete round's record (``round-K/round.json``), in order, stopping at the first
    round that is missing or incomplete."""
    out = []
    while (path := round_dir(run_dir, len(out)) / ROUND_FILE).is_file():
        out.append(json.loads(path.read_text(encoding="utf-8")))
    return out


def read_initial(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / INITIAL_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _eval_cells(result: Mapping[str, float] | None, sets: list[tuple[str, str]]) -> list[str]:
    cells = []
    for c, s in sets:
        value = (result or {}).get(f"eval/{c}/{s}/value")
        viol = (result or {}).get(f"eval/{c}/{s}/violation")
        cells.append("–" if value is None else f"{value:.3f} ({viol:+.3f})" if viol else
                     f"{value:.3f} (0)")
    return cells


def round_table(rounds: Sequence[Mapping[str, Any]], initial: Mapping[str, Any] | None = None
                ) -> str:
    """The markdown round table: per round, lambda used for its pairs, the sampled cost rate of
    the policy it started from against eps, pairs, flipped and reversed pairs (`best_vs_worst`),
    and the held-out value
    (violation = (value - eps)+) of the policy it produced, per constraint and prompt set."""
    names = list(rounds[0]["lambda"]) if rounds else []
    evals = [r.get("eval") or {} for r in rounds] + [(initial or {}).get("eval") or {}]
    sets = set_order((p[0], p[1]) for e in evals for k in e
                     if (p := parse_eval_key(k)) is not None and p[2] == "value")
    header = (["round"] + [f"λ {c}" for c in names] + [f"sampled ĝ {c} (ε)" for c in names]
              + ["pairs", "flipped (reversed)"]
              + [f"held-out {c}/{s} (viol.)" for c, s in sets]
              + ["pref. acc."])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if initial is not None:
        lines.append("| " + " | ".join(["start"] + ["–"] * (2 * len(names) + 2)
                                       + _eval_cells(initial.get("eval"), sets) + ["–"]) + " |")
    for r in rounds:
        acc = (r.get("eval") or {}).get("eval/pref_accuracy")
        cells = ([str(r["round"])] + [f"{r['lambda'][c]:.3f}" for c in names]
                 + [f"{r['rate'][c]:.3f} ({r['eps'][c]:g})" for c in names]
                 + [str(r["n_pairs"]), f"{r['n_flipped']} ({r['n_reversed']})"]
                 + _eval_cells(r.get("eval"), sets) + ["–" if acc is None else f"{acc:.2f}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _summary_line(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "dual_state"}


def round_rows(rounds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The round table as flat rows (``rounds.csv``): round, pairs, flipped, and per constraint
    lambda / sampled rate / eps, then every held-out value and violation."""
    rows = []
    for r in rounds:
        row: dict[str, Any] = {"round": r["round"], "n_pairs": r["n_pairs"],
                               "n_flipped": r["n_flipped"], "n_reversed": r["n_reversed"]}
        for c in r["lambda"]:
            row.update({f"lambda/{c}": r["lambda"][c], f"rate/{c}": r["rate"][c],
                        f"eps/{c}": r["eps"][c]})
        for k, v in sorted((r.get("eval") or {}).items()):
            if (p := parse_eval_key(k)) is not None and p[2] in ("value", "violation", "upper"):
                row[k] = v
        rows.append(row)
    return rows


def write_round_table(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """``rounds.jsonl`` (every complete round, one line each) in the run dir, and the round
    table as ``rounds.md`` and ``rounds.csv`` in ``out`` (default: the run dir)."""

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    rounds = read_rounds(run_dir)
    if out == run_dir:
        with atomic_open(run_dir / ROUNDS_JSONL) as fh:
            for r in rounds:
                fh.write(json.dumps(_summary_line(r)) + "\n")
    write_text(out / ROUNDS_MD, round_table(rounds, read_initial(run_dir)))
    rows = round_rows(rounds)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_open(out / ROUNDS_CSV) as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out / ROUNDS_MD


def is_iterative_run(path: str | Path) -> bool:
    """True for a pdalign-iterate run dir (it holds a complete round 0)."""
    return (round_dir(path, 0) / ROUND_FILE).is_file()


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
