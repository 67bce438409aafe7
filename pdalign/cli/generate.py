"""``pdalign-generate``: sample a checkpoint, an exported directory or the base model, and write
each response with its cost under every constraint the run lists.

Batched, KV-cached sampling (`pdalign.policy.sampling.generate`, the sampler of training and
evaluation) over a prompt file, one JSON line per prompt::

    {"prompt": ..., "response": ..., "n_tokens": 17, "costs": {"refusal": 1.0, "length": 17.0}}

Costs come from each constraint's own ``cost`` (the constraints judged on samples: rollout and
pair kinds); a constraint read off preference pairs (the KL budget) has no per-response cost
and is left out, said once on stderr. ``--chat`` reads one prompt per line from the terminal
instead and prints the response and its costs; each line is a fresh single-turn conversation.

Examples:
    pdalign-generate --run-dir RUN --prompts adversarial_heldout --out samples.jsonl
    pdalign-generate --run-dir RUN --base --prompts my_prompts.csv --greedy
    pdalign-generate --model exported/pd-merged --prompts prompts.jsonl
    pdalign-generate --run-dir RUN --chat
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from pdalign.cli.common import (
    RUN_CONFIG,
    UsageError,
    device_of,
    load_run_config,
    locate,
    usage_error,
)
from pdalign.contract.prompts import load_prompts
from pdalign.policy.models import EMBEDDED
from pdalign.policy.precision import autocast
from pdalign.policy.sampling import generate
from pdalign.runfiles.atomic import atomic_open
from pdalign.training import build


def scored_constraints(constraints) -> tuple[list, list]:
    """(constraints with a per-response cost, the others): a constraint judged on samples
    (``judged_prompts()`` not None) scores each response with its ``cost``."""
    with_cost = [c for c in constraints if c.judged_prompts() is not None]
    return with_cost, [c for c in constraints if c.judged_prompts() is None]


def sample_with_costs(policy, constraints, prompts: list[str], *, max_new_tokens: int,
                      temperature: float, top_p: float, batch_size: int, seed: int,
                      progress: bool = True) -> Iterator[dict[str, Any]]:
    """One record per prompt, in order, a batch at a time: prompt, response, n_tokens and the
    cost of every constraint in ``constraints`` (each must have ``cost``).

    Batch k is sampled with seed ``seed + k``, so a file gives the same samples whatever reads
    it; temperature 0 is greedy.
    """
    starts = range(0, len(prompts), batch_size)
    bar = tqdm(starts, desc="generate", unit="batch", disable=not progress or len(starts) < 2)
    with autocast(policy.dtype, policy.device.type):
        for k, s in enumerate(bar):
            rollout = generate(policy.model, policy.tokenizer, prompts[s:s + batch_size],
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, batch_size=batch_size, seed=seed + k)
            costs = {}
            for c in constraints:
                values = torch.as_tensor(c.cost(rollout.prompts, rollout.responses,
                                                rollout.response_lengths))  # (N,)
                costs[c.name] = [float(v) for v in values.detach().float().cpu()]
            for i in range(len(rollout)):
                yield {"prompt": rollout.prompts[i], "response": rollout.responses[i],
                       "n_tokens": int(rollout.response_lengths[i]),
                       "costs": {name: values[i] for name, values in costs.items()}}


def _model_source(name: str) -> Path | None:
    """``--model``: an exported dir with its run config (returned), or a model name to load as
    a base (None); UsageError when it is neither a directory nor a model name."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / RUN_CONFIG).is_file():
            return path
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {name}: the directory holds no model (no config.json) "
                             f"and no {RUN_CONFIG}; give a pdalign-export directory or a "
                             f"save_pretrained model directory")
        return None
    if name in ("tiny", EMBEDDED) or name.count("/") == 1:
        return None  # a test model, the embedded one, or a hub id
    raise UsageError(f"--model {name}: no such directory, and not a hub id (owner/name); give a "
                     f"pdalign-export directory, a save_pretrained directory, a hub id, or "
                     f"{EMBEDDED}")


def _plan(args):
    """(cfg, constraints, a function that loads the policy) from the arguments; every check
    runs here, before any model loads."""
    cfg, constraints, load = _sources(args)
    if args.dtype:
        if args.dtype not in ("auto", "fp32", "bf16"):
            raise UsageError(f"--dtype {args.dtype}: not one of auto, fp32, bf16")
        cfg.train.dtype = args.dtype  # read by the loader when it runs
    return cfg, constraints, load


def _sources(args):

    device = device_of(args.device)
    if args.model and (args.run_dir or args.checkpoint):
        raise UsageError("--model samples a model directory or name on its own: drop "
                         "--run-dir/--checkpoint (or use --run-dir RUN --base for its base)")
    if args.model:
        if args.base:
            raise UsageError("--base goes with --run-dir (the run's base model); with --model, "
                             "name the base model itself")
        export_dir = _model_source(args.model)
        if export_dir is not None:
            cfg, constraints, _ = load_run_config(Path(args.config or export_dir / RUN_CONFIG))
            return cfg, constraints, lambda: build.load_saved_policy(cfg, export_dir, device,
                                                                     needs_base=False)
        if args.config:  # a plain model, scored under a run's constraints
            cfg, constraints, _ = load_run_config(Path(args.config))
            cfg = OmegaConf.merge(cfg, {"model": {"name_or_path": args.model, "tiny": None},
                                        "peft": {"quantize": False}})
        else:
            cfg = OmegaConf.create({"model": {"name_or_path": args.model},
                                    "train": {"dtype": "auto"}})
            constraints = []
        return cfg, constraints, lambda: build.load_base_policy(cfg, device)
    ckpt, config, _ = locate(args.run_dir, args.checkpoint, args.config)
    cfg, constraints, _ = load_run_config(config)
    if args.base:
        return cfg, constraints, lambda: build.load_base_policy(cfg, device)
    return cfg, constraints, lambda: build.load_saved_policy(cfg, ckpt, device, needs_base=False)


