# Run:  .venv/bin/python experiments/posthoc_eval.py multirun/drift_toxicity/main --ifeval 40 --steps 24
"""What a finished sweep did not measure, measured after training with ``pdalign-eval --record``:
IFEval on each run's final checkpoint, the held-out evaluation of intermediate checkpoints
(points on the violation-against-step curve), and the base model as step 0.

Per run (a directory with ``metrics.jsonl`` and ``checkpoints/``), in this order, each skipped
when the run's ``posthoc.jsonl`` already holds it (so the script resumes where it stopped):

1. ``--ifeval N``: IFEval alone on the final checkpoint (``--ifeval-only``);
2. ``--base``: the base (the adapter disabled) on the run's sampled constraints and IFEval,
   as step 0. The base is one model for every run whose model, adapter, precision,
   constraints, evaluation settings and held-out data agree, so it is evaluated once per such
   group and its record copied to the others, naming the run it was measured in. Only the
   sampled keys are copied (an objective that needs no reference also scores the base on the
   pairs, which would differ by objective);
3. ``--steps 24 ...``: the run's own held-out evaluation of ``checkpoints/step-N``.

Runs whose checkpoints are gone are skipped with a message. Nothing is written but
``posthoc.jsonl`` and the ``eval-*.json`` files ``pdalign-eval`` leaves in each run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from pdalign.cli.common import step_of
from pdalign.cli.eval import main as eval_main
from pdalign.reporting.runs import collect_runs
from pdalign.runfiles.metrics import POSTHOC, append_record, read_metrics
from pdalign.training.checkpoint import checkpoints

# What makes two runs' base models, and their evaluation, the same.
BASE_KEYS = ("model", "peft", "train.dtype", "constraints", "eval", "data.heldout")


def base_group(run: Path) -> str:
    cfg = OmegaConf.load(run / "config.yaml")
    values = {k: OmegaConf.select(cfg, k) for k in BASE_KEYS}
    return json.dumps({k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                       for k, v in values.items()}, sort_keys=True)


def recorded(run: Path) -> list[dict]:
    return read_metrics(run / POSTHOC) if (run / POSTHOC).is_file() else []


def is_ifeval(key: str) -> bool:
    return key.startswith("eval/ifeval/")


def is_heldout(key: str) -> bool:
    """A held-out evaluation key other than IFEval's and the run-level confidence."""
    return key.startswith("eval/") and not is_ifeval(key) and key != "eval/confidence"


def has(run: Path, step: int, wanted) -> bool:
    """Whether ``posthoc.jsonl`` holds a record at ``step`` with a key ``wanted`` accepts."""
    return any(r.get("step") == step and any(map(wanted, r)) for r in recorded(run))


def sampled_keys(record: dict, constraints: set[str]) -> dict:
    """The keys of a base record that do not depend on the run's objective: the constraints'
    (``eval/<c>/<set>/<field>``), IFEval's and the confidence."""
    return {k: v for k, v in record.items() if is_ifeval(k) or k == "eval/confidence"
            or k.startswith("eval/") and k.split("/")[1] in constraints}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the Hydra multirun dir")
    parser.add_argument("--ifeval", type=int, default=0, help="IFEval prompts (0 = none)")
    parser.add_argument("--base", action="store_true", help="also the base model, as step 0")
    parser.add_argument("--steps", type=int, nargs="*", default=[],
                        help="intermediate checkpoints to evaluate (checkpoints/step-N)")
    args = parser.parse_args(argv)
    runs = [r.path for r in collect_runs(args.sweep)]
    quiet = ["--quiet"]
    ifeval = ["--ifeval", str(args.ifeval)] if args.ifeval else []

    for run in runs:
        ckpts = checkpoints(run)
        if not ckpts or not (run / "summary.json").is_file():
            print(f"{run}: not finished or no checkpoints; skipped")
            continue
        final = step_of(ckpts[-1])
        if args.ifeval and not has(run, final, is_ifeval):
            eval_main(["--checkpoint", str(ckpts[-1]), "--ifeval-only", "--record", *ifeval,
                       *quiet])

    if args.base:
        measured: dict[str, Path] = {}
        for run in runs:
            if not (run / "checkpoints").is_dir():
                continue
            group = base_group(run)
            if has(run, 0, is_heldout):
                if not any(str(r.get("posthoc", "")).startswith("copied")
                           for r in recorded(run) if r.get("step") == 0):
                    measured.setdefault(group, run)
                continue
            if group in measured:
                source = measured[group]
                record = next(r for r in recorded(source) if r.get("step") == 0)
                cfg = OmegaConf.load(run / "config.yaml")
                names = set(cfg.constraints)
                append_record(run / POSTHOC, {"step": 0, **sampled_keys(record, names),
                                              "posthoc": f"copied: base (adapter disabled), "
                                              f"measured in {source.name}"})
                print(f"{run}: base record copied from {source.name}")
            else:
                eval_main(["--run-dir", str(run), "--base", "--record", *ifeval, *quiet])
                measured[group] = run

    for run in runs:
        for step in args.steps:
            ckpt = run / "checkpoints" / f"step-{step}"
            if not ckpt.is_dir():
                print(f"{ckpt}: no such checkpoint; skipped")
                continue
            if not has(run, step, is_heldout):
                eval_main(["--checkpoint", str(ckpt), "--record", *quiet])
    return 0


if __name__ == "__main__":
    sys.exit(main())
