"""Batched sampling from the policy: `generate` samples responses with the KV cache
(``model.generate`` on left-padded chat prompts) and rebuilds right-padded prompt+response rows
that the log-prob forward scores (a `Rollout`)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from pdalign.policy.models import dequantized_4bit_once, eval_mode, is_sharded

Tensor = torch.Tensor
def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of one user turn plus the assistant header, as pdalign.data.preference builds prompts."""
    if tokenizer.chat_template is None:
        return list(tokenizer(prompt)["input_ids"])
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)
    # The template writes its own special tokens; adding BOS again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@contextmanager
def _seeded(seed: int | None, device: torch.device):
    """Fork torch's RNG (CPU and, where used, the model's accelerator) and seed it."""
    if seed is None:
        yield
        return
    on_cpu = device.type == "cpu"
    with torch.random.fork_rng(devices=[] if on_cpu else [device],
                               device_type=None if on_cpu else device.type):
        torch.manual_seed(seed)
        yield


@contextmanager
def _head_in_autocast_dtype(model, device: torch.device):
    """Hold a frozen float32 LM head in the autocast dtype for one sampling call.

    Autocast casts a frozen weight anew at every use: for the head (tied to the embedding, so
    `pdalign.policy.models.hold_frozen_linears` leaves it float32) that is V x H values per decode
    step, ~15% of a bf16 rollout on SmolLM2. Cast once here, the matmul sees the same values
    (round to nearest either way), so the samples do not change. The model's own head
    parameter (and its tie to the embedding) is put back on exit."""
    kind = device.type
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if (weight is None or not torch.is_autocast_enabled(kind) or weight.requires_grad
            or weight.dtype != torch.float32):
        yield
        return
    head.weight = torch.nn.Parameter(weight.detach().to(torch.get_autocast_dtype(kind)),
                                     requires_grad=False)
    try:
        yield
    finally:
        head.weight = weight


def _truncate_at_eos(new_tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, tok in enumerate(new_tokens):
        if tok in eos_ids:
            return new_tokens[:i + 1]
    return new_tokens


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids]) - {None}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def right_pad(rows: list[tuple[list[int], list[int]]], pad_id: int
              ) -> tuple[Tensor, Tensor, Tensor]:
    """(prompt ids, response ids) pairs -> input_ids, attention_mask, labels, each (N, T)."""
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        n_p, n = len(p), len(p) + len(r)
        input_ids[i, :n] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, :n] = 1
        labels[i, n_p:n] = torch.tensor(r, dtype=torch.long)
    return input_ids, attention_mask, labels


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
             top_p: float, batch_size: int, seed: int | None = None) -> Rollout:
    """Sample one response per prompt from the policy.

    Pure temperature + nucleus sampling (top_k is off, no repetition penalty), so with
    temperature 1 and top_p 1 the samples follow pi itself, as the score-function surrogate
    assumes. temperature 0 decodes greedily. The model runs in eval mode without gradients and
    its previous mode is restored.

    Args:
        model: a causal LM or PeftModel.
        tokenizer: its tokenizer (chat template applied with add_generation_prompt=True).
        prompts: N user messages.
        max_new_tokens: generation budget per response, EOS included.
        temperature: softmax temperature; 0 = greedy.
        top_p: nucleus mass in (0, 1]; 1 = off.
        batch_size: prompts per ``generate`` call.
        seed: seeds torch's RNG (forked, so the caller's stream is untouched); the same seed,
            model and prompts give the same samples. None: use the current RNG.
    Returns a `Rollout` on CPU (tensors right-padded to the longest prompt+response).
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} "
                         f"and {batch_size}")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    sampling = {"do_sample": False} if temperature == 0 else {
        "do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0}
    prompt_ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    # sharded (FSDP2): each decode step is a collective, so a rank whose samples have all
    # stopped keeps stepping until every rank's have
    synced = is_sharded(model) and dist.is_initialized() and dist.get_world_size() > 1
    responses: list[list[int]] = []
    starts = range(0, len(prompts), batch_size)
    with eval_mode(model), _seeded(seed, device), _head_in_autocast_dtype(model, device), \
            dequantized_4bit_once(model):
        for start in tqdm(starts, desc="rollout", leave=False, disable=len(starts) <= 2):
            batch = prompt_ids[start:start + batch_size]
            width = max(len(p) for p in batch)
            # Left padding keeps every prompt's last token at the same position for generate.
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch],
                                device=device)
            out = model.generate(input_ids=ids, attention_mask=mask,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                 eos_token_id=sorted(eos_ids), repetition_penalty=1.0,
                                 use_cache=True, synced_gpus=synced or None,
                                 **sampling)  # (b, width + new)
            for row in out[:, width:].tolist():
                responses.append(_truncate_at_eos(row, eos_ids))
    input_ids, attention_mask, labels = right_pad(list(zip(prompt_ids, responses)), pad_id)
    return Rollout(
        prompts=list(prompts),
        responses=tokenizer.batch_decode(responses, skip_special_tokens=True),
        input_ids=input_ids, attention_mask=attention_mask, labels=labels,
        response_lengths=torch.tensor([len(r) for r in responses], dtype=torch.long),
    )


@dataclass
class Rollout:
    """N sampled responses, as text and as right-padded rows ready for a scoring forward."""

    prompts: list[str]
    responses: list[str]  # decoded, special tokens skipped
    input_ids: Tensor  # (N, T) prompt + response, right-padded with the pad id
    attention_mask: Tensor  # (N, T) 1 on prompt and response tokens
    labels: Tensor  # (N, T) response ids; -100 on prompt and padding
    response_lengths: Tensor  # (N,) long, response tokens incl. EOS where sampled
    costs: dict[str, Tensor] = field(default_factory=dict)  # name -> (N,), set by the manager
    old_logps: Tensor | None = None  # (N,) log pi(y|x) at the first scoring forward
    step: int = 0  # optimizer step at which the samples were drawn

    def __len__(self) -> int:
        return len(self.prompts)

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
