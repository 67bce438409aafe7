"""``pdalign-eval``: held-out evaluation and constraint certificate of a saved checkpoint.

The run's own config (its ``config.yaml``) says what to build; `pdalign.build` builds it exactly
as training did (constraints, objective, precision, the policy or its adapter, the held-out
data, the reference calibration), and `pdalign.evaluate.evaluate` measures it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

import torch

from pdalign.atomic import atomic_open
from pdalign.certificate import certificate, render_certificate
from pdalign.constraint import resolve_prompts

log = logging.getLogger("pdalign")


class _UsageError(Exception):
    """A bad path, config or argument: printed as one line, exit status 2."""


def _step_of(path: Path) -> int | None:
    for part in reversed(path.parts):
        if m := re.fullmatch(r"step-(\d+)", part):
            return int(m[1])
    return None


def _locate(args) -> tuple[Path, Path, Path]:
    """(checkpoint model dir, config file, run dir) from the CLI arguments, or _UsageError."""
    from pdalign.checkpoint import checkpoints

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None and not run_dir.is_dir():
        raise _UsageError(f"--run-dir {run_dir}: no such directory")
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not ckpt.exists():
            raise _UsageError(f"--checkpoint {ckpt}: no such checkpoint (give a "
                              f"RUN/checkpoints/step-N directory, its model/ folder, or any "
                              f"peft adapter / save_pretrained model directory)")
        if (ckpt / "model").is_dir():
            ckpt = ckpt / "model"
        if not ((ckpt / "adapter_config.json").is_file() or (ckpt / "config.json").is_file()):
            raise _UsageError(f"--checkpoint {ckpt}: neither a peft adapter (adapter_config.json) "
                              f"nor a save_pretrained model (config.json)")
    elif run_dir is not None:
        found = checkpoints(run_dir)
        if not found:
            raise _UsageError(f"{run_dir / 'checkpoints'}: no complete step-N checkpoint (the "
                              f"trainer writes one at the end of a run); pass --checkpoint PATH")
        ckpt = found[-1] / "model"
    else:
        raise _UsageError("give --run-dir RUN (evaluates its newest checkpoint) or "
                          "--checkpoint PATH")
    if args.config:
        config = Path(args.config)
    elif run_dir is not None:
        config = run_dir / "config.yaml"
    else:  # a checkpoint inside a run dir: RUN/checkpoints/step-N/model
        config = next((p / "config.yaml" for p in ckpt.resolve().parents
                       if (p / "config.yaml").is_file()), ckpt / "config.yaml")
    if not config.is_file():
        raise _UsageError(f"{config}: no such config (pdalign-train writes the resolved "
                          f"config.yaml into the run dir); pass --config FILE")
    return ckpt, config, run_dir if run_dir is not None else config.parent


def _parse_prompt_overrides(items: Sequence[str], known: Iterable[str]) -> dict[str, dict]:
    """``c:s=PATH`` arguments -> {c: {s: PATH}}; every file is checked here."""
    known = set(known)
    out: dict[str, dict[str, str]] = {}
    for item in items:
        m = re.fullmatch(r"([^:=/]+):([^:=/]+)=(.+)", item)
        if not m:
            raise _UsageError(f"--prompts {item!r}: expected CONSTRAINT:SET=PATH, e.g. "
                              f"refusal:id=/data/redteam.jsonl")
        c, s, path = m[1], m[2], m[3]
        if c not in known:
            raise _UsageError(f"--prompts {item!r}: no constraint {c!r} in the run's config "
                              f"(constraints: {', '.join(sorted(known)) or 'none'})")
        try:
            resolve_prompts(path, f"--prompts {c}:{s}")
        except FileNotFoundError as err:
            raise _UsageError(str(err)) from err
        out.setdefault(c, {})[s] = path
    return out


def _restore_calibration(constraints, ckpt: Path) -> None:
    """Length's relative epsilon: from the checkpoint's trainer state when it was measured."""
    state_file = ckpt.parent / "trainer_state.pt"
    if not any(c.needs_calibration for c in constraints) or not state_file.is_file():
        return
    state = torch.load(state_file, weights_only=False).get("rollouts") or {}
    for c in constraints:
        if c.needs_calibration and c.name in state.get("constraints", {}):
            c.load_state_dict(state["constraints"][c.name])



def _write_json_atomic(path: Path, payload: dict) -> None:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None  # JSON has no inf: an infinite bound is written as null
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    with atomic_open(path) as f:
        json.dump(clean(payload), f, indent=2)


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

    from omegaconf import OmegaConf

    from pdalign import build
    from pdalign.evaluate import eval_kwargs, evaluate

    try:
        ckpt, config, run_dir = _locate(args)
        try:
            cfg = OmegaConf.load(config)
            # every listed constraint, also for baselines (method.constrained: false): the
            # certificate compares methods on the same constraints
            constraints = build.build_constraints(cfg)
            objective = build.build_objective(cfg)
        except Exception as err:  # a broken or foreign config: one line, no traceback
            raise _UsageError(f"{config}: {type(err).__name__}: {err}") from err
        kwargs = eval_kwargs(cfg.get("eval"))
        for c, override in _parse_prompt_overrides(args.prompts,
                                                   [c.name for c in constraints]).items():
            kwargs["sets"][c] = {**(kwargs["sets"].get(c) or {}), **override}
    except _UsageError as err:
        print(f"pdalign-eval: error: {err}", file=sys.stderr)
        return 2

    for key in ("prompts_per_set", "max_new_tokens", "confidence", "seed"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _restore_calibration(constraints, ckpt)
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
    step = _step_of(ckpt)
    out = Path(args.out) if args.out else run_dir / (f"eval-step-{step}.json" if step is not None
                                                     else "eval.json")
    _write_json_atomic(out, {"checkpoint": str(ckpt), "config": str(config), "step": step,
                             "metrics": result, "certificate": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
