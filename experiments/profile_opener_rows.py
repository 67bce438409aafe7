# Run:  .venv/bin/python experiments/profile_opener_rows.py          (embedded SmolLM2, ~3 min)
"""What a constraint's own rows cost, by how the decoder is fed: one training micro-batch of
each row-reading constraint of the bench's ``primal_dual_openers`` / ``primal_dual_pairs`` rows
(whole refusals after 8 adversarial prompts, short refusal starts after 8 benign ones, 4
refusal pairs), and for comparison DPO's own rows (4 quickstart pairs, which the trainer does
not pack), through `pdalign.policy.logprobs.sequence_logps`, forward and backward: as full
rows; with each prompt run once and its continuations fed from its KV cache (``shared``, the
path before packing, `_split_blocks` choosing the calls); and packed as one token trie under a
tree mask (``packed``, what the trainer does now: the chat header shared by every row, each
prompt by its continuations, common opener words by their openers). Median of 3 repetitions,
interleaved; `train.dtype=auto`'s dtype; 2 threads. Writes ``opener_rows/opener_rows.md`` and
``.json`` (issue: the constrained step at DPO's cost).
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
from pdalign.constraints.refusal import RefusalOpeners, RefusalPairs  # noqa: E402
from pdalign.data.features import build_dataset, collate  # noqa: E402
from pdalign.policy import packing  # noqa: E402
from pdalign.policy.models import apply_peft, hold_frozen_linears, load_model  # noqa: E402
from pdalign.policy.precision import autocast, cpu_flags, resolve_dtype  # noqa: E402
from pdalign.runfiles.atomic import write_text  # noqa: E402
from pdalign.training.build import Policy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "opener_rows"
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
                batch_size=8, openers=SHORT),
            "refusal_pairs (4 pairs)": RefusalPairs(epsilon=0.2, batch_size=4)}
    train, _, _ = build_dataset(tok, "builtin:quickstart", max_length=256)
    modes = {"full rows": {}, "shared": "group", "packed": {"pack": True}}
    rows_out = []
    for name, c in [*cons.items(), ("preference pairs (4 quickstart pairs)", None)]:
        if c is None:  # DPO's own rows, which the trainer does not pack
            rows, group = collate(train[:4], tok.pad_token_id), 2
        else:
            c.bind(policy, seed=0)
            rows, group = c.rows("cpu"), c.rows_per_prompt
        ids, mask, labels = rows["input_ids"], rows["attention_mask"], rows["labels"]
        resp = labels[:, 1:] != -100
        last = [int(r.nonzero().max()) + 1 for r in resp]
        seqs = [ids[i, :last[i]].tolist() for i in range(ids.shape[0])]
        nodes = sum(1 + max(max(p) for p in paths)
                    for _, paths in packing.trie_groups(seqs, packing.PACK_TOKENS))
        times = {mode: [] for mode in modes}
        for _ in range(3):
            for mode, kw in modes.items():
                kw = {"pairs": ids.shape[0] // group, "group": group} if kw == "group" else kw
                model.zero_grad(set_to_none=True)
                t0 = time.perf_counter()
                with autocast(dtype, "cpu"):
                    out = L.sequence_logps(model, ids, mask, labels, **kw)
                t1 = time.perf_counter()
                out.logps.sum().backward()
                times[mode].append((t1 - t0, time.perf_counter() - t1))
        for mode in modes:
            fwd, bwd = sorted(times[mode], key=sum)[1]
            rows_out.append({"constraint": name, "rows": list(ids.shape),
                             "row_tokens": int(mask.sum()), "trie_nodes": nodes, "mode": mode,
                             "forward_s": fwd, "backward_s": bwd, "total_s": fwd + bwd})
    lines = [f"# Constraint rows by feeding mode (SmolLM2-135M, LoRA r=16, {dtype}, "
             f"{args.threads} threads, CPU "
             f"{', '.join(sorted(cpu_flags() & {'avx2', 'avx512_bf16', 'amx_bf16'}))})", "",
             "Command: `python experiments/profile_opener_rows.py`", "",
             "| constraint | rows | row tokens | trie nodes | mode | forward s | backward s "
             "| total s | vs shared |", "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    shared = {r["constraint"]: r["total_s"] for r in rows_out if r["mode"] == "shared"}
    lines += [f"| {r['constraint']} | {r['rows'][0]}x{r['rows'][1]} | {r['row_tokens']} "
              f"| {r['trie_nodes']} | {r['mode']} | {r['forward_s']:.2f} | {r['backward_s']:.2f} "
              f"| {r['total_s']:.2f} | {r['total_s'] / shared[r['constraint']]:.2f} |"
              for r in rows_out]
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "opener_rows.md", "\n".join(lines) + "\n")
    write_text(args.out / "opener_rows.json", json.dumps(rows_out, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
