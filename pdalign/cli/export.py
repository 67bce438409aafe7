"""``pdalign-export``: a run's checkpoint as a directory others can load, with a card.

Default: the LoRA adapter as a standard PEFT directory (``PeftModel.from_pretrained(base,
DIR)``), the tokenizer and ``README.md``, a card with the run's method, constraints, epsilon,
lambda at the checkpoint, the held-out certificate and the data hashes of its manifest.
``--merge``: one plain ``save_pretrained`` model (safetensors) that
``AutoModelForCausalLM.from_pretrained(DIR)`` loads without pdalign; on a 4-bit (QLoRA) base
the adapter goes into the base's dequantized weights (`pdalign.training.build.load_merged_policy`).

The card's numbers are read from the run's own files (``metrics.jsonl``, ``summary.json``,
``manifest.json``, an ``eval-step-N.json`` of ``pdalign-eval``), never recomputed; the same
numbers are in ``pdalign_export.json`` for programs. ``run_config.yaml`` (the run's resolved
config) lets ``pdalign-generate --model DIR`` score responses under the run's constraints.
The directory is written under a temp name and renamed into place when complete.

Examples:
    pdalign-export --run-dir outputs/2025-01-01/12-00-00 --out exported/pd-adapter
    pdalign-export --run-dir RUN --checkpoint RUN/checkpoints/step-200 --out merged --merge
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from pdalign.cli.common import RUN_CONFIG, UsageError, device_of, locate, step_of, usage_error
from pdalign.evaluation.certificate import certificate, render_certificate
from pdalign.policy.models import check_4bit_available
from pdalign.runfiles.atomic import atomic_dir
from pdalign.runfiles.export_card import CARD_JSON
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training import build

SAVE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---- what the card says, from the run's files -------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def card_data(cfg: DictConfig, run_dir: Path, ckpt: Path) -> dict[str, Any]:
    """Everything the card states about the checkpoint ``ckpt`` of ``run_dir``, read from the
    run's files: method, constraints with epsilon and lambda, certificate rows, data hashes.

    lambda is the multiplier after the checkpoint's step (``lambda_next/<c>`` of that step's
    record in metrics.jsonl, or summary.json's ``lambda`` for the final step); the certificate
    is the held-out evaluation logged at that step, else ``pdalign-eval``'s
    ``eval-step-N.json``; None where the run has neither.
    """
    step = step_of(ckpt)
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() \
        else []
    train, evals = split_records(records)
    at_step = next((r for r in reversed(train) if r.get("step") == step), None)
    summary = _read_json(run_dir / "summary.json") or {}
    names = list((cfg.get("constraints") or {}).keys())
    constrained = bool(cfg.method.get("constrained", False))
    lam: dict[str, float | None] = {c: None for c in names}
    if constrained:
        for c in names:
            if at_step is not None and f"lambda_next/{c}" in at_step:
                lam[c] = float(at_step[f"lambda_next/{c}"])
            elif summary.get("steps") == step and f"lambda/{c}" in (summary.get("lambda") or {}):
                lam[c] = float(summary["lambda"][f"lambda/{c}"])
    result, source = None, None
    if (found := [r for r in evals if r.get("step") == step]):
        result, source = found[-1], "metrics.jsonl"
    elif (saved := _read_json(run_dir / f"eval-step-{step}.json")) is not None:
        result, source = saved.get("metrics"), f"eval-step-{step}.json"
    rows = certificate(result) if result else []
    constraints = []
    for c in names:
        node = cfg.constraints[c]
        eps = node.get("epsilon")
        measured = next((r["epsilon"] for r in rows if r["constraint"] == c), None)
        constraints.append({"name": c, "class": str(node.get("_target_")),
                            "epsilon": measured if measured is not None else eps,
                            "lambda": lam[c], "trained": constrained})
    manifest = _read_json(run_dir / "manifest.json") or {}
    return {
        "run_dir": str(run_dir.resolve()), "checkpoint": str(ckpt.resolve()), "step": step,
        "steps": int(cfg.train.steps), "seed": cfg.get("seed"),
        "method": str(cfg.method.name), "objective": str(cfg.method.get("objective")),
        "base_model": str(cfg.model.name_or_path),
        "peft": OmegaConf.to_container(cfg.peft, resolve=True) if cfg.get("peft") else None,
        "constraints": constraints, "certificate": rows, "certificate_source": source,
        "pref_accuracy": (result or {}).get("eval/pref_accuracy"),
        "data_hashes": dict(manifest.get("data_hashes") or {}),
        "git_commit": manifest.get("git_commit"), "dtype": manifest.get("dtype"),
    }


def _fmt(x) -> str:
    if x is None:
        return "—"
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def render_card(data: dict[str, Any], *, fmt: str, load: str) -> str:
    """The card (README.md) of an exported directory: ``data`` from `card_data`, ``fmt`` one
    paragraph on what the directory holds, ``load`` the Python that loads it."""
    method = data["method"] + (f" (objective {data['objective']})"
                               if data["method"] == "primal_dual" else "")
    lines = [f"# pdalign export: {method}, step {data['step']}", "",
             f"Exported {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from `{data['checkpoint']}`"
             f" (run `{data['run_dir']}`, step {data['step']} of {data['steps']}, seed "
             f"{data['seed']}, trained in {data['dtype'] or '?'}, pdalign commit "
             f"{data['git_commit'] or 'unknown'}).", "", "## What this directory holds", "", fmt,
             "", "```python", load, "```", "", "## Training", "",
             f"- method: {method}", f"- base model: `{data['base_model']}`"]
    peft = data["peft"] or {}
    if peft.get("adapter", "lora") != "none" and peft:
        lines.append(f"- adapter: LoRA r={peft.get('r')}, alpha={peft.get('lora_alpha')}, on "
                     f"{', '.join(peft.get('target_modules') or [])}"
                     + (f"; base in 4-bit {peft.get('quant_type')} (QLoRA)"
                        if peft.get("quantize") else ""))
    lines += ["", "## Constraints", ""]
    if data["constraints"]:
        lines += ["λ is the multiplier after the exported step's dual update; a baseline "
                  "(unconstrained) run has none and is only evaluated on the constraints.", "",
                  "| constraint | class | ε | λ | trained on |", "|---|---|---:|---:|---|"]
        for c in data["constraints"]:
            lines.append(f"| {c['name']} | `{c['class']}` | {_fmt(c['epsilon'])} | "
                         f"{_fmt(c['lambda'])} | {'yes' if c['trained'] else 'no (baseline)'} |")
    else:
        lines.append("None listed.")
    lines += ["", "## Held-out certificate", ""]
    if data["certificate"]:
        result = {"eval/confidence": data["certificate"][0]["confidence"]}
        text = render_certificate(data["certificate"], result).split("\n", 2)[2]
        lines += [f"From the run's `{data['certificate_source']}` at step {data['step']}."
                  + (f" Held-out preference accuracy: {data['pref_accuracy']:.3f}."
                     if data["pref_accuracy"] is not None else ""), "", text.rstrip()]
    else:
        lines.append(f"No held-out evaluation at step {data['step']} in the run; run "
                     f"`pdalign-eval --checkpoint {data['checkpoint']}` to make one.")
    lines += ["", "## Data (sha256 from the run's manifest.json)", ""]
    if data["data_hashes"]:
        lines += ["| file | sha256 |", "|---|---|"]
        lines += [f"| `{path}` | `{digest}` |" for path, digest in data["data_hashes"].items()]
    else:
        lines.append("The run has no manifest.json.")
    return "\n".join(lines) + "\n"


# ---- the exported directory -------------------------------------------------------------------

def _describe(cfg: DictConfig, ckpt: Path, merge: bool, dtype: str, adapter_base: str | None
              ) -> tuple[str, str, str]:
    """(format name, what-it-holds paragraph, load snippet)."""
    quantized = bool(cfg.get("peft") and cfg.peft.get("quantize", False))
    if not (ckpt / "adapter_config.json").is_file():
        return ("full", "The full model (the run trained every weight: `peft=none`), saved with "
                "`save_pretrained` (safetensors); it needs no adapter and no pdalign.",
                "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "model = AutoModelForCausalLM.from_pretrained(DIR)\n"
                "tokenizer = AutoTokenizer.from_pretrained(DIR)")
    if merge:
        how = ("The LoRA adapter merged into the base, saved as one plain model with "
               f"`save_pretrained` (safetensors, {dtype}); it needs no adapter and no pdalign.")
        if quantized:
            how += (" The run's base was 4-bit (QLoRA): the adapter was merged into the base's "
                    "**dequantized** weights (each 4-bit linear weight dequantized from its nf4 "
                    "codes and scales to float32, the LoRA update added in float32), the weights "
                    "the adapter was trained against. No nf4 code was modified or re-quantized; "
                    "this model is unquantized and its logits equal the QLoRA policy's up to "
                    "rounding (bitsandbytes' 4-bit matmul itself rounds at about bf16's "
                    "precision).")
        return ("merged", how, "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "model = AutoModelForCausalLM.from_pretrained(DIR)\n"
                "tokenizer = AutoTokenizer.from_pretrained(DIR)")
    base = adapter_base or "BASE"
    how = (f"The LoRA adapter as a standard PEFT directory, and the tokenizer. Base model: "
           f"`{cfg.model.name_or_path}`"
           + (f" (a local `save_pretrained` copy at `{adapter_base}`)"
              if adapter_base and adapter_base != str(cfg.model.name_or_path) else "")
           + (" — a pdalign test model built from a config, loadable only through pdalign"
              if str(cfg.model.name_or_path) == "tiny" else "") + ".")
    quant = ""
    if quantized:
        how += (" The run's base was 4-bit (QLoRA, bitsandbytes "
                f"{cfg.peft.get('quant_type', 'nf4')}): load the base in 4-bit as below to get "
                "the trained policy exactly, or export with `--merge` for a plain model.")
        quant = (", quantization_config=BitsAndBytesConfig(load_in_4bit=True, "
                 f"bnb_4bit_quant_type=\"{cfg.peft.get('quant_type', 'nf4')}\", "
                 f"bnb_4bit_use_double_quant={bool(cfg.peft.get('double_quant', True))})")
    imports = "from transformers import AutoModelForCausalLM, AutoTokenizer" + (
        ", BitsAndBytesConfig" if quantized else "")
    return ("adapter", how, f"{imports}\nfrom peft import PeftModel\n"
            f"base = AutoModelForCausalLM.from_pretrained(\"{base}\"{quant})\n"
            "model = PeftModel.from_pretrained(base, DIR)\n"
            "tokenizer = AutoTokenizer.from_pretrained(DIR)")


def check_out(out: Path, overwrite: bool) -> None:
    """``--out``: a new directory (or, with ``--overwrite``, an existing one to replace)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file is in the way; give a directory path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: already exists and is not empty; choose a new "
                         f"directory or pass --overwrite to replace it")
    if not out.parent.exists():
        raise UsageError(f"--out {out}: its parent directory {out.parent} does not exist; "
                         f"create it first")


