"""``pdalign-report``: a Hydra multirun directory → one table (md + csv) and three plots.

Each run of a sweep is a directory holding ``metrics.jsonl`` (found under the sweep dir,
usually one level down), next to ``config.yaml`` (the resolved config), ``summary.json``
(written only when the run finished) and optionally ``manifest.json`` (data hashes). Runs are
grouped by method label (``dpo``, ``orpo``, ``primal_dual(dpo)``, ...) and aggregated over seeds.

What the report reads, and nothing else (keys as the trainer and evaluator log them):

- training records: ``step``, ``lambda/<c>``, ``lambda_next/<c>``, ``g/<c>``, ``eps/<c>``,
  and for rollout constraints, where logged,
  ``signal/<c>/{spread,at_budget,flat_rollouts,silent_when_flat}``
  (`pdalign.rollout.signal_key`; runs without them report as before);
- evaluation records: ``eval/pref_accuracy`` and ``eval/<c>/<s>/{value,eps,pass,violation}``;
- ``summary.json``: ``wall_time_s``; ``manifest.json``: ``data_hashes``;
- ``config.yaml``: ``method.name``, ``method.objective``, ``seed``, ``dual.lambda_max``,
  ``constraints.<c>.lambda_max``, ``train.rollout.no_signal_after``.

Units: steps are optimizer steps (the ``step`` of a record, 1-based); λ is dimensionless; ĝ, ε
and the held-out value share the constraint's own unit (a rate, nats per token, tokens); the
violation area is in violation·steps.

Public API, for the paper build: `collect_runs`, `summarize`, `paired_comparison`,
`render_markdown`, `write_report`, and `lambda_health` / `signal_health` / `violation_drift`
for single trajectories.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from pdalign.atomic import atomic_open, write_text
from pdalign.certificate import eval_key, parse_eval_key, set_order, violation_drift
from pdalign.logging import read_metrics

# Runs sit one level under a Hydra sweep dir, two under its parent, but the sweep subdir is
# ${hydra.job.override_dirname}: an override holding a path (data.train=/a/b.jsonl) nests the
# run as deep as that path. Search deep; a run dir is never descended into.
MAX_DEPTH = 8
PIN_FRAC = 0.99  # λ ≥ 0.99·λ_max counts as "at the cap" (λ is clipped, so exact equality is
#                  typical, but a PID controller can hover just below it)
# Config keys that may differ between seeds of one method without making them different
# experiments: bookkeeping, and settings that change speed or memory but not the math
# (activation checkpointing recomputes the same values). Any other difference splits a label,
# e.g. "primal_dual(dpo) [dual.lr=0.1]".
NON_DEFINING_KEYS = ("seed", "logging.", "hydra.", "train.resume", "train.threads",
                     "train.ref_cache_dir", "train.activation_checkpointing",
                     "train.share_prompt")
_NO_RUNS = "no runs found under {root}: expected subdirectories with metrics.jsonl (a Hydra " \
           "multirun dir)"


class NoRunsError(ValueError):
    """The directory holds no run (no ``metrics.jsonl`` below it)."""


# ---- reading runs ------------------------------------------------------------------------


@dataclass
class Run:
    """One run of a sweep, as read from its directory.

    Args:
        path: the run directory.
        name: its path relative to the sweep dir (``"."`` when the sweep dir is the run).
        config: the resolved config as a plain dict ({} when unreadable).
        records: every decodable line of ``metrics.jsonl``, in file order.
        summary: ``summary.json``, or None when the run did not finish.
        manifest: ``manifest.json``, or None when absent.
        label: the method label the run is reported under (set by `collect_runs`).
    """

    path: Path
    name: str
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    manifest: dict[str, Any] | None
    label: str = ""

    @property
    def complete(self) -> bool:
        return self.summary is not None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.records if isinstance(r.get("step"), (int, float))]
        return int(max(steps)) if steps else None

    @property
    def data_hashes(self) -> frozenset | None:
        # Keyed by file name, not path: the same files in another checkout (a sweep resumed
        # from a different clone, results copied between machines) are the same data.
        hashes = (self.manifest or {}).get("data_hashes")
        if not isinstance(hashes, dict) or not hashes:
            return None
        return frozenset((Path(path).name, digest) for path, digest in hashes.items())

    @cached_property
    def key_set(self) -> frozenset[str]:
        """Every metric key logged by this run."""
        return frozenset(k for r in self.records for k in r)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric, sorted by step, float64 ``(T,)`` each.

        A step logged twice (a resumed run re-logs the steps after its checkpoint) keeps the
        later line, which is the one the finished run's state descends from.
        """
        by_step: dict[int, float] = {}
        for r in self.records:
            value, step = r.get(key), r.get("step")
            if isinstance(value, (int, float)) and isinstance(step, (int, float)):
                by_step[int(step)] = float(value)
        steps = np.array(sorted(by_step), dtype=np.float64)
        return steps, np.array([by_step[int(s)] for s in steps], dtype=np.float64)

    def final(self, key: str) -> float | None:
        """The value of ``key`` at its last logged step, or None if never logged."""
        _, values = self.series(key)
        return float(values[-1]) if values.size else None

    def lambda_max(self, constraint: str) -> float | None:
        """λ cap of one constraint: its own ``lambda_max`` if set, else ``dual.lambda_max``."""
        own = ((self.config.get("constraints") or {}).get(constraint) or {}).get("lambda_max")
        cap = own if own is not None else (self.config.get("dual") or {}).get("lambda_max")
        return float(cap) if cap is not None else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent, or torn by a crash: treated alike
    return value if isinstance(value, dict) else None