def _sampling(args, cfg) -> dict[str, Any]:
    ev = cfg.get("eval") or {}
    out = {"max_new_tokens": args.max_new_tokens or int(ev.get("max_new_tokens", 48)),
           "temperature": 0.0 if args.greedy else (
               args.temperature if args.temperature is not None
               else float(ev.get("temperature", 1.0))),
           "top_p": args.top_p if args.top_p is not None else float(ev.get("top_p", 1.0)),
           "batch_size": args.batch_size or int(ev.get("batch_size", 16)),
           "seed": args.seed if args.seed is not None else int(ev.get("seed", 0))}
    if out["max_new_tokens"] < 1 or out["batch_size"] < 1:
        raise UsageError("--max-new-tokens and --batch-size must be >= 1")
    if out["temperature"] < 0 or not 0 < out["top_p"] <= 1:
        raise UsageError("--temperature must be >= 0 (0 = greedy, or --greedy) and --top-p in "
                         "(0, 1]")
    return out


def _chat(policy, constraints, sampling: dict[str, Any], stdin, stdout) -> None:
    print("pdalign chat: one prompt per line, each a fresh conversation; an empty line or "
          "Ctrl-D quits.", file=stdout, flush=True)
    for turn, line in enumerate(iter(lambda: (print("you> ", end="", file=stdout, flush=True),
                                              stdin.readline())[1], "")):
        prompt = line.strip()
        if not prompt:
            break
        record = next(sample_with_costs(policy, constraints, [prompt], progress=False,
                                        **{**sampling, "seed": sampling["seed"] + turn}))
        costs = "  ".join(f"{k}={v:g}" for k, v in record["costs"].items())
        print(f"model> {record['response']}", file=stdout)
        print(f"       [{record['n_tokens']} tokens{'; ' + costs if costs else ''}]",
              file=stdout, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``pdalign-generate``: responses and their constraint costs for a prompt file, or a chat."""
    parser = argparse.ArgumentParser(
        prog="pdalign-generate", description="Sample responses from a pdalign checkpoint, an "
        "exported directory or a base model; write each with its cost under every constraint "
        "of the run (JSONL), or chat interactively.")
    src = parser.add_argument_group("what to sample")
    src.add_argument("--run-dir", help="a pdalign-train run dir (its newest checkpoint)")
    src.add_argument("--checkpoint", help="a checkpoints/step-N dir (or its model/ folder)")
    src.add_argument("--base", action="store_true", help="with --run-dir: the run's base model "
                     "(no adapter), for comparison")
    src.add_argument("--model", help="a pdalign-export dir, a save_pretrained dir, a hub id or "
                     f"{EMBEDDED}")
    src.add_argument("--config", help="the run config whose constraints score the responses "
                     "(default: the run's, or the export's run_config.yaml)")
    parser.add_argument("--prompts", help="prompts: JSONL 'prompt' field, CSV 'prompt' column, "
                        "or a bundled set name (adversarial_heldout, benign, ...)")
    parser.add_argument("--chat", action="store_true", help="interactive: prompts from stdin")
    parser.add_argument("--out", help="JSONL output (default: stdout)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding (temperature 0)")
    parser.add_argument("--temperature", type=float, help="default: eval.temperature (1.0)")
    parser.add_argument("--top-p", type=float, help="default: eval.top_p (1.0)")
    parser.add_argument("--max-new-tokens", type=int, help="default: eval.max_new_tokens")
    parser.add_argument("--batch-size", type=int, help="prompts per batch; default "
                        "eval.batch_size")
    parser.add_argument("--seed", type=int, help="sampling seed; default eval.seed")
    parser.add_argument("--dtype", help="auto | fp32 | bf16: the compute dtype; default the "
                        "run's train.dtype")
    parser.add_argument("--device", help="cpu | cuda | cuda:N; default cuda if available")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if bool(args.prompts) == bool(args.chat):
            raise UsageError("give --prompts FILE (a batch to JSONL) or --chat (interactive), "
                             "one of the two")
        if not (args.run_dir or args.checkpoint or args.model):
            raise UsageError("give --run-dir RUN, --checkpoint PATH or --model DIR|NAME")
        if args.out and Path(args.out).is_dir():
            raise UsageError(f"--out {args.out}: a directory; give a .jsonl file path")
        prompts = []
        if args.prompts:
            try:
                prompts = load_prompts(args.prompts, "--prompts")
            except (FileNotFoundError, ValueError) as err:
                raise UsageError(str(err)) from err
        cfg, constraints, load = _plan(args)
        sampling = _sampling(args, cfg)
    except UsageError as err:
        return usage_error("pdalign-generate", err)
    with_cost, without = scored_constraints(constraints)
    if without:
        print(f"pdalign-generate: {', '.join(c.name for c in without)}: no per-response cost "
              f"(read off preference pairs); not written", file=sys.stderr)
    policy = load()
    if args.chat:
        _chat(policy, with_cost, sampling, sys.stdin, sys.stdout)
        return 0
    sink = atomic_open(args.out) if args.out else nullcontext(sys.stdout)
    with sink as out:
        for record in sample_with_costs(policy, with_cost, prompts, progress=not args.quiet,
                                        **sampling):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    if args.out:
        print(f"wrote {len(prompts)} responses to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
