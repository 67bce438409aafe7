"""Log-probs and exact KL from the chunked LM head agree with the full log_softmax."""

import pytest
import torch

import pdalign.policy.logprobs as logprobs
from pdalign.policy import packing
from pdalign.policy.logprobs import sequence_logps, token_logprobs
from pdalign.policy.models import apply_peft, build_tiny

V = 97  # a small vocabulary keeps the naive (N, T, V) reference cheap


def _batch(seed=0, n=4, t=12, prompt=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    labels = ids.clone()
    labels[:, :prompt] = -100
    mask[2, 9:] = 0  # a right-padded row
    labels[2, 9:] = -100
    return ids, mask, labels


def _lora(model, scale=0.3):
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    g = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # LoRA B starts at 0 (policy == reference); move it away
            p.data.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def _naive(model, ids, mask, labels):
    """Full (N, T, V) log_softmax: the definition the chunked path must reproduce."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    with model.disable_adapter():
        ref_logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    lp, lq = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    tgt = labels[:, 1:]
    m = (tgt != -100).float()
    pick = lambda x: x.gather(2, tgt.clamp(min=0)[..., None]).squeeze(-1)  # noqa: E731
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return (pick(lp) * m).sum(1), (pick(lq) * m).sum(1), (kl * m).sum(1), m.sum(1)


def test_logps_ref_and_kl_match_full_log_softmax_with_gradients():
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _batch()
    out = sequence_logps(model, ids, mask, labels, with_kl=True)
    logp, ref, kl, n = _naive(model, ids, mask, labels)
    torch.testing.assert_close(out.logps, logp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.ref_logps, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl, kl, rtol=1e-4, atol=1e-6)
    assert out.n_tokens.tolist() == n.tolist() == [7.0, 7.0, 4.0, 7.0]
    assert (out.kl > 0).all()  # the adapter moved the policy away from the reference
    _assert_same_gradients(model, torch.tensor([1.0, -2.0, 3.0, 0.5]), out, logp, kl)


def test_chunking_does_not_change_results():
    torch.manual_seed(0)
    h, h_ref = torch.randn(23, 16, requires_grad=True), torch.randn(23, 16)
    weight, targets = torch.randn(V, 16), torch.randint(0, V, (23,))
    whole = token_logprobs(h, weight, targets, h_ref, chunk=1000)
    pieces = token_logprobs(h, weight, targets, h_ref, chunk=4)
    for a, b in zip(whole, pieces):
        torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(whole[0].sum() + whole[2].sum(), h)[0]
    gb = torch.autograd.grad(pieces[0].sum() + pieces[2].sum(), h)[0]
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("layout", ["cpu_pieces", "one_piece"])
def test_vocabulary_pieces_match_full_log_softmax(layout, monkeypatch):
    """A vocabulary of 5000 is 3 pieces of the head on CPU (the last ragged), with targets in
    each, or one piece (the layout on a GPU, run here on CPU): values (with and without
    gradient), reference log-probs, KL and both gradients equal the full log_softmax over the
    whole vocabulary."""
    from pdalign.policy import logprobs

    piece = logprobs._VOCAB_PIECE
    vocab = 2 * piece + 904
    assert len(logprobs._pieces(torch.empty(vocab, 16))) == 3
    assert len(logprobs._pieces(torch.empty(vocab, 16, device="meta"))) == 1  # any non-CPU
    if layout == "one_piece":
        monkeypatch.setattr(logprobs, "_VOCAB_PIECE", vocab)
    g = torch.Generator().manual_seed(5)
    h = torch.randn(23, 16, generator=g, requires_grad=True)
    h_ref = (h.detach() + 0.3 * torch.randn(23, 16, generator=g))
    weight = torch.randn(vocab, 16, generator=g)
    targets = torch.randint(0, vocab, (23,), generator=g)
    targets[:3] = torch.tensor([0, piece, vocab - 1])  # piece edges
    lp, lq = (h @ weight.t()).log_softmax(-1), (h_ref @ weight.t()).log_softmax(-1)
    want_logp = lp.gather(1, targets[:, None]).squeeze(1)
    want_ref = lq.gather(1, targets[:, None]).squeeze(1)
    want_kl = (lp.exp() * (lp - lq)).sum(-1)
    logp, ref_logp, kl = token_logprobs(h, weight, targets, h_ref, chunk=7)
    torch.testing.assert_close(logp, want_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref_logp, want_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kl, want_kl, rtol=1e-4, atol=1e-6)
    w = torch.linspace(-1, 2, 23)
    ours = torch.autograd.grad((w * logp).sum() + 3 * kl.sum(), h)[0]
    theirs = torch.autograd.grad((w * want_logp).sum() + 3 * want_kl.sum(), h,
                                 retain_graph=True)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    alone = token_logprobs(h, weight, targets, chunk=7)[0]  # no reference: its own branch
    torch.testing.assert_close(torch.autograd.grad((w * alone).sum(), h)[0],
                               torch.autograd.grad((w * want_logp).sum(), h)[0],
                               rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the online logsumexp of a reference pass
        torch.testing.assert_close(token_logprobs(h, weight, targets, chunk=7)[0], want_logp,
                                   rtol=1e-5, atol=1e-5)
        nograd = token_logprobs(h, weight, targets, h_ref, chunk=7)  # eval: KL, no gradient
        torch.testing.assert_close(nograd[2], want_kl, rtol=1e-4, atol=1e-6)


def test_trainable_head_takes_the_generic_path_with_identical_values_and_grads():
    model = build_tiny(V, seed=2)  # no adapter: every weight, the tied LM head too, trains
    ids, mask, labels = _batch(seed=3)
    out = sequence_logps(model, ids, mask, labels)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
    tgt = labels[:, 1:]
    naive = (logits.gather(2, tgt.clamp(min=0)[..., None]).squeeze(-1) * (tgt != -100)).sum(1)
    torch.testing.assert_close(out.logps, naive, rtol=1e-5, atol=1e-4)
    params = list(model.parameters())
    for a, b in zip(torch.autograd.grad(out.logps.sum(), params),
                    torch.autograd.grad(naive.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ref_rows_limits_reference_and_kl_to_the_leading_rows():
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _batch()
    full = sequence_logps(model, ids, mask, labels, with_kl=True)
    head = sequence_logps(model, ids, mask, labels, with_kl=True, ref_rows=2)
    torch.testing.assert_close(head.logps, full.logps)
    torch.testing.assert_close(head.kl[:2], full.kl[:2])
    torch.testing.assert_close(head.ref_logps[:2], full.ref_logps[:2])
    assert head.kl[2:].abs().sum() == 0 and head.ref_logps[2:].abs().sum() == 0


def test_fresh_adapter_is_the_reference_exactly():
    """LoRA's B starts at zero, so KL(pi || pi_ref) = 0 and logps == ref_logps."""
    model = apply_peft(build_tiny(V, seed=0), {"r": 4, "lora_alpha": 8,
                                               "target_modules": ["q_proj"]})
    ids, mask, labels = _batch()
    out = sequence_logps(model, ids, mask, labels, with_kl=True)
    torch.testing.assert_close(out.logps, out.ref_logps)
    assert out.kl.abs().max() < 1e-6


def test_adapter_disabled_reference_equals_the_base_model_loaded_fresh():
    ids, mask, labels = _batch(seed=5)
    fresh = sequence_logps(build_tiny(V, seed=0), ids, mask, labels)
    policy = _lora(build_tiny(V, seed=0))
    out = sequence_logps(policy, ids, mask, labels, with_ref=True)
    torch.testing.assert_close(out.ref_logps, fresh.logps.detach(), rtol=1e-6, atol=1e-5)
    assert (out.logps - out.ref_logps).abs().max() > 1e-3  # and the policy itself differs


@pytest.mark.parametrize("tied", [True, False])
def test_tied_reference_is_scored_with_the_frozen_copys_own_head(tied):
    """peft=none: the reference is a frozen copy, and its log-probs (and the KL) must come from
    its own LM head, the one the policy started from, not the policy's trained one. With a tied
    head a training step moves both the embeddings and the head; a random move of the head (not
    a constant shift, which softmax ignores) shows which head scored the reference. Checked
    against full-logits log_softmax of each model (fp32); the policy's own log-probs and
    gradients stay those of its own head."""
    from pdalign.policy.models import frozen_copy
    from pdalign.policy.reference import reference_logps

    model = build_tiny(V, seed=0, tie_word_embeddings=tied)
    ref = frozen_copy(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # "training" moved the policy's head (and, tied, its embeddings)
        model.lm_head.weight.add_(torch.randn(model.lm_head.weight.shape, generator=g) * 0.5)
    ids, mask, labels = _batch()

    def full(m):
        lp = m(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        return lp

    tgt = labels[:, 1:]
    keep = (tgt != -100).float()
    lp, lq = full(model), full(ref)
    pick = lambda x: (x.gather(2, tgt.clamp(min=0)[..., None]).squeeze(-1) * keep).sum(1)  # noqa: E731
    kl = ((lp.exp() * (lp - lq)).sum(-1) * keep).sum(1)

    out = sequence_logps(model, ids, mask, labels, with_kl=True, ref_model=ref)
    torch.testing.assert_close(out.ref_logps, pick(lq), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl, kl.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logps, pick(lp), rtol=1e-5, atol=1e-4)
    alone = sequence_logps(model, ids, mask, labels, with_ref=True, ref_model=ref)
    torch.testing.assert_close(alone.ref_logps, pick(lq), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(reference_logps(model, ids, mask, labels, ref_model=ref),
                               pick(lq), rtol=1e-5, atol=1e-4)
    assert (pick(lq) - pick(lp)).abs().max() > 0.1  # the heads differ enough to tell apart
    w = torch.tensor([1.0, -2.0, 3.0, 0.5])
    (grad,) = torch.autograd.grad((w * (out.logps + out.kl)).sum(), model.lm_head.weight)
    (want,) = torch.autograd.grad((w * (pick(lp) + kl)).sum(), model.lm_head.weight)
    torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-5)


def test_frozen_copy_reference_for_a_model_without_adapter():
    from pdalign.policy.models import frozen_copy

    model = build_tiny(V, seed=0)
    ref = frozen_copy(model)
    with torch.no_grad():
        model.lm_head.weight.add_(0.1)  # move the policy (tied head: embeddings move too)
    ids, mask, labels = _batch()
    out = sequence_logps(model, ids, mask, labels, with_ref=True, ref_model=ref)
    torch.testing.assert_close(out.ref_logps, sequence_logps(ref, ids, mask, labels).logps)
    with pytest.raises(ValueError, match="no reference"):
        sequence_logps(model, ids, mask, labels, with_ref=True)


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_gives_the_same_logps_and_gradients(every):
    """Recomputing decoder activations in backward changes memory, not math."""
    from pdalign.policy.models import enable_activation_checkpointing

    ids, mask, labels = _batch()
    results = []
    for recompute in (0, every):
        model = build_tiny(V, seed=0)
        enable_activation_checkpointing(model, recompute)
        torch.manual_seed(0)  # LoRA A's init draws from the global generator
        model = _lora(model)
        model.train()
        calls = []
        # a submodule early in the layer: the layer's own hooks sit outside what the
        # checkpoint replays, and the replay stops once the last saved tensor is rebuilt
        q0 = model.base_model.model.model.layers[0].self_attn.q_proj
        q0.register_forward_hook(lambda *_: calls.append(1))
        out = sequence_logps(model, ids, mask, labels, with_kl=True)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(out.logps.sum() + 2 * out.kl.sum(), params)
        results.append((out.logps.detach(), out.kl.detach(), grads))
        assert model.base_model.model.is_activation_checkpointing == (recompute > 0)
        # policy forward + the adapter-disabled reference forward (no grad, nothing saved),
        # plus the replay of layer 0 in backward when it is checkpointed
        assert len(calls) == 2 + (recompute > 0)
    (lp0, kl0, g0), (lp1, kl1, g1) = results
    torch.testing.assert_close(lp1, lp0)
    torch.testing.assert_close(kl1, kl0)
    assert any(g.abs().sum() > 0 for g in g0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---- a pair's prompt run once (pairs=B) ----------------------------------------------------

def _assert_same_gradients(model, w, out, logp, kl):
    """The gradients of sum(w * logps) + 3 * sum(kl) agree between ``out`` (ours) and the naive
    full log_softmax's ``logp``/``kl``, and are not all zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad((w * out.logps).sum() + 3 * out.kl.sum(), params)
    theirs = torch.autograd.grad((w * logp).sum() + 3 * kl.sum(), params)
    assert any(g.abs().sum() > 0 for g in theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _pair_batch(prompts, chosen, rejected, extra=()):
    """[chosen ; rejected] rows as `pdalign.data.features.collate` lays them out (right-padded), plus
    ``extra`` (prompt, response) rows that share nothing (rollout rows under DDP)."""
    return _group_batch(prompts, [chosen, rejected], extra)


def _group_batch(prompts, blocks, extra=()):
    """k blocks of rows, block j holding each prompt followed by its j-th continuation
    (row ``j * P + i``), right-padded, plus ``extra`` rows that share nothing."""
    seqs = [(p, r) for block in blocks for p, r in zip(prompts, block)] + list(extra)
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (p, r) in enumerate(seqs):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        mask[i, :len(p) + len(r)] = 1
        labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
    return ids, mask, labels


# prompts of 3, 1 and 5 tokens; responses of 1 to 6 tokens, so both the prompt block and the
# response block are ragged (the longest full row is neither the longest prompt nor response)
PROMPTS = [[5, 6, 7], [8], [10, 11, 12, 13, 14]]
CHOSEN = [[20, 21, 22, 23], [24, 25, 26, 27, 28, 29], [30]]
REJECTED = [[40], [41, 42], [43, 44, 45, 46]]

# four prompts (3, 1, 5, 2 tokens), each with three continuations of 1 to 6 tokens whose
# lengths differ within a prompt's group; P != k, so the block <-> prompt-major reordering is
# not its own inverse (it is for a square P = k)
GROUP_PROMPTS = PROMPTS + [[15, 16]]
GROUP_BLOCKS = [CHOSEN + [[31, 32, 33]], REJECTED + [[47, 48, 49, 50, 51, 52]],
                [[53, 54], [55], [56, 57, 58, 59, 60], [61]]]


def test_shared_prompt_matches_full_log_softmax_values_and_gradients():
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _pair_batch(PROMPTS, CHOSEN, REJECTED)
    out = sequence_logps(model, ids, mask, labels, with_kl=True, pairs=3)
    logp, ref, kl, n = _naive(model, ids, mask, labels)
    assert out.n_tokens.tolist() == n.tolist() == [4.0, 6.0, 1.0, 1.0, 2.0, 4.0]
    torch.testing.assert_close(out.logps, logp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.ref_logps, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl, kl, rtol=1e-4, atol=1e-6)
    assert (out.kl > 0).all()
    _assert_same_gradients(model, torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0, 2.0]), out, logp, kl)


@pytest.mark.parametrize("pairs", [None, 3], ids=["full_rows", "shared_prompt"])
def test_bf16_autocast_logps_and_kl_stay_within_bf16_rounding_of_fp32(pairs):
    """The bf16 counterpart of the two tests above (what train.dtype=auto runs on AMX and
    AVX512-BF16 CPUs): matmuls in bf16, the log-sum-exp and KL sums in fp32. Against the fp32
    definition, each log-prob is a sum of ~6 token terms each rounded at 2^-8 relative, so
    2^-5 relative (plus 0.05 nats absolute for terms near 0) bounds them; the KL stays
    non-negative and within the same bound, and the shared prompt agrees with full rows to
    the same bf16 tolerance."""
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _pair_batch(PROMPTS, CHOSEN, REJECTED)
    logp, ref, kl, _ = _naive(model, ids, mask, labels)  # fp32: the definition
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sequence_logps(model, ids, mask, labels, with_kl=True, pairs=pairs)
        full = sequence_logps(model, ids, mask, labels, with_kl=True)
    assert out.logps.dtype == out.kl.dtype == torch.float32  # sums are kept in fp32
    bf16 = {"rtol": 2.0 ** -5, "atol": 5e-2}
    torch.testing.assert_close(out.logps, logp, **bf16)
    torch.testing.assert_close(out.ref_logps, ref, **bf16)
    torch.testing.assert_close(out.kl, kl, **bf16)
    torch.testing.assert_close(out.logps, full.logps, **bf16)
    assert (out.kl >= 0).all() and (out.kl > 0).any()
    # the gradient flows in bf16 too, and points the same way as fp32's
    params = [p for p in model.parameters() if p.requires_grad]
    g16 = torch.autograd.grad(out.logps.sum() + 3 * out.kl.sum(), params)
    g32 = torch.autograd.grad(logp.sum() + 3 * kl.sum(), params)
    flat16, flat32 = torch.cat([g.flatten() for g in g16]), torch.cat([g.flatten() for g in g32])
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.99


# long chosen answers beside one-token rejections (the quickstart's shape: ~93 vs ~9 tokens)
LONG_CHOSEN = [[20 + j for j in range(10)], [40 + j for j in range(8)], [60 + j for j in range(9)]]
SHORT_REJECTED = [[80], [81, 82], [83]]


def test_blocks_of_unequal_length_continue_at_their_own_widths_with_identical_results(
        monkeypatch):
    """Chosen rows of up to 10 tokens and rejected rows of up to 2: the rejected block is fed
    at its own width (2 - 1 = 1 column after the prompt), not padded to 10, and log-probs,
    reference, KL and gradients still equal the full log_softmax of every row. (8 tokens saved
    per row: below the price of a call, so the split is forced here to test its arithmetic.)"""
    monkeypatch.setattr(logprobs, "SPLIT_CALL_TOKENS", 0)
    model = _lora(build_tiny(V, seed=3))
    ids, mask, labels = _pair_batch(PROMPTS, LONG_CHOSEN, SHORT_REJECTED)
    seen = []
    embed = model.get_base_model().get_input_embeddings()
    hook = embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    out = sequence_logps(model, ids, mask, labels, with_kl=True, pairs=3)
    hook.remove()
    # policy: prompts (3 x 5), chosen (3 x 9), rejected (3 x 1); then the same for the reference
    assert seen[:3] == [(3, 5), (3, 9), (3, 1)] and seen[3:] == seen[:3]
    logp, ref, kl, n = _naive(model, ids, mask, labels)
    assert out.n_tokens.tolist() == n.tolist() == [10.0, 8.0, 9.0, 1.0, 2.0, 1.0]
    torch.testing.assert_close(out.logps, logp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.ref_logps, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl, kl, rtol=1e-4, atol=1e-6)
    _assert_same_gradients(model, torch.tensor([1.0, -2.0, 3.0, 0.5, -1.0, 2.0]), out, logp, kl)


def test_blocks_split_only_when_the_tokens_saved_pay_for_the_calls():
    """The rule by hand (widths = each block's widest response, width = the widest of all):
    DPO's 150- and 30-token answers save 120 tokens a row, more than 20% of 300 and more than
    the 16 one more call costs: split. Five openers of 3, 3, 1, 2, 3 tokens save 3 of 15 (20%)
    but not 4 x 16: one call. Five whole refusals of 13, 9, 10, 14, 7 save 17 < 64: one call.
    Equal blocks save nothing."""
    assert logprobs._split_blocks([150, 30], 150)
    assert not logprobs._split_blocks([3, 3, 1, 2, 3], 3)
    assert not logprobs._split_blocks([13, 9, 10, 14, 7], 14)
    assert not logprobs._split_blocks([40, 40], 40) and not logprobs._split_blocks([9], 9)


def test_shared_prompt_runs_the_prompt_once():
    """The decoder sees each prompt token once: 3 prompts + the responses minus their last
    token (which predicts nothing), against 2 full rows per pair without sharing."""
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _pair_batch(PROMPTS, CHOSEN, REJECTED)
    seen = []
    embed = model.get_base_model().get_input_embeddings()
    hook = embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    sequence_logps(model, ids, mask, labels, pairs=3)
    sequence_logps(model, ids, mask, labels)
    hook.remove()
    # prompts (3 x 5), continuations (6 x 6-1): 45 token slots; the full rows: 6 x 9 = 54
    assert seen == [(3, 5), (6, 5), (6, 9)]


def test_shared_prompt_with_extra_rows_and_ref_rows():
    """Rows after the pairs (rollout samples joined under DDP) take a plain forward; the
    reference and KL cover the pairs only."""
    model = _lora(build_tiny(V, seed=4))
    extra = [([50, 51], [60, 61, 62]), ([52, 53, 54, 55, 56, 57], [63])]
    ids, mask, labels = _pair_batch(PROMPTS, CHOSEN, REJECTED, extra)
    shared = sequence_logps(model, ids, mask, labels, with_kl=True, ref_rows=6, pairs=3)
    plain = sequence_logps(model, ids, mask, labels, with_kl=True, ref_rows=6)
    torch.testing.assert_close(shared.logps, plain.logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.kl, plain.kl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(shared.ref_logps, plain.ref_logps, rtol=1e-5, atol=1e-5)
    assert shared.kl[6:].tolist() == [0.0, 0.0] and shared.n_tokens.tolist()[6:] == [3.0, 1.0]


def test_shared_prompt_refuses_rows_that_do_not_share_a_prompt():
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _pair_batch(PROMPTS, CHOSEN, REJECTED)
    with pytest.raises(ValueError, match="different prompt lengths; pass pairs=None"):
        sequence_logps(model, ids, mask, labels, pairs=2)  # row 0 against row 2
    ids[3, 1] = 9  # same length, different second prompt token in the first pair's rejected
    with pytest.raises(ValueError, match="must share their prompt tokens; pass pairs=None"):
        sequence_logps(model, ids, mask, labels, pairs=3)


@pytest.mark.parametrize("group", [2, 3])
def test_shared_prompt_under_activation_checkpointing_falls_back_to_full_rows(group):
    """transformers drops the KV cache in checkpointed layers while training, so the rows run
    whole there: same numbers, and no continuation that silently lost its prompt."""
    from pdalign.policy.models import enable_activation_checkpointing

    model = build_tiny(V, seed=0)
    enable_activation_checkpointing(model, 1)
    torch.manual_seed(0)
    model = _lora(model)
    model.train()
    ids, mask, labels = _group_batch(GROUP_PROMPTS, GROUP_BLOCKS[:group])
    out = sequence_logps(model, ids, mask, labels, pairs=4, group=group)
    logp, _, _, _ = _naive(model, ids, mask, labels)
    torch.testing.assert_close(out.logps, logp, rtol=1e-5, atol=1e-4)
    model.eval()  # no checkpointing in eval mode: the prompt is shared again, same values
    torch.testing.assert_close(sequence_logps(model, ids, mask, labels, pairs=4,
                                              group=group).logps, logp, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("group", [2, 3])
def test_grouped_prompt_matches_full_rows_values_and_gradients(group):
    """k rows per prompt (an opener constraint's J openers) in the block layout, row j*P + i =
    prompt i's j-th continuation: log-probs, reference, KL and their gradients equal the full
    log_softmax of every row. The prompts differ in length (3, 1, 5, 2 tokens), so a row paired
    with another prompt's cache, or a state handed back to the wrong row, would not match."""
    model = _lora(build_tiny(V, seed=2))
    blocks = GROUP_BLOCKS[:group]
    ids, mask, labels = _group_batch(GROUP_PROMPTS, blocks)
    out = sequence_logps(model, ids, mask, labels, with_kl=True, pairs=4, group=group)
    logp, ref, kl, n = _naive(model, ids, mask, labels)
    assert out.n_tokens.tolist() == n.tolist() == [len(r) for b in blocks for r in b]
    torch.testing.assert_close(out.logps, logp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.ref_logps, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl, kl, rtol=1e-4, atol=1e-6)
    _assert_same_gradients(model, torch.linspace(-2.0, 3.0, 4 * group), out, logp, kl)


def test_grouped_prompt_runs_each_prompt_once_and_refuses_another_layout():
    """group=3: the decoder sees the 4 prompts once, then 12 continuations (6 tokens, minus
    the last, wide), against 12 full rows of 10. The same rows prompt-major (prompt i's
    continuations at 3i, 3i+1, 3i+2) do not share prompts in the block layout, and are refused
    rather than misread."""
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _group_batch(GROUP_PROMPTS, GROUP_BLOCKS)
    seen = []
    embed = model.get_base_model().get_input_embeddings()
    hook = embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    sequence_logps(model, ids, mask, labels, pairs=4, group=3)
    sequence_logps(model, ids, mask, labels)
    hook.remove()
    assert seen == [(4, 5), (12, 5), (12, 10)]
    prompt_major = torch.arange(12).view(3, 4).t().reshape(-1)
    with pytest.raises(ValueError, match="different prompt lengths; pass pairs=None"):
        sequence_logps(model, ids[prompt_major], mask[prompt_major], labels[prompt_major],
                       pairs=4, group=3)


def test_lm_head_chunks_are_larger_on_a_gpu():
    """CPU: ~8 Mi logits per chunk (cache); GPU: 64 Mi (launches, not cache, cost there)."""
    from pdalign.policy import logprobs

    assert logprobs._chunk_size(49152) == (1 << 23) // 49152 == 170
    assert logprobs._chunk_size(49152, torch.device("cpu")) == 170
    assert logprobs._chunk_size(49152, torch.device("cuda")) == (1 << 26) // 49152 == 1365


# ---- the policy's stop probability at every response position (stop_ids) ---------------------

@pytest.mark.parametrize("pairs", [None, 3], ids=["full_rows", "shared_prompt"])
@pytest.mark.parametrize("head", ["frozen", "trainable"])
def test_stop_logps_match_full_log_softmax_for_the_rows_asked(pairs, head):
    """stop_ids (3, 7) on the two rows after the pairs (rollout rows under DDP): column j of
    row i is log(p_3 + p_7) at the position predicting response token j + 1, from the full
    log_softmax; other rows and columns past a response are 0. The two extra rows have 3 and 1
    response tokens, so R = 3. Values and the gradient of a weighted sum agree, through the
    fused head (LoRA, frozen head) and the generic one (every parameter trainable)."""
    model = _lora(build_tiny(V, seed=4)) if head == "frozen" else build_tiny(V, seed=4)
    extra = [([50, 51], [60, 61, 62]), ([52, 53, 54, 55, 56, 57], [63])]
    ids, mask, labels = _pair_batch(PROMPTS, CHOSEN, REJECTED, extra)
    out = sequence_logps(model, ids, mask, labels, pairs=pairs, stop_ids=[3, 7],
                         stop_rows=(6, 8))
    lp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
    stop = lp[..., [3, 7]].logsumexp(-1)  # (N, T-1)
    want = torch.zeros(8, 3)
    want[6, :3] = stop[6, 1:4]  # prompt of 2: positions 1, 2, 3 predict the response tokens
    want[7, :1] = stop[7, 5:6]  # prompt of 6
    assert out.stop_logps.shape == (8, 3)
    torch.testing.assert_close(out.stop_logps, want, rtol=1e-5, atol=1e-5)
    assert (out.stop_logps[6] < 0).all() and out.stop_logps[7, 1:].tolist() == [0.0, 0.0]
    params = [p for p in model.parameters() if p.requires_grad]
    w = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, 0.0]])
    ours = torch.autograd.grad((w * out.stop_logps[6:]).sum(), params, allow_unused=True)
    theirs = torch.autograd.grad((w * want[6:]).sum(), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in theirs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a if a is not None else torch.zeros_like(b),
                                   b if b is not None else torch.zeros_like(a),
                                   rtol=1e-4, atol=1e-5)
    assert sequence_logps(model, ids, mask, labels).stop_logps is None  # not asked: not computed


# two prompts with a common head [1, 2] (a chat template's system header), each followed by
# three continuations of which two share their first token, as an opener constraint's rows
TRIE_PROMPTS = [[1, 2, 3], [1, 2, 4, 5]]
TRIE_BLOCKS = [[[20, 21]] * 2, [[20, 22, 23]] * 2, [[24]] * 2]


@pytest.mark.parametrize("budget", [None, 6], ids=["one_row", "two_rows"])
def test_packed_rows_match_full_log_softmax_values_and_gradients(budget, monkeypatch):
    """Rows packed into a token trie (every shared prefix once, a tree mask, depth as position)
    give the full rows' log-probs, reference, KL and gradients, with an unrelated extra row
    among them, in one packed row and cut into two."""
    if budget:
        monkeypatch.setattr(packing, "PACK_TOKENS", budget)
    model = _lora(build_tiny(V, seed=2))
    ids, mask, labels = _group_batch(TRIE_PROMPTS, TRIE_BLOCKS, extra=[([7, 8], [9, 10, 11])])
    out = sequence_logps(model, ids, mask, labels, with_kl=True, pack=True)
    logp, ref, kl, n = _naive(model, ids, mask, labels)
    assert out.n_tokens.tolist() == n.tolist() == [2, 2, 3, 3, 1, 1, 3]
    torch.testing.assert_close(out.logps, logp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.ref_logps, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.kl, kl, rtol=1e-4, atol=1e-6)
    _assert_same_gradients(model, torch.linspace(-2.0, 3.0, 7), out, logp, kl)


@pytest.mark.parametrize("budget,shapes", [(None, [(1, 9)]), (6, [(1, 5), (1, 6)])])
def test_packed_rows_run_each_shared_prefix_once(budget, shapes, monkeypatch):
    """The decoder sees the trie's nodes, each row up to its last predicting token: [1 2 3 20]
    and its branch 22 (5 nodes), then [4 5 20] and 22 under [1 2] (4 more), 9 in all, against 6
    full rows of 7 tokens. With room for 6 nodes the second prompt's rows start a trie of their
    own (repeating [1 2]): 5 + 6 positions in two calls, neither padded to the other."""
    if budget:
        monkeypatch.setattr(packing, "PACK_TOKENS", budget)
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _group_batch(TRIE_PROMPTS, TRIE_BLOCKS)
    seen = []
    embed = model.get_base_model().get_input_embeddings()
    hook = embed.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    sequence_logps(model, ids, mask, labels, pack=True)
    hook.remove()
    assert seen == shapes


def test_packing_falls_back_where_attention_takes_no_tree_mask():
    """Eager attention (or left padding) is not packed: the rows take the shared-prompt path
    the caller named, with the same numbers."""
    model = _lora(build_tiny(V, seed=0))
    ids, mask, labels = _group_batch(TRIE_PROMPTS, TRIE_BLOCKS)
    base = model.get_base_model()
    assert logprobs._packed_states(model, ids, mask, labels) is not None
    packed = sequence_logps(model, ids, mask, labels, pack=True).logps
    base.config._attn_implementation = "eager"
    try:
        assert logprobs._packed_states(model, ids, mask, labels) is None
        shared = sequence_logps(model, ids, mask, labels, pairs=2, group=3, pack=True).logps
    finally:
        base.config._attn_implementation = "sdpa"
    torch.testing.assert_close(shared, packed, rtol=1e-5, atol=1e-4)
    left = torch.flip(mask, [1])
    assert logprobs._packed_states(model, ids, left, labels) is None
