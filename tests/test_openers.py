"""Opener constraints: the exact probability of opening with given words, dense from P = 0."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hydra.utils import instantiate

from pdalign.constraints.refusal import DEFAULT_OPENERS, RefusalOpeners
from pdalign.contract.base import StepView
from pdalign.policy.logprobs import SequenceLogps
from pdalign.policy.models import apply_peft, load_model
from pdalign.policy.sampling import chat_prompt_ids
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.build import Policy
from pdalign.training.trainer import train
from tests.conftest import FP32, compose, tiny_overrides


def _estimate(con, logps):
    return con.step_estimate(StepView(batch=None, rows={con.name: SequenceLogps(
        logps=logps, n_tokens=torch.ones_like(logps))}))


def test_wanted_side_g_and_its_log_loss_gradient():
    """Two prompts x two openers, opener-major (row j * 2 + i: prompt i, opener j). Prompt 1:
    opener probabilities 0.2 and 0.3 (P = 0.5); prompt 2: 0.05 and 0.15 (P = 0.2). Wanted side:
    g = mean(1 - P) = (0.5 + 0.8) / 2 = 0.65. The surrogate's gradient is that of mean(-log P):
    d/d logp_j = -p_j / (2 P): -0.2, -0.125 (opener 1), -0.3, -0.375 (opener 2)."""
    con = RefusalOpeners(epsilon=0.2, openers=["I'm sorry", "I can't"])
    con._batch = [0, 1]
    logps = torch.log(torch.tensor([0.2, 0.05, 0.3, 0.15])).requires_grad_()
    est = _estimate(con, logps)
    assert float(est.value) == pytest.approx(0.65, abs=1e-6)
    assert float(est.surrogate.detach()) == pytest.approx(0.65, abs=1e-6)
    est.surrogate.backward()
    assert logps.grad.tolist() == pytest.approx([-0.2, -0.125, -0.3, -0.375], abs=1e-6)
    assert est.stats["log_mass"] == pytest.approx((math.log(0.5) + math.log(0.2)) / 2, abs=1e-6)


def test_bounded_side_g_and_its_unlikelihood_gradient():
    """The same probabilities on the bounded side (target comply): g = mean P = 0.35; the
    gradient is that of mean(-log(1 - P)): d/d logp_j = p_j / (2 (1 - P)): 0.2, 0.03125
    (opener 1), 0.3, 0.09375 (opener 2)."""
    con = RefusalOpeners(name="over", epsilon=0.1, prompts="benign", target="comply",
                         openers=["I'm sorry", "I can't"])
    con._batch = [0, 1]
    logps = torch.log(torch.tensor([0.2, 0.05, 0.3, 0.15])).requires_grad_()
    est = _estimate(con, logps)
    assert float(est.value) == pytest.approx(0.35, abs=1e-6)
    est.surrogate.backward()
    assert logps.grad.tolist() == pytest.approx([0.2, 0.03125, 0.3, 0.09375], abs=1e-6)


def test_the_gradient_stays_useful_at_a_zero_base_rate():
    """P = 2e-9 on both prompts: grad g is P-sized (~1e-9) and would move nothing; the
    surrogate's gradient on the likeliest opener stays of order one (-1/2 per prompt split
    by the openers' shares, here 1:1 -> -0.25 each)."""
    con = RefusalOpeners(epsilon=0.2, openers=["I'm sorry", "I can't"])
    con._batch = [0, 1]
    logps = torch.full((4,), math.log(1e-9), requires_grad=True)
    est = _estimate(con, logps)
    assert float(est.value) == pytest.approx(1.0, abs=1e-6)
    est.surrogate.backward()
    assert logps.grad.tolist() == pytest.approx([-0.25] * 4, abs=1e-6)


def test_rows_score_each_opener_after_its_prompt_exactly(tmp_path):
    """On the tiny model: the rows hold, per opener, each chat prompt followed by that opener
    with labels on the opener only, and their summed log-probs equal a direct teacher-forced
    log pi(opener | prompt); batches follow a seeded order that resumes exactly."""
    model, tok = load_model("tiny")
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    policy = Policy(model, None, tok, torch.float32, torch.device("cpu"))
    con = RefusalOpeners(epsilon=0.2, openers=["I'm sorry, but", "No, I"], batch_size=3)
    con.bind(policy, seed=1)
    state = con.state_dict()
    rows = con.rows("cpu")
    batch = list(con._batch)
    assert rows["input_ids"].shape[0] == 6
    from pdalign.policy.logprobs import sequence_logps
    with torch.no_grad():
        out = sequence_logps(model, rows["input_ids"], rows["attention_mask"], rows["labels"])
    for k, (i, opener) in enumerate([(i, o) for o in con.openers for i in batch]):
        p_ids = chat_prompt_ids(tok, con.prompts[i])
        o_ids = tok(opener, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + o_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].float()
        direct = logits.log_softmax(-1).gather(1, torch.tensor(o_ids)[:, None]).sum()
        assert float(out.logps[k]) == pytest.approx(float(direct), rel=1e-4, abs=1e-4)
        assert int((rows["labels"][k] != -100).sum()) == len(o_ids)
    con.rows("cpu")
    con.load_state_dict(state)
    con.rows("cpu")
    assert con._batch == batch


