# Run:  .venv/bin/python experiments/plot_curve.py experiments/results/study_curve
"""Draw a held-out curve study's rates against training steps, one line per seed.

One panel per held-out row (harmful answered and benign refused, in distribution and shifted):
each seed's sampled rate (solid) and its one-sided upper bound (dotted) at every evaluation,
the untrained model at step 0 (``base_eval.json``), ε, and on the shifted harmful row the step
where each seed's rate stops improving (`pdalign.reporting.stats.plateau_step`). Writes
``curve.png`` into the directory; pdalign-report's ``heldout_violation.png`` beside it shows
the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pdalign.reporting.runs import collect_runs
from pdalign.reporting.stats import plateau_step
from pdalign.runfiles.atomic import atomic_open
from pdalign.runfiles.metrics import eval_key

ROWS = (("refusal_openers", "id", "harmful prompts answered, in distribution"),
        ("refusal_openers", "shifted", "harmful prompts answered, shifted"),
        ("over_refusal_openers", "id", "benign prompts refused, in distribution"),
        ("over_refusal_openers", "shifted", "benign prompts refused, shifted"))
PLATEAU_ROW = ("refusal_openers", "shifted")


def draw(curve: Path) -> Path:
    """Draw ``curve/curve.png`` from the runs and ``base_eval.json`` under ``curve``."""
    runs = sorted(collect_runs(curve), key=lambda r: r.seed)
    base = json.loads((curve / "base_eval.json").read_text())["metrics"]
    fig = Figure(figsize=(11, 7.6), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    fig.suptitle("Held-out rates against training steps, per seed\n"
                 "(solid: sampled rate; dotted: one-sided 95% upper bound; step 0: untrained)")
    for ax, (c, s, title) in zip(axes, ROWS):
        eps = None
        for i, r in enumerate(runs):
            steps, value = r.series(eval_key(c, s, "value"))
            _, upper = r.series(eval_key(c, s, "upper"))
            eps = r.final(eval_key(c, s, "eps"))
            x = np.concatenate([[0], steps])
            color = f"C{i}"
            ax.plot(x, np.concatenate([[base[eval_key(c, s, "value")]], value]), "o-",
                    color=color, label=f"seed {r.seed}")
            ax.plot(x, np.concatenate([[base[eval_key(c, s, "upper")]], upper]), ":",
                    color=color)
            if (c, s) == PLATEAU_ROW:
                at = plateau_step(steps, value, int(r.final(eval_key(c, s, "n"))))
                ax.axvline(at, color=color, lw=0.8, ls="--")
        ax.axhline(eps, color="black", lw=1.0, label=f"ε = {eps:g}")
        ax.set(title=title + (" (dashed: stops improving)" if (c, s) == PLATEAU_ROW else ""),
               xlabel="step (optimizer steps)", ylabel="rate", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = curve / "curve.png"
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curve", type=Path, help="e.g. experiments/results/study_curve")
    print(draw(parser.parse_args(argv).curve))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
