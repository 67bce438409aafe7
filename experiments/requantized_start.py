# Run:  .venv/bin/python experiments/requantized_start.py multirun/drift_length/start/model
#         (writes experiments/results/drift_length_start/requantized.json)
"""How much of a merged fine-tune survives being quantized to 4 bits again: the length
scenario's concise start (`experiment=drift_length_start`, merged by ``pdalign-export --merge``)
sampled on the first ``--prompts`` held-out length prompts, once loaded in bf16 and once
quantized to nf4 as ``peft=qlora`` loads a model, with the same seed, budget and sampler as
the study's held-out evaluation (temperature 1, top-p 1, 160 new tokens).

Writes the mean response length, the share at the generation cap and every length, per
loading. The paper's length paragraph quotes it; the trainer's warning
(`pdalign.training.build.warn_requantized_merge`) is why it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pdalign.policy import models  # noqa: E402
from pdalign.policy.precision import autocast  # noqa: E402
from pdalign.policy.sampling import generate  # noqa: E402

PROMPTS = ROOT / "experiments" / "data" / "drift" / "length_bias_heldout.jsonl"
OUT = ROOT / "experiments" / "results" / "drift_length_start" / "requantized.json"


def lengths(model_dir: Path, prompts: list[str], quantized: bool, budget: int) -> list[int]:
    kwargs = {"quantization": models.bnb_4bit_config(torch.bfloat16)} if quantized else {}
    model, tok = models.load_model(str(model_dir), **kwargs)
    if not quantized:
        model = model.to(torch.bfloat16)
    with autocast(torch.bfloat16, "cpu"):
        rollout = generate(model, tok, prompts, max_new_tokens=budget, temperature=1.0,
                           top_p=1.0, batch_size=16, seed=0)
    return rollout.response_lengths.tolist()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path, help="the merged export of the concise start")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()]
    prompts = prompts[:args.prompts]
    out = {"model_dir": str(args.model_dir), "prompts": len(prompts),
           "max_new_tokens": args.max_new_tokens, "prompt_file": str(PROMPTS.relative_to(ROOT)),
           "machine": platform.processor() or platform.machine(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadings": {}}
    for name, quantized in (("bf16", False), ("nf4", True)):
        n = lengths(args.model_dir, prompts, quantized, args.max_new_tokens)
        out["loadings"][name] = {"mean_length": sum(n) / len(n),
                                 "at_cap": sum(x == args.max_new_tokens for x in n) / len(n),
                                 "lengths": n}
        print(f"{name}: mean {out['loadings'][name]['mean_length']:.1f} tokens, "
              f"{100 * out['loadings'][name]['at_cap']:.0f}% at the cap", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as fh:
        json.dump(out, fh, indent=1)
    os.replace(fh.name, args.out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
