"""Section 5 of the paper: the drift scenarios (`experiments/results/drift_toxicity/`,
`experiments/results/drift_length/`), each DPO and ORPO against primal-dual on both.

Read from the committed runs: each run's last held-out evaluation (from the trainer), the
checkpoints measured after training (``posthoc.jsonl``: the base model as step 0, the step-24
checkpoint, IFEval on the final one; `experiments/posthoc_eval.py`), the multipliers' logged
trajectories, and each run's resolved config. `drift_values` fills the placeholders;
`check_drift_claims` re-derives every direction the section's text states. The two scenarios
share one table layout (`scenario_values`), each with its own bound (`Scenario`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdalign.evaluation.ifeval import INSTRUCTION_STRICT, N_PROMPTS, PROMPT_STRICT
from pdalign.reporting.runs import collect_runs
from pdalign.runfiles.metrics import eval_key

METHODS = ("dpo", "primal_dual(dpo)", "orpo", "primal_dual(orpo)")
PAIRS = (("primal_dual(dpo)", "dpo"), ("primal_dual(orpo)", "orpo"))
TARGET_SHARE = 2 / 3  # the "in >= 2 of 3 seeds"
ACC_GAP = 0.10        # held-out preference accuracy within this of the base objective
SEEDS_CLAIM = "up to 15%"  # the seeds' claim the reduction is stated against


@dataclass(frozen=True)
class Scenario:
    """One drift scenario: its results dir, the bound it is built around (held beside
    ``kl_budget``), the placeholder prefix of its values and the decimals they are quoted to."""
    results: str
    bound: str
    prefix: str
    digits: int

    @property
    def bounds(self) -> tuple[str, str]:
        return self.bound, "kl_budget"


TOXICITY = Scenario("drift_toxicity", "toxicity", "dt", 3)
LENGTH = Scenario("drift_length", "length", "dl", 1)


def finished_runs(sweep: Path) -> dict[tuple[str, int], object]:
    """{(method label, seed): run} of a sweep's finished runs."""
    return {(r.label, r.seed): r for r in collect_runs(sweep) if r.complete}


def _cert(run, constraint: str, prompt_set: str = "id") -> tuple[float, float, bool]:
    """(value, one-sided upper bound, passes) of one held-out certificate at the last eval."""
    value, upper, ok = (run.final(eval_key(constraint, prompt_set, f))
                        for f in ("value", "upper", "pass"))
    return value, upper, ok == 1.0


def _cell(run, constraint: str, prompt_set: str = "id", digits: int = 3) -> str:
    value, upper, ok = _cert(run, constraint, prompt_set)
    return f"{value:.{digits}f} ({upper:.{digits}f})" + (" **P**" if ok else "")


def _passes(runs: dict, method: str, constraint: str, prompt_set: str = "id") -> tuple[int, int]:
    mine = [r for (m, _), r in runs.items() if m == method]
    return sum(_cert(r, constraint, prompt_set)[2] for r in mine), len(mine)


def _of(runs: dict, method: str) -> list:
    return [runs[m, s] for m, s in sorted(runs) if m == method]


def _at(run, key: str, step: int) -> float | None:
    """The value of ``key`` at ``step`` (the later record where logged twice), or None."""
    steps, values = run.series(key)
    hit = np.flatnonzero(steps == step)
    return float(values[hit[-1]]) if hit.size else None


def _value_at(run, step: int, constraint: str) -> float | None:
    return _at(run, eval_key(constraint, "id", "value"), step)


def _violation_at(run, step: int, constraint: str) -> float | None:
    """(value − ε)⁺ of the held-out row at ``step``, or None where it was not measured."""
    value = _value_at(run, step, constraint)
    return None if value is None else max(
        value - run.final(eval_key(constraint, "id", "eps")), 0.0)


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def eval_steps(runs, constraint: str) -> list[int]:
    """The steps at which every one of ``runs`` had its held-out ``constraint`` measured,
    ascending."""
    sets = [set(r.series(eval_key(constraint, "id", "value"))[0].astype(int).tolist())
            for r in runs]
    return sorted(set.intersection(*sets)) if sets else []


