"""Length's stop estimator: its surrogate against the formula worked from the full log_softmax,
its gradient when every sample hit the budget, importance weights, and the trainer's two
forward paths. Tiny 2-layer Llama with the real SmolLM2 tokenizer, fp32 throughout (algebra).

The formula (`pdalign.constraints.length.stop_estimate`), with ℓ_i the sampled lengths, C_i the
positions where sample i went on (its token is not EOS), h_s = pi(EOS | x, y_<s), b the
baseline and w the self-normalized importance weights:

    value = sum w ℓ / sum w
    grad  = (1 / sum w) sum_i w_i [ sum_{s in C_i} grad log q_s(y_s) (ℓ_i - b)
                                    + sum_{s in C_i} grad log(1 - h_s) (ℓ_i - s) ]

with log q_s(y_s) = log pi(y_s) - log(1 - h_s). The tests compute it with log1p(-h) from the
full logits, where the estimator uses h_s / (1 - h_s) detached and the fused LM head.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import pdalign.policy.sampling as sampling
from pdalign.constraints.length import Length
from pdalign.contract.base import StopLogps
from pdalign.contract.manager import RolloutManager
from pdalign.policy.logprobs import SequenceLogps, sequence_logps
from pdalign.policy.sampling import right_pad
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.trainer import train
from tests.conftest import FP32, compose, scripted_decode, tiny_overrides


def _params(model):
    return [p for p in model.parameters() if p.requires_grad]


def _grads(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def formula(model, input_ids, attention_mask, labels, lengths, stopped, weights, baseline, eos):
    """The stop estimator's score, from the full (N, T, V) log_softmax, one row at a time.

    Returns (value, score): the surrogate's value and a function whose gradient is its
    gradient."""
    lp = model(input_ids=input_ids, attention_mask=attention_mask).logits.float().log_softmax(-1)
    w = weights / weights.sum()
    score = torch.zeros(())
    for i in range(len(lengths)):
        start = int((labels[i] == -100).long().argmin())  # first response token
        ell = float(lengths[i])
        went_on = int(lengths[i]) - int(stopped[i])
        for s in range(1, went_on + 1):  # positions where the sample continued
            t = start + s - 1  # the token at position s; logits at t - 1 predict it
            log_pi = lp[i, t - 1, labels[i, t]]
            log_go_on = torch.log1p(-lp[i, t - 1, eos].exp())
            score = score + w[i] * ((log_pi - log_go_on) * (ell - baseline)
                                    + log_go_on * (ell - s))
    value = float((w * lengths.float()).sum())
    return value, score


# ---- through the rollout manager: the formula, and importance weights -------------------------

B = 5  # max_new_tokens


def _stopping(model, tok):
    """A copy of the tiny model that stops now and then: the EOS row of its (tied) LM head set
    to 8 m / |m|^2, m the mean final hidden state on a prompt, which lifts pi(EOS) from ~1/V =
    2e-5 to between ~0.002 and ~0.4 along these rows, where dividing by 1 - h_s is visible."""
    import copy

    from pdalign.policy.sampling import chat_prompt_ids

    model = copy.deepcopy(model)
    ids = torch.tensor([chat_prompt_ids(tok, "Question x x ?") + [1011, 1012, 1013, 1014]])
    with torch.no_grad():
        m = model.model(input_ids=ids).last_hidden_state[0].mean(0)
        model.lm_head.weight[tok.eos_token_id] = 8 * m / m.norm() ** 2
    return model


@pytest.fixture()
def scripted(tiny, tmp_path, monkeypatch):
    """A manager whose generate returns four scripted rows (B = 5):

    row 0: a b EOS          -> ℓ = 3, stopped;
    row 1: a b c d e        -> ℓ = 5, cut at the budget;
    row 2: a b c d EOS      -> ℓ = 5, stopped on the last slot;
    row 3: a EOS            -> ℓ = 2, stopped.
    Costs 3, 5, 5, 2: g_hat = 15 / 4 = 3.75 on fresh samples (w = 1), and the baseline, before
    any rollout is retired, is their mean 3.75 too.
    """
    model, tok = _stopping(*tiny), tiny[1]
    eos = tok.eos_token_id
    new = torch.tensor([[1011, 1012, eos, eos, eos], [1021, 1022, 1023, 1024, 1025],
                        [1031, 1032, 1033, 1034, eos], [1041, eos, eos, eos, eos]])
    monkeypatch.setattr(sampling, "decode", scripted_decode(new, eos))
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {'x ' * i}?"}) + "\n"
                            for i in range(4)))
    length = Length(epsilon=2.0, prompts=str(path), estimator="stop")
    manager = RolloutManager([length], tok, every=10, prompts_per_rollout=4, max_new_tokens=B,
                             batch_size=4, seed=0, is_clip=1.5)
    return model, manager, eos


def test_stop_surrogate_value_and_gradient_equal_the_formula(scripted):
    """Fresh samples: w = 1, b = 3.75, value 3.75; the surrogate's gradient over every
    parameter equals the formula's (computed from the full log_softmax), and is not zero."""
    model, manager, eos = scripted
    est = manager.step_estimates(model, 0)["length"]
    rollout = manager.rollouts["length"]
    assert rollout.response_lengths.tolist() == [3, 5, 5, 2]
    assert manager.stop_ids == [eos]
    assert float(est.value) == pytest.approx(3.75) == float(est.surrogate.detach())
    value, score = formula(model, rollout.input_ids, rollout.attention_mask, rollout.labels,
                           rollout.response_lengths, torch.tensor([1, 0, 1, 1]),
                           torch.ones(4), 3.75, eos)
    assert value == pytest.approx(3.75)
    params = _params(model)
    ours, theirs = _grads(est.surrogate, params), _grads(score, params)
    assert sum(float(g.abs().sum()) for g in theirs) > 0
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert 0.01 < est.stats["stop_prob"] < 1  # where 1 / (1 - h_s) differs from 1


