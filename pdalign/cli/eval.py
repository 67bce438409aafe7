"""``pdalign-eval``: held-out evaluation and constraint certificate of a saved checkpoint.

The run's own config (its ``config.yaml``) says what to build; `pdalign.training.build` builds it exactly
as training did (constraints, objective, precision, the policy or its adapter, the held-out
data, the reference calibration), and `pdalign.evaluation.heldout.evaluate` measures it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from pdalign.cli.common import (
    UsageError,
    device_of,
    load_run_config,
    locate,
    parse_prompt_overrides,
    restore_calibration,
    step_of,
    usage_error,
    write_json,
)
from pdalign.evaluation.certificate import certificate, render_certificate
from pdalign.evaluation.heldout import eval_kwargs, evaluate
from pdalign.evaluation.ifeval import render_table
from pdalign.training import build

log = logging.getLogger("pdalign")


def main(argv: Sequence[str] | None = None) -> int:
    """``pdalign-eval``: held-out evaluation and constraint certificate of a saved checkpoint.

    Examples:
        pdalign-eval --run-dir outputs/2025-01-01/12-00-00
        pdalign-eval --checkpoint RUN/checkpoints/step-200 --prompts refusal:id=redteam.csv
    """
    parser = argparse.ArgumentParser(
        prog="pdalign-eval", description="Evaluate a pdalign checkpoint on held-out pairs and "
        "prompt sets; print the constraint certificate and write the metrics as JSON.")
    parser.add_argument("--run-dir", help="a pdalign-train run dir (config.yaml, checkpoints/); "
                        "its newest complete checkpoint is evaluated unless --checkpoint is given")
    parser.add_argument("--checkpoint", help="a checkpoints/step-N dir, a peft adapter dir or a "
                        "full save_pretrained model dir")
    parser.add_argument("--config", help="the run's resolved config.yaml (default: RUN/config.yaml"
                        ", or found above --checkpoint)")
    parser.add_argument("--prompts", action="append", default=[], metavar="C:S=PATH",
                        help="prompt file (JSONL 'prompt' field or CSV 'prompt' column) for "
                        "constraint C's set S (id, shifted, ...); repeatable")
    parser.add_argument("--prompts-per-set", type=int, help="default: eval.prompts_per_set")
    parser.add_argument("--max-new-tokens", type=int, help="default: eval.max_new_tokens")
    parser.add_argument("--confidence", type=float, help="default: eval.confidence")
    parser.add_argument("--seed", type=int, help="sampling seed; default: eval.seed")
    parser.add_argument("--device", help="cpu | cuda | cuda:N; default: cuda if available")
    parser.add_argument("--out", help="JSON output; default RUN/eval-step-N.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    try:
        ckpt, config, run_dir = locate(args.run_dir, args.checkpoint, args.config)
        cfg, constraints, objective = load_run_config(config)
        kwargs = eval_kwargs(cfg.get("eval"))
        for c, override in parse_prompt_overrides(args.prompts,
                                                  [c.name for c in constraints]).items():
            kwargs["sets"][c] = {**(kwargs["sets"].get(c) or {}), **override}
    except UsageError as err:
        return usage_error("pdalign-eval", err)

    for key in ("prompts_per_set", "max_new_tokens", "confidence", "seed"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    device = device_of(args.device)
    restore_calibration(constraints, ckpt)
    needs_base = (any(c.needs_calibration or c.needs_kl for c in constraints)
                  or objective.needs_reference)
    policy = build.load_saved_policy(cfg, ckpt, device, needs_base)
    _, heldout, _ = build.build_datasets(cfg, policy.tokenizer)
    # as the trainer does before step 1: sample the reference on the training prompts
    build.calibrate(cfg, constraints, policy)
    result = evaluate(policy.model, policy.tokenizer, constraints, heldout_features=heldout,
                      objective=objective, ref_model=policy.ref_model, dtype=policy.dtype,
                      device=device, progress=not args.quiet, **kwargs)
    rows = certificate(result)
    print(render_certificate(rows, result))
    if table := render_table({"checkpoint": result}):  # with eval.ifeval_prompts > 0
        print(table)
    step = step_of(ckpt)
    out = Path(args.out) if args.out else run_dir / (f"eval-step-{step}.json" if step is not None
                                                     else "eval.json")
    write_json(out, {"checkpoint": str(ckpt), "config": str(config), "step": step,
                             "metrics": result, "certificate": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
