# Run:  .venv/bin/python experiments/profile_opener_rows.py          (embedded SmolLM2, ~2 min)
"""What an opener constraint's rows cost, by how the decoder is fed: one constraint's training
rows (8 prompts x 5 openers) through `pdalign.policy.logprobs.sequence_logps`, forward and
backward, as full rows, with the prompt shared and each opener block in its own call
(``split``), with the prompt shared and all blocks in one padded call (``one call``), and as
the rule in `pdalign.policy.logprobs._split_blocks` picks (``auto``). The two constraints of the
bench's ``primal_dual_openers`` row: whole refusals on adversarial prompts and short refusal
starts on benign ones. Median of 3 repetitions; `train.dtype=auto`'s dtype; 2 threads.
Writes ``opener_rows.md`` / ``opener_rows.json`` (issue: the constrained step at DPO's cost).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pdalign.policy.logprobs as L  # noqa: E402
from pdalign.constraints.refusal import RefusalOpeners  # noqa: E402
from pdalign.policy.models import apply_peft, hold_frozen_linears, load_model  # noqa: E402
from pdalign.policy.precision import autocast, resolve_dtype  # noqa: E402
from pdalign.runfiles.atomic import write_text  # noqa: E402
from pdalign.training.build import Policy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHORT = ["I'm sorry", "I can't", "Sorry", "I cannot", "I won't"]  # over_refusal_openers' starts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype("auto", "cpu")
    model, tok = load_model("embedded:smollm2-135m-instruct")
    model = apply_peft(model, {"r": 16, "lora_alpha": 32,
                               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    if dtype != torch.float32:
        hold_frozen_linears(model, dtype)
    policy = Policy(model, None, tok, dtype, torch.device("cpu"))
    cons = {"refusal_openers (whole refusals)": RefusalOpeners(epsilon=0.2, whole=True,
                                                                batch_size=8),
            "over_refusal_openers (short starts)": RefusalOpeners(
                name="over", epsilon=0.1, prompts="benign", target="comply", whole=False,
                batch_size=8, openers=SHORT)}
    rule = L._split_blocks
    modes = {"full rows": None, "split": lambda w, t: len(w) > 1,
             "one call": lambda w, t: False, "auto": rule}
    rows_out = []
    for name, c in cons.items():
        c.bind(policy, seed=0)
        rows = c.rows("cpu")
        for mode, split in modes.items():
            L._split_blocks = split or rule
            times = []
            for _ in range(3):
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                with autocast(dtype, "cpu"):
                    out = L.sequence_logps(model, rows["input_ids"], rows["attention_mask"],
                                           rows["labels"], pairs=None if split is None else 8,
                                           group=len(c.opener_ids))
                t1 = time.perf_counter()
                out.logps.sum().backward()
                times.append((t1 - t0, time.perf_counter() - t1))
            fwd, bwd = sorted(times, key=sum)[1]
            rows_out.append({"constraint": name, "opener_tokens": [len(o) for o in c.opener_ids],
                             "rows": list(rows["input_ids"].shape), "mode": mode,
                             "forward_s": fwd, "backward_s": bwd, "total_s": fwd + bwd})
        L._split_blocks = rule
    lines = [f"# Opener rows by feeding mode (SmolLM2-135M, LoRA r=16, {dtype}, "
             f"{args.threads} threads)", "", "Command: `python experiments/profile_opener_rows.py`",
             "", "| constraint | opener tokens | mode | forward s | backward s | total s |",
             "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['constraint']} | {r['opener_tokens']} | {r['mode']} | {r['forward_s']:.2f} "
              f"| {r['backward_s']:.2f} | {r['total_s']:.2f} |" for r in rows_out]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "opener_rows.md", "\n".join(lines) + "\n")
    write_text(args.out / "opener_rows.json", json.dumps(rows_out, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
