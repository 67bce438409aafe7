"""Batched sampling from the policy: `generate` samples responses with the KV cache (on
left-padded chat prompts, a row leaving the batch once it has sampled EOS) and rebuilds
right-padded prompt+response rows that the log-prob forward scores (a `Rollout`)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from pdalign.policy.models import dequantized_4bit_once, eval_mode, is_sharded, lora_merged_once

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
    its previous mode is restored. Decoded by `decode` (a row leaves its batch at EOS) on LoRA
    weights merged once (`pdalign.policy.models.lora_merged_once`); a model sharded over
    several ranks goes through ``model.generate`` with synced GPUs instead, every rank stepping
    until all have stopped (the same distribution, drawn by ``torch.multinomial``).

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
            dequantized_4bit_once(model), lora_merged_once(model):
        for start in tqdm(starts, desc="rollout", leave=False, disable=len(starts) <= 2):
            batch = prompt_ids[start:start + batch_size]
            width = max(len(p) for p in batch)
            # Left padding keeps every prompt's last token at the same position for generate.
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch],
                                device=device)
            if not synced:
                responses.extend(decode(model, ids, mask, max_new_tokens=max_new_tokens,
                                        eos_ids=eos_ids, temperature=temperature,
                                        top_p=top_p))
                continue
            out = model.generate(input_ids=ids, attention_mask=mask,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                 eos_token_id=sorted(eos_ids), repetition_penalty=1.0,
                                 use_cache=True, synced_gpus=True,
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


def decode(model, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
           eos_ids: set[int], temperature: float, top_p: float) -> list[list[int]]:
    """Continue left-padded prompts token by token with the KV cache; the new tokens of each row,
    EOS included where sampled.

    A row leaves the batch (and the cache) at its EOS, so a batch whose samples stop early no
    longer pays for its longest one at every step, as ``model.generate`` does. Sampling is
    `sample_next`: temperature and nucleus only, none of the model's generation-config
    processors (the distribution the score-function surrogate assumes). Call without gradients,
    in eval mode, under the caller's autocast; the tokens come from torch's current RNG.
    """
    n = input_ids.shape[0]
    eos = torch.tensor(sorted(eos_ids), device=input_ids.device)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                use_cache=True, logits_to_keep=1)
    cache, logits = out.cache, out.logits[:, -1]  # transformers >= 5.24 names it `cache`
    position = positions[:, -1:] + 1
    rows = torch.arange(n, device=input_ids.device)  # batch row -> prompt index
    tokens: list[list[int]] = [[] for _ in range(n)]
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_p)
        for i, t in zip(rows.tolist(), nxt.tolist()):
            tokens[i].append(t)
        going = ~torch.isin(nxt, eos)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, nxt, attention_mask, position = (
                rows[keep], nxt[keep], attention_mask[keep], position[keep])
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], 1)
        out = model(input_ids=nxt[:, None], attention_mask=attention_mask,
                    position_ids=position, cache=cache, use_cache=True)
        logits, position = out.logits[:, -1], position + 1
    return tokens


def sample_next(logits: Tensor, temperature: float, top_p: float) -> Tensor:
    """One token per row of ``logits`` (N, V): argmax where ``temperature`` is 0, else a draw
    from softmax(logits / temperature) restricted to its nucleus (the fewest most likely tokens
    whose mass reaches ``top_p``; 1 keeps every token), renormalized.

    Drawn by inverting the cumulative distribution with one uniform per row (from torch's
    current RNG): the same distribution as ``torch.multinomial``, without its V exponential
    draws per row, which were a tenth of a CPU decode step on a 49k-token vocabulary.
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    order = None
    if top_p < 1:
        probs, order = probs.sort(-1, descending=True)
        before = probs.cumsum(-1) - probs  # mass of the more likely tokens; 0 for the first
        probs = probs.masked_fill(before >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device) * cdf[:, -1:]
    picked = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)
    return (picked if order is None else order.gather(-1, picked)).squeeze(-1)


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
