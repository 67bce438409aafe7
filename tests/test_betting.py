"""The betting bound on a mean of exact per-prompt values, and the ``.opener`` rows it certifies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pdalign.constraints.refusal import RefusalOpeners
from pdalign.contract.prompts import load_prompts
from pdalign.evaluation.bounds import betting_mean_upper, clopper_pearson_upper
from pdalign.evaluation.certificate import certificate, render_certificate
from pdalign.evaluation.heldout import evaluate, heldout_prompt_sets
from pdalign.policy.models import apply_peft, load_model
from pdalign.policy.sampling import chat_prompt_ids

N, DRAWS = 210, 1000  # the held-out set size and the Monte Carlo draws of the coverage test


def test_betting_bound_in_closed_form_when_every_bet_is_at_the_cap():
    """n = 20 equal values c: every variance estimate is <= 1/4 (|c - mu_i| <= 1/(2(i + 1))),
    so n sigma2 <= 5 < 2 ln(20) / 0.9^2 = 7.40 and every bet is the cap 0.9. The wealth at m is
    (1 + 0.9 (m - c))^t, largest at t = n, and reaches 20 at
    U = c + (20^(1/20) - 1) / 0.9 = c + (1.161586 - 1) / 0.9 = c + 0.179540."""
    for c in (0.0, 0.3):
        assert betting_mean_upper(np.full(20, c)) == pytest.approx(c + 0.179540, abs=1e-6)
    assert betting_mean_upper([0.0]) == 1.0  # 1 + 0.9 m < 20 for every m: nothing excluded
    assert betting_mean_upper([]) == 1.0
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        betting_mean_upper([0.2, 1.5])
    with pytest.raises(ValueError, match="bet cap"):
        betting_mean_upper([0.2], cap=1.0)


def _opener_like(rng, shape):
    """Per-prompt probabilities like a trained refusal policy's: most prompts near 0 (85%,
    Beta(0.5, 40)), the rest anywhere (Beta(2, 2)). Mean 0.85 * 0.5/40.5 + 0.15 * 0.5."""
    near = rng.random(shape) < 0.85
    return np.where(near, rng.beta(0.5, 40, shape), rng.beta(2, 2, shape))


def _coverage(draws: np.ndarray, mean: float, tighten: float = 1.0) -> float:
    covered = 0
    for x in draws:
        m = float(x.mean())
        covered += m + tighten * (betting_mean_upper(x) - m) >= mean
    return covered / len(draws)


def test_the_95_percent_betting_bound_covers_the_mean_and_a_30_percent_tighter_one_does_not():
    """1,000 draws of 210 prompts from a population with a known mean: the bound covers it in
    >= 94% of draws (it is valid for any law on [0, 1], so >= 95% in expectation); the same
    bound with its margin (upper - mean) cut by 30% falls below 94%, so the test can fail and
    the bound is not loose by that much. Uniform values (mean 1/2) likewise."""
    rng = np.random.default_rng(20261206)
    mean = 0.85 * 0.5 / 40.5 + 0.15 * 0.5
    draws = _opener_like(rng, (DRAWS, N))
    assert _coverage(draws, mean) >= 0.94
    assert _coverage(draws, mean, tighten=0.7) < 0.94
    uniform = rng.random((DRAWS, N))
    assert _coverage(uniform, 0.5) >= 0.94
    assert _coverage(uniform, 0.5, tighten=0.7) < 0.94


def test_the_bound_covers_the_mean_when_the_values_come_sorted():
    """A held-out file grouped by category lists low and high values in runs. Each of 1,000
    draws is passed sorted ascending, the worst such order: the bound reads the values in its
    own fixed shuffle, so coverage stays >= 94% (read in the given order, the gambler wins far
    below the mean on the early low run: coverage 0.0 before the shuffle)."""
    rng = np.random.default_rng(20261207)
    mean = 0.85 * 0.5 / 40.5 + 0.15 * 0.5
    draws = _opener_like(rng, (DRAWS, N))
    assert _coverage(np.sort(draws, axis=1), mean) >= 0.94
    assert betting_mean_upper(np.sort(draws[0])) > draws[0].mean()


def test_exact_values_certify_far_tighter_than_one_sample_per_prompt():
    """Prompts whose probability varies little (Beta(2, 18), mean 0.1): the betting bound on the
    exact values sits less than 0.6 of the Clopper-Pearson margin above the mean, CP being
    computed on one 0/1 sample per prompt, the headline certificate's data."""
    rng = np.random.default_rng(7)
    exact, cp = [], []
    for _ in range(200):
        p = rng.beta(2, 18, N)
        exact.append(betting_mean_upper(p) - 0.1)
        cp.append(clopper_pearson_upper(int((rng.random(N) < p).sum()), N) - 0.1)
    assert np.mean(exact) < 0.6 * np.mean(cp)


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    model, tok = load_model("tiny")
    model = apply_peft(model, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    return model.eval(), tok


def _direct_mass(model, tok, prompt: str, openers) -> float:
    """sum_j pi(o_j | prompt) from the full logits of one unpadded row per opener."""
    p_ids = chat_prompt_ids(tok, prompt)
    total = 0.0
    for o in openers:
        o_ids = tok(o, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p_ids + o_ids])).logits[0].float()
        lp = logits[len(p_ids) - 1:-1].log_softmax(-1).gather(1, torch.tensor(o_ids)[:, None])
        total += math.exp(float(lp.sum()))
    return total


