"""FSDP2 for the policy (``train.sharding=fsdp2``): torch's `fully_shard`, applied here, with
accelerate kept for the process group, the loader and the clocks.

Layout: each decoder layer is one FSDP unit and the decoder (``base.model``, embeddings and
final norm) the root unit. pdalign's log-prob path calls the decoder and then its own chunked LM
head (`pdalign.policy.logprobs`), and sampling enters through the model's forward; with the
decoder as the root both run through FSDP's hooks, which gather each unit's parameters for its
forward and free them after (`experiments/fsdp_probe.py`; with the causal LM as the root, what
accelerate's FSDP plugin builds, the log-prob path fails on "mixed torch.Tensor and DTensor").
The LM head stays outside: a full, frozen copy per rank (for a tied head, the embedding's
values at load time), which is right for an adapter (LoRA) run and why full fine-tuning is
refused here. QLoRA shards too: fully_shard splits the packed 4-bit storage (uint8) like any
parameter and gathers it for each layer's forward, the numbers equal to DDP's (tested on two CPU
ranks); the optimizer must then be torch's AdamW, as bitsandbytes' 8-bit update does not take
sharded parameters.

Every collective must be entered by every rank: rollouts and held-out sampling run
``generate`` with ``synced_gpus`` (a rank that finished keeps stepping until all have), and
held-out evaluation runs on every rank (`pdalign.training.trainer`), the main one logging.
Checkpoints: the adapter gathered in full for ``model/`` (what export and eval read), the
sharded parameters and optimizer state through torch.distributed.checkpoint (each rank its
shard, ``state/sharded/``), read back on resume (`save_sharded`, `load_sharded`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from pdalign.policy.logprobs import decoder_and_head
from pdalign.policy.models import has_adapter

log = logging.getLogger("pdalign")

def check_sharding(cfg, distributed_type) -> bool:
    """True when this run shards with FSDP2; the config's errors before any model loads.

    Args:
        cfg: the run config (``train.sharding``, ``peft``, ``train.optimizer``).
        distributed_type: accelerate's `DistributedType` of this launch.
    """
    sharding = str(cfg.train.get("sharding", "ddp"))  # its value is checked by check_config
    plugin = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")
    if plugin or str(distributed_type) in ("FSDP", "DistributedType.FSDP"):
        raise ValueError("this launch asks for accelerate's FSDP plugin (distributed_type: FSDP "
                         "or ACCELERATE_USE_FSDP), whose root unit, the causal LM, leaves "
                         "pdalign's log-prob path on sharded weights, and which on CPU silently "
                         "runs DDP instead; launch with a plain multi-process config "
                         "(experiments/accelerate/fsdp2.yaml) and train.sharding=fsdp2, which "
                         "shards the policy itself")
    if sharding != "fsdp2":
        return False
    peft = cfg.peft
    if str(peft.get("adapter", "lora")) == "none":
        raise ValueError("train.sharding=fsdp2 needs an adapter (peft=lora): the LM head stays a "
                         "full copy outside the sharded decoder, so with peft=none its "
                         "gradient would be reduced by no collective and a tied head would "
                         "train apart from its embedding. Use peft=lora, or train.sharding=ddp")
    optimizer = str(peft.get("optimizer") or cfg.train.optimizer)
    if optimizer != "adamw":
        key = "peft.optimizer" if peft.get("optimizer") else "train.optimizer"
        raise ValueError(f"train.sharding=fsdp2 needs torch's AdamW ({key}=adamw): {optimizer} is "
                         f"bitsandbytes', whose update has no rule for sharded parameters "
                         f"(\"Operator bitsandbytes.optimizer_update_32bit.default does not have "
                         f"a sharding strategy registered\"); the optimizer state is sharded "
                         f"anyway, 1/world of it per rank")
    return True


def shard_policy(model) -> None:
    """`fully_shard` each decoder layer, then the decoder as the root unit; in place. Needs the
    process group (accelerate's) and runs on every rank. A frozen reference copy is not
    sharded (adapter runs have none)."""
    if not has_adapter(model):
        raise ValueError("train.sharding=fsdp2: the policy has no adapter (peft=lora)")
    decoder, _ = decoder_and_head(model)
    for layer in decoder.layers:
        fully_shard(layer)
    fully_shard(decoder)
    log.info("FSDP2: %d decoder layers and the decoder sharded over %d ranks; LM head "
             "replicated (frozen)", len(decoder.layers), dist.get_world_size())


def local_norm(value) -> torch.Tensor:
    """A gradient norm as a plain tensor (a DTensor's full value)."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The policy's trainable parameters (the adapter) gathered in full on CPU: a collective,
    every rank calls it; the tensors land on rank 0, the others get an empty dict."""
    return get_model_state_dict(model, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))


def save_sharded(model, optimizer, out: Path) -> None:
    """Each rank's shard of the trainable parameters and the optimizer state, into ``out``
    (torch.distributed.checkpoint; a collective)."""
    opts = StateDictOptions(ignore_frozen_params=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=opts)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(out))


def load_sharded(model, optimizer, src: Path) -> None:
    """Read `save_sharded`'s checkpoint back into ``model`` and ``optimizer`` (a collective).
    Only the trainable parameters are in it; any of those missing is an error."""
    opts = StateDictOptions(ignore_frozen_params=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=opts)
    state = {"model": model_sd, "optimizer": optim_sd}
    dcp.load(state, checkpoint_id=str(src))
    result = set_state_dict(model, optimizer, model_state_dict=state["model"],
                            optim_state_dict=state["optimizer"],
                            options=StateDictOptions(ignore_frozen_params=True, strict=False))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(result.missing_keys) & trainable)
    if missing:
        raise RuntimeError(f"the sharded checkpoint {src} lacks trainable parameters "
                           f"{missing[:3]}{' ...' if len(missing) > 3 else ''}: it was written "
                           f"by another adapter configuration; start a new run")
