"""The report's plots: λ_i, ĝ_i against ε_i, and the held-out violation against step, one panel per
constraint, a band over seeds per method (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from hydra.utils import get_class
from matplotlib.figure import Figure

from pdalign.reporting.runs import Run
from pdalign.reporting.stats import fmt, heldout_violation
from pdalign.runfiles.atomic import atomic_open


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
            ax.axhline(cap, color="grey", ls=":", lw=1, label=f"λ_max = {fmt(cap)}")
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
            ax.axhline(eps, color="black", ls="--", lw=1, label=f"ε = {fmt(eps)}")
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
