"""Per-run health (λ at its cap or rising, rollout signal, held-out violation) and the
aggregation of a sweep's runs over seeds: one row per method, and the paired comparison of
``primal_dual(X)`` against ``X`` seed by seed."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats as scipy_stats

from pdalign.contract.manager import NO_SIGNAL_AFTER, no_spread
from pdalign.evaluation.certificate import violation_drift
from pdalign.evaluation.ifeval import ACCURACIES, N_PROMPTS
from pdalign.reporting.runs import Run, data_letters
from pdalign.runfiles.metrics import eval_key, parse_eval_key, set_order, signal_key

PIN_FRAC = 0.99  # λ ≥ 0.99·λ_max counts as "at the cap" (λ is clipped, so exact equality is


# ---- per-run quantities ------------------------------------------------------------------


def lambda_health(steps: np.ndarray, lam: np.ndarray, lambda_max: float | None,
                  window_frac: float = 0.2) -> str:
    """"pinned", "rising" or "ok" for one multiplier trajectory.

    The window is the last ``window_frac`` of the run's steps (steps > (1 − frac)·T, T the
    last logged step), and at least the last two points. "pinned": every λ in it is
    ≥ 0.99·λ_max (λ_max > 0). "rising": λ went up at every logged step of the window except
    where it already sat at the cap (so a ramp that reaches λ_max late counts). Either means
    the constraint is not met at the policy's capacity; this mirrors `DualState.stalled`.

    Args:
        steps: logged steps, ``(T,)`` ascending.
        lam: λ at those steps, ``(T,)``.
        lambda_max: the cap; None when unknown (then only "rising" can be detected).
        window_frac: share of the run's steps the window covers, in (0, 1]. Default 0.2.
    """
    if lam.size == 0:
        return "ok"
    window = lam[_window_start(steps, window_frac):]
    at_cap = (window >= PIN_FRAC * lambda_max) if lambda_max else np.zeros(window.size, bool)
    if at_cap.all():
        return "pinned"
    if window.size >= 2:
        up = window[1:] > window[:-1]
        if ((up | (at_cap[1:] & at_cap[:-1])).all()) and up.any():
            return "rising"
    return "ok"


def _window_start(steps: np.ndarray, window_frac: float) -> int:
    """Index where the last ``window_frac`` of the run's steps starts (at least two points)."""
    in_window = steps > (1.0 - window_frac) * steps[-1]
    return max(min(int(np.argmax(in_window)) if in_window.any() else steps.size,
                   steps.size - 2), 0)


def signal_health(run: Run, constraint: str, window_frac: float = 0.2
                  ) -> tuple[str, float | None] | None:
    """("no signal" or "ok", the cost every sample had) for one rollout constraint of a run;
    None when the run logged no ``signal/<c>/*`` records for it (older runs, other kinds).

    "no signal": at the run's last logged step ``signal/<c>/flat_rollouts`` (consecutive fresh
    rollouts whose samples all cost the same) has reached the manager's warning threshold
    (``train.rollout.no_signal_after``, default `pdalign.contract.manager.NO_SIGNAL_AFTER`), or the
    logged spread is nil at every step of the λ-health window. The score-function surrogate
    then has zero gradient whatever λ is. The cost is ĝ at the last step, which equals every
    sample's cost when they are all the same (None when the run is "ok").

    A constraint whose surrogate keeps its gradient when the costs are flat (it said so in
    training: ``signal/<c>/silent_when_flat`` logged 0, as Length's stop estimator does) is
    "ok" whatever the spread; runs that never logged the flag are read as silent.

    Args:
        run: one run.
        constraint: its name.
        window_frac: the λ-health window (see `lambda_health`). Default 0.2.
    """

    steps, flat = run.series(signal_key(constraint, "flat_rollouts"))
    if not flat.size:
        return None
    if run.final(signal_key(constraint, "silent_when_flat")) == 0.0:
        return "ok", None
    rollout_cfg = (run.config.get("train") or {}).get("rollout") or {}
    threshold = int(rollout_cfg.get("no_signal_after") or NO_SIGNAL_AFTER)
    cost = run.final(f"g/{constraint}")
    spread_steps, spread = run.series(signal_key(constraint, "spread"))
    window = spread[_window_start(spread_steps, window_frac):] if spread.size else spread
    silent = bool(window.size) and all(no_spread(float(x), abs(cost or 0.0)) for x in window)
    if flat[-1] >= threshold or silent:
        return "no signal", cost
    return "ok", None


