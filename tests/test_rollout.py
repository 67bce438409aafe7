"""Rollouts: generation shapes and masks, seeding, and the RolloutManager's sampling schedule.

All on the tiny 2-layer Llama with the real SmolLM2 tokenizer; a few tokens per sample.
"""

from __future__ import annotations

import math

import pytest
import torch

from pdalign.contract import manager as rollout_mod
from pdalign.contract.manager import Rollout, RolloutManager
from pdalign.contract.rollout import RolloutConstraint
from pdalign.policy.logprobs import SequenceLogps
from pdalign.policy.sampling import chat_prompt_ids, decode, generate, sample_next

PROMPTS = ["hi", "How do I kill a Python process that is stuck?", "Tell me a joke.",
           "What is 2 + 2?"]
GEN = {"max_new_tokens": 5, "temperature": 1.0, "top_p": 1.0, "batch_size": 3}


def reference_logps(model, input_ids, attention_mask, labels):
    """Plain full-logits reference of pdalign.policy.logprobs.sequence_logps (logps only)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    token_logps = logits.float().log_softmax(-1).gather(
        -1, targets.clamp(min=0)[..., None]).squeeze(-1)
    return SequenceLogps(logps=(token_logps * mask).sum(1), n_tokens=mask.sum(1).float())


class CharCost(RolloutConstraint):
    """Test constraint: cost = characters in the response / 100 (varies across samples)."""

    def cost(self, prompts, responses, response_lengths):
        return torch.tensor([len(r) / 100.0 for r in responses])


# ---- generate ---------------------------------------------------------------------------------

def test_generate_shapes_masks_and_labels(tiny):
    model, tok = tiny
    r = generate(model, tok, PROMPTS, seed=0, **GEN)
    n, t = r.input_ids.shape
    assert n == len(PROMPTS) == len(r.responses)
    assert r.attention_mask.shape == r.labels.shape == (n, t)
    for i, prompt in enumerate(PROMPTS):
        p = chat_prompt_ids(tok, prompt)
        length = int(r.response_lengths[i])
        assert 1 <= length <= GEN["max_new_tokens"]
        end = len(p) + length
        assert r.input_ids[i, :len(p)].tolist() == p
        assert (r.labels[i, :len(p)] == -100).all() and (r.labels[i, end:] == -100).all()
        assert torch.equal(r.labels[i, len(p):end], r.input_ids[i, len(p):end])
        assert r.attention_mask[i].tolist() == [1] * end + [0] * (t - end)
        assert (r.input_ids[i, end:] == tok.pad_token_id).all()
        response_ids = r.input_ids[i, len(p):end].tolist()
        assert r.responses[i] == tok.decode(response_ids, skip_special_tokens=True)
    assert (r.labels != -100).sum(1).tolist() == r.response_lengths.tolist()
    assert r.costs == {} and r.old_logps is None


def _varied_tiny():
    """A fresh tiny model whose greedy tokens vary (its init's are near-flat: one token
    repeated), in eval mode."""
    from pdalign.policy.models import load_model

    model, tok = load_model("tiny")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval(), tok


def test_decode_gives_hf_generates_greedy_tokens_as_rows_leave_at_eos():
    """`decode` drops each row at its EOS; greedy, it writes exactly the tokens
    ``model.generate`` does (cut at EOS), for left-padded prompts that stop at different steps
    and one that runs to the budget."""
    model, tok = _varied_tiny()
    ids = [chat_prompt_ids(tok, p) for p in PROMPTS]
    width, pad = max(map(len, ids)), tok.pad_token_id
    x = torch.tensor([[pad] * (width - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])

    def hf(eos, new=12):
        out = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=new,
                             do_sample=False, pad_token_id=pad, repetition_penalty=1.0,
                             eos_token_id=sorted(eos) if eos else None)[:, width:].tolist()
        cut = []
        for row in out:
            ends = [i for i, t in enumerate(row) if t in eos]
            cut.append(row[:ends[0] + 1] if ends else row)
        return cut

    with torch.no_grad():
        free = hf(set())
        # stop rows at different steps: the tokens two rows write at steps 1 and 3
        eos = {free[1][1], free[3][3]} - set(free[0])
        want = hf(eos)
        got = decode(model, x, mask, max_new_tokens=12, eos_ids=eos, temperature=0, top_p=1.0)
    lengths = sorted(len(r) for r in want)
    assert lengths[0] < lengths[-1] == 12, lengths  # rows left early, one ran to the budget
    assert got == want


def test_sample_next_draws_the_tempered_nucleus():
    """`sample_next` against the closed form, 40,000 draws a row: softmax(l / T), and with
    top_p the fewest most likely tokens reaching that mass, renormalized; nothing outside it.
    Temperature 0 is the argmax."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 40_000
    torch.manual_seed(0)
    for temperature, top_p in ((1.0, 1.0), (0.5, 1.0), (1.0, 0.8)):
        p = torch.softmax(logits / temperature, -1)
        if top_p < 1:  # by hand: p = .553 .203 .123 ...; .553 + .203 = .756 < .8, + .123 >= .8
            keep = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
            p = torch.where(keep, p, 0.0) / p[keep].sum()
        draws = sample_next(logits.expand(n, -1), temperature, top_p)
        freq = torch.bincount(draws, minlength=6).double() / n
        sd = (p * (1 - p) / n).sqrt()
        assert ((freq - p).abs() <= 5 * sd + 1e-12).all(), (temperature, top_p, freq, p)
        if top_p < 1:
            assert freq[3:].sum() == 0
    assert sample_next(logits[None], 0.0, 1.0).tolist() == [0]


