"""``pdalign-eval``: held-out evaluation and constraint certificate of a saved checkpoint.

The run's own config (its ``config.yaml``) says what to build; `pdalign.training.build` builds it exactly
as training did (constraints, objective, precision, the policy or its adapter, the held-out
data, the reference calibration), and `pdalign.evaluation.heldout.evaluate` measures it.

After training, the same command fills in what the run did not measure, for the report:
``--checkpoint RUN/checkpoints/step-N --record`` evaluates an intermediate checkpoint (a point
on the violation-against-step curve), ``--base --record`` the base model the run started
from (step 0: the adapter disabled), ``--ifeval N --ifeval-only --record`` IFEval alone on a
checkpoint already evaluated. ``--record`` adds the metrics as one record to
``RUN/posthoc.jsonl`` (`pdalign.runfiles.metrics.POSTHOC`), which ``pdalign-report`` reads after
``metrics.jsonl``; the training log itself is never rewritten.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from pdalign.cli.common import (
    UsageError,
    add_ifeval_flags,
    apply_ifeval_flags,
    device_of,
    evaluate_base,
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
from pdalign.runfiles.metrics import POSTHOC, append_record
from pdalign.training import build

log = logging.getLogger("pdalign")


def main(argv: Sequence[str] | None = None) -> int:
    """``pdalign-eval``: held-out evaluation and constraint certificate of a saved checkpoint.

    Examples:
        pdalign-eval --run-dir outputs/2025-01-01/12-00-00
        pdalign-eval --checkpoint RUN/checkpoints/step-200 --prompts refusal:id=redteam.csv
        pdalign-eval --checkpoint RUN/checkpoints/step-24 --record
        pdalign-eval --run-dir RUN --base --ifeval 40 --record
        pdalign-eval --run-dir RUN --ifeval 40 --ifeval-only --record
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
    add_ifeval_flags(parser, "the evaluated model")
    parser.add_argument("--ifeval-only", action="store_true", help="score IFEval alone (no "
                        "held-out pairs or prompt sets); needs --ifeval N or eval.ifeval_prompts")
    parser.add_argument("--base", action="store_true", help="evaluate the run's base model "
                        "instead (the adapter disabled: what training started from) on the "
                        "sampled constraints and IFEval; recorded as step 0")
    parser.add_argument("--record", action="store_true", help=f"also add the metrics as one "
                        f"record (the checkpoint's step; 0 with --base) to RUN/{POSTHOC}, which "
                        f"pdalign-report reads after metrics.jsonl")
    parser.add_argument("--device", help="cpu | cuda | cuda:N; default: cuda if available")
    parser.add_argument("--out", help="JSON output; default RUN/eval-step-N.json (eval-base.json "
                        "with --base; -ifeval before .json with --ifeval-only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    try:
        ckpt, config, run_dir = locate(args.run_dir, args.checkpoint, args.config)
        cfg, constraints, objective = load_run_config(config)
        kwargs = eval_kwargs(cfg.get("eval"))
        for c, override in parse_prompt_overrides(args.prompts,
                                                  [c.name for c in constraints]).items():
            kwargs["sets"][c] = {**(kwargs["sets"].get(c) or {}), **override}
        for key in ("prompts_per_set", "max_new_tokens", "confidence", "seed"):
            if getattr(args, key) is not None:
                kwargs[key] = getattr(args, key)
        apply_ifeval_flags(args, kwargs)
        if args.ifeval_only and not kwargs.get("ifeval_prompts"):
            raise UsageError("--ifeval-only: no IFEval prompts to score; give --ifeval N "
                             "(1..541)")
        step = 0 if args.base else step_of(ckpt)
        if args.record and step is None:
            raise UsageError(f"--record: {ckpt} is not a RUN/checkpoints/step-N checkpoint, so "
                             f"the record would have no step; give --checkpoint "
                             f"RUN/checkpoints/step-N (or --base)")
    except UsageError as err:
        return usage_error("pdalign-eval", err)

    device = device_of(args.device)
    restore_calibration(constraints, ckpt)
    if args.ifeval_only:  # nothing but IFEval: no pairs, no prompt sets, no reference needed
        constraints, objective = [], None
    needs_base = args.base or objective is not None and objective.needs_reference or any(
        c.needs_calibration or c.needs_kl for c in constraints)
    policy = build.load_saved_policy(cfg, ckpt, device, needs_base)
    heldout = None
    if not args.ifeval_only:
        _, heldout, _ = build.build_datasets(cfg, policy.tokenizer)
        # as the trainer does before step 1: sample the reference on the training prompts
        build.calibrate(cfg, constraints, policy)
    if args.base:
        result = evaluate_base(policy, constraints, objective, heldout, device=device,
                               progress=not args.quiet, **kwargs)
    else:
        result = evaluate(policy.model, policy.tokenizer, constraints, heldout_features=heldout,
                          objective=objective, ref_model=policy.ref_model, dtype=policy.dtype,
                          device=device, progress=not args.quiet, **kwargs)
    rows = certificate(result)
    if rows:
        print(render_certificate(rows, result))
    if table := render_table({"base" if args.base else "checkpoint": result}):
        print(table)
    name = "eval-base" if args.base else f"eval-step-{step}" if step is not None else "eval"
    out = Path(args.out) if args.out else run_dir / (
        name + ("-ifeval" if args.ifeval_only else "") + ".json")
    write_json(out, {"checkpoint": str(ckpt), "config": str(config), "step": step,
                     "base": args.base, "metrics": result, "certificate": rows})
    print(f"wrote {out}")
    if args.record:
        source = ("base (adapter disabled)" if args.base else str(ckpt)) + (
            ", IFEval only" if args.ifeval_only else "")
        append_record(run_dir / POSTHOC, {"step": step, **result, "posthoc": source})
        print(f"recorded step {step} in {run_dir / POSTHOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
