# Run:  .venv/bin/python experiments/ref_memory.py            (writes results/ref_memory.{md,json})
#       .venv/bin/python experiments/ref_memory.py --model tiny --out /tmp/x   (a quick check)
"""Peak memory of one DPO step: adapter-disabled reference vs a frozen copy of the model.

pdalign's reference for a LoRA/QLoRA policy is the same model with the adapter disabled
(`pdalign.policy.models.reference_mode`), so no second copy of the weights is held. This measures
what that saves: one DPO step (policy forward, reference forward, backward, AdamW step) on
the embedded SmolLM2-135M + LoRA (r=16, q/k/v/o), 4 pairs of 256-token sequences, each mode
in a fresh process whose peak RSS (VmHWM) is its own. The ``frozen_copy`` mode deep-copies
the base model before the adapter is added and passes it as ``ref_model``, as a trainer
without adapter-disabling would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pdalign.runfiles.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("adapter_disabled", "frozen_copy")


def _vmhwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, model_name: str, seq_len: int, pairs: int) -> dict:
    import torch

    from pdalign.objectives.preference import DPO
    from pdalign.policy.logprobs import sequence_logps
    from pdalign.policy.models import apply_peft, frozen_copy, load_model

    torch.manual_seed(0)
    model, tok = load_model(model_name)
    ref_model = frozen_copy(model) if mode == "frozen_copy" else None
    model = apply_peft(model, {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    loaded_mb = _vmhwm_mb()
    n = 2 * pairs
    ids = torch.randint(100, len(tok) - 100, (n, seq_len))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, : seq_len // 4] = -100  # a quarter prompt, three quarters response
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    t0 = time.perf_counter()
    out = sequence_logps(model, ids, mask, labels, with_ref=True, ref_model=ref_model)
    losses, _ = DPO()({"chosen_logps": out.logps[:pairs], "rejected_logps": out.logps[pairs:],
                       "chosen_n_tokens": out.n_tokens[:pairs],
                       "rejected_n_tokens": out.n_tokens[pairs:],
                       "ref_chosen_logps": out.ref_logps[:pairs],
                       "ref_rejected_logps": out.ref_logps[pairs:]})
    losses.mean().backward()
    opt.step()
    return {"mode": mode, "peak_rss_mb": _vmhwm_mb(), "after_load_mb": loaded_mb,
            "step_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--out", default=None, help="output dir (default experiments/results)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    name = "embedded:smollm2-135m-instruct" if args.model == "embedded" else "tiny"
    if args.child:
        print(json.dumps(child(args.child, name, args.seq_len, args.pairs)))
        return {}
    rows = []
    for mode in MODES:  # each in a fresh process: its peak RSS is its own
        proc = subprocess.run([sys.executable, __file__, "--child", mode, "--model", args.model,
                               "--seq-len", str(args.seq_len), "--pairs", str(args.pairs)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    a, b = rows
    result = {"model": name, "pairs": args.pairs, "seq_len": args.seq_len, "rows": rows,
              "peak_rss_ratio_adapter_vs_copy": a["peak_rss_mb"] / b["peak_rss_mb"],
              "saved_mb": b["peak_rss_mb"] - a["peak_rss_mb"]}
    md = [f"# Reference memory: {name}, {args.pairs} pairs x {args.seq_len} tokens, one DPO step",
          "", "| reference | peak RSS (MB) | RSS after load (MB) | step (s) |", "|---|---|---|---|"]
    md += [f"| {r['mode']} | {r['peak_rss_mb']:.0f} | {r['after_load_mb']:.0f} | "
           f"{r['step_s']:.2f} |" for r in rows]
    md += ["", f"Adapter-disabled reference peaks at {result['peak_rss_ratio_adapter_vs_copy']:.2f}x "
           f"the frozen copy's RSS ({result['saved_mb']:.0f} MB less)."]
    out = Path(args.out) if args.out else RESULTS
    write_text(out / "ref_memory.json", json.dumps(result, indent=2))
    write_text(out / "ref_memory.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return result


if __name__ == "__main__":
    main()