def test_max_new_tokens_is_respected(tiny):
    model, tok = tiny
    r = generate(model, tok, PROMPTS[:2], max_new_tokens=3, temperature=1.0, top_p=0.9,
                 batch_size=2, seed=1)
    assert int(r.response_lengths.max()) <= 3
    assert int((r.labels != -100).sum(1).max()) <= 3


def test_same_seed_same_samples_and_caller_rng_untouched(tiny):
    model, tok = tiny
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = generate(model, tok, PROMPTS, seed=7, **GEN)
    assert torch.equal(torch.random.get_rng_state(), before)  # forked, not consumed
    b = generate(model, tok, PROMPTS, seed=7, **GEN)
    c = generate(model, tok, PROMPTS, seed=8, **GEN)
    assert torch.equal(a.input_ids, b.input_ids) and a.responses == b.responses
    assert not torch.equal(a.input_ids, c.input_ids)


def test_bf16_sampling_holds_the_head_cast_once_and_samples_the_same(tiny, monkeypatch):
    """Under bf16 autocast generate casts the frozen float32 LM head once per call instead of at
    every decode step: the same tokens as with the per-step cast, and afterwards the model has
    its own float32 head back, still tied to the input embedding."""
    model, tok = tiny
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    weight = head.weight
    assert weight is embed.weight and weight.dtype == torch.float32
    weight.requires_grad_(False)  # frozen, as under a LoRA or QLoRA adapter
    try:
        _check_head_held_once(model, tok, weight, monkeypatch)
    finally:
        weight.requires_grad_(True)
    assert model.get_output_embeddings().weight is weight is embed.weight


