"""How much memory one rank of a run needs: a small model of its parts, for sizing a cluster.

Peak memory of one rank = runtime + weights + adapter (weights, gradients, optimizer state) +
saved activations of one micro-batch + the LM head's working buffers + the rollout KV cache
(+ a frozen reference copy for ``peft=none``). Each part is counted from the model's shape and
the run's settings, nothing is fitted to a measurement:

- weights: every linear layer at ``weight_bytes`` (bf16 = 2 when held in the compute dtype,
  `pdalign.policy.models.hold_frozen_linears`; fp32 = 4; nf4 with double quantization =
  4.127 bits); the embeddings (and an untied LM head) and the norms stay in their load dtype
  (bitsandbytes does not quantize them). FSDP2 keeps 1/W of them per rank plus the unsharded
  weights of the two decoder layers in flight (the current one and the prefetched one), and
  the LM head whole (it stays outside the sharded decoder, `pdalign.training.sharding`);
- adapter: LoRA A and B of each target module (r·(d_in + d_out) parameters) in fp32, their
  fp32 gradients and the optimizer's two moments (fp32 for AdamW, 8-bit for AdamW8bit); FSDP2
  shards all three;
- activations: what autograd saves per token and decoder layer for the backward that reaches
  the adapters: the inputs of the attention and MLP projections, the rotated q and k, the
  attention's q, k, v and output, the MLP's gate, up and activation outputs (elements
  8·h + 3·kv + 4·i) at ``activation_bytes``, plus the two norms' fp32 inputs. pdalign loads
  the weights in fp32 and computes under autocast, so the residual stream and what is saved
  from it stay fp32: the default 4 bytes holds for bf16 runs too (first counted at the compute
  dtype's 2 bytes, which predicted 0.71x the measured peak of a bf16 SmolLM2 run;
  ``experiments/results/memory/``); with ``recompute=k`` every k-th layer keeps only its fp32
  input, and one layer is whole while it is recomputed;
- LM head: pdalign never builds (tokens, vocabulary) logits; a chunk of fp32 logits of
  ``chunk_elements`` (2^23 on CPU, 2^26 on a GPU) and its softmax and gradient work buffers;
- rollout KV cache: keys and values of every layer for the prompts and new tokens of one
  ``generate`` call, in the compute dtype;
- runtime: the process before any model (CPU: Python with torch, transformers and peft
  imported, measured; GPU: the CUDA context and allocator reserve, an assumption stated in
  ``GPU_RUNTIME_GB``).

`experiments/memory_table.py` prints the sizing table of the README's "Scaling out" section
and checks the model against the peak RSS of real CPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

GIB = 1024 ** 3
GPU_RUNTIME_GB = 1.0  # CUDA context (~0.5 GB) plus the caching allocator's slack: an assumption
CHUNK_ELEMENTS = {"cpu": 1 << 23, "gpu": 1 << 26}  # pdalign.policy.logprobs' LM-head chunks
NF4_BYTES = 4.127 / 8  # 4-bit codes, 8-bit absmax per 64, fp32 second-level scale per 256 blocks
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's sizes (Llama family naming).

    Args:
        layers, hidden, intermediate, heads, kv_heads, vocab: the config's sizes.
        tied: the LM head is the input embedding.
    """

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.projections().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + self.embedding_params + norms

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a transformers config (LlamaConfig and look-alikes)."""
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, heads=config.num_attention_heads,
                   kv_heads=getattr(config, "num_key_value_heads", None)
                   or config.num_attention_heads,
                   vocab=config.vocab_size, tied=bool(config.tie_word_embeddings))


# The configs shipped in conf/model/ and the 70B of the sizing table (their published configs).
SHAPES: Mapping[str, ModelShape] = {
    "smollm2_135m": ModelShape(30, 576, 1536, 9, 3, 49152, tied=True),
    "llama3_8b": ModelShape(32, 4096, 14336, 32, 8, 128256, tied=False),
    "llama3_70b": ModelShape(80, 8192, 28672, 64, 8, 128256, tied=False),
}


@dataclass(frozen=True)
class RunShape:
    """What a run puts on each rank.

    Args:
        adapter: ``lora``, ``qlora`` (4-bit base) or ``none`` (full fine-tune: every weight
            trains, and the reference is a frozen copy).
        compute_bytes: 2 for bf16, 4 for fp32 (the ``train.dtype`` rule's choice).
        tokens: tokens through one micro-batch's forward (chosen + rejected and any constraint
            rows), the saved activations' count.
        rollout_tokens: prompt + new tokens of one ``generate`` call (batch x length); 0 = none.
        world: ranks; sharding: ``ddp`` (each rank all weights) or ``fsdp2``.
        r, targets: LoRA rank and target modules.
        optimizer: ``adamw`` (fp32 moments) or ``adamw_8bit``.
        recompute: ``train.activation_checkpointing`` (0 = off, k = every k-th layer).
        device: ``cpu`` or ``gpu`` (the LM-head chunk and the runtime term).
        runtime_bytes: the process before any model; default: the GPU assumption, or on CPU
            the value `experiments/memory_table.py` measures.
        embed_bytes: bytes per element of the embeddings and norms, which stay in the load
            dtype: 4, as pdalign loads weights in fp32 (held-in-dtype and 4-bit apply to the
            linear layers only).
        activation_bytes: bytes per saved activation element (4: fp32 residual stream).
    """

    adapter: str = "lora"
    compute_bytes: int = 2
    tokens: int = 1280
    rollout_tokens: int = 0
    world: int = 1
    sharding: str = "ddp"
    r: int = 16
    targets: tuple[str, ...] = LORA_TARGETS
    optimizer: str = "adamw"
    recompute: int = 0
    device: str = "gpu"
    runtime_bytes: float | None = None
    embed_bytes: int = 4
    activation_bytes: int = 4


def predict(model: ModelShape, run: RunShape) -> dict[str, float]:
    """Predicted peak bytes per rank, by part, and their ``total``."""
    shard = run.world if run.sharding == "fsdp2" else 1
    per_layer_linear = model.linear_params // model.layers
    weight_bytes = (NF4_BYTES if run.adapter == "qlora" else
                    4 if run.adapter == "none" else run.compute_bytes)
    embed = (model.embedding_params + (2 * model.layers + 1) * model.hidden) * run.embed_bytes
    full_weights = model.linear_params * weight_bytes + embed
    weights = full_weights / shard
    if shard > 1:  # the layers in flight are whole: the current one and the prefetched one
        weights += 2 * per_layer_linear * max(weight_bytes, run.compute_bytes)
        # the LM head is a full copy on every rank, outside the sharded decoder
        # (pdalign.training.sharding); a tied one becomes that copy beside the sharded embedding
        head = model.vocab * model.hidden * run.embed_bytes
        weights += head if model.tied else head * (1 - 1 / shard)
    parts: dict[str, float] = {"weights": weights}
    if run.adapter == "none":  # every weight trains: fp32 grads and moments; a frozen reference
        moments = 8 if run.optimizer == "adamw" else 2
        parts["adapter+optimizer"] = model.params * (4 + moments) / shard
        parts["reference copy"] = (model.linear_params * run.compute_bytes + embed) / shard
    else:
        proj = model.projections()
        lora = model.layers * sum(run.r * sum(proj[t]) for t in run.targets)
        moments = 8 if run.optimizer == "adamw" else 2
        parts["adapter+optimizer"] = lora * (4 + 4 + moments) / shard
    h, kv, i = model.hidden, model.kv_dim, model.intermediate
    per_token_layer = (8 * h + 3 * kv + 4 * i) * run.activation_bytes + 2 * h * 4
    # every k-th layer recomputed keeps only its fp32 input; one layer is whole while it recomputes
    ckpt = 0 if run.recompute == 0 else -(-model.layers // run.recompute)
    per_token = ((model.layers - ckpt) * per_token_layer + ckpt * h * 4
                 + (per_token_layer if ckpt else 0))
    parts["activations"] = run.tokens * per_token
    parts["lm head"] = 3 * CHUNK_ELEMENTS[run.device] * 4
    parts["rollout kv cache"] = (2 * model.layers * kv * run.rollout_tokens
                                 * run.compute_bytes)
    runtime = run.runtime_bytes if run.runtime_bytes is not None else GPU_RUNTIME_GB * GIB
    parts["runtime"] = runtime
    parts["total"] = sum(parts.values())
    return parts


def sizing_rows(models: Mapping[str, ModelShape] | None = None, *, tokens: int = 8192,
                rollout_tokens: int = 8 * 512, world: int = 8) -> list[dict]:
    """The README's table: 8B and 70B, LoRA and QLoRA, DDP and FSDP2 on ``world`` GPUs, a
    micro-batch of ``tokens`` and rollouts of ``rollout_tokens``, bf16."""
    models = models or {k: SHAPES[k] for k in ("llama3_8b", "llama3_70b")}
    rows = []
    base = RunShape(tokens=tokens, rollout_tokens=rollout_tokens, world=world)
    for name, shape in models.items():
        for adapter in ("lora", "qlora"):
            for sharding in ("ddp", "fsdp2"):
                # QLoRA's 8-bit AdamW under DDP; FSDP2 takes torch's AdamW only
                optimizer = "adamw_8bit" if adapter == "qlora" and sharding == "ddp" else "adamw"
                run = replace(base, adapter=adapter, optimizer=optimizer, sharding=sharding)
                parts = predict(shape, run)
                again = predict(shape, replace(run, recompute=1))  # activation checkpointing
                rows.append({"model": name, "params_b": shape.params / 1e9, "adapter": adapter,
                             "sharding": sharding, "world": world,
                             **{k: v / GIB for k, v in parts.items()},
                             "activations, recompute=1": again["activations"] / GIB,
                             "total, recompute=1": again["total"] / GIB})
    return rows