def test_reused_samples_weight_the_formula(scripted):
    """Step 1 reuses the samples with the policy 'moved' by log-ratios (0, ln 3, -ln 3, ln 1.2):
    clipped at 1.5 the weights are w = (1, 1.5, 1/1.5, 1.2), so
    value = (3 + 7.5 + 10/3 + 2.4) / (1 + 1.5 + 2/3 + 1.2) = 16.2333 / 4.3667 = 3.7176,
    and the gradient is the w-weighted formula's (the baseline stays 3.75: nothing retired)."""
    model, manager, eos = scripted
    manager.step_estimates(model, 0)
    shift = torch.tensor([0.0, math.log(3.0), -math.log(3.0), math.log(1.2)])

    def moved(*rows, **kwargs):
        out = sequence_logps(*rows, **kwargs)
        return SequenceLogps(logps=out.logps + shift, n_tokens=out.n_tokens,
                             stop_logps=out.stop_logps)

    est = manager.step_estimates(model, 1, logps_fn=moved)["length"]
    w = torch.tensor([1.0, 1.5, 1 / 1.5, 1.2])
    assert float(est.value) == pytest.approx((3 + 7.5 + 10 / 3 + 2.4) / (4.5 + 2 / 3 - 0.8),
                                             rel=1e-6)
    assert float(est.value) == pytest.approx(3.7176, abs=1e-4)
    rollout = manager.rollouts["length"]
    _, score = formula(model, rollout.input_ids, rollout.attention_mask, rollout.labels,
                       rollout.response_lengths, torch.tensor([1, 0, 1, 1]), w, 3.75, eos)
    params = _params(model)
    for a, b in zip(_grads(est.surrogate, params), _grads(score, params)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ---- every sample at the budget ---------------------------------------------------------------

def _at_the_cap(tok):
    """Three hand-made samples that all went on to the budget B = 5 (no EOS): ℓ = 5, 5, 5."""
    prompts = [[1, 9690, 198], [1, 9690, 198, 4093, 28], [1, 4093]]
    responses = [[1011, 1012, 1013, 1014, 1015], [1021, 1022, 1023, 1024, 1025],
                 [1031, 1032, 1033, 1034, 1035]]
    return right_pad(list(zip(prompts, responses)), tok.pad_token_id)


def _estimate(model, rows, length, eos):
    out = sequence_logps(model, *rows, stop_ids=[eos])
    lengths = torch.full((3,), B)
    stops = StopLogps(out.stop_logps, lengths, torch.zeros(3, dtype=torch.bool))
    return length.estimate(lengths.float(), out.logps, torch.ones(3), stops), out


def test_at_the_cap_sampled_has_no_gradient_and_stop_raises_the_stop_probability(tiny):
    """All three samples cost 5 = b: the sampled surrogate mean(w (c - b) log pi) has exactly
    zero gradient. The stop one's gradient is sum_{s < 5} grad log(1 - h_s) (5 - s) (the s = 5
    term has weight 0), so descending it raises h_s: after 5 Adam steps on that surrogate
    alone the mean pi(EOS) over positions 1..4 of the same paths is higher than before, and
    each sample's own mean too."""
    import copy

    model, tok = copy.deepcopy(tiny[0]), tiny[1]
    eos = tok.eos_token_id
    rows = _at_the_cap(tok)
    params = _params(model)
    sampled, _ = _estimate(model, rows, Length(epsilon=2.0, estimator="sampled"), eos)
    assert float(sampled.value) == 5.0
    assert all(float(g.abs().max()) == 0.0 for g in _grads(sampled.surrogate, params))
    stop = Length(epsilon=2.0, estimator="stop")
    est, out = _estimate(model, rows, stop, eos)
    assert float(est.value) == 5.0
    assert sum(float(g.abs().sum()) for g in _grads(est.surrogate, params)) > 0
    before = out.stop_logps[:, :B - 1].detach().exp()  # (3, 4)
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        est, _ = _estimate(model, rows, stop, eos)
        est.surrogate.backward()
        opt.step()
    with torch.no_grad():
        after = sequence_logps(model, *rows, stop_ids=[eos]).stop_logps[:, :B - 1].exp()
    assert float(after.mean()) > 2 * float(before.mean())
    assert (after.mean(1) > before.mean(1)).all()


# ---- the trainer, one process and the shared (DDP) forward ------------------------------------

def test_trainer_runs_the_stop_estimator_in_both_forward_paths(tmp_path, monkeypatch):
    """Two primal-dual steps with Length(estimator=stop) (tiny samples at a 6-token budget),
    once with the rollout rows in their own forward (one process) and once in the pairs'
    forward (what DDP runs; forced here on one process): the same run to fp32 rounding in g,
    lambda and the stop probability, and the logged signal says flat costs are not silent."""
    import pdalign.training.trainer

    runs = {}
    original = pdalign.training.trainer.setup
    for shared in (False, True):
        def forced(cfg, run_dir, shared=shared):
            s, state = original(cfg, run_dir)
            s.shared_forward = shared
            return s, state

        monkeypatch.setattr(pdalign.training.trainer, "setup", forced)
        cfg = compose(tiny_overrides(
            "method=primal_dual", "constraints=[length]", FP32, "train.steps=2",
            "constraints.length.estimator=stop", "constraints.length.epsilon=2",
            "train.rollout.max_new_tokens=6", "train.rollout.prompts_per_rollout=3",
            "dual.lr=0.5"))
        train(cfg, tmp_path / str(shared))
        runs[shared] = split_records(read_metrics(tmp_path / str(shared) / "metrics.jsonl"))[0]
    for a, b in zip(runs[False], runs[True], strict=True):
        assert a["signal/length/silent_when_flat"] == 0.0
        assert 0 < a["stat/length/stop_prob"] < 1
        for key in ("g/length", "lambda_next/length", "stat/length/stop_prob", "loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-7), key
    assert runs[False][-1]["lambda_next/length"] > 0  # the bound of 2 tokens is violated
