# Run:  .venv/bin/python experiments/launch_count.py             (embedded SmolLM2, ~3 min)
#       .venv/bin/python experiments/launch_count.py --model tiny --out /tmp/lc   (smoke run)
"""Kernel-launching ops of one log-prob forward + backward, per LM-head layout and prompt mode.

On a GPU a 135M-parameter step is bound by kernel launches (and host syncs), not FLOPs: the
H100 run in ``bench_gpu.md`` put pdalign 3.5x behind TRL while at ~750x its matmul floor. This
counts, on CPU (the count does not depend on the device), the ops of the bench's step shape
(4 pairs x 160 tokens, 44-token prompts, LoRA r=16 on q/k/v/o) that each launch a kernel on a
GPU: profiler leaf events, minus views and allocations that launch none; ``nonzero`` (a
device-to-host sync) is counted apart.

Rows: ``cpu_pieces`` (the CPU head: 2048-token vocabulary pieces, ~8 Mi-logit chunks),
``gpu_layout`` (one piece, 64 Mi-logit chunks), each with and without the shared prompt, and
``full_logits``: one concatenated forward, full log_softmax and gather (what TRL runs). Writes
``launch_count.md`` and ``launch_count.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pdalign.policy import logprobs
from pdalign.policy.logprobs import sequence_logps
from pdalign.policy.models import EMBEDDED, apply_peft, load_model, reference_mode
from pdalign.runfiles.atomic import write_text

RESULTS = Path(__file__).resolve().parent / "results"
# ops that launch no kernel (views, metadata, allocation)
NO_KERNEL = {
    "aten::as_strided", "aten::view", "aten::reshape", "aten::t", "aten::transpose",
    "aten::expand", "aten::slice", "aten::select", "aten::unsqueeze", "aten::squeeze",
    "aten::detach", "aten::alias", "aten::empty", "aten::empty_like", "aten::resolve_conj",
    "aten::_unsafe_view", "aten::permute", "aten::empty_strided", "aten::lift_fresh",
    "aten::_reshape_alias", "aten::split", "aten::chunk", "aten::unbind", "aten::narrow",
    "aten::unflatten", "aten::flatten", "aten::contiguous", "aten::size", "aten::stride",
    "aten::numel", "aten::result_type", "aten::broadcast_tensors", "aten::is_same_size",
    "aten::new_empty", "aten::new_empty_strided", "aten::set_", "aten::item",
    "aten::_local_scalar_dense", "aten::is_nonzero", "detach",
}
LAYOUTS = {"cpu_pieces": (2048, 1 << 23), "gpu_layout": (None, 1 << 26)}


def count_ops(fn) -> tuple[int, int]:
    """(kernel-launching leaf ops, nonzero calls) of ``fn()`` under the profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = syncs = 0
    for e in prof.events():
        if e.name == "aten::nonzero":
            syncs += 1
        if e.cpu_children or e.name in NO_KERNEL:
            continue
        ops += e.name.startswith(("aten::", "autograd::"))
    return ops, syncs


def batch(pairs: int, prompt: int, response: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    p = torch.randint(100, vocab, (pairs, prompt), generator=g)
    ids = torch.cat([torch.cat([p, torch.randint(100, vocab, (pairs, response), generator=g)], 1)
                     for _ in range(2)])
    labels = ids.clone()
    labels[:, :prompt] = -100
    return ids, torch.ones_like(ids), labels


def full_logits_step(model, ids, mask, labels, with_ref: bool):
    """One concatenated forward, the full log_softmax and a gather (TRL's way)."""
    def logps(m):
        lp = m(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        tgt = labels[:, 1:]
        tok = lp.gather(2, tgt.clamp(min=0)[..., None]).squeeze(-1)
        return (tok * (tgt != -100)).sum(-1)

    out = logps(model)
    if with_ref:
        with torch.no_grad(), reference_mode(model):
            logps(model)
    out.sum().backward()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["embedded", "tiny"], default="embedded")
    p.add_argument("--out", default=None, help="output dir (default experiments/results)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    out_dir = Path(args.out) if args.out else RESULTS
    torch.set_num_threads(args.threads)
    name = EMBEDDED if args.model == "embedded" else "tiny"
    model, tokenizer = load_model(name)
    model = apply_peft(model, {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
                               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    ids, mask, labels = batch(4, 44, 116, min(len(tokenizer), 40000))
    saved = logprobs._VOCAB_PIECE, logprobs._CHUNK_ELEMENTS
    rows = []
    try:
        for method in ("orpo", "dpo"):
            for layout, (piece, chunk) in LAYOUTS.items():
                logprobs._VOCAB_PIECE = piece or model.get_output_embeddings().weight.shape[0]
                logprobs._CHUNK_ELEMENTS = chunk
                for share in (True, False):
                    def step():
                        o = sequence_logps(model, ids, mask, labels, with_ref=method == "dpo",
                                           pairs=4 if share else None)
                        o.logps.sum().backward()
                    ops, syncs = count_ops(step)
                    model.zero_grad(set_to_none=True)
                    rows.append({"method": method, "head": layout, "share_prompt": share,
                                 "ops": ops, "nonzero": syncs})
            ops, syncs = count_ops(lambda: full_logits_step(model, ids, mask, labels,
                                                            method == "dpo"))
            model.zero_grad(set_to_none=True)
            rows.append({"method": method, "head": "full_logits", "share_prompt": False,
                         "ops": ops, "nonzero": syncs})
    finally:
        logprobs._VOCAB_PIECE, logprobs._CHUNK_ELEMENTS = saved
    n_layers = model.get_base_model().config.num_hidden_layers
    payload = {"model": name, "layers": n_layers, "shape": "4 pairs x 160 tokens, 44-token "
               "prompts", "rows": rows}
    lines = [f"# Kernel-launching ops of one log-prob forward + backward ({name}, {n_layers} "
             f"layers)", "", "Command: `python experiments/launch_count.py"
             + (f" --model {args.model}" if args.model != "embedded" else "") + "`", "",
             "| method | LM head | shared prompt | ops | nonzero (host sync) |",
             "|---|---|---|---:|---:|"]
    lines += [f"| {r['method']} | {r['head']} | {'yes' if r['share_prompt'] else 'no'} | "
              f"{r['ops']} | {r['nonzero']} |" for r in rows]
    lines += ["", "ops: profiler leaf events that launch a kernel on a GPU (views and "
              "allocations excluded); dpo includes the adapter-disabled reference forward; "
              "optimizer and clipping not included.", ""]
    write_text(out_dir / "launch_count.json", json.dumps(payload, indent=2) + "\n")
    write_text(out_dir / "launch_count.md", "\n".join(lines))
    print("\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