def heldout_violation(run: Run, constraint: str, prompt_set: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, (value − ε)⁺) of one held-out constraint; the logged ``violation`` when the
    value or ε is missing from the records."""
    steps, value = run.series(eval_key(constraint, prompt_set, "value"))
    eps_steps, eps = run.series(eval_key(constraint, prompt_set, "eps"))
    if value.size and np.array_equal(steps, eps_steps):
        return steps, np.maximum(value - eps, 0.0)
    steps, violation = run.series(eval_key(constraint, prompt_set, "violation"))
    return steps, np.maximum(violation, 0.0)


def plateau_step(steps: Sequence[float], rates: Sequence[float], n: int) -> int:
    """The first evaluated step of a held-out rate after which it never falls by more than one
    standard error of a rate at that step on ``n`` prompts.

    The standard error is sqrt(p(1 − p)/n), floored at 1/n so that a rate at 0 or 1 still has a
    resolution of one prompt. From that step on, further training lowers the rate by no more
    than resampling noise would: where a violation-against-step curve levels off.

    Args:
        steps: evaluated steps, ascending, ``(T,)``.
        rates: the rate (in [0, 1]) at each, ``(T,)``.
        n: prompts per evaluation (≥ 1).

    Returns:
        That step; the last step when the rate is still falling there.
    """
    steps, rates = np.asarray(steps, dtype=float), np.asarray(rates, dtype=float)
    if steps.shape != rates.shape or steps.ndim != 1 or not steps.size:
        raise ValueError(f"plateau_step: steps {steps.shape} and rates {rates.shape} must be "
                         f"equal-length, non-empty 1-D sequences")
    if n < 1:
        raise ValueError(f"plateau_step: n = {n} prompts; it must be >= 1")
    for i, p in enumerate(rates[:-1]):
        se = max(math.sqrt(p * (1 - p) / n), 1 / n)
        if np.all(rates[i + 1:] >= p - se):
            return int(steps[i])
    return int(steps[-1])


def eval_pairs(runs: Iterable[Run]) -> list[tuple[str, str]]:
    """(constraint, prompt set) pairs with held-out values, constraints sorted, id first."""
    return set_order(parsed[:2] for r in runs for k in r.key_set
                     if (parsed := parse_eval_key(k)) is not None and parsed[2] == "value")


def ifeval_keys(runs: Iterable[Run]) -> list[str]:
    """The IFEval accuracy keys (`pdalign.evaluation.ifeval.ACCURACIES`) any run logged, in
    table order."""
    runs = list(runs)
    return [k for k in ACCURACIES if any(k in r.key_set for r in runs)]


def train_constraints(runs: Iterable[Run]) -> list[str]:
    """Constraints with a multiplier (``lambda/<c>``) in any run, sorted."""
    return sorted({k.split("/", 1)[1] for r in runs for k in r.key_set if k.startswith("lambda/")})


# ---- aggregation -------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1; None for one value) of the non-missing values."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None, None
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None)


def _put(row: dict[str, Any], key: str, values: Sequence[float | None]) -> None:
    row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)


def summarize(runs: Sequence[Run], window_frac: float = 0.2,
              include_incomplete: bool = False) -> list[dict[str, Any]]:
    """One row per method label: means/stds over seeds, pass counts, drift, λ health.

    Columns (constraint c, prompt set s; ``_mean``/``_std`` pairs are over seeds):
    ``method, n_seeds, n_incomplete, seeds, data, pref_accuracy_mean/_std,
    wall_time_s_mean/_std``; when any run logged IFEval, ``ifeval/<accuracy>_mean/_std`` for
    its four accuracies and ``ifeval/n_prompts`` (the subset sizes, ";"-joined); per (c, s): ``c/s/value_mean/_std, c/s/upper_mean/_std, c/s/eps,
    c/s/pass_k, c/s/pass_n, c/s/violation_final_mean/_std, c/s/violation_max_mean/_std,
    c/s/violation_area_mean/_std``; per constrained c: ``c/lambda_final_mean/_std,
    c/lambda_max, c/health_pinned, c/health_rising, c/health_ok, c/health`` (worst flag); per
    constrained c whose runs logged rollout signal (`signal_health`): ``c/signal_none`` (runs
    with no signal), ``c/signal_n`` (runs checked), ``c/signal`` ("no signal" if any, else
    "ok"), ``c/signal_cost`` (the flagged runs' cost per sample, distinct values joined by
    ";"), ``c/at_budget_final_mean/_std`` and ``c/at_budget_run_mean/_std`` (share of samples
    at the generation budget: at the last step, and averaged over the run's steps).

    Args:
        runs: from `collect_runs`.
        window_frac: share of the last steps the λ-health window covers. Default 0.2.
        include_incomplete: aggregate runs without ``summary.json`` too. Default False: a
            crashed run's "final" eval is not the end of training, so it would bias the means.
    """
    pairs, constrained = eval_pairs(runs), train_constraints(runs)
    letters = data_letters(runs)
    ifeval = ifeval_keys(runs)
    rows = []
    for label in sorted({r.label for r in runs}):
        group = [r for r in runs if r.label == label]
        used = [r for r in group if r.complete or include_incomplete]
        data = {letters[r.data_hashes] if r.data_hashes else "-" for r in used}
        row: dict[str, Any] = {
            "method": label, "n_seeds": len(used),
            "n_incomplete": sum(not r.complete for r in group),
            "seeds": ";".join(str(r.seed) for r in used), "data": ";".join(sorted(data)),
        }
        _put(row, "pref_accuracy", [r.final("eval/pref_accuracy") for r in used])
        for key in ifeval:
            _put(row, key.removeprefix("eval/"), [r.final(key) for r in used])
        if ifeval:
            sizes = {r.final(N_PROMPTS) for r in used} - {None}
            row["ifeval/n_prompts"] = ";".join(f"{n:g}" for n in sorted(sizes))
        _put(row, "wall_time_s", [(r.summary or {}).get("wall_time_s") for r in used])
        for c, s in pairs:
            def final(field: str, r) -> float | None:
                return r.final(eval_key(c, s, field))

            has = [r for r in used if final("value", r) is not None]
            _put(row, f"{c}/{s}/value", [final("value", r) for r in has])
            _put(row, f"{c}/{s}/upper", [final("upper", r) for r in has])
            row[f"{c}/{s}/eps"] = _mean_std([final("eps", r) for r in has])[0]
            passes = [final("pass", r) for r in has]
            row[f"{c}/{s}/pass_k"] = sum(1 for p in passes if p is not None and p >= 0.5)
            row[f"{c}/{s}/pass_n"] = len(has)
            drifts = [violation_drift(*heldout_violation(r, c, s)) for r in has]
            for stat in ("final", "max", "area"):
                _put(row, f"{c}/{s}/violation_{stat}", [d[stat] for d in drifts])
        for c in constrained:
            has = [r for r in used if r.series(f"lambda/{c}")[1].size]
            finals = [r.final(f"lambda_next/{c}") if r.final(f"lambda_next/{c}") is not None
                      else r.final(f"lambda/{c}") for r in has]
            _put(row, f"{c}/lambda_final", finals)
            caps = {r.lambda_max(c) for r in has}
            row[f"{c}/lambda_max"] = caps.pop() if len(caps) == 1 else None
            flags = [lambda_health(*r.series(f"lambda/{c}"), r.lambda_max(c), window_frac)
                     for r in has]
            for flag in ("pinned", "rising", "ok"):
                row[f"{c}/health_{flag}"] = flags.count(flag) if has else None
            worst = next((f for f in ("pinned", "rising", "ok") if f in flags), None)
            row[f"{c}/health"] = worst
            _put_signal(row, c, has, window_frac)
        rows.append(row)
    return rows


def _put_signal(row: dict[str, Any], c: str, runs: Sequence[Run], window_frac: float) -> None:
    """The signal columns of `summarize` for constraint c; none when no run logged signal."""

    checked = [(r, h) for r in runs if (h := signal_health(r, c, window_frac)) is not None]
    if not checked:
        return
    flagged = [cost for _, (flag, cost) in checked if flag == "no signal"]
    row[f"{c}/signal_none"], row[f"{c}/signal_n"] = len(flagged), len(checked)
    row[f"{c}/signal"] = "no signal" if flagged else "ok"
    row[f"{c}/signal_cost"] = ";".join(sorted({fmt(v) for v in flagged})) or None
    key = signal_key(c, "at_budget")
    _put(row, f"{c}/at_budget_final", [r.final(key) for r, _ in checked])
    _put(row, f"{c}/at_budget_run", [float(np.mean(v)) if (v := r.series(key)[1]).size
                                     else None for r, _ in checked])


def signal_notes(rows: Sequence[dict[str, Any]], constrained: Sequence[str]) -> list[str]:
    """One note per (method, constraint) with runs of no signal (see `signal_health`)."""
    return [f"{row['method']}, {c}: no signal in {row[f'{c}/signal_none']}/"
            f"{row[f'{c}/signal_n']} seeds: every sample costs "
            f"{' or '.join(row[f'{c}/signal_cost'].split(';'))} — the surrogate has zero "
            f"gradient; use a pair set or widen the generation budget "
            f"(train.rollout.max_new_tokens), or a dense estimator where the constraint has "
            f"one (length: estimator=stop)"
            for row in rows for c in constrained if row.get(f"{c}/signal_none")]


def _t_interval(diffs: Sequence[float], confidence: float) -> tuple[float | None, float | None]:
    """Two-sided Student-t interval on the mean of paired differences; (None, None) for n < 2."""
    n = len(diffs)
    if n < 2:
        return None, None
    mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired_comparison(runs: Sequence[Run], confidence: float = 0.95) -> list[dict[str, Any]]:
    """Each constrained method against the unconstrained run of its base objective, by seed.

    ``primal_dual(dpo)`` is paired with ``dpo``, ``primal_dual(orpo)`` with ``orpo``: same
    seed, both finished. Per metric (held-out preference accuracy, then each held-out
    ``c/s``), at the last eval step:

    - ``baseline_mean`` / ``method_mean``: means over the paired seeds;
    - ``diff_mean``, ``diff_lo``, ``diff_hi``: the mean of (method − baseline) per seed and
      its two-sided Student-t interval at ``confidence`` (None with one pair);
    - for constraints, ``baseline_violation_mean`` / ``violation_mean`` (the mean of
      (value − ε)⁺) and ``violation_reduction`` = 1 − violation_mean / baseline_violation_mean
      (None when the baseline does not violate: there is nothing to reduce).

    A last row per method, metric ``wall_time_s``, holds ``ratio_mean`` and ``ratio_median``:
    the mean and median over seeds of method / baseline training time (the median resists one
    run slowed by other work on the machine).

    Args:
        runs: from `collect_runs`; incomplete runs are ignored.
        confidence: two-sided level of the intervals. Default 0.95.
    """
    by_label: dict[str, dict[Any, Run]] = {}
    for run in runs:
        if run.complete:
            by_label.setdefault(run.label, {})[run.seed] = run
    pairs = eval_pairs([r for r in runs if r.complete])
    rows = []
    for label, group in sorted(by_label.items()):
        method = next(iter(group.values())).config.get("method") or {}
        base_label = method.get("objective")
        baseline = by_label.get(base_label) if method.get("constrained") else None
        if not baseline or label == base_label:
            continue
        seeds = sorted(set(group) & set(baseline), key=str)
        metrics = [("pref_accuracy", None)] + [(f"{c}/{s}", (c, s)) for c, s in pairs]
        for name, pair in metrics:
            key = "eval/pref_accuracy" if pair is None else eval_key(*pair, "value")
            both = [k for k in seeds
                    if group[k].final(key) is not None and baseline[k].final(key) is not None]
            if not both:
                continue
            base_v = [baseline[k].final(key) for k in both]
            meth_v = [group[k].final(key) for k in both]
            diffs = [m - b for m, b in zip(meth_v, base_v)]
            lo, hi = _t_interval(diffs, confidence)
            row: dict[str, Any] = {
                "method": label, "baseline": base_label, "metric": name, "n": len(both),
                "seeds": ";".join(str(k) for k in both), "baseline_mean": float(np.mean(base_v)),
                "method_mean": float(np.mean(meth_v)), "diff_mean": float(np.mean(diffs)),
                "diff_lo": lo, "diff_hi": hi}
            if pair is not None:
                v_base = float(np.mean([heldout_violation(baseline[k], *pair)[1][-1]
                                        for k in both]))
                v_meth = float(np.mean([heldout_violation(group[k], *pair)[1][-1] for k in both]))
                row.update(baseline_violation_mean=v_base, violation_mean=v_meth,
                           violation_reduction=(1.0 - v_meth / v_base) if v_base > 0 else None)
            rows.append(row)
        walls = [(group[k].summary or {}).get("wall_time_s", 0) /
                 (baseline[k].summary or {}).get("wall_time_s", math.nan) for k in seeds]
        walls = [w for w in walls if math.isfinite(w) and w > 0]
        if walls:
            rows.append({"method": label, "baseline": base_label, "metric": "wall_time_s",
                         "n": len(walls), "seeds": ";".join(str(k) for k in seeds),
                         "ratio_mean": float(np.mean(walls)),
                         "ratio_median": float(np.median(walls))})
    return rows


def fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.1e}"
