"""What the commands share: find a run's checkpoint and config from the command
line, check prompt-file arguments, and report a bad argument as one line.

``pdalign-eval``, ``pdalign-export``, ``pdalign-generate`` and ``pdalign-battery`` all take
``--run-dir RUN`` (its newest complete checkpoint) or ``--checkpoint PATH``, with the run's
resolved ``config.yaml`` found beside it or named by ``--config``. Everything here runs before
any model loads, so a typo costs a second, not a model load.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

import torch
from omegaconf import OmegaConf

from pdalign.contract.prompts import resolve_prompts
from pdalign.evaluation.heldout import evaluate
from pdalign.evaluation.ifeval import check_ifeval_args
from pdalign.runfiles.atomic import atomic_open
from pdalign.training import build
from pdalign.training.checkpoint import checkpoints

# The run's resolved config, as pdalign-export writes it beside an exported model, so that
# pdalign-generate --model DIR scores responses under the run's constraints.
RUN_CONFIG = "run_config.yaml"


class UsageError(Exception):
    """A bad path, config or argument: printed as one line, exit status 2 (`usage_error`)."""


def usage_error(prog: str, err: Exception) -> int:
    """The one way a command reports bad input: ``<prog>: error: <what and the fix>`` on stderr,
    and the exit status 2 (argparse's own, for its own errors)."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2


def step_of(path: Path) -> int | None:
    """N of the ``step-N`` directory ``path`` lies in, or None."""
    for part in reversed(Path(path).parts):
        if m := re.fullmatch(r"step-(\d+)", part):
            return int(m[1])
    return None


def locate(run_dir: str | None, checkpoint: str | None, config: str | None
           ) -> tuple[Path, Path, Path]:
    """(checkpoint model dir, config file, run dir) from ``--run-dir``, ``--checkpoint`` and
    ``--config``, or UsageError naming the flag and the fix."""

    run = Path(run_dir) if run_dir else None
    if run is not None and not run.is_dir():
        raise UsageError(f"--run-dir {run}: no such directory")
    if checkpoint:
        ckpt = Path(checkpoint)
        if not ckpt.exists():
            raise UsageError(f"--checkpoint {ckpt}: no such checkpoint (give a "
                             f"RUN/checkpoints/step-N directory, its model/ folder, or any "
                             f"peft adapter / save_pretrained model directory)")
        if (ckpt / "model").is_dir():
            ckpt = ckpt / "model"
        if not ((ckpt / "adapter_config.json").is_file() or (ckpt / "config.json").is_file()):
            raise UsageError(f"--checkpoint {ckpt}: neither a peft adapter (adapter_config.json) "
                             f"nor a save_pretrained model (config.json)")
    elif run is not None:
        found = checkpoints(run)
        if not found:
            raise UsageError(f"{run / 'checkpoints'}: no complete step-N checkpoint (the "
                             f"trainer writes one at the end of a run); pass --checkpoint PATH")
        ckpt = found[-1] / "model"
    else:
        raise UsageError("give --run-dir RUN (its newest checkpoint) or --checkpoint PATH")
    if config:
        cfg_file = Path(config)
    elif run is not None:
        cfg_file = run / "config.yaml"
    else:  # a checkpoint inside a run dir: RUN/checkpoints/step-N/model
        cfg_file = next((p / "config.yaml" for p in ckpt.resolve().parents
                         if (p / "config.yaml").is_file()), ckpt / "config.yaml")
    if not cfg_file.is_file():
        raise UsageError(f"{cfg_file}: no such config (pdalign-train writes the resolved "
                         f"config.yaml into the run dir); pass --config FILE")
    return ckpt, cfg_file, run if run is not None else cfg_file.parent


def load_run_config(config: Path):
    """The run's config with its constraints and objective built (checks eps and prompt files):
    (cfg, constraints, objective), or UsageError for a broken or foreign config."""

    try:
        cfg = OmegaConf.load(config)
        # every listed constraint, also for baselines (method.constrained: false): the
        # certificate compares methods on the same constraints
        return cfg, build.build_constraints(cfg), build.build_objective(cfg)
    except Exception as err:  # one line, no traceback
        raise UsageError(f"{config}: {type(err).__name__}: {err}") from err


def parse_prompt_overrides(items: Sequence[str], known: Iterable[str], flag: str = "--prompts"
                           ) -> dict[str, dict[str, str]]:
    """``C:S=PATH`` arguments -> {C: {S: PATH}}; PATH is a JSONL/CSV file or a bundled set
    name. Every file is checked here."""
    known = set(known)
    out: dict[str, dict[str, str]] = {}
    for item in items:
        m = re.fullmatch(r"([^:=/]+):([^:=/]+)=(.+)", item)
        if not m:
            raise UsageError(f"{flag} {item!r}: expected CONSTRAINT:SET=PATH, e.g. "
                             f"refusal:id=/data/redteam.jsonl")
        c, s, path = m[1], m[2], m[3]
        if c not in known:
            raise UsageError(f"{flag} {item!r}: no constraint {c!r} in the run's config "
                             f"(constraints: {', '.join(sorted(known)) or 'none'})")
        try:
            resolve_prompts(path, f"{flag} {c}:{s}")
        except FileNotFoundError as err:
            raise UsageError(str(err)) from err
        out.setdefault(c, {})[s] = path
    return out


def add_ifeval_flags(parser, scored: str) -> None:
    """``--ifeval N`` and ``--ifeval-max-new-tokens T`` (``scored``: what is scored, for --help)."""
    parser.add_argument("--ifeval", type=int, metavar="N", help="also score N IFEval prompts "
                        f"(1..541, greedy; 0 = off) on {scored}; default eval.ifeval_prompts, "
                        "which is 0 unless the run set it")
    parser.add_argument("--ifeval-max-new-tokens", type=int, metavar="T",
                        help="IFEval budget per response; default eval.ifeval_max_new_tokens")


def apply_ifeval_flags(args, kwargs: dict) -> None:
    """Put ``--ifeval`` / ``--ifeval-max-new-tokens`` over the run's ``eval.ifeval_*`` in the
    `evaluate` keyword arguments; UsageError naming the flag (or config key) when out of range."""
    def check(n, tokens, n_name, tokens_name):
        try:
            check_ifeval_args(n, tokens, n_name=n_name, tokens_name=tokens_name, off_ok=True)
        except ValueError as err:
            raise UsageError(str(err)) from None

    check(0 if args.ifeval is None else args.ifeval,
          1 if args.ifeval_max_new_tokens is None else args.ifeval_max_new_tokens,
          "--ifeval", "--ifeval-max-new-tokens")
    for key, flag in (("ifeval_prompts", "ifeval"), ("ifeval_max_new_tokens",
                                                     "ifeval_max_new_tokens")):
        if getattr(args, flag) is not None:
            kwargs[key] = getattr(args, flag)
    check(kwargs.get("ifeval_prompts", 0), kwargs.get("ifeval_max_new_tokens", 1),
          "eval.ifeval_prompts", "eval.ifeval_max_new_tokens")


def evaluate_base(policy, constraints, objective, heldout, *, device, progress: bool = True,
                  samples: dict | None = None, **kwargs) -> dict:
    """`evaluate` the policy's base (its adapter disabled, or the run's base beside a full model):
    what training started from, on the same prompts and sampling seed as the checkpoint.

    The base against itself has no KL and no DPO-style implicit reward, so it is measured on
    samples (the rollout and opener constraints, IFEval) and on held-out pairs only by an
    objective that needs no reference (SimPO, ORPO).
    """
    sampled = [c for c in constraints if c.judged_prompts() is not None]
    own = None if objective is None or objective.needs_reference else objective
    with policy.reference() as base:
        return evaluate(base, policy.tokenizer, sampled,
                        heldout_features=heldout if own is not None else None, objective=own,
                        dtype=policy.dtype, device=device, progress=progress, samples=samples,
                        **kwargs)


def restore_calibration(constraints, ckpt: Path) -> None:
    """Length's relative epsilon: from the checkpoint's trainer state when it was measured."""
    state_file = Path(ckpt).parent / "trainer_state.pt"
    if not any(c.needs_calibration for c in constraints) or not state_file.is_file():
        return
    state = torch.load(state_file, weights_only=False).get("rollouts") or {}
    for c in constraints:
        if c.needs_calibration and c.name in state.get("constraints", {}):
            c.load_state_dict(state["constraints"][c.name])


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` atomically; an infinite bound is written as null (JSON has no inf)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    with atomic_open(path) as f:
        json.dump(clean(payload), f, indent=2)


def device_of(name: str | None) -> torch.device:
    """``--device``: cpu | cuda | cuda:N; default cuda where available."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