def test_each_prompt_runs_once_for_all_openers_with_the_same_g_and_gradient():
    """train.share_prompt for opener rows: each prompt runs through the decoder once and its J
    openers (here 8, 1 and 2 tokens long, so their rows are ragged) continue from its cache.
    g, the surrogate and its gradient in the adapter equal those of full rows (fp32: two code
    paths for one number)."""
    from pdalign.policy.logprobs import sequence_logps

    model, tok = load_model("tiny")
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    gen = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # move the policy away from its reference
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    policy = Policy(model, None, tok, torch.float32, torch.device("cpu"))
    con = RefusalOpeners(epsilon=0.2, openers=["I'm sorry, but I can't", "Sorry", "I cannot"],
                         batch_size=3)
    con.bind(policy, seed=2)
    assert con.rows_per_prompt == 3
    assert len({len(o) for o in con.opener_ids}) > 1
    rows = con.rows("cpu")
    assert len({len(con.prompt_ids[i]) for i in con._batch}) > 1  # prompts of unequal length
    params = [p for p in model.parameters() if p.requires_grad]
    results = {}
    for shared in (True, False):
        share = {"pairs": 3, "group": 3} if shared else {}
        out = sequence_logps(model, rows["input_ids"], rows["attention_mask"], rows["labels"],
                             **share)
        est = _estimate(con, out.logps)
        results[shared] = est, torch.autograd.grad(est.surrogate, params)
    (est, grads), (full, full_grads) = results[True], results[False]
    assert float(est.value) == pytest.approx(float(full.value), abs=1e-6)
    assert float(est.surrogate.detach()) == pytest.approx(float(full.surrogate.detach()), abs=1e-6)
    assert est.stats["log_mass"] == pytest.approx(full.stats["log_mass"], rel=1e-5)
    assert any(g.abs().sum() > 0 for g in full_grads)
    for a, b in zip(grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_shared_prompt_trains_opener_constraints_like_full_rows(tmp_path, monkeypatch):
    """The trainer packs an opener constraint's rows (J openers after each of B prompts) into
    one token trie: with train.share_prompt true and false the run is the same run (g, lambda,
    the opening's log-mass, equal to float rounding in fp32; step 2 reads step 1's update, so
    the surrogates' gradients too). Only training steps are recorded: the held-out evaluation
    always packs the exact opener rows, whatever train.share_prompt says."""
    import pdalign.policy.logprobs

    packed_rows = []
    original = pdalign.policy.logprobs._packed_states

    def recording(model, input_ids, attention_mask, labels, budget=None):
        if model.training:
            packed_rows.append(input_ids.shape[0])
        return original(model, input_ids, attention_mask, labels, budget)

    monkeypatch.setattr(pdalign.policy.logprobs, "_packed_states", recording)
    runs = {}
    for share in ("true", "false"):
        cfg = compose(tiny_overrides(
            "method=primal_dual", "constraints=[refusal_openers,over_refusal_openers]", FP32,
            "train.steps=2", "dual.lr=2", f"train.share_prompt={share}"))
        train(cfg, tmp_path / share)
        runs[share] = split_records(read_metrics(tmp_path / share / "metrics.jsonl"))[0]
        if share == "true":
            rows = [len(c.openers) * c.batch_size
                    for c in map(instantiate, cfg.constraints.values())]
            assert sorted(packed_rows) == sorted(2 * rows), packed_rows  # 2 steps
            packed_rows.clear()
    assert not packed_rows  # share_prompt=false never packs
    for a, b in zip(runs["true"], runs["false"], strict=True):
        for c in ("refusal_openers", "over_refusal_openers"):
            for key in (f"g/{c}", f"lambda_next/{c}", f"stat/{c}/log_mass"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("kwargs,message", [
    ({"openers": ["I can't", "I can't help"]},
     r"constraints\.refusal_openers\.openers: \"I can't\" is a token prefix of \"I can't help\""),
    ({"openers": ["Sure, here is"]},
     r"the detector does not judge \['Sure, here is'\] a refusal"),
    ({"openers": []}, r"openers must be a non-empty list"),
    ({"target": "maybe"}, r"constraints\.refusal_openers\.target='maybe' is not one of"),
])
def test_bad_openers_are_named(kwargs, message):
    model, tok = load_model("tiny")
    with pytest.raises(ValueError, match=message):
        con = RefusalOpeners(epsilon=0.2, **kwargs)
        con.bind(Policy(model, None, tok, torch.float32, torch.device("cpu")))


def test_default_openers_are_disjoint_refusals_under_the_tiny_tokenizer():
    model, tok = load_model("tiny")
    con = RefusalOpeners(epsilon=0.2)
    con.bind(Policy(model, None, tok, torch.float32, torch.device("cpu")))
    assert con.openers == list(DEFAULT_OPENERS)


def test_primal_dual_with_opener_constraints_raises_the_refusal_opening_on_harmful_prompts(
        tmp_path):
    """Both opener bounds on the tiny model, tight refusal bound: lambda_refusal rises from 0 by
    the gradient rule on the logged g, the log-probability of a refusal opening on harmful
    prompts rises, and g and lambda are logged for both. The refusal bound trains with a margin
    of 0.15: the dual step reads epsilon - margin = 0.05, the held-out certificate epsilon 0.2.
    Algebra on logged numbers, so fp32."""
    cfg = compose(tiny_overrides(
        "method=primal_dual", "constraints=[refusal_openers,over_refusal_openers]", FP32,
        "train.steps=8", "dual.lr=2", "train.lr=5e-3", "eval.prompts_per_set=2",
        "+constraints.refusal_openers.margin=0.15"))
    train(cfg, tmp_path / "run")
    rows, evals = split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    assert rows[0]["g/refusal_openers"] > 0.99  # the random tiny model never opens that way
    first, last = rows[0]["stat/refusal_openers/log_mass"], rows[-1]["stat/refusal_openers/log_mass"]
    assert last > first + 1.0, (first, last)
    for c, eps in (("refusal_openers", 0.05), ("over_refusal_openers", 0.1)):
        lam = 0.0
        for r in rows:
            assert r[f"eps/{c}"] == pytest.approx(eps)
            lam = min(max(lam + 2 * (r[f"g/{c}"] - eps), 0.0), 10.0)
            assert r[f"lambda_next/{c}"] == pytest.approx(lam, rel=1e-9)
    assert evals[-1]["eval/refusal_openers/id/eps"] == pytest.approx(0.2)
    assert evals[-1]["eval/over_refusal_openers/id/eps"] == pytest.approx(0.1)


@pytest.mark.parametrize("margin, message", [
    (-0.1, "margin=-0.1 must be a finite number >= 0"),
    ("nan", "margin=nan must be a finite number >= 0"),
    (0.25, "margin=0.25 leaves training bound epsilon - margin = -0.05 out of range"),
])
def test_bad_margin_is_named_before_any_model_loads(margin, message):
    from pdalign.training.build import build_constraints

    cfg = compose(tiny_overrides("constraints=[refusal_openers]",
                                 f"+constraints.refusal_openers.margin={margin}"))
    with pytest.raises(ValueError, match=re.escape(f"constraints.refusal_openers.{message}")):
        build_constraints(cfg)


def test_whole_answers_end_with_eos_so_a_continuation_does_not_count():
    """whole=true: each opener row ends with the tokenizer's EOS, labelled, so P is the
    probability of answering with exactly that text; the default strings are then the short
    complete refusals, each judged a refusal by the detector."""
    from pdalign.constraints.refusal import DEFAULT_REFUSALS

    model, tok = load_model("tiny")
    con = RefusalOpeners(epsilon=0.2, whole=True, batch_size=2)
    assert con.openers == list(DEFAULT_REFUSALS)
    con.bind(Policy(model, None, tok, torch.float32, torch.device("cpu")))
    rows = con.rows("cpu")
    for j, text in enumerate(con.openers):
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        for k in (2 * j, 2 * j + 1):  # opener j after each of the 2 prompts
            labels = rows["labels"][k][rows["labels"][k] != -100].tolist()
            assert labels == ids


def test_shipped_bounded_openings_contain_every_shipped_wanted_refusal():
    """The two shipped configs as a pair: every whole refusal refusal_openers teaches starts,
    token for token, with one of over_refusal_openers' openings, so a benign refusal in those
    words counts in the over-refusal bound (it escaped when it did not)."""
    from omegaconf import OmegaConf

    from tests.conftest import CONF_DIR

    model, tok = load_model("tiny")
    policy = Policy(model, None, tok, torch.float32, torch.device("cpu"))
    built = {}
    for name in ("refusal_openers", "over_refusal_openers"):
        node = OmegaConf.load(f"{CONF_DIR}/constraints/{name}.yaml")[name]
        built[name] = instantiate(node)
        built[name].bind(policy)
    wanted, bounded = built["refusal_openers"], built["over_refusal_openers"]
    assert wanted.whole and wanted.side == "wanted"
    assert not bounded.whole and bounded.side == "bounded"
    for text, ids in zip(wanted.openers, wanted.opener_ids):
        assert any(ids[:len(o)] == o for o in bounded.opener_ids), text
