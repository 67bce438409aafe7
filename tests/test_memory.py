"""The memory model (`pdalign.training.memory`) on a shape small enough to count by hand, and the
shipped shapes against the parameter counts their models report."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pdalign.training.memory import GIB, SHAPES, ModelShape, RunShape, predict, sizing_rows

# 2 layers, hidden 8, MLP 16, 2 heads of 4 with 1 KV head (kv_dim 4), vocabulary 10, tied head
SMALL = ModelShape(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10, tied=True)
RUN = RunShape(adapter="lora", compute_bytes=2, tokens=10, r=2, device="gpu",
               runtime_bytes=1000, embed_bytes=2, activation_bytes=2)


def test_parts_by_hand():
    """Per layer: q 8x8 = 64, k 8x4 = 32, v 32, o 64, gate 8x16 = 128, up 128, down 128: 576,
    x2 layers = 1152 linear parameters; embedding 10x8 = 80; norms (2x2 + 1) x 8 = 40.
    weights: 1152 x 2 B + (80 + 40) x 2 B = 2544. LoRA r=2 on q/k/v/o: 2 x (16 + 12 + 12 + 16)
    = 112 per layer, 224 in all, x (4 fp32 + 4 grad + 8 AdamW moments) = 3584. Activations per
    token and layer: (8x8 + 3x4 + 4x16) x 2 B + 2 x 8 x 4 B (fp32 norm inputs) = 344, x 2 layers
    x 10 tokens = 6880. LM head: 3 x 2^26 x 4 B on a GPU."""
    assert SMALL.params == 1152 + 80 + 40 == 1272
    parts = predict(SMALL, RUN)
    assert parts["weights"] == 2544
    assert parts["adapter+optimizer"] == 3584
    assert parts["activations"] == 6880
    assert parts["lm head"] == 3 * 2**26 * 4
    assert parts["rollout kv cache"] == 0 and parts["runtime"] == 1000
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_fsdp2_recompute_qlora_rollouts_and_8bit_by_hand():
    """FSDP2 on 4 ranks: weights 2544 / 4 + 2 whole layers in flight (2 x 576 x 2 B) + the LM
    head whole outside the sharded decoder (tied: a copy of the 10 x 8 embedding, 160 B) = 3100;
    untied (embeddings 2 x 80): (1152 + 160 + 40) x 2 / 4 + 2304 + 160 x 3/4 = 3100 as well,
    the head's shard replaced by the whole head. The adapter 3584 / 4 = 896. recompute=1: both layers keep only their fp32 input (2 x 8 x 4
    B) and one is whole while recomputed (344): 408 per token, 4080. QLoRA: linears at 4.127
    bits = 1152 x 4.127 / 8, embeddings still 2 B; 8-bit moments: 224 x (4 + 4 + 2). A rollout
    of 20 tokens: keys and values, 2 x 2 layers x 4 x 20 x 2 B = 640."""
    sharded = predict(SMALL, replace(RUN, sharding="fsdp2", world=4))
    assert sharded["weights"] == pytest.approx(3100)
    untied = replace(SMALL, tied=False)
    assert predict(untied, replace(RUN, sharding="fsdp2", world=4))["weights"] == \
        pytest.approx((1152 + 160 + 40) * 2 / 4 + 2304 + 160 * 3 / 4)
    assert sharded["adapter+optimizer"] == pytest.approx(896)
    assert predict(SMALL, replace(RUN, sharding="ddp", world=4))["weights"] == 2544
    assert predict(SMALL, replace(RUN, recompute=1))["activations"] == 4080
    q = predict(SMALL, replace(RUN, adapter="qlora", optimizer="adamw_8bit",
                               rollout_tokens=20))
    assert q["weights"] == pytest.approx(1152 * 4.127 / 8 + 240)
    assert q["adapter+optimizer"] == 224 * 10
    assert q["rollout kv cache"] == 640


def test_full_fine_tune_counts_fp32_weights_moments_and_the_reference_copy():
    """peft=none: linears at 4 B (1152 x 4 + 240 = 4848), every parameter with an fp32 gradient
    and two moments (1272 x 12), and a frozen reference copy in the compute dtype (2544)."""
    parts = predict(SMALL, replace(RUN, adapter="none"))
    assert parts["weights"] == 4848
    assert parts["adapter+optimizer"] == 1272 * 12
    assert parts["reference copy"] == 2544


def test_shipped_shapes_match_their_models():
    """SmolLM2-135M-Instruct has 134,515,008 parameters (its save_pretrained weights, tied
    head); Llama-3-8B 8.03 B and Llama-3-70B 70.55 B (their model cards: 8B / 70B)."""
    from pdalign.policy.models import build_tiny

    assert SHAPES["smollm2_135m"].params == 134_515_008
    assert SHAPES["llama3_8b"].params == pytest.approx(8.03e9, rel=0.01)
    assert SHAPES["llama3_70b"].params == pytest.approx(70.55e9, rel=0.01)
    tiny = build_tiny(97, hidden_size=64, num_layers=2, intermediate_size=128)
    shape = ModelShape.from_config(tiny.config)
    assert shape.params == sum(p.numel() for p in tiny.parameters())


def test_sizing_table_rows_and_fsdp2_shards_the_weights():
    rows = sizing_rows()
    assert len(rows) == 8  # 2 models x LoRA/QLoRA x DDP/FSDP2
    by = {(r["model"], r["adapter"], r["sharding"]): r for r in rows}
    for model in ("llama3_8b", "llama3_70b"):
        for adapter in ("lora", "qlora"):
            ddp, fsdp = by[(model, adapter, "ddp")], by[(model, adapter, "fsdp2")]
            assert fsdp["weights"] < ddp["weights"] / 2
            assert fsdp["total, recompute=1"] < ddp["total, recompute=1"]
    big = SHAPES["llama3_70b"]  # bf16 linears, fp32 embeddings and norms (loaded fp32)
    assert by[("llama3_70b", "lora", "ddp")]["weights"] == pytest.approx(
        (big.linear_params * 2 + (big.params - big.linear_params) * 4) / GIB)