def _read_config(run_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    # config.yaml is the resolved copy train.py writes; Hydra's own .hydra/config.yaml is the
    # fallback for runs started some other way (it may hold ${now:...}, hence resolve=False).
    for path, resolve in ((run_dir / "config.yaml", True), (run_dir / ".hydra" / "config.yaml",
                                                              False)):
        if path.is_file():
            try:
                return OmegaConf.to_container(OmegaConf.load(path), resolve=resolve)
            except Exception:  # a half-written or hand-edited YAML must not sink the report
                continue
    return {}


def method_label(config: dict[str, Any]) -> str:
    """``method.name``, with the base objective for the primal-dual wrapper.

    Args:
        config: a run's resolved config as a dict.
    """
    method = config.get("method") or {}
    name = method.get("name") or "unknown"
    if name == "primal_dual":
        return f"primal_dual({method.get('objective') or '?'})"
    return str(name)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys → scalar values (lists as JSON text); a ``constraints`` pseudo-leaf
    names the constraints the run has."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = json.dumps(value) if isinstance(value, (list, dict)) else value
    if not prefix:
        flat["constraints"] = ",".join(sorted(config.get("constraints") or {})) or "none"
    return flat


def _split_labels(runs: list[Run]) -> None:
    """Give runs of one label that differ beyond the seed distinct labels, in place."""
    by_label: dict[str, list[Run]] = {}
    for run in runs:
        by_label.setdefault(run.label, []).append(run)
    for label, group in by_label.items():
        flats = [_flatten(r.config) for r in group]
        keys = sorted({k for f in flats for k in f})
        common = set.intersection(*(set(r.config.get("constraints") or {}) for r in group))

        def defining(key: str) -> bool:
            if key.startswith(NON_DEFINING_KEYS):
                return False
            # Settings of a constraint some runs lack are covered by the `constraints` leaf.
            parts = key.split(".")
            return not (parts[0] == "constraints" and len(parts) > 2 and parts[1] not in common)

        missing = object()
        differing = [k for k in keys
                     if defining(k) and len({repr(f.get(k, missing)) for f in flats}) > 1]
        for run, flat in zip(group, flats):
            if differing:
                shown = ", ".join(f"{k}={flat.get(k, '-')}" for k in differing)
                run.label = f"{label} [{shown}]"


def collect_runs(root: str | Path, max_depth: int = MAX_DEPTH) -> list[Run]:
    """Every run under a Hydra multirun dir, sorted by path, with its method label.

    Runs are the directories at depth ≤ ``max_depth`` (the root itself included) holding
    ``metrics.jsonl``; hidden dirs, ``wandb/`` and a run's subdirs are not searched.
    Undecodable lines (a crash tears the last one) are skipped.

    Args:
        root: the multirun directory (Hydra's ``hydra.sweep.dir``) or its parent.
        max_depth: how many directory levels below ``root`` to search. Default 8.

    Raises:
        NoRunsError: no run was found.
    """
    root = Path(root)
    found: list[Path] = []
    frontier = [root] if root.is_dir() else []
    for _ in range(max_depth + 1):
        runs_here = [d for d in frontier if (d / "metrics.jsonl").is_file()]
        found += runs_here
        frontier = [c for d in frontier if d not in runs_here for c in sorted(d.iterdir())
                    if c.is_dir() and not c.name.startswith(".") and c.name != "wandb"]
    if not found:
        raise NoRunsError(_NO_RUNS.format(root=root))
    runs = []
    for d in sorted(found):
        config = _read_config(d)
        records = [r for r in read_metrics(d / "metrics.jsonl") if isinstance(r, dict)]
        runs.append(Run(path=d, name=str(d.relative_to(root)), config=config, records=records,
                        summary=_read_json(d / "summary.json"),
                        manifest=_read_json(d / "manifest.json"), label=method_label(config)))
    _split_labels(runs)
    return runs


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
    (``train.rollout.no_signal_after``, default `pdalign.rollout.NO_SIGNAL_AFTER`), or the
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
    from pdalign.rollout import NO_SIGNAL_AFTER, no_spread, signal_key

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


def eval_pairs(runs: Iterable[Run]) -> list[tuple[str, str]]:
    """(constraint, prompt set) pairs with held-out values, constraints sorted, id first."""
    return set_order(parsed[:2] for r in runs for k in r.key_set
                     if (parsed := parse_eval_key(k)) is not None and parsed[2] == "value")


def train_constraints(runs: Iterable[Run]) -> list[str]:
    """Constraints with a multiplier (``lambda/<c>``) in any run, sorted."""
    return sorted({k.split("/", 1)[1] for r in runs for k in r.key_set if k.startswith("lambda/")})


def data_letters(runs: Iterable[Run]) -> dict[frozenset, str]:
    """A letter per distinct set of data hashes, in order of first appearance."""
    letters: dict[frozenset, str] = {}
    for run in runs:
        if run.data_hashes is not None and run.data_hashes not in letters:
            letters[run.data_hashes] = chr(ord("A") + len(letters) % 26) + (
                str(len(letters) // 26) if len(letters) >= 26 else "")
    return letters


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
    wall_time_s_mean/_std``; per (c, s): ``c/s/value_mean/_std, c/s/upper_mean/_std, c/s/eps,
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
    from pdalign.rollout import signal_key

    checked = [(r, h) for r in runs if (h := signal_health(r, c, window_frac)) is not None]
    if not checked:
        return
    flagged = [cost for _, (flag, cost) in checked if flag == "no signal"]
    row[f"{c}/signal_none"], row[f"{c}/signal_n"] = len(flagged), len(checked)
    row[f"{c}/signal"] = "no signal" if flagged else "ok"
    row[f"{c}/signal_cost"] = ";".join(sorted({_fmt(v) for v in flagged})) or None
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
    from scipy.stats import t

    mean, sd = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
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


# ---- rendering ---------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.1e}"


def _pm(row: dict[str, Any], key: str) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    return _fmt(mean) if std is None or mean is None else f"{_fmt(mean)} ± {_fmt(std)}"


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
    md = ["# pdalign sweep report", ""]
    header = ["method", "seeds", "pref. acc."]
    header += [h for c, s in pairs for h in (f"{c}/{s} held-out (ε)", f"{c}/{s} pass")]
    header += ["wall time (s)", "λ health", "data"]
    lines = []
    for row in rows:
        n = f"{row['n_seeds']}" + (f" (+{row['n_incomplete']} incomplete)"
                                   if row["n_incomplete"] else "")
        cells = [row["method"], n, _pm(row, "pref_accuracy")]
        for c, s in pairs:
            if not row[f"{c}/{s}/pass_n"]:
                cells += ["–", "–"]
                continue
            cells.append(f"{_pm(row, f'{c}/{s}/value')} (ε {_fmt(row[f'{c}/{s}/eps'])})")
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
        md += [f"- {p['method']} trains in {_fmt(p['ratio_mean'])}× the wall time of "
               f"{p['baseline']} (mean of per-seed ratios, {p['n']} seeds; median "
               f"{_fmt(p['ratio_median'])}×)."
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
                cells.append(f"{_pm(row, f'{c}/lambda_final')} ({_fmt(cap)})")
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
    md += ["## Legend", "", LEGEND.format(window=window_frac) + (SIGNAL_LEGEND if signalled
                                                                 else "")]
    return "\n".join(md)


def _paired_cells(p: dict[str, Any]) -> list[str]:
    ci = "" if p["diff_lo"] is None else f" [{_fmt(p['diff_lo'])}, {_fmt(p['diff_hi'])}]"
    cells = [p["method"], p["baseline"], p["metric"], str(p["n"]), _fmt(p["baseline_mean"]),
             _fmt(p["method_mean"]), f"{_fmt(p['diff_mean'])}{ci}"]
    if "violation_mean" not in p:
        return cells + ["", ""]
    red = p["violation_reduction"]
    return cells + [f"{_fmt(p['baseline_violation_mean'])} → {_fmt(p['violation_mean'])}",
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


# ---- plots -------------------------------------------------------------------------------


def _band(runs: Sequence[Run], series: Callable[[Run], tuple[np.ndarray, np.ndarray]]):
    """Mean, min and max over runs at each step any run logged, ``(T,)`` each."""
    by_step: dict[float, list[float]] = {}
    for run in runs:
        for step, value in zip(*series(run)):
            by_step.setdefault(float(step), []).append(float(value))
    steps = np.array(sorted(by_step))
    vals = [by_step[s] for s in steps]
    return (steps, np.array([np.mean(v) for v in vals]), np.array([min(v) for v in vals]),
            np.array([max(v) for v in vals]))


def _grid(n: int, title: str):
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    # One panel still gets room for the two-line title.
    fig = Figure(figsize=(max(4.8 * cols, 6.4), 3.6 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def constraint_unit(runs: Iterable[Run], constraint: str) -> str:
    """The unit of a constraint's g and epsilon, from its class (``epsilon_unit``), found by the
    ``_target_`` the runs' configs name; a generic label when no run names an importable one."""
    from hydra.utils import get_class

    for r in runs:
        target = ((r.config.get("constraints") or {}).get(constraint) or {}).get("_target_")
        if not target:
            continue
        try:
            unit = getattr(get_class(target), "epsilon_unit", "")
        except Exception:  # a plugin not importable here: the label is all that is lost
            continue
        if unit:
            return unit
    return "constraint units"


def _draw(ax, runs_by_label: dict[str, list[Run]], colors: dict[str, Any], series,
          marker: str | None = None) -> None:
    for label, group in runs_by_label.items():
        steps, mean, lo, hi = _band(group, series)
        if not steps.size:
            continue
        ax.plot(steps, mean, color=colors[label], marker=marker, ms=4,
                label=f"{label} (n={len(group)})")
        if len(group) > 1:
            ax.fill_between(steps, lo, hi, color=colors[label], alpha=0.2, lw=0)


def _save_png(fig, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)


def plot_lambda(runs_by_label, colors, constraints: list[str], path: Path) -> None:
    """λ_c vs step per method, one panel per constraint; mean over seeds, min–max band."""
    fig, axes = _grid(len(constraints),
                      "Lagrange multipliers λ\n(mean over seeds, band = min–max)")
    for ax, c in zip(axes, constraints):
        groups = {k: [r for r in g if f"lambda/{c}" in r.key_set] for k, g in runs_by_label.items()}
        groups = {k: g for k, g in groups.items() if g}
        _draw(ax, groups, colors, lambda r, c=c: r.series(f"lambda/{c}"))
        caps = {r.lambda_max(c) for g in groups.values() for r in g} - {None}
        for cap in sorted(caps):
            ax.axhline(cap, color="grey", ls=":", lw=1, label=f"λ_max = {_fmt(cap)}")
        ax.set(title=c, xlabel="step (optimizer steps)", ylabel="λ (dimensionless)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save_png(fig, path)


def plot_g_vs_eps(runs_by_label, colors, constraints: list[str], path: Path) -> None:
    """Training estimate ĝ_c vs step with the bound ε_c, one panel per constraint."""
    fig, axes = _grid(len(constraints), "Training constraint estimate ĝ vs bound ε\n"
                      "(mean over seeds, band = min–max)")
    for ax, c in zip(axes, constraints):
        groups = {k: [r for r in g if f"g/{c}" in r.key_set] for k, g in runs_by_label.items()}
        groups = {k: g for k, g in groups.items() if g}
        _draw(ax, groups, colors, lambda r, c=c: r.series(f"g/{c}"))
        epsilons = {r.final(f"eps/{c}") for g in groups.values() for r in g} - {None}
        for eps in sorted(epsilons):
            ax.axhline(eps, color="black", ls="--", lw=1, label=f"ε = {_fmt(eps)}")
        unit = constraint_unit((r for g in groups.values() for r in g), c)
        ax.set(title=c, xlabel="step (optimizer steps)", ylabel=f"ĝ ({unit})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save_png(fig, path)


def plot_heldout_violation(runs_by_label, colors, pairs: list[tuple[str, str]],
                           path: Path) -> None:
    """Held-out (value − ε)⁺ vs step, methods overlaid, one panel per constraint × set."""
    fig, axes = _grid(len(pairs), "Held-out violation (value − ε)⁺\n(mean over seeds, "
                      "band = min–max)")
    for ax, (c, s) in zip(axes, pairs):
        groups = {k: [r for r in g if heldout_violation(r, c, s)[0].size]
                  for k, g in runs_by_label.items()}
        groups = {k: g for k, g in groups.items() if g}
        _draw(ax, groups, colors, lambda r, c=c, s=s: heldout_violation(r, c, s), marker="o")
        ax.axhline(0.0, color="black", lw=0.8)
        # A positive part is never below 0: keep only a sliver of axis under it.
        ax.set_ylim(bottom=-0.05 * max(ax.get_ylim()[1], 1e-9))
        unit = constraint_unit((r for g in groups.values() for r in g), c)
        ax.set(title=f"{c} / {s}", xlabel="step (optimizer steps)",
               ylabel=f"(value − ε)⁺ ({unit})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save_png(fig, path)


# ---- writing -----------------------------------------------------------------------------


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


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``pdalign-report MULTIRUN_DIR [--out DIR] [--window-frac 0.2] [--include-incomplete]``.

    A ``pdalign-iterate`` run dir gets its round table instead (`pdalign.iterative`).

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
    from pdalign.iterative import is_iterative_run, write_round_table

    if is_iterative_run(args.multirun_dir):  # a pdalign-iterate run: its table by round
        path = write_round_table(args.multirun_dir, args.out)
        print(path.read_text(encoding="utf-8"))
        print(f"wrote md: {path}\nwrote csv: {path.with_suffix('.csv')}")
        return 0
    try:
        paths = write_report(args.multirun_dir, args.out, args.window_frac,
                             args.include_incomplete)
    except NoRunsError as err:
        print(f"pdalign-report: error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text(encoding="utf-8"))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
