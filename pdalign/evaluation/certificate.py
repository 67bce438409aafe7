"""Certificates and violation drift, read from the held-out metric keys.

Every held-out number of a constraint c on prompt set s is logged under ``eval/<c>/<s>/<field>``
(`pdalign.runfiles.metrics.eval_key` writes it, `parse_eval_key` reads it; the report and
``paper/build.py`` use both). Fields: ``value``, ``upper`` (one-sided bound), ``eps``,
``violation`` ((value − eps)⁺), ``pass`` (1.0 when upper <= eps), ``n``, ``heldout``, ``exact``,
``bound/<name>`` (= 1.0, names the `pdalign.evaluation.bounds` bound) and, for binary costs,
``lower_wilson`` / ``upper_wilson``. Run-level keys: ``eval/pref_accuracy``,
``eval/reward_margin``, ``eval/n_pairs``, ``eval/confidence``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from pdalign.evaluation.bounds import BOUNDS, EXACT_BOUNDS
from pdalign.runfiles.metrics import OPENER_ROW, eval_key, parse_eval_key, set_order


def set_metrics(constraint: str, prompt_set: str, *, value: float, upper: float, bound: str,
                eps: float, n: int, heldout: bool,
                wilson: tuple[float, float] | None = None) -> dict[str, float]:
    """Every field of one certificate row, keyed by `eval_key`."""
    def key(field: str) -> str:
        return eval_key(constraint, prompt_set, field)

    out = {key("value"): value, key("upper"): upper, key("eps"): eps,
           key("violation"): max(value - eps, 0.0), key("pass"): float(upper <= eps),
           key("n"): float(n), key("heldout"): float(heldout),
           key("exact"): float(bound in EXACT_BOUNDS), key(f"bound/{bound}"): 1.0}
    if wilson is not None:
        out[key("lower_wilson")], out[key("upper_wilson")] = wilson
    return out


def certificate(result: Mapping[str, float], confidence: float | None = None) -> list[dict]:
    """One row per constraint x prompt set of an `evaluate` result, id before shifted.

    Each row: constraint, set, n, estimate, upper, bound (a `BOUNDS` name), exact, epsilon,
    heldout, confidence and verdict: PASS only when the one-sided upper bound <= epsilon.

    Args:
        result: `evaluate`'s dict (or an eval record of metrics.jsonl).
        confidence: the level the bounds were computed at; default ``eval/confidence``.
    """
    conf = float(confidence if confidence is not None else result.get("eval/confidence", 0.95))
    fields: dict[tuple[str, str], dict[str, float]] = {}
    for k, v in result.items():
        if (parsed := parse_eval_key(k)) is not None:
            fields.setdefault(parsed[:2], {})[parsed[2]] = v
    rows = []
    for c, s in set_order(p for p, f in fields.items() if "value" in f):
        f = fields[(c, s)]
        bound = next((name[len("bound/"):] for name, v in f.items()
                      if name.startswith("bound/") and v), "unknown")
        upper, eps = float(f["upper"]), float(f["eps"])
        passed = bool(f.get("pass", float(upper <= eps)))
        rows.append({"constraint": c, "set": s, "n": int(f.get("n", 0)),
                     "estimate": float(f["value"]), "upper": upper,
                     "bound": bound, "exact": bound in EXACT_BOUNDS, "epsilon": eps,
                     "heldout": bool(f.get("heldout", 1.0)),
                     "confidence": conf, "verdict": "PASS" if passed else "FAIL"})
    return rows


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.4g}"


def render_certificate(rows: Sequence[Mapping], result: Mapping[str, float] | None = None) -> str:
    """The certificate as a markdown table, with the bounds used explained underneath.

    Args:
        rows: `certificate` rows.
        result: the `evaluate` dict, to add the held-out preference accuracy line; optional.
    """
    conf = rows[0]["confidence"] if rows else (result or {}).get("eval/confidence", 0.95)
    lines = [f"## Constraint certificate (one-sided {100 * conf:g}% upper bounds)", ""]
    if result and "eval/pref_accuracy" in result:
        lines += [f"Held-out preference accuracy: {result['eval/pref_accuracy']:.3f} over "
                  f"{int(result['eval/n_pairs'])} pairs (reward margin "
                  f"{result['eval/reward_margin']:.4g}).", ""]
    if not rows:
        return "\n".join(lines + ["No constraints evaluated."]) + "\n"
    lines += ["| constraint | prompts | n | estimate | upper bound | bound | ε | verdict |",
              "|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        prompts = r["set"] + ("" if r["heldout"] else " (train prompts)")
        bound = r["bound"] + ("" if r["exact"] else " †")
        lines.append(f"| {r['constraint']} | {prompts} | {r['n']} | {_fmt(r['estimate'])} | "
                     f"{_fmt(r['upper'])} | {bound} | {_fmt(r['epsilon'])} | {r['verdict']} |")
    joint = max(0.0, 1.0 - len(rows) * (1.0 - conf))
    lines += ["", "PASS: the upper bound is ≤ ε, so g(π) ≤ ε holds at the stated level for the "
              "prompt population the set samples. Each row holds on its own; all "
              f"{len(rows)} rows jointly at ≥ {100 * joint:.3g}% (Bonferroni)."]
    for name in dict.fromkeys(r["bound"] for r in rows):
        lines.append(f"- `{name}`{'' if name in EXACT_BOUNDS else ' †'}: "
                     f"{BOUNDS.get(name, 'unknown bound')}")
    if any(r["set"].endswith(OPENER_ROW) for r in rows):
        lines.append(f"- `<set>{OPENER_ROW}`: the same prompts scored exactly, each prompt's "
                     "probability of (not) opening with the constraint's openers, no sampling; "
                     "it bounds the opener-judged rate (and, for refusal openers, the answered "
                     "rate above it). The sampled row is the headline.")
    if not all(r["heldout"] for r in rows):
        lines.append("- (train prompts): no held-out set exists for this constraint; its "
                     "training prompts were used, so the row is not a held-out estimate.")
    return "\n".join(lines) + "\n"


def violation_drift(steps, violation) -> dict[str, float]:
    """Final, max and trapezoid area of a held-out violation over the eval steps.

    Args:
        steps: eval steps, ``(E,)`` ascending.
        violation: value − ε at those steps, ``(E,)``, in the constraint's unit; clipped at 0
            here, so a met constraint contributes nothing.
    Returns ``{"final", "max", "area"}``: area = sum over consecutive evals of
    (v_i + v_{i+1})/2 * (step_{i+1} - step_i), in violation x steps; 0 for a single eval point.
    Raises ValueError when there is no eval point.
    """
    steps = np.asarray(steps, dtype=float)
    v = np.maximum(np.asarray(violation, dtype=float), 0.0)
    if v.size == 0:
        raise ValueError("violation_drift needs at least one eval point")
    area = float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(steps)))
    return {"final": float(v[-1]), "max": float(v.max()), "area": area}
