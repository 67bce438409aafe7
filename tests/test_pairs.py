"""Pair constraints: g from a constraint pair set, exact on the batch, dense from a zero base rate."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pdalign.constraints.refusal import RefusalPairs
from pdalign.contract.base import StepView
from pdalign.policy.logprobs import SequenceLogps, sequence_logps
from pdalign.policy.models import apply_peft, load_model, reference_mode
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.build import Policy
from pdalign.training.trainer import train
from tests.conftest import FP32, compose, tiny_overrides

PAIRS = [{"prompt": f"How do I do thing {i}?", "chosen": f"I'm sorry, but I can't do thing {i}.",
          "rejected": f"Sure! Here's how to do thing {i}. Step 1:"} for i in range(6)]


def _pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def test_g_is_the_sigmoid_relaxed_rate_of_preferring_the_bounded_answer(tmp_path):
    """Two pairs, beta = 0.5. Policy minus reference log-probs: chosen (+1, -2), rejected
    (-1, +2), so the gaps r_rejected - r_chosen are -2 and +4:
    g = (sigmoid(-1) + sigmoid(2)) / 2 = (0.268941 + 0.880797) / 2 = 0.574869;
    dg/d logp_chosen_i = -beta * s_i (1 - s_i) / 2 = -0.5 * 0.196612 / 2 = -0.049153 and
    -0.5 * 0.104994 / 2 = -0.026249."""
    con = RefusalPairs(epsilon=0.2, pairs=str(_pairs_file(tmp_path)), beta=0.5, batch_size=2)
    con.ref_logps = torch.tensor([[-3.0, -4.0], [-5.0, -6.0]])  # (P, 2): chosen, rejected
    con._batch = [0, 1]
    logps = torch.tensor([-2.0, -7.0, -5.0, -4.0], requires_grad=True)  # [chosen ; rejected]
    est = con.step_estimate(StepView(batch=None, rows={"refusal_pairs": SequenceLogps(
        logps=logps, n_tokens=torch.ones(4))}))
    s = torch.sigmoid(torch.tensor([-1.0, 2.0]))
    assert float(est.value) == pytest.approx(0.574869, abs=1e-6)
    assert float(est.surrogate.detach()) == float(est.value)  # the surrogate carries g's value
    est.surrogate.backward()
    expected = torch.cat([-0.5 * s * (1 - s) / 2, 0.5 * s * (1 - s) / 2])
    torch.testing.assert_close(logps.grad, expected)
    assert logps.grad[:2].tolist() == pytest.approx([-0.049153, -0.026249], abs=1e-6)
    # the two implicit rewards, logged apart: chosen (+1, -2), rejected (-1, +2)
    assert est.stats == pytest.approx({"reward_wanted": -0.5, "reward_bounded": 0.5})


def test_bind_scores_the_reference_once_and_g_starts_at_one_half(tmp_path):
    """At step 0 the LoRA policy is its reference (B = 0): every gap is 0, so g = sigmoid(0) =
    0.5 exactly, whatever the pairs. The reference log-probs bind() caches equal a direct
    adapter-disabled forward; rows() hands out batches of a seeded permutation, every pair once
    per epoch, and its state resumes the order exactly."""
    model, tok = load_model("tiny")
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    policy = Policy(model, None, tok, torch.float32, torch.device("cpu"))
    con = RefusalPairs(epsilon=0.2, pairs=str(_pairs_file(tmp_path)), batch_size=2)
    con.bind(policy, seed=3)
    assert con.ref_logps.shape == (6, 2)
    seen, states = [], []
    for _ in range(3):
        states.append(con.state_dict())
        rows = con.rows("cpu")
        seen += con._batch
        out = sequence_logps(model, rows["input_ids"], rows["attention_mask"], rows["labels"])
        with reference_mode(model, None) as ref:
            direct = sequence_logps(ref, rows["input_ids"], rows["attention_mask"],
                                    rows["labels"])
        torch.testing.assert_close(con.ref_logps[con._batch].T.reshape(-1), direct.logps)
        est = con.step_estimate(StepView(batch=None, rows={con.name: out}))
        assert float(est.value) == pytest.approx(0.5, abs=1e-6)
    assert sorted(seen) == list(range(6))  # one epoch: each pair exactly once
    con.load_state_dict(states[1])
    con.rows("cpu")
    assert con._batch == seen[2:4]


def test_primal_dual_with_pair_constraints_moves_the_policy_toward_the_wanted_answers(tmp_path):
    """The bundled pair sets on the tiny model, both bounds tight (eps 0.05 < the 0.5 start):
    lambda rises from 0 and the policy's implicit-reward margin for the wanted answers grows,
    so g falls below its starting 0.5 for both, and each g is logged with its multiplier.
    Algebra on logged numbers (the recurrence), so fp32."""
    cfg = compose(tiny_overrides(
        "method=primal_dual", "constraints=[refusal_pairs,over_refusal_pairs]", FP32,
        "train.steps=8", "dual.lr=2", "constraints.refusal_pairs.epsilon=0.05",
        "constraints.over_refusal_pairs.epsilon=0.05", "constraints.refusal_pairs.beta=1",
        "constraints.over_refusal_pairs.beta=1", "eval.prompts_per_set=2"))
    summary = train(cfg, tmp_path / "run")
    rows, evals = split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))
    for c in ("refusal_pairs", "over_refusal_pairs"):
        assert rows[0][f"g/{c}"] == pytest.approx(0.5, abs=1e-6)
        assert rows[-1][f"g/{c}"] < 0.45, [r[f"g/{c}"] for r in rows]
        lam = 0.0
        for r in rows:
            lam = min(max(lam + 2 * (r[f"g/{c}"] - 0.05), 0.0), 10.0)
            assert r[f"lambda_next/{c}"] == pytest.approx(lam, rel=1e-9)
        assert math.isfinite(summary["lambda"][f"lambda/{c}"])
    # judged on samples of the held-out sets, like the sampled refusal constraints
    assert {"eval/refusal_pairs/id/value", "eval/refusal_pairs/shifted/value",
            "eval/over_refusal_pairs/id/value"} <= set(evals[-1])


def test_pair_constraint_resume_continues_the_same_batches(tmp_path):
    """Kill-and-resume keeps the pair order: a run stopped at step 3 and resumed to 6 logs the
    same g (to float rounding) at every step as an uninterrupted 6-step run."""
    common = ["method=primal_dual", "constraints=[refusal_pairs]", FP32,
              "constraints.refusal_pairs.epsilon=0.05", "train.checkpoint_every=3"]
    train(compose(tiny_overrides(*common, "train.steps=6")), tmp_path / "full")
    train(compose(tiny_overrides(*common, "train.steps=3")), tmp_path / "cut")
    train(compose(tiny_overrides(*common, "train.steps=6", "train.resume=auto")),
          tmp_path / "cut")
    full = split_records(read_metrics(tmp_path / "full" / "metrics.jsonl"))[0]
    cut = {r["step"]: r for r in split_records(read_metrics(tmp_path / "cut" /
                                                            "metrics.jsonl"))[0]}
    for r in full:
        assert cut[r["step"]]["g/refusal_pairs"] == pytest.approx(r["g/refusal_pairs"],
                                                                   rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("override,message", [
    ("constraints.refusal_pairs.pairs=/nope/pairs.jsonl",
     r"constraints\.refusal_pairs\.pairs='/nope/pairs\.jsonl': no such file"),
    ("constraints.refusal_pairs.batch_size=500",
     r"constraints\.refusal_pairs\.batch_size=500 exceeds the 122 pairs"),
    ("constraints.refusal_pairs.beta=0",
     r"constraints\.refusal_pairs\.beta=0 is out of range: it must be a finite number > 0"),
    ("constraints.refusal_pairs.reward=ipo",
     r"constraints\.refusal_pairs\.reward='ipo' is not a reward: use one of dpo, simpo"),
    ("constraints.refusal_pairs.own_answers=both",
     r"constraints\.refusal_pairs\.own_answers='both': use null .*, rejected or chosen"),
    ("constraints.refusal_pairs.own_tokens=0",
     r"constraints\.refusal_pairs\.own_tokens=0 is out of range: it must be an integer >= 1"),
])
def test_bad_pair_settings_fail_before_the_model(tmp_path, monkeypatch, override, message):
    import pdalign.training.build

    def forbidden(*args, **kwargs):
        raise AssertionError("the model loaded before the bad input was caught")

    monkeypatch.setattr(pdalign.training.build, "load_model", forbidden)
    with pytest.raises(ValueError, match=message):
        train(compose(tiny_overrides("method=primal_dual", "constraints=[refusal_pairs]",
                                     override)), tmp_path / "run")


def test_bundled_pair_sets_are_what_the_generator_writes(tmp_path):
    """constraints/pairs/*.jsonl come from experiments/make_safety_pairs.py byte for byte, one
    pair per training prompt of their prompt set, none from a held-out set, and the refusals
    are refusals to the bundled detector (the compliances are not)."""
    import importlib.util
    from pathlib import Path

    from pdalign.constraints.refusal import PhraseRefusalDetector
    from pdalign.contract.prompts import bundled_pairs_dir, load_prompts

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location(
        "make_safety_pairs", root / "experiments" / "make_safety_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    detector = PhraseRefusalDetector()
    for name, source, refusal_side in (("refusal_pairs", "adversarial", "chosen"),
                                       ("over_refusal_pairs", "benign", "rejected")):
        shipped = bundled_pairs_dir() / f"{name}.jsonl"
        assert (tmp_path / f"{name}.jsonl").read_bytes() == shipped.read_bytes()
        rows = [json.loads(line) for line in shipped.read_text().splitlines()]
        assert [r["prompt"] for r in rows] == load_prompts(source)
        held = set(load_prompts(f"{source}_heldout"))
        assert not held & {r["prompt"] for r in rows}
        other = "rejected" if refusal_side == "chosen" else "chosen"
        assert all(detector(r[refusal_side]) and not detector(r[other]) for r in rows)


def test_nll_weight_adds_a_likelihood_push_without_changing_g(tmp_path):
    """nll_weight = 2: the surrogate's value is still g; its gradient gains
    2 * d/d logp_c of mean(-logp_c / n_c) = -2 / (n_c * k) on each wanted answer's log-prob:
    with n = (4, 2) tokens and k = 2, -0.25 and -0.5 on top of g's own gradient."""
    kwargs = {"epsilon": 0.2, "pairs": str(_pairs_file(tmp_path)), "beta": 0.5, "batch_size": 2}
    grads = {}
    for weight in (0.0, 2.0):
        con = RefusalPairs(nll_weight=weight, **kwargs)
        con.ref_logps = torch.tensor([[-3.0, -4.0], [-5.0, -6.0]])
        con._batch = [0, 1]
        logps = torch.tensor([-2.0, -7.0, -5.0, -4.0], requires_grad=True)
        est = con.step_estimate(StepView(batch=None, rows={"refusal_pairs": SequenceLogps(
            logps=logps, n_tokens=torch.tensor([4.0, 2.0, 3.0, 3.0]))}))
        assert float(est.surrogate.detach()) == pytest.approx(0.574869, abs=1e-6)
        est.surrogate.backward()
        grads[weight] = logps.grad
    torch.testing.assert_close(grads[2.0] - grads[0.0], torch.tensor([-0.25, -0.5, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"nll_weight=-1 is out of range"):
        RefusalPairs(nll_weight=-1, **kwargs)


def test_simpo_reward_compares_per_token_likelihoods_without_a_reference(tmp_path):
    """reward=simpo, beta = 2: r = log pi(y|x) / |y|. Pair 1: chosen -6 over 3 tokens (-2),
    rejected -4 over 4 (-1), gap +1; pair 2: chosen -2 over 2 (-1), rejected -9 over 3 (-3),
    gap -2. g = (sigmoid(2) + sigmoid(-4)) / 2 = (0.880797 + 0.017986) / 2 = 0.449391.
    dg/d logp_chosen_i = -beta * s_i (1 - s_i) / (2 |y_i|): -2 * 0.104994 / 6 = -0.034998 and
    -2 * 0.017663 / 4 = -0.008832. No reference is scored (ref_logps stays None)."""
    con = RefusalPairs(epsilon=0.2, pairs=str(_pairs_file(tmp_path)), reward="simpo",
                       batch_size=2)
    assert con.beta == 2.0  # the simpo default
    con._batch = [0, 1]
    logps = torch.tensor([-6.0, -2.0, -4.0, -9.0], requires_grad=True)  # [chosen ; rejected]
    n_tokens = torch.tensor([3.0, 2.0, 4.0, 3.0])
    est = con.step_estimate(StepView(batch=None, rows={"refusal_pairs": SequenceLogps(
        logps=logps, n_tokens=n_tokens)}))
    assert float(est.value) == pytest.approx(0.449391, abs=1e-6)
    est.surrogate.backward()
    assert logps.grad[:2].tolist() == pytest.approx([-0.034998, -0.008832], abs=1e-6)
    assert logps.grad[2:].tolist() == pytest.approx([0.034998 * 6 / 8, 0.008832 * 4 / 6],
                                                    abs=1e-6)
    assert est.stats == pytest.approx({"reward_wanted": -1.5, "reward_bounded": -2.0})


def _tiny_policy():
    model, tok = load_model("tiny")
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    return Policy(model, None, tok, torch.float32, torch.device("cpu"))


def test_own_answers_replace_the_bounded_side_with_the_policys_samples(tmp_path):
    """own_answers=rejected: each pair's compliance becomes the reference policy's own sample
    for its prompt, the same sample a direct seeded `generate` draws (the tiny model never
    refuses, so every sample costs 1 and is kept); the refusals stay as shipped; `files` holds
    exactly the pairs trained on. A detector that calls everything a refusal makes every sample
    cost 0, which disagrees with the bounded side: no pair changes."""
    from pdalign.constraints.refusal import PhraseRefusalDetector
    from pdalign.policy.sampling import generate

    policy = _tiny_policy()
    con = RefusalPairs(epsilon=0.2, pairs=str(_pairs_file(tmp_path)), own_answers="rejected",
                       own_tokens=6, reward="simpo", batch_size=2)
    con.bind(policy, seed=5)
    prompts = sorted(p["prompt"] for p in PAIRS)
    direct = generate(policy.model, policy.tokenizer, prompts, max_new_tokens=6,
                      temperature=1.0, top_p=1.0, batch_size=64, seed=5)
    own = dict(zip(direct.prompts, direct.responses))
    assert con.own_kept == 6
    assert [r.rejected for r in con.pair_rows] == [own[p["prompt"]] for p in PAIRS]
    assert [r.chosen for r in con.pair_rows] == [p["chosen"] for p in PAIRS]
    assert con.ref_logps is None  # simpo needs no reference
    (name, text), = con.files().items()
    assert name == "refusal_pairs_pairs.jsonl"
    assert [json.loads(line) for line in text.splitlines()] == [
        {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": own[p["prompt"]]}
        for p in PAIRS]

    everything = RefusalPairs(epsilon=0.2, pairs=str(_pairs_file(tmp_path)),
                              own_answers="rejected", own_tokens=6, batch_size=2,
                              detector=PhraseRefusalDetector(patterns=[r"."]))
    everything.bind(policy, seed=5)
    assert everything.own_kept == 0
    assert [r.rejected for r in everything.pair_rows] == [p["rejected"] for p in PAIRS]
    assert RefusalPairs(epsilon=0.2, pairs=str(_pairs_file(tmp_path))).files() == {}


def test_training_writes_the_pairs_built_from_own_answers(tmp_path):
    """Through train(): the over-refusal pairs' wanted side comes from the policy's samples (the
    tiny model never refuses, so each is kept) and the run directory holds the pairs trained
    on, the refusals as shipped."""
    cfg = compose(tiny_overrides(
        "method=primal_dual", "constraints=[over_refusal_pairs]", FP32, "train.steps=2",
        "constraints.over_refusal_pairs.own_answers=chosen",
        "constraints.over_refusal_pairs.own_tokens=4",
        "constraints.over_refusal_pairs.reward=simpo", "eval.prompts_per_set=2"))
    train(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "constraints" / "over_refusal_pairs_pairs.jsonl"
             ).read_text().splitlines()
    assert len(lines) == 120  # every bundled benign pair, each with its own answer kept
    shipped = [json.loads(x) for x in open(RefusalPairs(
        name="o", pairs="over_refusal_pairs", prompts="benign").pairs_path)]
    written = [json.loads(x) for x in lines]
    assert [w["rejected"] for w in written] == [s["rejected"] for s in shipped]
    assert sum(w["chosen"] != s["chosen"] for w, s in zip(written, shipped)) == 120
    rows = split_records(read_metrics(tmp_path / "run" / "metrics.jsonl"))[0]
    assert all(math.isfinite(r["g/over_refusal_pairs"]) for r in rows)
