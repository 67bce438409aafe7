"""``pdalign-battery``: the safety regression battery a checkpoint passes before promotion.

Runs the held-out evaluation of `pdalign.evaluation.heldout` on several prompt sets, for the checkpoint
and for its base model (the adapter disabled, or the run's base for a full model) on the same
prompts with the same sampling seed, and prints:

1. a side-by-side table, one row per constraint x prompt set: n, epsilon, the base's and the
   checkpoint's estimate, upper bound and verdict, and the change;
2. the checkpoint's certificate (`pdalign.evaluation.certificate`), with the bounds it used;
3. the worst offending responses of each set (highest cost first), the checkpoint's next to
   the base's answer to the same prompt, for a person to read.

Prompt sets: each constraint's bundled held-out sets (``id``, ``shifted``), plus any given with
``--set C:S=PATH`` (a JSONL/CSV file or a bundled set name such as ``provocative_heldout``).
``--constraints refusal,over_refusal`` adds shipped constraint configs to the run's, so a
baseline trained without constraints can be checked too. ``--fail-on-violation`` exits 1 when a
row of the checkpoint's certificate FAILs, so the battery can gate a pipeline (2 = bad input).
``--ifeval N`` also scores both models on N IFEval prompts (`pdalign.evaluation.ifeval`: the
capability the constraints cost) and prints their prompt/instruction x strict/loose table; the
``eval/ifeval/*`` keys go into the JSON's metrics. Everything is also written as JSON (default
``RUN/battery-step-N.json``).

Examples:
    pdalign-battery --run-dir RUN --fail-on-violation
    pdalign-battery --run-dir RUN --set refusal:redteam=/data/redteam.csv --worst 5
    pdalign-battery --run-dir DPO_RUN --constraints refusal,over_refusal
    pdalign-battery --run-dir RUN --ifeval 50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

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
from pdalign.training import build
from pdalign.training.config import CONF_DIR

SHOW_CHARS = 240  # characters of a prompt or response shown in the worst-offender list


def add_shipped_constraints(config: Path, names: Sequence[str]) -> Path | None:
    """The run's config with the shipped ``conf/constraints/<name>.yaml`` entries added, as a
    temp file (None when ``names`` is empty); UsageError for an unknown name."""
    if not names:
        return None
    shipped = CONF_DIR / "constraints"
    available = sorted(p.stem for p in shipped.glob("*.yaml"))
    cfg = OmegaConf.load(config)
    extra = {}
    for name in names:
        if name not in available:
            raise UsageError(f"--constraints {name}: no conf/constraints/{name}.yaml; "
                             f"available: {', '.join(available)}")
        extra.update(OmegaConf.to_container(OmegaConf.load(shipped / f"{name}.yaml")))
    cfg = OmegaConf.merge(cfg, {"constraints": extra})
    fd, tmp = tempfile.mkstemp(prefix="pdalign-battery-", suffix=".yaml")
    with open(fd, "w", encoding="utf-8") as f:
        f.write(OmegaConf.to_yaml(cfg))
    return Path(tmp)


def _fmt(x) -> str:
    if x is None:
        return "—"
    return "∞" if x == float("inf") else f"{x:.4g}"


def side_by_side(base_rows: Sequence[Mapping], trained_rows: Sequence[Mapping]) -> str:
    """One markdown row per constraint x set of the checkpoint's certificate, the base's
    numbers beside it (— where the base was not measured: constraints read off pairs)."""
    base = {(r["constraint"], r["set"]): r for r in base_rows}
    lines = ["| constraint | prompts | n | ε | base estimate | base upper | base | "
             "checkpoint estimate | checkpoint upper | checkpoint | change |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---|---:|"]
    for r in trained_rows:
        b = base.get((r["constraint"], r["set"]))
        change = None if b is None else r["estimate"] - b["estimate"]
        lines.append(
            f"| {r['constraint']} | {r['set']} | {r['n']} | {_fmt(r['epsilon'])} | "
            f"{_fmt(b and b['estimate'])} | {_fmt(b and b['upper'])} | "
            f"{b['verdict'] if b else '—'} | {_fmt(r['estimate'])} | {_fmt(r['upper'])} | "
            f"{r['verdict']} | {'—' if change is None else f'{change:+.4g}'} |")
    return "\n".join(lines) + "\n"


def _short(text: str) -> str:
    one = " ⏎ ".join(line.strip() for line in text.strip().splitlines())
    return one if len(one) <= SHOW_CHARS else one[:SHOW_CHARS - 1] + "…"


def worst_offenders(trained: Mapping[tuple, list], base: Mapping[tuple, list], k: int) -> str:
    """The ``k`` highest-cost responses of each constraint x set, each with the base's answer
    to the same prompt (the two were sampled on the same prompts, in the same order)."""
    out = []
    for (c, s), rows in sorted(trained.items()):
        order = sorted(range(len(rows)), key=lambda i: -rows[i]["cost"])[:k]
        out.append(f"### {c} / {s}: worst {len(order)} of {len(rows)} by cost")
        out.append("")
        if not rows or rows[order[0]]["cost"] <= 0:
            out += ["No response has a positive cost.", ""]
            continue
        for rank, i in enumerate(order, 1):
            row = rows[i]
            out.append(f"{rank}. cost {row['cost']:.4g}, prompt: {_short(row['prompt'])}")
            out.append(f"   - checkpoint: {_short(row['response'])}")
            if (b := base.get((c, s))) is not None and i < len(b):
                out.append(f"   - base (cost {b[i]['cost']:.4g}): {_short(b[i]['response'])}")
        out.append("")
    return "\n".join(out)


def run_battery(cfg, constraints, objective, ckpt: Path, *, device, kwargs: dict[str, Any],
                with_base: bool = True, progress: bool = True) -> dict[str, Any]:
    """Evaluate the checkpoint and (``with_base``) its base on the same prompts and seed.

    Returns {"checkpoint": metrics, "base": metrics or None, and their "certificate" rows and
    "samples" ({(constraint, set): [{prompt, response, cost}]})}.
    """

    restore_calibration(constraints, ckpt)
    policy = build.load_saved_policy(cfg, ckpt, device, needs_base=True)
    _, heldout, _ = build.build_datasets(cfg, policy.tokenizer)
    build.calibrate(cfg, constraints, policy)
    out: dict[str, Any] = {"samples": {}, "base_samples": {}}
    out["checkpoint"] = evaluate(policy.model, policy.tokenizer, constraints,
                                 heldout_features=heldout, objective=objective,
                                 ref_model=policy.ref_model, dtype=policy.dtype, device=device,
                                 progress=progress, samples=out["samples"], **kwargs)
    out["base"] = None
    if with_base:
        out["base"] = evaluate_base(policy, constraints, objective, heldout, device=device,
                                    progress=progress, samples=out["base_samples"], **kwargs)
    out["certificate"] = certificate(out["checkpoint"])
    out["base_certificate"] = certificate(out["base"]) if out["base"] is not None else []
    return out


def render(result: Mapping[str, Any], *, title: str, worst: int) -> str:
    lines = [f"# Safety battery: {title}", ""]
    for name, key in (("base", "base"), ("checkpoint", "checkpoint")):
        metrics = result.get(key) or {}
        if "eval/pref_accuracy" in metrics:
            lines.append(f"- held-out preference accuracy, {name}: "
                         f"{metrics['eval/pref_accuracy']:.3f} over {int(metrics['eval/n_pairs'])}"
                         f" pairs")
    ifeval = render_table({"base": result.get("base"), "checkpoint": result["checkpoint"]})
    lines += ["", ifeval] if ifeval else []
    lines += ["", side_by_side(result["base_certificate"], result["certificate"]),
              render_certificate(result["certificate"], result["checkpoint"]).replace(
                  "## Constraint certificate", "## Checkpoint certificate"),
              "## Worst offending responses", "",
              worst_offenders(result["samples"], result["base_samples"], worst)]
    failed = [r for r in result["certificate"] if r["verdict"] == "FAIL"]
    lines.append(f"**{len(failed)} of {len(result['certificate'])} certificate rows FAIL**"
                 + (": " + ", ".join(f"{r['constraint']}/{r['set']}" for r in failed)
                    if failed else "."))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``pdalign-battery``: base vs checkpoint on several prompt sets, certificate, worst
    responses; exit 1 on a FAIL with ``--fail-on-violation``."""
    parser = argparse.ArgumentParser(
        prog="pdalign-battery", description="Safety regression battery: the checkpoint and "
        "its base model side by side on several prompt sets, the certificate, and the worst "
        "offending responses per set. With --fail-on-violation the exit status is 1 when a "
        "certificate row FAILs (2 for bad input).")
    parser.add_argument("--run-dir", help="a pdalign-train run dir (its newest checkpoint)")
    parser.add_argument("--checkpoint", help="a checkpoints/step-N dir (or its model/ folder)")
    parser.add_argument("--config", help="the run's config.yaml (default: RUN/config.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="C:S=PATH",
                        help="an extra prompt set S for constraint C: a JSONL/CSV file or a "
                        "bundled set name; repeatable")
    parser.add_argument("--constraints", help="comma-separated shipped constraint configs "
                        "(conf/constraints/NAME.yaml) added to the run's")
    parser.add_argument("--prompts-per-set", type=int, help="default: eval.prompts_per_set")
    parser.add_argument("--max-new-tokens", type=int, help="default: eval.max_new_tokens")
    parser.add_argument("--confidence", type=float, help="default: eval.confidence")
    parser.add_argument("--seed", type=int, help="sampling seed; default eval.seed")
    add_ifeval_flags(parser, "the checkpoint and the base")
    parser.add_argument("--worst", type=int, default=3, help="responses shown per set (3)")
    parser.add_argument("--no-base", action="store_true", help="skip the base model")
    parser.add_argument("--fail-on-violation", action="store_true",
                        help="exit 1 when any certificate row of the checkpoint FAILs")
    parser.add_argument("--out", help="JSON output; default RUN/battery-step-N.json")
    parser.add_argument("--device", help="cpu | cuda | cuda:N; default cuda if available")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    tmp_config = None
    try:
        if args.worst < 0:
            raise UsageError(f"--worst {args.worst}: must be >= 0")
        if args.prompts_per_set is not None and args.prompts_per_set < 1:
            raise UsageError(f"--prompts-per-set {args.prompts_per_set}: must be >= 1")
        ckpt, config, run_dir = locate(args.run_dir, args.checkpoint, args.config)
        names = [n.strip() for n in (args.constraints or "").split(",") if n.strip()]
        tmp_config = add_shipped_constraints(config, names)
        cfg, constraints, objective = load_run_config(tmp_config or config)
        if not constraints:
            raise UsageError(f"{config}: the run lists no constraints, so there is nothing to "
                             f"check; add shipped ones with --constraints refusal,over_refusal")
        kwargs = eval_kwargs(cfg.get("eval"))
        for c, override in parse_prompt_overrides(args.set, [c.name for c in constraints],
                                                  flag="--set").items():
            kwargs["sets"][c] = {**(kwargs["sets"].get(c) or {}), **override}
        for key in ("prompts_per_set", "max_new_tokens", "confidence", "seed"):
            if getattr(args, key) is not None:
                kwargs[key] = getattr(args, key)
        apply_ifeval_flags(args, kwargs)
    except UsageError as err:
        return usage_error("pdalign-battery", err)
    finally:
        if tmp_config is not None:
            tmp_config.unlink(missing_ok=True)

    result = run_battery(cfg, constraints, objective, ckpt, device=device_of(args.device),
                         kwargs=kwargs, with_base=not args.no_base, progress=not args.quiet)
    step = step_of(ckpt)
    title = (f"`{run_dir}` step {step} vs its base `{cfg.model.name_or_path}`"
             if not args.no_base else f"`{run_dir}` step {step}")
    print(render(result, title=title, worst=args.worst))
    out = Path(args.out) if args.out else run_dir / (f"battery-step-{step}.json"
                                                     if step is not None else "battery.json")

    def flat(samples):  # JSON keys are strings
        return {f"{c}/{s}": rows for (c, s), rows in samples.items()}

    write_json(out, {"checkpoint": str(ckpt), "config": str(config), "step": step,
                     "metrics": result["checkpoint"], "base_metrics": result["base"],
                     "certificate": result["certificate"],
                     "base_certificate": result["base_certificate"],
                     "samples": flat(result["samples"]),
                     "base_samples": flat(result["base_samples"])})
    print(f"wrote {out}")
    failed = any(r["verdict"] == "FAIL" for r in result["certificate"])
    return 1 if args.fail_on_violation and failed else 0


if __name__ == "__main__":
    sys.exit(main())
