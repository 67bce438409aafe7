# Run:  .venv/bin/torchrun --nproc_per_node 2 experiments/fsdp_probe.py    (two CPU ranks, gloo, ~20 s)
"""Does torch's FSDP2 (`fully_shard`) run pdalign's own forward paths on two CPU ranks?

The smallest check before the trainer is wired to FSDP2: the tiny Llama with a LoRA adapter,
each decoder layer sharded, and the root unit either the causal LM (what accelerate's
TRANSFORMER_BASED_WRAP gives) or its decoder. For each layout it tries what pdalign runs:
the model's own forward and backward, `pdalign.policy.logprobs.sequence_logps` (the decoder
called directly, then the chunked LM head) with the reference through the disabled adapter,
and `generate` (rollouts and held-out sampling); it checks the log-probs against the unsharded
model's and says whether the LM head is still tied to the embedding and what type its weight
has. Rank 0 prints one JSON line per layout (and writes them with ``--out FILE``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pdalign.policy.logprobs import sequence_logps  # noqa: E402
from pdalign.policy.models import apply_peft, build_tiny  # noqa: E402

V = 97
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def fresh():
    torch.manual_seed(0)  # peft draws lora_A from the global generator
    model = apply_peft(build_tiny(V, seed=0), LORA)
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():  # move the adapter off zero: policy != reference
        if "lora_B" in name:
            p.data.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, V, (2, 10), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100
    return ids, torch.ones_like(ids), labels


def attempt(fn) -> str:
    try:
        return fn()
    except Exception as err:  # the probe reports every failure, it does not stop
        return f"FAILED: {type(err).__name__}: {str(err).splitlines()[0][:160]}"


def probe(root: str) -> dict:
    ids, mask, labels = batch()
    want = sequence_logps(fresh(), ids, mask, labels, with_kl=True)
    model = fresh()
    base = model.get_base_model()
    for layer in base.model.layers:
        fully_shard(layer)
    fully_shard(base if root == "causal_lm" else base.model)
    head = base.get_output_embeddings().weight
    out = {"root": root, "lm_head_weight": type(head).__name__,
           "lm_head_tied": head is base.get_input_embeddings().weight}

    def plain():
        base(input_ids=ids, attention_mask=mask).logits.sum().backward()
        return "ok"

    def logps():
        got = sequence_logps(model, ids, mask, labels, with_kl=True)
        (got.logps.sum() + got.kl.sum()).backward()
        same = torch.allclose(got.logps, want.logps, rtol=1e-5, atol=1e-4) and torch.allclose(
            got.kl, want.kl, rtol=1e-4, atol=1e-6)
        return "ok, equal to unsharded" if same else "ran, DIFFERENT from unsharded"

    def sample():
        with torch.no_grad():
            return f"ok {tuple(model.generate(input_ids=ids[:, :4], attention_mask=mask[:, :4], max_new_tokens=3, do_sample=False).shape)}"  # noqa: E501

    out["model forward+backward"] = attempt(plain)
    out["sequence_logps with KL (disabled adapter) + backward"] = attempt(logps)
    out["generate"] = attempt(sample)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="JSONL file for rank 0's results")
    args = p.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    rows = [probe("causal_lm"), probe("decoder")]
    if dist.get_rank() == 0:
        rows = [{"torch": torch.__version__, "world_size": dist.get_world_size(), **r}
                for r in rows]
        for r in rows:
            print(json.dumps(r))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