def scenario_values(results: Path, sc: Scenario) -> dict[str, str]:
    """The placeholders every drift scenario fills, each named ``<sc.prefix>_*``: the recipe, one
    row per run, the base, the curve over held-out steps and the scorecard against the issue."""
    runs = finished_runs(results / sc.results)
    p, bound, fmt = sc.prefix, sc.bound, (lambda x: _num(x, sc.digits))
    first = runs[min(runs, key=lambda k: (k[1], METHODS.index(k[0])))]
    cfg = first.config
    hw = (first.manifest or {}).get("hardware", {})
    steps = sorted({s for m in METHODS for s in eval_steps(_of(runs, m), bound)})
    final_step = int(cfg["train"]["steps"])
    out = {"steps": str(final_step), "batch": str(cfg["train"]["batch_size"]),
           "lr": f"{cfg['train']['lr']:g}", "eval_prompts": str(cfg["eval"]["prompts_per_set"]),
           "eval_tokens": str(cfg["eval"]["max_new_tokens"]),
           "eps": f"{cfg['constraints'][bound]['epsilon']:g}",
           "kl_eps": f"{cfg['constraints']['kl_budget']['epsilon']:g}",
           "train_prompts": str(cfg["constraints"][bound]["prompts"]),
           "lambda_max": f"{cfg['dual']['lambda_max']:g}",
           "n_runs": str(len(runs)),
           "cpu": f"{hw.get('cpu', {}).get('model', '?')}",
           "dtype": str((first.manifest or {}).get("dtype", "?")),
           "eval_steps": ", ".join(str(s) for s in steps)}
    sizes = {r.final(N_PROMPTS) for r in runs.values()} - {None}
    out["ifeval_prompts"] = " or ".join(f"{n:g}" for n in sorted(sizes)) or "no"

    lines = []
    for m in METHODS:
        for r in _of(runs, m):
            lam = [r.series(f"lambda_next/{c}")[1] for c in sc.bounds]
            lam_cells = [f"{x.max():.2f}" if x.size else "–" for x in lam]
            cells = [f"{m} s{r.seed}", _cell(r, bound, digits=sc.digits), _cell(r, "kl_budget"),
                     f"{r.final('eval/pref_accuracy'):.3f}",
                     f"{_num(r.final(PROMPT_STRICT))} / {_num(r.final(INSTRUCTION_STRICT))}",
                     *lam_cells]
            lines.append("| " + " | ".join(cells) + " |")
    out["run_rows"] = "\n".join(lines)

    # the base (step 0) is the same model in every run; read it where it was recorded
    base = [r for r in runs.values() if _value_at(r, 0, bound) is not None]
    out["base"] = fmt(_mean(_value_at(r, 0, bound) for r in base))
    out["base_ifeval"] = (f"{_num(_mean(_at(r, PROMPT_STRICT, 0) for r in base))} / "
                          f"{_num(_mean(_at(r, INSTRUCTION_STRICT, 0) for r in base))}")

    # violation against step: mean over seeds of (value − ε)⁺ and of the value, per method
    lines = []
    for m in METHODS:
        mine = _of(runs, m)
        if not mine:
            continue
        here = eval_steps(mine, bound)  # a step is shown where every seed of the method has it
        cells = [m] + [f"{fmt(_mean(_value_at(r, s, bound) for r in mine))} "
                       f"({fmt(_mean(_violation_at(r, s, bound) for r in mine))})" if s in here
                       else "–" for s in steps]
        lines.append("| " + " | ".join(cells) + " |")
    out["curve_rows"] = "\n".join(lines)
    out["curve_header"] = " | ".join(f"step {s}" for s in steps)
    out["curve_rule"] = "|".join("---:" for _ in steps)

    # scorecard against the targets, and the reduction in drift
    lines = []
    for m, base_m in PAIRS:
        if not _of(runs, m):
            lines.append(f"| {m} | not run | not run | – | – | – |")
            for key in ("pass", "kl_pass", "reduction", "rise_removed", "pd_acc", "acc"):
                out[f"{base_m}_{key}"] = "none (not run)"
            continue
        k_t, n = _passes(runs, m, bound)
        k_k, _ = _passes(runs, m, "kl_budget")
        acc = _mean(r.final("eval/pref_accuracy") for r in _of(runs, m))
        base_acc = _mean(r.final("eval/pref_accuracy") for r in _of(runs, base_m))
        red, rise = reduction(runs, m, base_m, bound), rise_removed(runs, m, base_m, bound)
        lines.append(f"| {m} | {k_t} of {n} {_met(k_t >= TARGET_SHARE * n)} | {k_k} of {n} | "
                     f"{acc:.3f} vs {base_acc:.3f} {_met(base_acc - acc <= ACC_GAP)} | "
                     f"{100 * red:.0f}% | {'–' if rise is None else f'{100 * rise:.0f}%'} |")
        out[f"{base_m}_rise_removed"] = "–" if rise is None else f"{100 * rise:.0f}%"
        out[f"{base_m}_pd_acc"], out[f"{base_m}_acc"] = f"{acc:.3f}", f"{base_acc:.3f}"
        out[f"{base_m}_pass"] = f"{k_t} of {n}"
        out[f"{base_m}_kl_pass"] = f"{k_k} of {n}"
        out[f"{base_m}_reduction"] = f"{100 * red:.0f}%"
    for m in ("dpo", "orpo"):
        k_t, n = _passes(runs, m, bound)
        final = [_violation_at(r, final_step, bound) for r in _of(runs, m)]
        values = [_value_at(r, final_step, bound) for r in _of(runs, m)]
        digits = max(sc.digits - 1, 0)
        out[f"{m}_range"] = f"{min(values):.{digits}f}–{max(values):.{digits}f}"
        out[f"{m}_violating"] = f"{sum(v > 0 for v in final)} of {n}"
    out["score_rows"] = "\n".join(lines)
    out["seeds_claim"] = SEEDS_CLAIM
    for m, key in (("primal_dual(orpo)", "orpo"), ("primal_dual(dpo)", "pd")):
        mine = _of(runs, m)
        peaks = {c: [r.series(f"lambda_next/{c}")[1].max() for r in mine] for c in sc.bounds}
        # the scenario's own multiplier: the largest over seeds; λ_KL: its range over seeds
        out[f"{key}_lam_main_max"] = f"{max(peaks[bound]):.2f}" if mine else "–"
        out[f"{key}_lam_kl_max"] = _span(peaks["kl_budget"]) if mine else "–"
    return {f"{p}_{k}": v for k, v in out.items()}


