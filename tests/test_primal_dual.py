"""The primal-dual method end to end on the tiny model with all four built-in constraints."""

import pytest

from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.training.trainer import train
from tests.conftest import BF16, FIXTURES, FP32, compose, tiny_overrides

ALL4 = "constraints=[toxicity,refusal,kl_budget,length]"
FAST_ROLLOUT = ["train.rollout_every=2", "train.rollout.prompts_per_rollout=4",
                "train.rollout.max_new_tokens=6", "constraints.toxicity.scorer=profanity_check",
                "constraints.length.epsilon=3"]  # below both budgets (6 and eval's 4)


def _pd(tmp_path, *extra, name="pd"):
    cfg = compose(tiny_overrides("method=primal_dual", ALL4, *FAST_ROLLOUT, *extra))
    summary = train(cfg, tmp_path / name)
    return summary, split_records(read_metrics(tmp_path / name / "metrics.jsonl"))[0]


def test_every_step_logs_lambda_g_eps_and_violation_for_all_four(tmp_path):
    summary, rows = _pd(tmp_path, "train.steps=5")
    assert len(rows) == 5
    for row in rows:
        for c in ("toxicity", "refusal", "kl_budget", "length"):
            for key in ("lambda", "lambda_next", "g", "eps", "violation"):
                assert f"{key}/{c}" in row, (key, c)
            assert row[f"violation/{c}"] == pytest.approx(row[f"g/{c}"] - row[f"eps/{c}"])
            assert 0.0 <= row[f"lambda/{c}"] <= 10.0
    # the lambda a step used is the previous step's lambda_next: one synchronized clock
    for prev, row in zip(rows, rows[1:]):
        for c in ("toxicity", "refusal", "kl_budget", "length"):
            assert row[f"lambda/{c}"] == prev[f"lambda_next/{c}"]
    assert set(summary["lambda"]) == {f"lambda/{c}" for c in
                                      ("toxicity", "refusal", "kl_budget", "length")}


@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_violated_constraint_raises_lambda_and_satisfied_one_stays_at_zero(tmp_path, dtype):
    """length eps=0.5 token can never hold (every response has >= 1 token): with the gradient
    rule lambda_t = min(lr * sum_{s<=t} (g_s - eps), lambda_max) rises every step. kl_budget
    eps=5 nats/token is far above the KL of a few LoRA steps: lambda stays clipped at 0. The
    dual state is float64 whatever the training dtype, so the recurrence holds to 1e-9 in
    bf16 as in fp32."""
    _, rows = _pd(tmp_path, "train.steps=6", "constraints.length.epsilon=0.5",
                  "constraints.kl_budget.epsilon=5.0", "dual.lr=0.1", "dual.lambda_max=100",
                  dtype)
    lam = [r["lambda_next/length"] for r in rows]
    assert all(b > a for a, b in zip(lam, lam[1:])), lam
    expected = 0.0
    for r in rows:  # the gradient rule by hand, from the logged g
        expected = min(max(expected + 0.1 * (r["g/length"] - 0.5), 0.0), 100.0)
        assert r["lambda_next/length"] == pytest.approx(expected, rel=1e-9)
    assert all(r["lambda_next/kl_budget"] == 0.0 for r in rows)
    assert all(r["g/kl_budget"] < 5.0 for r in rows)