def export(run_dir: Path, ckpt: Path, config: Path, out: Path, *, merge: bool = False,
           dtype: str = "fp32", device: torch.device | None = None) -> dict[str, Any]:
    """Write the export of ``ckpt`` into ``out`` (replaced atomically); returns the card data.

    Args:
        run_dir, ckpt, config: the run, its checkpoint's model dir and resolved config
            (`pdalign.cli.common.locate`).
        out: the directory to create.
        merge: merge the adapter into the base (a plain model) instead of exporting it.
        dtype: ``fp32`` | ``bf16`` | ``fp16``, the dtype a merged or full model is saved in.
        device: where the model is built. Default cpu.
    """

    cfg = OmegaConf.load(config)
    device = device or torch.device("cpu")
    if merge:
        policy = build.load_merged_policy(cfg, ckpt, device)
    else:
        policy = build.load_saved_policy(cfg, ckpt, device, needs_base=False)
    adapter_cfg = _read_json(ckpt / "adapter_config.json") or {}
    fmt, how, load = _describe(cfg, ckpt, merge, dtype, adapter_cfg.get("base_model_name_or_path"))
    data = {**card_data(cfg, run_dir, ckpt), "format": fmt,
            "saved_dtype": dtype if fmt != "adapter" else None,
            "dequantized_merge": fmt == "merged" and bool(cfg.get("peft")
                                                        and cfg.peft.get("quantize", False))}
    with atomic_dir(out) as tmp:
        model = policy.model
        if fmt != "adapter":
            model = model.to(SAVE_DTYPES[dtype])
        model.save_pretrained(tmp)  # peft writes its own README.md; the card replaces it
        policy.tokenizer.save_pretrained(tmp)
        (tmp / RUN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (tmp / "README.md").write_text(render_card(data, fmt=how, load=load), encoding="utf-8")
        (tmp / CARD_JSON).write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        # mkdtemp makes the dir 0700 and safetensors writes 0600: an export is meant to be shared
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """``pdalign-export``: a checkpoint as a PEFT adapter dir or a merged model, with a card."""
    parser = argparse.ArgumentParser(
        prog="pdalign-export", description="Export a pdalign checkpoint: the LoRA adapter as a "
        "PEFT directory (default) or merged into the base (--merge), with the tokenizer and a "
        "card (README.md) holding the run's constraints, lambda, certificate and data hashes.")
    parser.add_argument("--run-dir", help="a pdalign-train run dir; its newest complete "
                        "checkpoint is exported unless --checkpoint is given")
    parser.add_argument("--checkpoint", help="a checkpoints/step-N dir (or its model/ folder)")
    parser.add_argument("--config", help="the run's config.yaml (default: RUN/config.yaml)")
    parser.add_argument("--out", help="the directory to write (must not exist yet)")
    parser.add_argument("--merge", action="store_true", help="merge the adapter into the base "
                        "and save one plain model (into dequantized weights on a 4-bit base)")
    parser.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16: the dtype a merged "
                        "model is saved in (default fp32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--device", help="cpu | cuda | cuda:N; default cpu")
    args = parser.parse_args(argv)
    try:
        if not args.out:
            raise UsageError("--out DIR is required: the directory the export is written to")
        if args.dtype not in SAVE_DTYPES:
            raise UsageError(f"--dtype {args.dtype}: not one of {', '.join(SAVE_DTYPES)}")
        ckpt, config, run_dir = locate(args.run_dir, args.checkpoint, args.config)
        out = Path(args.out)
        check_out(out, args.overwrite)
        try:
            cfg = OmegaConf.load(config)
            missing = [k for k in ("model.name_or_path", "method.name", "train.steps")
                       if OmegaConf.select(cfg, k) is None]
        except Exception as err:
            raise UsageError(f"{config}: unreadable ({type(err).__name__}: {err}); pass "
                             f"--config RUN/config.yaml") from err
        if missing:
            raise UsageError(f"{config}: not a pdalign run config (no {', '.join(missing)}); "
                             f"pass --config RUN/config.yaml")
        if args.merge and cfg.get("peft") and cfg.peft.get("quantize", False):

            try:  # the merge dequantizes the 4-bit base, so it must load here
                check_4bit_available()
            except RuntimeError as err:
                raise UsageError(f"--merge: {err}") from err
    except UsageError as err:
        return usage_error("pdalign-export", err)
    data = export(run_dir, ckpt, config, out, merge=args.merge, dtype=args.dtype,
                  device=device_of(args.device or "cpu"))
    print(f"exported step {data['step']} of {run_dir} as {data['format']} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