def test_opener_rows_hold_the_exact_mean_beside_the_sampled_row(policy):
    """evaluate writes, beside each sampled row of an opener constraint, an ``<set>.opener`` row:
    the mean over the same held-out prompts of 1 - P(x) (wanted side) or P(x) (bounded side),
    P(x) summed over the openers from a direct forward, with the betting bound of those values;
    the certificate lists it after its sampled row."""
    model, tok = policy
    openers = ["I'm sorry", "I can't"]
    refuse = RefusalOpeners(epsilon=0.2, openers=openers, batch_size=2)
    comply = RefusalOpeners(name="over", epsilon=0.1, prompts="benign", target="comply",
                            openers=openers, batch_size=2)
    result = evaluate(model, tok, [refuse, comply], prompts_per_set=3, max_new_tokens=4,
                      batch_size=3, progress=False)
    for con, side in ((refuse, "wanted"), (comply, "bounded")):
        for s in ("id", "shifted"):
            key = f"eval/{con.name}/{s}.opener"
            prompts = _set_prompts(con, s)[:3]
            mass = [_direct_mass(model, tok, p, openers) for p in prompts]
            values = [1 - m if side == "wanted" else m for m in mass]
            # P is tiny on a random model: compare P itself, relatively, on both sides
            got = result[f"{key}/value"] if side == "bounded" else 1 - result[f"{key}/value"]
            assert 0 < got == pytest.approx(np.mean(mass), rel=1e-3)
            assert result[f"{key}/upper"] == pytest.approx(betting_mean_upper(values), abs=1e-4)
            assert result[f"{key}/bound/betting"] == 1.0 and result[f"{key}/exact"] == 1.0
            assert result[f"{key}/n"] == 3 and f"eval/{con.name}/{s}/value" in result
    rows = certificate(result)
    assert [(r["constraint"], r["set"]) for r in rows] == [
        ("over", "id"), ("over", "id.opener"), ("over", "shifted"), ("over", "shifted.opener"),
        ("refusal_openers", "id"), ("refusal_openers", "id.opener"),
        ("refusal_openers", "shifted"), ("refusal_openers", "shifted.opener")]
    text = render_certificate(rows, result)
    assert "| refusal_openers | id.opener | 3 |" in text and "Waudby-Smith & Ramdas" in text


def _set_prompts(con, s):
    return load_prompts(heldout_prompt_sets(con)[s][0], "test")


def test_user_set_names_may_not_take_the_opener_suffix(policy, tmp_path):
    model, tok = policy
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n')
    con = RefusalOpeners(epsilon=0.2, openers=["I'm sorry"], batch_size=2)
    with pytest.raises(ValueError, match=r"eval.sets.refusal_openers: set name 'x.opener'"):
        evaluate(model, tok, [con], sets={"refusal_openers": {"x.opener": str(f)}},
                 prompts_per_set=1, max_new_tokens=2, progress=False)