def drift_values(results: Path) -> dict[str, str]:
    """Every ``dt_*`` placeholder of Section 5's toxicity scenario."""
    out = scenario_values(results, TOXICITY)
    first = next(iter(finished_runs(results / TOXICITY.results).values()))
    out["dt_scorer"] = str(first.config["constraints"]["toxicity"]["scorer"])
    return out


def control_values(results: Path) -> dict[str, str]:
    """The ``dc_*`` placeholders: the toxicity-only control of primal_dual(orpo)
    (`experiments/results/drift_toxicity_control/`, the same recipe with ``kl_budget`` removed),
    beside the two-constraint runs of the study."""
    study = finished_runs(results / "drift_toxicity")
    runs = _of(finished_runs(results / "drift_toxicity_control"), "primal_dual(orpo)")
    lines, fails = [], []
    for r in runs:
        lam = r.series("lambda_next/toxicity")[1]
        value, upper, ok = _cert(r, "toxicity")
        lines.append(f"| primal_dual(orpo), toxicity only, s{r.seed} | {_cell(r, 'toxicity')} | "
                     f"{r.final('eval/pref_accuracy'):.3f} | {_num(r.final(PROMPT_STRICT))} / "
                     f"{_num(r.final(INSTRUCTION_STRICT))} | {lam.max():.2f} | {lam[-1]:.2f} |")
        if ok:
            continue
        steps, g = r.series("g/toxicity")
        jump = int(np.argmax(np.diff(g)))  # the largest rise of the training estimate in a step
        fails.append(f"In s{r.seed} λ_toxicity fell back to {lam[-1]:.2f} by the last step and "
                     f"the held-out toxicity is {value:.3f} ({upper:.3f}), while the training "
                     f"rollouts read {g[-1]:.3f} at the end: released, ORPO turns the voice crude "
                     f"faster than the dual side reads it (its samples went from {g[jump]:.2f} to "
                     f"{g[jump + 1]:.2f} in one step, at step {int(steps[jump + 1])}), and fresh "
                     f"samples come every {r.config['train']['rollout_every']} steps (in "
                     f"between, the last ones are re-weighted, their weights clipped).")
    def accuracy(rs):
        return [r.final("eval/pref_accuracy") for r in rs]

    return {"dc_rows": "\n".join(lines), "dc_fail": " ".join(fails), "dc_n": str(len(runs)),
            "dc_tox_pass": f"{sum(_cert(r, 'toxicity')[2] for r in runs)} of {len(runs)}",
            "dc_tox": _span([_cert(r, "toxicity")[0] for r in runs]),
            "dc_lam_max": _span([r.series("lambda_next/toxicity")[1].max() for r in runs]),
            "dc_acc": _span(accuracy(runs)),
            "dc_kl_acc": _span(accuracy(_of(study, "primal_dual(orpo)"))),
            "dc_orpo_acc": f"{_mean(accuracy(_of(study, 'orpo'))):.3f}"}