def test_logged_loss_is_the_lagrangian_of_the_g_the_dual_step_used(tmp_path):
    """One run ties the primal and the dual step to the same estimates. The dual step: each
    lambda_next follows the gradient rule from the logged g. The primal step: the loss is
    L_pref + sum_i lambda_i (s_i - eps_i), and every surrogate s_i carries the value of its
    estimate g_i, so loss - loss/pref = sum_i lambda_i (g_i - eps_i) with the SAME logged g.
    A trainer that fed the dual an estimate other than the one in the loss (another rollout,
    another batch) breaks the second identity once lambda > 0. Every bound below is violated
    so every lambda leaves 0; fp32 because this is algebra on the logged numbers. Length and
    KL read their violations in units of their ``scale`` (4 tokens, 0.5 nats): both the dual
    step and the loss term divide by it."""
    eps = {"toxicity": 0.0, "refusal": 0.2, "kl_budget": 1e-4, "length": 0.5}
    scale = {"toxicity": 1.0, "refusal": 1.0, "kl_budget": 0.5, "length": 4.0}
    _, rows = _pd(tmp_path, "train.steps=5", "dual.lr=0.1", FP32,
                  *[f"constraints.{c}.epsilon={e}" for c, e in eps.items()],
                  "constraints.length.scale=4", "constraints.kl_budget.scale=0.5")
    lam = dict.fromkeys(eps, 0.0)
    for r in rows:
        for c, e in eps.items():
            assert r[f"lambda/{c}"] == lam[c]  # the lambda used is the last step's update
            lam[c] = min(max(lam[c] + 0.1 * (r[f"g/{c}"] - e) / scale[c], 0.0), 10.0)
            assert r[f"lambda_next/{c}"] == pytest.approx(lam[c], rel=1e-12, abs=1e-15)
        terms = sum(r[f"lambda/{c}"] * (r[f"g/{c}"] - e) / scale[c] for c, e in eps.items())
        assert r["loss"] - r["loss/pref"] == pytest.approx(terms, rel=1e-4, abs=1e-5)
    assert all(rows[-1][f"lambda/{c}"] > 0 for c in eps), rows[-1]  # every term is live


def test_lambda_stops_at_its_cap_inside_train(tmp_path):
    """length (eps 0.5) is violated by >= 0.5 token at every step, so with dual.lr=4 lambda
    passes 2 at the first update; the global cap (dual.lambda_max=2) holds it at exactly 2.
    A constraint's own cap wins over the global one: kl_budget.lambda_max=0.1 with eps 1e-4
    (violated once the policy leaves the reference) pins it at 0.1."""
    _, rows = _pd(tmp_path, "train.steps=4", "dual.lr=4", "dual.lambda_max=2", FP32,
                  "constraints.length.epsilon=0.5", "constraints.kl_budget.epsilon=1e-4",
                  "constraints.kl_budget.lambda_max=0.1")
    assert [r["lambda_next/length"] for r in rows] == [2.0] * 4
    assert rows[-1]["lambda_next/kl_budget"] == 0.1
    assert all(r["lambda_next/kl_budget"] <= 0.1 and r["lambda_next/toxicity"] <= 2.0
               for r in rows)


def test_baseline_with_constraints_listed_ignores_them(tmp_path):
    cfg = compose(tiny_overrides("method=dpo", ALL4, *FAST_ROLLOUT, "train.steps=2"))
    summary = train(cfg, tmp_path / "dpo")
    rows = split_records(read_metrics(tmp_path / "dpo" / "metrics.jsonl"))[0]
    assert summary["lambda"] == {} and not any(k.startswith("lambda/") for k in rows[0])


def test_pid_rule_and_orpo_base_objective_run(tmp_path):
    summary, rows = _pd(tmp_path, "train.steps=3", "dual=pid", "method.objective=orpo",
                        "constraints.length.epsilon=0.5")
    assert summary["steps"] == 3
    assert rows[-1]["lambda_next/length"] > 0
    assert "log_odds_ratio" in rows[-1]


def test_held_out_evaluation_runs_for_baselines_and_primal_dual(tmp_path):
    """Every method is evaluated on every listed constraint at eval.every and at the end."""
    for method in ("dpo", "primal_dual"):
        cfg = compose(tiny_overrides(f"method={method}", "constraints=[refusal,kl_budget]",
                                     *FAST_ROLLOUT[:3], "train.steps=4", "eval.every=2",
                                     "data.heldout=" + str(FIXTURES / "pairs.jsonl")))
        train(cfg, tmp_path / method)
        _, evals = split_records(read_metrics(tmp_path / method / "metrics.jsonl"))
        assert [r["step"] for r in evals] == [2, 4]
        for r in evals:
            assert 0.0 <= r["eval/pref_accuracy"] <= 1.0
            for key in ("eval/refusal/id", "eval/refusal/shifted", "eval/kl_budget/id"):
                assert r[f"{key}/pass"] == float(r[f"{key}/upper"] <= r[f"{key}/eps"])
                assert r[f"{key}/violation"] == pytest.approx(
                    max(r[f"{key}/value"] - r[f"{key}/eps"], 0.0))