def _check_head_held_once(model, tok, weight, monkeypatch):
    import contextlib

    import pdalign.policy.sampling as sampling
    from pdalign.policy.precision import autocast

    seen = []
    original = torch.nn.functional.linear

    def spy(x, w, b=None):
        if w.shape == weight.shape:
            seen.append(w.dtype)
        return original(x, w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    with autocast(torch.bfloat16, "cpu"):
        held = generate(model, tok, PROMPTS, seed=5, **GEN)
        assert seen and set(seen) == {torch.bfloat16}  # the head arrives already in bf16
        seen.clear()
        monkeypatch.setattr(sampling, "_head_in_autocast_dtype",
                            lambda m, d: contextlib.nullcontext())
        per_step = generate(model, tok, PROMPTS, seed=5, **GEN)
    assert set(seen) == {torch.float32}  # autocast casts it at each use
    assert held.responses == per_step.responses and torch.equal(held.input_ids,
                                                                per_step.input_ids)


def test_generate_restores_the_model_mode(tiny):
    model, tok = tiny
    model.train()
    generate(model, tok, PROMPTS[:1], seed=0, **GEN)
    assert model.training
    model.eval()
    generate(model, tok, PROMPTS[:1], seed=0, **GEN)
    assert not model.training
    model.train()


def test_response_ends_at_the_first_eos_and_padding_follows():
    """Greedy on a model whose row 0 writes a new token X at step k: with X made an EOS id (the
    generation config's), row 0's response is its first k + 1 tokens, X last, and padding
    follows; row 1, which never writes X, runs to max_new_tokens."""
    model, tok = _varied_tiny()
    free = generate(model, tok, PROMPTS[:2], max_new_tokens=5, temperature=0, top_p=1.0,
                    batch_size=2)
    p0, p1 = (len(chat_prompt_ids(tok, p)) for p in PROMPTS[:2])
    row0, row1 = free.labels[0, p0:p0 + 5].tolist(), free.labels[1, p1:p1 + 5].tolist()
    # the first token row 0 writes that it has not written before and row 1 never writes
    k = next(i for i in range(1, 4) if row0[i] not in row0[:i] + row1)
    model.generation_config.eos_token_id = [tok.eos_token_id, row0[k]]
    r = generate(model, tok, PROMPTS[:2], max_new_tokens=5, temperature=0, top_p=1.0,
                 batch_size=2)
    n = k + 1
    assert r.response_lengths.tolist() == [n, 5]
    assert r.labels[0, p0:p0 + n].tolist() == row0[:n]
    assert (r.labels[0, p0 + n:] == -100).all() and r.attention_mask[0].sum() == p0 + n
    assert (r.input_ids[0, p0 + n:] == tok.pad_token_id).all()
    assert r.labels[1, p1:p1 + 5].tolist() == row1
    assert r.responses[0] == tok.decode(row0[:n], skip_special_tokens=True)


# ---- RolloutManager ---------------------------------------------------------------------------

def test_constraints_on_one_prompt_set_share_one_rollout(tiny, prompt_file, monkeypatch):
    model, tok = tiny
    calls = []
    real = rollout_mod.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(rollout_mod, "generate", counting)
    a = CharCost("a", 1.0, str(prompt_file))
    b = CharCost("b", 1.0, str(prompt_file))
    c = CharCost("c", 1.0, "benign")
    manager = RolloutManager([a, b, c], tok, every=1, prompts_per_rollout=3, seed=0,
                             max_new_tokens=4)
    assert sorted(manager.groups) == ["a+b", "c"]
    out = manager.step_estimates(model, 0, logps_fn=reference_logps)
    assert sorted(out) == ["a", "b", "c"] and len(calls) == 2
    shared = manager.rollouts["a+b"]
    assert len(shared) == 3 and set(shared.costs) == {"a", "b"}


def test_reuse_between_rollouts_and_baseline_after_use(tiny, prompt_file):
    """every=2: fresh samples at steps 0 and 2, reused (same rows) at step 1.

    On fresh samples w = 1, so g_hat is the plain mean cost. A rollout's costs enter the
    baseline when it is retired (m = 0.5): none before step 2, then b = mean(c_0); at step 4
    b = 0.5 * mean(c_0) + 0.5 * mean(c_2).
    """
    model, tok = tiny
    con = CharCost("chars", 1.0, str(prompt_file), baseline_momentum=0.5)
    manager = RolloutManager([con], tok, every=2, prompts_per_rollout=4, seed=0,
                             max_new_tokens=4)
    e0 = manager.step_estimates(model, 0, logps_fn=reference_logps)
    r0 = manager.rollouts["chars"]
    assert torch.allclose(e0["chars"].value, r0.costs["chars"].mean())
    assert e0["chars"].stats["baseline"] == pytest.approx(float(r0.costs["chars"].mean()))
    assert con.baseline is None
    manager.step_estimates(model, 1, logps_fn=reference_logps)
    assert manager.rollouts["chars"] is r0 and con.baseline is None
    e2 = manager.step_estimates(model, 2, logps_fn=reference_logps)["chars"]
    r2 = manager.rollouts["chars"]
    assert r2 is not r0 and r2.step == 2
    b0 = float(r0.costs["chars"].mean())
    assert con.baseline == pytest.approx(b0) and e2.stats["baseline"] == pytest.approx(b0)
    manager.step_estimates(model, 4, logps_fn=reference_logps)
    assert con.baseline == pytest.approx(0.5 * b0 + 0.5 * float(r2.costs["chars"].mean()))


def test_reused_samples_get_clipped_importance_weights(tiny, prompt_file):
    """The policy 'moves' by log-ratios (0, ln 3, -ln 3, ln 1.2) on the 4 reused samples.

    With is_clip = 1.5 the weights are (1, 1.5, 1/1.5, 1.2), and g_hat is their
    self-normalized mean of the costs: sum(w * c) / sum(w).
    """
    model, tok = tiny
    con = CharCost("chars", 1.0, str(prompt_file))
    manager = RolloutManager([con], tok, every=10, prompts_per_rollout=4, seed=0,
                             max_new_tokens=4, is_clip=1.5)
    fresh = manager.step_estimates(model, 0, logps_fn=reference_logps)["chars"]
    assert fresh.stats["is_weight_min"] == fresh.stats["is_weight_max"] == 1.0
    shift = torch.tensor([0.0, math.log(3.0), -math.log(3.0), math.log(1.2)])

    def moved_logps(*batch):
        out = reference_logps(*batch)
        return SequenceLogps(logps=out.logps + shift, n_tokens=out.n_tokens)

    reused = manager.step_estimates(model, 1, logps_fn=moved_logps)["chars"]
    w = torch.tensor([1.0, 1.5, 1 / 1.5, 1.2])
    costs = manager.rollouts["chars"].costs["chars"]
    assert reused.stats["is_weight_min"] == pytest.approx(1 / 1.5)
    assert reused.stats["is_weight_max"] == pytest.approx(1.5)
    assert float(reused.value) == pytest.approx(float((w * costs).sum() / w.sum()), rel=1e-5)


def test_trainer_api_rows_then_estimates_matches_step_estimates(tiny, prompt_file):
    """maybe_sample -> rows -> (the trainer's forward) -> estimates, over two prompt sets."""
    model, tok = tiny
    kwargs = {"every": 1, "prompts_per_rollout": 3, "seed": 4, "max_new_tokens": 4}

    def build():
        return RolloutManager([CharCost("x", 1.0, str(prompt_file)),
                               CharCost("y", 1.0, "benign")], tok, **kwargs)

    m1, m2 = build(), build()
    one = m1.step_estimates(model, 0, logps_fn=reference_logps)
    assert m2.rows() is None
    assert m2.maybe_sample(model, 0) and not m2.maybe_sample(model, 0)
    rows = m2.rows("cpu")
    assert rows["input_ids"].shape[0] == 6 == rows["labels"].shape[0]
    logps = reference_logps(model, rows["input_ids"], rows["attention_mask"], rows["labels"])
    two = m2.estimates(logps.logps, 0)
    for name in ("x", "y"):
        assert torch.allclose(one[name].value, two[name].value)
        assert torch.allclose(one[name].surrogate, two[name].surrogate)
    with pytest.raises(ValueError, match="5 log-probs for 6 rollout rows"):
        m2.estimates(logps.logps[:5])


def test_state_dict_round_trip_resumes_samples_rng_and_baseline(tiny, prompt_file):
    model, tok = tiny
    kwargs = {"every": 2, "prompts_per_rollout": 3, "seed": 0, "max_new_tokens": 4}
    m1 = RolloutManager([CharCost("x", 1.0, str(prompt_file))], tok, **kwargs)
    m1.step_estimates(model, 0, logps_fn=reference_logps)
    state = m1.state_dict()
    m2 = RolloutManager([CharCost("x", 1.0, str(prompt_file))], tok, **kwargs)
    m2.load_state_dict(state)
    assert isinstance(m2.rollouts["x"], Rollout)
    assert m2.constraints[0].baseline == m1.constraints[0].baseline
    for step in (1, 2):
        a = m1.step_estimates(model, step, logps_fn=reference_logps)["x"]
        b = m2.step_estimates(model, step, logps_fn=reference_logps)["x"]
        assert torch.equal(m1.rollouts["x"].input_ids, m2.rollouts["x"].input_ids)
        assert torch.allclose(a.value, b.value)


def test_manager_without_rollout_constraints_returns_nothing(tiny):
    from pdalign.constraints.kl_budget import KLBudget

    model, tok = tiny
    manager = RolloutManager([KLBudget(epsilon=0.1)], tok)
    assert not manager and manager.step_estimates(model, 0, logps_fn=reference_logps) == {}
    assert manager.rows() is None