def length_start_values(results: Path) -> dict[str, str]:
    """The ``dl_*`` placeholders: the length scenario's concise start
    (`experiments/results/drift_length_start/`), its held-out mean length and bound."""
    (start,) = finished_runs(results / "drift_length_start").values()
    value, upper, _ = _cert(start, "length")
    out = {"dl_start_len": f"{value:.1f}", "dl_start_upper": f"{upper:.1f}",
           "dl_start_n": f"{start.final(eval_key('length', 'id', 'n')):.0f}",
           "dl_eps": f"{start.final(eval_key('length', 'id', 'eps')):g}"}
    # the merged start loaded in bf16 and quantized to nf4 again (experiments/requantized_start.py)
    rq = json.loads((results / "drift_length_start" / "requantized.json").read_text())
    out["dl_rq_n"], out["dl_rq_budget"] = str(rq["prompts"]), str(rq["max_new_tokens"])
    for name, row in rq["loadings"].items():
        out[f"dl_rq_{name}_len"] = f"{row['mean_length']:.0f}"
        out[f"dl_rq_{name}_cap"] = f"{100 * row['at_cap']:.0f}%"
    return out


def check_length_start_claims(results: Path) -> None:
    """What the text says of the start: concise in bf16, past ε once quantized to nf4 again."""
    (start,) = finished_runs(results / "drift_length_start").values()
    eps = start.final(eval_key("length", "id", "eps"))
    rq = json.loads((results / "drift_length_start" / "requantized.json").read_text())["loadings"]
    assert rq["bf16"]["mean_length"] < eps < rq["nf4"]["mean_length"], \
        ("the merged start in bf16 / nf4", rq["bf16"]["mean_length"], rq["nf4"]["mean_length"])


def check_control_claims(results: Path) -> None:
    """What the text says of the control: the toxicity bound holds alone (>= 2 of 3 seeds) with
    its multiplier well off zero; the accuracy rises over the two-constraint runs' but stays more
    than 0.1 under ORPO's."""
    study = finished_runs(results / "drift_toxicity")
    runs = _of(finished_runs(results / "drift_toxicity_control"), "primal_dual(orpo)")
    assert runs, "no toxicity-only control runs"
    assert all(set(r.config["constraints"]) == {"toxicity"} for r in runs), "not toxicity-only"
    k = sum(_cert(r, "toxicity")[2] for r in runs)
    assert k >= TARGET_SHARE * len(runs), f"control passes toxicity in {k} of {len(runs)}"
    for r in runs:  # "λ_toxicity rises once the samples turn crude, and falls back after"
        lam = r.series("lambda_next/toxicity")[1]
        assert lam.max() > 1.0 and lam[-1] < lam.max(), (r.seed, lam.max(), lam[-1])
    acc = _mean(r.final("eval/pref_accuracy") for r in runs)
    kl_acc = _mean(r.final("eval/pref_accuracy") for r in _of(study, "primal_dual(orpo)"))
    orpo_acc = _mean(r.final("eval/pref_accuracy") for r in _of(study, "orpo"))
    assert kl_acc < acc < orpo_acc - ACC_GAP, (kl_acc, acc, orpo_acc)


def _met(ok: bool) -> str:
    return "(met)" if ok else "(missed)"


def _span(xs: list[float]) -> str:
    lo, hi = f"{min(xs):.2f}", f"{max(xs):.2f}"
    return lo if lo == hi else f"{lo}–{hi}"


