"""Per-sequence response log-probs (and exact per-token KL) without full-vocabulary logits.

One decoder forward gives hidden states ``(N, T, H)``; only the positions that predict a
response token (``labels != -100``) go through the LM head, in chunks of tokens and, within a
chunk, in vocabulary pieces, so the ``(N, T, V)`` logits tensor is never built (V = 49k for
SmolLM2, 128k for Llama-3).

For a frozen LM head (every LoRA/QLoRA run) a fused autograd function computes, per chunk,
the label log-prob ``z_y - logsumexp(z)`` and its gradient with respect to the hidden state,
``d logp / d h = W[y] - softmax(z) @ W``, which is only ``(M, H)``. Backward is then one
multiply: no logits are kept for backward and none are recomputed. The exact per-token
``KL(pi || pi_ref) = sum_v p_v (log p_v - log q_v)`` is fused the same way, with gradient
``d KL / d h = (p * (log p - log q - KL)) @ W``. A trainable LM head (full fine-tuning)
takes a generic path: the same per-chunk math under activation checkpointing.

Chosen and rejected share their prompt. With ``pairs=B`` the prompt runs through the decoder
once per pair, keeping its KV cache (with gradients); chosen and rejected then continue from it
at their own positions. Causal attention makes this the same computation as two full rows
(prompt tokens never see the response), minus the prompt's second copy: its decoder FLOPs and
saved activations, for the policy and again for the reference. ``group=k`` does the same for k
rows per prompt (an opener constraint's J openers after each of its prompts), in the block
layout of [chosen ; rejected]: row ``j * pairs + i`` is prompt i's j-th continuation.

``pack=True`` goes further for short continuations (a constraint's opener and pair rows): the
rows' tokens form one token trie, fed as a packed row in which each token attends to its
ancestors only, at its depth as position. Every prefix the rows share runs once: the chat
template's header common to all prompts, each prompt, an opener's first words. No KV cache is
copied; the price is attention under an explicit (L, L) mask, which long answers do not repay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from pdalign.policy import packing
from pdalign.policy.models import has_adapter, reference_mode

# The LM head runs on a chunk of tokens at a time, its logits computed in vocabulary pieces:
# a (chunk, 2048) GEMM output stays in cache, which runs ~1.4x the rate of one (chunk, V) GEMM
# on CPU (K = hidden is small), and the softmax math on a piece is cache-resident too. A chunk
# keeps its (chunk, V) logits as pieces (twice that with a reference): ~32 MiB at 170 tokens
# for V = 49152, on top of every saved activation, so it bounds the step's peak.
# On a GPU the cost is kernel launches, not cache: one piece (the whole vocabulary) and chunks
# of 64 Mi logits (256 MiB fp32; 1365 tokens at V = 49152, 523 at V = 128256).
_CHUNK_ELEMENTS = 1 << 23
_VOCAB_PIECE = 2048
_CHUNK_ELEMENTS_GPU = 1 << 26


@dataclass
class SequenceLogps:
    """Per-sequence results of one forward over a batch of (prompt, response) rows."""

    logps: torch.Tensor  # (N,) summed log pi(y|x) over response tokens
    n_tokens: torch.Tensor  # (N,) float, response token counts
    kl: torch.Tensor | None = None  # (N,) summed per-token KL(pi || pi_ref), or None
    ref_logps: torch.Tensor | None = None  # (N,) summed log pi_ref(y|x), detached, or None
    # (N, R) log pi(stop | x, y_<s) at response position s = 1..R (column s - 1), R the longest
    # response of the rows asked for (`sequence_logps` stop_ids/stop_rows); 0 elsewhere, or None
    stop_logps: torch.Tensor | None = None

    @property
    def mean_logps(self) -> torch.Tensor:  # (N,)
        return self.logps / self.n_tokens.clamp(min=1.0)


def decoder_and_head(model):
    base = model.get_base_model() if has_adapter(model) else model
    return base.get_decoder(), base.get_output_embeddings()


def _hidden_states(model, input_ids, attention_mask) -> torch.Tensor:
    decoder, _ = decoder_and_head(model)
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state  # (N, T, H)


def response_positions(labels: torch.Tensor):
    """Positions whose next token is a response token.

    Args:
        labels: (N, T) token ids, -100 on prompt and padding.
    Returns (mask (N, T-1) over hidden positions, targets (M,), row (M,)).
    """
    mask = labels[:, 1:] != -100  # (N, T-1)
    targets = labels[:, 1:][mask]  # (M,)
    row = mask.nonzero(as_tuple=True)[0]  # (M,)
    return mask, targets, row


@dataclass
class ResponseStates:
    """Hidden states at every position that predicts a response token, rows in order."""

    h: torch.Tensor  # (M, H)
    targets: torch.Tensor  # (M,) the predicted token ids
    row: torch.Tensor  # (M,) the row each token belongs to
    n_tokens: torch.Tensor  # (N,) float, response tokens per row


def _split_groups(input_ids, attention_mask, labels, prompts: int, group: int):
    """Prompt rows and response rows of ``group`` row blocks of ``prompts`` rows each, whose
    row ``j * prompts + i`` is prompt i's j-th continuation ([chosen ; rejected] for group 2).

    Returns (prompt_ids (P, Tp), prompt_mask, prompt_len (P,), resp_ids (kP, Tr), resp_mask,
    resp_labels, order (kP,)), all right-padded, responses prompt-major (prompt 0's k
    continuations, then prompt 1's, ...) to match the prompt cache repeated row by row:
    response row r is batch row ``order[r]``.
    """
    n, width = labels.shape
    rows = group * prompts
    if n < rows:
        raise ValueError(f"sequence_logps(pairs={prompts}, group={group}) needs {rows} rows, "
                         f"got {n}")
    is_resp = labels != -100
    # labels are -100 on the prompt, then the response, then padding
    first = torch.where(is_resp.any(1), is_resp.float().argmax(1), torch.full_like(labels[:, 0], width))
    prompt_len = first[:prompts]
    if not torch.equal(first[:rows].view(group, prompts), prompt_len.expand(group, prompts)):
        raise ValueError(f"sequence_logps(pairs=..., group={group}): rows that should share a "
                         f"prompt (row i and rows pairs+i, 2*pairs+i, ...) have different "
                         f"prompt lengths; pass pairs=None for unrelated rows")
    tp = int(prompt_len.max())
    cols = torch.arange(tp, device=labels.device)
    prompt_mask = (cols[None, :] < prompt_len[:, None]).to(attention_mask.dtype)
    prompt_ids = input_ids[:prompts, :tp] * prompt_mask
    if not torch.equal(input_ids[:rows, :tp].view(group, prompts, tp) * prompt_mask,
                       prompt_ids.expand(group, prompts, tp)):
        raise ValueError(f"sequence_logps(pairs=..., group={group}): row i and rows pairs+i, "
                         f"2*pairs+i, ... must share their prompt tokens; pass pairs=None for "
                         f"unrelated rows")
    order = torch.arange(rows, device=labels.device).view(group, prompts).t().reshape(-1)
    resp_len = is_resp[:rows].sum(1)[order]
    tr = int(resp_len.max())
    idx = first[order][:, None] + torch.arange(tr, device=labels.device)[None, :]
    resp_mask = (torch.arange(tr, device=labels.device)[None, :] < resp_len[:, None])
    idx = idx.clamp(max=width - 1)
    resp_ids = input_ids[order].gather(1, idx) * resp_mask
    resp_labels = labels[order].gather(1, idx).masked_fill(~resp_mask, -100)
    return (prompt_ids, prompt_mask, prompt_len, resp_ids, resp_mask.to(attention_mask.dtype),
            resp_labels, order)


def _shared_prompt_states(model, input_ids, attention_mask, labels, prompts: int,
                          group: int = 2) -> ResponseStates:
    """Response hidden states of ``group * prompts`` rows with each prompt run once, not
    ``group`` times (layout: `_split_groups`).

    The prompt goes through the decoder once (with its KV cache kept, gradients flowing
    through it); each of its continuations goes on from that cache at its own positions.
    Causal attention makes this the same computation as full rows: prompt tokens never attend
    to a response. Saves ``group - 1`` copies of the prompt's decoder FLOPs and saved
    activations, once for the policy and once for the reference.

    When the row blocks differ in length (a long chosen answer beside a short rejected one),
    each block continues in its own call at its own width, so a short block is not padded to
    the long one's; otherwise all continuations run in one call (`_split_blocks`).
    """
    decoder, _ = decoder_and_head(model)
    p_ids, p_mask, p_len, r_ids, r_mask, r_labels, order = _split_groups(
        input_ids, attention_mask, labels, prompts, group)
    out = decoder(input_ids=p_ids, attention_mask=p_mask, use_cache=True)
    h_prompt = out.last_hidden_state  # (P, Tp, H)
    last = h_prompt[torch.arange(prompts, device=p_len.device), p_len - 1]  # (P, H)
    # transformers 5.24 names it `cache` (argument and output); 5.17's `past_key_values` warns
    cache = out.cache
    widths = (r_labels != -100).sum(1).view(prompts, group).amax(0).tolist()  # per block
    if _split_blocks(widths, r_ids.shape[1]):

        widths = [max(1, w) for w in widths]
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        blocks = [_continue(decoder, last, p_mask, p_len, r_ids[j::group, :w],
                            r_mask[j::group, :w], lambda: DynamicCache(kv, config=decoder.config))
                  + (r_labels[j::group, :w],) for j, w in enumerate(widths)]
    else:  # one call: the prompt cache repeated row by row (prompt-major), then reordered
        def repeated():
            cache.batch_repeat_interleave(group)
            return cache

        h_all = _continue(decoder, last.repeat_interleave(group, dim=0),
                          p_mask.repeat_interleave(group, dim=0), p_len.repeat_interleave(group),
                          r_ids, r_mask, repeated)[0]
        back = order.argsort()  # prompt-major -> the batch's row blocks
        blocks = [(h_all[back], r_labels[back])]
    hs, targets, rows, counts = [], [], [], []
    for h, lab in blocks:  # in the batch's row order: block 0's rows, then block 1's, ...
        mask = lab != -100
        hs.append(h[mask])
        targets.append(lab[mask])
        rows.append(mask.nonzero(as_tuple=True)[0] + sum(c.shape[0] for c in counts))
        counts.append(mask.sum(1).float())
    return ResponseStates(torch.cat(hs), torch.cat(targets), torch.cat(rows), torch.cat(counts))


SPLIT_CALL_TOKENS = 16  # what one more decoder call costs, in padded tokens per row


def _split_blocks(widths: list[int], width: int) -> bool:
    """Continue each row block in its own call when that feeds at least 20% fewer tokens than
    one call padded to the widest block (``widths``: each block's widest response), and the
    tokens saved per row pay for the extra calls (`SPLIT_CALL_TOKENS` each). Without the second
    rule an opener constraint's five short openers (1-3 tokens) took five decoder calls and
    their backward: 1.30x the time of one padded call on SmolLM2 (bf16, 2 threads), and 1.14x
    for five whole refusals of 7-14 tokens; a DPO pair with a 150- and a 30-token answer still
    splits."""
    saved = len(widths) * width - sum(widths)
    return (len(widths) > 1 and saved >= 0.2 * len(widths) * width
            and saved >= SPLIT_CALL_TOKENS * (len(widths) - 1))


def _continue(decoder, last, p_mask, p_len, r_ids, r_mask, make_cache) -> tuple[torch.Tensor]:
    """Hidden states (R, Tr, H) predicting each response token of ``r_ids`` (R, Tr): column 0
    is the prompt's last state ``last`` (R, H), the others come from feeding the response
    (but its last token, which predicts nothing) after the prompt cache ``make_cache()``."""
    cols = [last[:, None]]
    if r_ids.shape[1] > 1:
        steps = torch.arange(r_ids.shape[1] - 1, device=p_len.device)
        cont = decoder(input_ids=r_ids[:, :-1],
                       attention_mask=torch.cat([p_mask, r_mask[:, :-1]], dim=1),
                       position_ids=p_len[:, None] + steps[None, :],
                       cache=make_cache(), use_cache=True)
        cols.append(cont.last_hidden_state)
    return (torch.cat(cols, dim=1),)


def _packed_states(model, input_ids, attention_mask, labels,
                   budget: int | None = None) -> ResponseStates | None:
    """Response hidden states of right-padded rows with every shared token prefix run once:
    the rows' tokens go into a token trie (the chat template's system header is shared by every
    row, a prompt by its continuations, an opener's first words by the openers that start with
    them), fed as one packed row (or several, `packing.PACK_TOKENS`) in which each node attends to
    ancestors only (a 4D mask), at its depth as position. A node's state depends on its
    ancestors alone (causal attention, positions by depth), so this is the computation of the
    full rows, minus every repeated prefix and with no KV cache to copy. None where the
    decoder's attention takes no custom 4D mask (only ``sdpa`` is used) or a row is not
    right-padded: the caller takes another path."""
    decoder, _ = decoder_and_head(model)
    if getattr(decoder.config, "_attn_implementation", None) != "sdpa":
        return None
    n, width = labels.shape
    lengths = attention_mask.sum(1)
    cols = torch.arange(width, device=labels.device)
    if not torch.equal(attention_mask.bool(), cols[None, :] < lengths[:, None]):
        return None
    mask, targets, row = response_positions(labels)  # mask (N, T-1): position p predicts p+1
    # each row up to its last predicting position (padding and a trailing label-less tail cut)
    last = torch.where(mask.any(1), width - 1 - mask.flip(1).float().argmax(1), 0).tolist()
    ids = input_ids.tolist()
    node_of = [[0] * (width - 1) for _ in range(n)]  # (row, position) -> index in the states
    states, offset = [], 0
    for members, paths in packing.trie_groups([ids[i][:last[i]] for i in range(n)],
                                              budget or packing.PACK_TOKENS):
        tokens, depth, allowed = (t.to(input_ids.device)
                                  for t in packing.packed_row(ids, members, paths))
        out = decoder(input_ids=tokens, attention_mask=allowed, position_ids=depth,
                      use_cache=False)
        states.append(out.last_hidden_state[0])
        for i, path in zip(members, paths):
            node_of[i][:len(path)] = [offset + node for node in path]
        offset += tokens.shape[1]
    picked = torch.tensor(node_of, dtype=torch.long, device=input_ids.device)[mask]
    return ResponseStates(torch.cat(states)[picked], targets, row, mask.sum(1).float())


def _drops_kv_cache(model) -> bool:
    """True when a decoder layer would drop the KV cache in this call: transformers turns the
    cache off in layers under activation checkpointing while in training mode."""
    decoder, _ = decoder_and_head(model)
    return any(getattr(m, "gradient_checkpointing", False) and m.training
               for m in decoder.modules())


def response_states(model, input_ids, attention_mask, labels, pairs: int | None = None,
                    group: int = 2, pack: bool = False) -> ResponseStates:
    """Hidden states predicting every response token of ``labels`` (N, T).

    Args:
        pairs: the number of prompts P the first ``group * P`` rows share: rows ``i``,
            ``P + i``, ..., ``(group - 1) * P + i`` (i < P) continue prompt i, which then runs
            once (`_shared_prompt_states`); rows from ``group * P`` on take a plain forward.
            None: every row a plain forward. Under activation checkpointing in training mode,
            where transformers drops the KV cache, every row takes a plain forward (same
            numbers).
        group: rows per prompt, k >= 1. Default 2: [chosen ; rejected] pairs.
        pack: run every shared token prefix of the rows once, in packed rows under a tree
            mask (`_packed_states`); ``pairs`` and ``group`` are then not needed (where the
            model's attention takes no custom mask, they apply as without it).
    """
    n = labels.shape[0]
    if pack and (packed := _packed_states(model, input_ids, attention_mask, labels)) is not None:
        return packed
    if not pairs or _drops_kv_cache(model):
        mask, targets, row = response_positions(labels)
        h = _hidden_states(model, input_ids, attention_mask)[:, :-1][mask]
        return ResponseStates(h, targets, row, mask.sum(1).float())
    shared = _shared_prompt_states(model, input_ids, attention_mask, labels, pairs, group)
    k = group * pairs
    if n == k:
        return shared
    rest = response_states(model, input_ids[k:], attention_mask[k:], labels[k:])
    return ResponseStates(torch.cat([shared.h, rest.h]), torch.cat([shared.targets, rest.targets]),
                          torch.cat([shared.row, rest.row + k]),
                          torch.cat([shared.n_tokens, rest.n_tokens]))


def _chunk_size(vocab: int, device: torch.device | None = None) -> int:
    on_gpu = device is not None and device.type != "cpu"
    return max(16, (_CHUNK_ELEMENTS_GPU if on_gpu else _CHUNK_ELEMENTS) // vocab)


def _logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # The matmul runs in the autocast dtype when one is active; log-softmax math is fp32.
    return (h.to(weight.dtype) @ weight.t()).float()


def _pieces(weight: torch.Tensor):
    """(start, (P, H) slice) of the vocabulary, in order (one piece on a GPU)."""
    step = weight.shape[0] if weight.device.type != "cpu" else _VOCAB_PIECE
    return [(v, weight[v:v + step]) for v in range(0, weight.shape[0], step)]


def _pick(z: torch.Tensor, v: int, targets: torch.Tensor, out: torch.Tensor) -> None:
    """Write into ``out`` the logits of the targets that fall in the piece starting at ``v``
    (a masked gather: no data-dependent shape, so no device-to-host sync on a GPU)."""
    local = targets - v
    inside = (local >= 0) & (local < z.shape[1])
    picked = z.gather(1, local.clamp(0, z.shape[1] - 1)[:, None]).squeeze(1)
    out.copy_(torch.where(inside, picked, out))


def _label_logp_value(h, weight, targets) -> torch.Tensor:
    """log p(target) without gradient: an online logsumexp over vocabulary pieces, so only
    one (c, piece) buffer is alive."""
    c = h.shape[0]
    run_max = torch.full((c,), float("-inf"), device=h.device)
    run_sum = torch.zeros(c, device=h.device)
    z_y = torch.zeros(c, device=h.device)
    for v, w in _pieces(weight):
        z = _logits(h, w)  # (c, P)
        _pick(z, v, targets, z_y)
        new_max = torch.maximum(run_max, z.max(-1).values)
        run_sum = run_sum * torch.exp(run_max - new_max) + torch.exp(z - new_max[:, None]).sum(-1)
        run_max = new_max
    return z_y - (run_max + run_sum.log())


def _chunk_stats(h, weight, targets, h_ref, need_grad: bool, weight_ref=None):
    """One chunk of tokens through the frozen head, logits kept as vocabulary pieces; the
    reference's logits through ``weight_ref`` (its own head; default ``weight``, shared).

    Returns (logp, ref_logp, kl, g_logp, g_kl); the last four None where not asked, with
    ``g_logp = d logp / d h = W[y] - p @ W`` and ``g_kl = d KL / d h = (p * (lp - lq - KL)) @ W``
    (computed as ``A - KL * (p @ W)`` with ``A = (p * (lp - lq)) @ W``, so one pass suffices).
    """
    c, pieces = h.shape[0], _pieces(weight)
    zs = [_logits(h, w) for _, w in pieces]  # each (c, P)
    z_y = torch.zeros(c, device=h.device)
    for (v, _), z in zip(pieces, zs):
        _pick(z, v, targets, z_y)
    lse = torch.stack([z.logsumexp(-1) for z in zs]).logsumexp(0)  # (c,)
    logp = z_y - lse
    ref_logp = kl = g_kl = None
    p_w = torch.zeros(c, weight.shape[1], device=h.device) if need_grad else None
    if h_ref is None:
        if need_grad:
            for (_, w), z in zip(pieces, zs):
                p = z.sub_(lse[:, None]).exp_()
                p_w += (p.to(weight.dtype) @ w).float()
        return logp, None, None, weight[targets].float() - p_w if need_grad else None, None
    pieces_ref = pieces if weight_ref is None else _pieces(weight_ref)
    zr = [_logits(h_ref, w) for _, w in pieces_ref]
    zr_y = torch.zeros(c, device=h.device)
    for (v, _), z in zip(pieces_ref, zr):
        _pick(z, v, targets, zr_y)
    lse_r = torch.stack([z.logsumexp(-1) for z in zr]).logsumexp(0)
    ref_logp = zr_y - lse_r
    kl = torch.zeros(c, device=h.device)
    a_w = torch.zeros_like(p_w) if need_grad else None
    for (_, w), z, q in zip(pieces, zs, zr):
        lp = z.sub_(lse[:, None])
        diff = lp - q.sub_(lse_r[:, None])
        p = lp.exp_()
        p_diff = p * diff
        kl += p_diff.sum(-1)
        if need_grad:
            p_w += (p.to(weight.dtype) @ w).float()
            a_w += (p_diff.to(weight.dtype) @ w).float()
    if need_grad:
        g_kl = a_w - kl[:, None] * p_w
    return logp, ref_logp, kl, weight[targets].float() - p_w if need_grad else None, g_kl


class _FusedLogprobKL(torch.autograd.Function):
    """Label log-probs (and optionally KL to a reference) for a frozen LM head."""

    @staticmethod
    def forward(ctx, h, weight, targets, h_ref, chunk, weight_ref=None):
        # h: (M, H), weight: (V, H), targets: (M,), h_ref: (M, H) or None, weight_ref: (V, H)
        need_grad = ctx.needs_input_grad[0]
        m = h.shape[0]
        logp = torch.empty(m, dtype=torch.float32, device=h.device)
        ref_logp = torch.empty_like(logp) if h_ref is not None else None
        kl = torch.empty_like(logp) if h_ref is not None else None
        if not need_grad and h_ref is None:  # a reference/eval pass: the value alone
            for s in range(0, m, 2 * chunk):  # online over pieces: larger chunks cost nothing
                logp[s:s + 2 * chunk] = _label_logp_value(h[s:s + 2 * chunk], weight,
                                                          targets[s:s + 2 * chunk])
            return logp, torch.zeros(0), torch.zeros(0)
        grads = []
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            lp_c, ref_c, kl_c, g_logp, g_kl = _chunk_stats(
                h[s:e], weight, targets[s:e], None if h_ref is None else h_ref[s:e], need_grad,
                weight_ref)
            logp[s:e] = lp_c
            if h_ref is not None:
                ref_logp[s:e], kl[s:e] = ref_c, kl_c
            if need_grad:
                grads.append((g_logp, g_kl))
        if need_grad:
            g_logp = torch.cat([g[0] for g in grads])
            g_kl = torch.cat([g[1] for g in grads]) if h_ref is not None else torch.zeros(0)
            ctx.save_for_backward(g_logp, g_kl)
            ctx.has_kl = h_ref is not None
            ctx.h_dtype = h.dtype
        outs = (logp, ref_logp if ref_logp is not None else torch.zeros(0),
                kl if kl is not None else torch.zeros(0))
        ctx.mark_non_differentiable(outs[1])
        return outs

    @staticmethod
    def backward(ctx, grad_logp, grad_ref, grad_kl):
        g_logp, g_kl = ctx.saved_tensors
        grad_h = grad_logp[:, None] * g_logp
        if ctx.has_kl and grad_kl is not None and grad_kl.numel():
            grad_h = grad_h + grad_kl[:, None] * g_kl
        return grad_h.to(ctx.h_dtype), None, None, None, None, None


def _chunk_generic(h, weight, targets, h_ref, weight_ref):
    lp = _logits(h, weight).log_softmax(-1)
    logp = lp.gather(1, targets[:, None]).squeeze(1)
    if h_ref is None:
        return logp, torch.zeros(0), torch.zeros(0)
    lq = _logits(h_ref, weight if weight_ref is None else weight_ref).log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return logp, lq.gather(1, targets[:, None]).squeeze(1).detach(), kl


def token_logprobs(h, weight, targets, h_ref=None, chunk: int | None = None, weight_ref=None):
    """Token log-probs under the LM head ``weight`` (and under the reference, with KL).

    Args:
        h: (M, H) policy hidden states at positions that predict ``targets``.
        weight: (V, H) LM head (output embedding) weight.
        targets: (M,) next-token ids.
        h_ref: (M, H) reference hidden states (detached) or None.
        weight_ref: (V, H) the reference's own LM head, when it is not ``weight``: a frozen
            copy of a fully trained model (``peft=none``) has the head the policy started from,
            also when the head is tied to the embeddings. Default None: ``weight`` for both
            (an adapter leaves the head alone, so disabling it gives the same head).
        chunk: tokens per LM-head chunk; default keeps a chunk's fp32 logits near 32 MiB on
            CPU, 256 MiB on a GPU.
    Returns (logp (M,), ref_logp (M,) or None, kl (M,) or None).
    """
    chunk = chunk or _chunk_size(weight.shape[0], h.device)
    if not weight.requires_grad:
        logp, ref_logp, kl = _FusedLogprobKL.apply(h, weight, targets, h_ref, chunk, weight_ref)
    else:
        parts = [checkpoint(_chunk_generic, h[s:s + chunk], weight, targets[s:s + chunk],
                            None if h_ref is None else h_ref[s:s + chunk], weight_ref,
                            use_reentrant=False)
                 for s in range(0, h.shape[0], chunk)]
        logp, ref_logp, kl = (torch.cat([p[i] for p in parts]) for i in range(3))
    if h_ref is None:
        return logp, None, None
    return logp, ref_logp, kl


def per_sequence(values: torch.Tensor, row: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, row, values)


def _stop_logps(st: ResponseStates, weight, stop_ids: Sequence[int], rows: tuple[int, int],
                n: int) -> torch.Tensor:
    """log pi(stop | x, y_<s) = log sum_{e in stop_ids} pi(e | x, y_<s) at every response
    position of rows [r0, r1), laid out (n, R) by row and position, R their longest response.

    The hidden states are the ones `response_states` already holds, so this is one more LM-head
    pass (per stop id) over those rows' response tokens, no decoder pass, differentiable in the
    policy like the label log-probs (`token_logprobs` with every target set to the stop id).
    """
    r0, r1 = rows
    counts = st.n_tokens.long()  # (N,)
    a, e = int(counts[:r0].sum()), int(counts[:r1].sum())  # their tokens: a slice of (M,)
    if e == a:
        return torch.zeros(n, 0, device=st.h.device)
    h, row = st.h[a:e], st.row[a:e]  # (m, H), (m,)
    first = torch.cumsum(counts, 0) - counts  # (N,) index in (M,) of each row's first token
    pos = torch.arange(a, e, device=row.device) - first[row]  # (m,) 0-based response position
    per_id = [token_logprobs(h, weight, torch.full_like(row, int(i)))[0] for i in stop_ids]
    lp = torch.logsumexp(torch.stack(per_id), 0) if len(per_id) > 1 else per_id[0]  # (m,)
    width = int(counts[r0:r1].max())
    return torch.zeros(n, width, dtype=lp.dtype, device=lp.device).index_put((row, pos), lp)


def sequence_logps(model, input_ids, attention_mask, labels, *, with_ref: bool = False,
                   with_kl: bool = False, ref_model=None, ref_rows: int | None = None,
                   pairs: int | None = None, group: int = 2, stop_ids: Sequence[int] = (),
                   stop_rows: tuple[int, int] | None = None, pack: bool = False) -> SequenceLogps:
    """Summed response log-probs per sequence from one forward (differentiable in the policy).

    Args:
        model: the policy (a PeftModel or a plain causal LM).
        input_ids, attention_mask, labels: (N, T); labels are -100 on prompt and padding.
        with_ref: also return reference log-probs (adapter disabled, or ``ref_model``).
        with_kl: also return the exact summed per-token KL(pi || pi_ref); implies with_ref.
        ref_model: a frozen reference copy, for models without an adapter.
        ref_rows: reference log-probs and KL only for the first ``ref_rows`` rows (the
            preference pairs); the rest (rollout samples sharing the forward) get zeros there.
            Default: all rows.
        pairs: the first ``2 * pairs`` rows are [chosen ; rejected] of ``pairs`` pairs whose
            prompt is run once per pair (`response_states`); the same numbers as None up to
            float rounding, with less work.
        group: rows per prompt in that block layout (``group * pairs`` rows). Default 2.
        stop_ids: the stop (EOS) token ids; given, also return ``stop_logps``, the policy's
            log-probability of stopping at every response position (a dense length estimator
            reads it, `pdalign.constraints.length.Length`). Default none: not computed.
        stop_rows: (first, end) rows that get ``stop_logps``; the others get zeros. Default:
            all rows.
        pack: every token prefix the rows share runs once, in packed rows under a tree mask
            (`response_states`); the same numbers up to float rounding. Default False.
    """
    n = input_ids.shape[0]
    _, head = decoder_and_head(model)
    weight = head.weight  # (V, H)
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("LM heads with a bias are not supported by sequence_logps")
    st = response_states(model, input_ids, attention_mask, labels, pairs, group, pack)
    stop = _stop_logps(st, weight, stop_ids, stop_rows or (0, n), n) if stop_ids else None
    if not (with_ref or with_kl):
        logp, _, _ = token_logprobs(st.h, weight, st.targets)
        return SequenceLogps(per_sequence(logp, st.row, n), st.n_tokens, stop_logps=stop)
    r = n if ref_rows is None else ref_rows
    m_ref = int(st.n_tokens[:r].sum())  # response tokens of the leading rows come first in (M,)
    ref_pairs = pairs if pairs and r >= group * pairs else None
    with torch.no_grad(), reference_mode(model, ref_model) as ref:
        h_ref = response_states(ref, input_ids[:r], attention_mask[:r], labels[:r], ref_pairs,
                                group, pack).h
        weight_ref = decoder_and_head(ref)[1].weight  # a frozen copy's own (untrained) head
    if with_kl:
        logp_a, ref_logp, kl = token_logprobs(
            st.h[:m_ref], weight, st.targets[:m_ref], h_ref,
            weight_ref=None if weight_ref is weight else weight_ref)
    else:  # reference log-probs alone need no policy-side reference matmuls
        logp_a, _, _ = token_logprobs(st.h[:m_ref], weight, st.targets[:m_ref])
        with torch.no_grad():
            ref_logp, _, _ = token_logprobs(h_ref, weight_ref, st.targets[:m_ref])
        kl = None
    if m_ref < st.h.shape[0]:
        logp_b, _, _ = token_logprobs(st.h[m_ref:], weight, st.targets[m_ref:])
        logp = torch.cat([logp_a, logp_b])
    else:
        logp = logp_a
    return SequenceLogps(
        logps=per_sequence(logp, st.row, n),
        n_tokens=st.n_tokens,
        kl=None if kl is None else per_sequence(kl, st.row[:m_ref], n),
        ref_logps=per_sequence(ref_logp, st.row[:m_ref], n),
        stop_logps=stop,
    )
