# Run: make paper   (= .venv/bin/python paper/build.py)
"""Build paper/paper.md from paper/paper_template.md and the files in experiments/results/.

Every number in the paper comes from a results file through `values`; the template holds
``{{name}}`` placeholders only. An unknown placeholder is an error, so no number can be left
typed by hand or silently unfilled.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

from pdalign.atomic import write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}"


def values(results: Path = RESULTS) -> dict[str, str]:
    """Every placeholder's text, each read from a results file."""
    bandit = json.loads((results / "bandit_kkt.json").read_text())
    out = {"K": str(bandit["K"]), "beta": _fmt(bandit["beta"]),
           "epsilon": _fmt(bandit["epsilon"]), "lambda_star": _fmt(bandit["lambda_star"], 6),
           "cost_unconstrained": _fmt(bandit["expected_cost_unconstrained"])}
    for rule in ("gradient", "pid"):
        out[f"lambda_{rule}"] = _fmt(bandit["lambda_final"][rule], 6)
        out[f"cost_{rule}"] = _fmt(bandit["expected_cost_final"][rule], 6)
        out[f"reward_{rule}"] = _fmt(bandit["expected_reward_final"][rule], 6)
    bench = json.loads((results / "bench.json").read_text())
    s = bench["settings"]
    out.update({"cpu": f"{s['cpu']['model']} ({', '.join(s['cpu']['capabilities'])})",
                "dtype": s["dtype"], "tflops": _fmt(s["matmul_tflops"], 3),
                "dpo_vs_trl": _fmt(bench["ratios"]["dpo_time_vs_trl"], 2),
                "dpo_vs_floor": _fmt(bench["ratios"]["dpo_time_vs_floor"], 3),
                "pd_vs_dpo": _fmt(bench["ratios"]["primal_dual_time_vs_dpo"], 3)})
    with open(results / "quickstart" / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out["kl_eps"] = _fmt(float(rows[0]["kl_budget/id/eps"]))
    out["refusal_eps"] = _fmt(float(rows[0]["refusal/id/eps"]))
    out["quickstart_rows"] = "\n".join(
        f"| {r['method']} | {_fmt(float(r['pref_accuracy_mean']), 3)} | "
        f"{_fmt(float(r['kl_budget/id/value_mean']), 3)} | "
        f"{_fmt(float(r['refusal/id/violation_final_mean']), 3)} | "
        f"{_fmt(float(r['wall_time_s_mean']), 4)} |" for r in rows)
    return out


def render(template: str, table: dict[str, str]) -> str:
    missing = sorted(set(re.findall(r"\{\{(\w+)\}\}", template)) - set(table))
    if missing:
        raise KeyError(f"paper placeholders with no results value: {missing}")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: table[m.group(1)], template)


def build(out: Path | None = None, results: Path = RESULTS) -> Path:
    out = out or ROOT / "paper" / "paper.md"
    text = render((ROOT / "paper" / "paper_template.md").read_text(), values(results))
    write_text(out, text)
    return out


if __name__ == "__main__":
    print(f"wrote {build(Path(sys.argv[1]) if len(sys.argv) > 1 else None)}")