def reduction(runs: dict, method: str, base_method: str, bound: str) -> float:
    """1 − (mean final held-out violation of ``bound`` under ``method``) / (that under
    ``base_method``): the share of the baseline's drift past ε that the constraint removed."""
    step = int(next(iter(runs.values())).config["train"]["steps"])
    ours = _mean(_violation_at(r, step, bound) for r in _of(runs, method))
    theirs = _mean(_violation_at(r, step, bound) for r in _of(runs, base_method))
    return 1.0 - ours / theirs


def rise_removed(runs: dict, method: str, base_method: str, bound: str) -> float | None:
    """1 − (mean rise of held-out ``bound`` from the base, step 0, to the end under ``method``)
    / (that under ``base_method``): drift measured from where training started, not from ε.
    None where the base was not evaluated."""
    step = int(next(iter(runs.values())).config["train"]["steps"])

    def rise(m):
        return _mean(_value_at(r, step, bound) - _value_at(r, 0, bound) for r in _of(runs, m)
                     if _value_at(r, 0, bound) is not None)

    ours, theirs = rise(method), rise(base_method)
    return None if ours is None or theirs is None else 1.0 - ours / theirs


def check_drift_claims(results: Path) -> None:
    """Raise AssertionError when the scenario's numbers contradict what Section 5 says."""
    runs = finished_runs(results / TOXICITY.results)
    tox = TOXICITY.bound
    step = int(next(iter(runs.values())).config["train"]["steps"])
    for m in ("dpo", "orpo"):  # "every baseline seed ends past both bounds"
        for r in _of(runs, m):
            for c in TOXICITY.bounds:
                assert not _cert(r, c)[2], f"{m} seed {r.seed} passes {c}"
                assert _violation_at(r, step, c) > 0, f"{m} seed {r.seed}: no {c} violation"
    halfway = [s for s in eval_steps(runs.values(), tox) if 0 < s < step]
    assert halfway, "the text reads a halfway checkpoint"
    for s in halfway:  # "every baseline seed is past ε halfway; primal-dual near the base"
        for m in ("dpo", "orpo"):
            assert all(_violation_at(r, s, tox) > 0 for r in _of(runs, m)), (m, s)
        for m, _ in PAIRS:
            base = _mean(_value_at(r, 0, tox) for r in _of(runs, m))
            assert all(_value_at(r, s, tox) - base < 0.05 for r in _of(runs, m)), (m, s)
    for m, base_m in PAIRS:  # "primal-dual passes both in at least two thirds of its seeds"
        if not _of(runs, m):
            continue
        for c in TOXICITY.bounds:
            k, n = _passes(runs, m, c)
            assert k >= TARGET_SHARE * n, f"{m} misses the {c} target ({k} of {n})"
        assert reduction(runs, m, base_m, tox) > 0.15, f"{m}: reduction not above the seeds' 15%"
        acc = _mean(r.final("eval/pref_accuracy") for r in _of(runs, m))
        base_acc = _mean(r.final("eval/pref_accuracy") for r in _of(runs, base_m))
        # "at DPO's accuracy; on ORPO the bounds cost most of it"
        costly = base_m == "orpo"
        assert (base_acc - acc > ACC_GAP) == costly, f"{m}: accuracy gap {base_acc - acc:.3f}"
    eps = next(iter(runs.values())).final(eval_key("toxicity", "id", "eps"))
    base = [_value_at(r, 0, tox) for r in runs.values() if _value_at(r, 0, tox) is not None]
    assert base and max(base) < eps, "the text says the base starts under ε"
    for r in _of(runs, "primal_dual(orpo)"):  # "λ_KL reaches [a large share of its cap]"
        assert r.series("lambda_next/kl_budget")[1].max() >= 0.5 * r.lambda_max("kl_budget"), \
            (r.seed, "λ_KL stayed low")
    for r in _of(runs, "primal_dual(dpo)"):  # "λ_toxicity stays small; λ_KL does the holding"
        lam_t = r.series("lambda_next/toxicity")[1].max()
        lam_k = r.series("lambda_next/kl_budget")[1].max()
        assert lam_t < 1.0 < lam_k, (r.seed, lam_t, lam_k)
