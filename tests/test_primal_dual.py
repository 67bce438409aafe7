"""The primal-dual method end to end on the tiny model with all four built-in constraints."""

import pytest

from pdalign.logging import read_metrics, split_records
from pdalign.trainer import train
from tests.conftest import FIXTURES, compose, tiny_overrides

ALL4 = "constraints=[toxicity,refusal,kl_budget,length]"
FAST_ROLLOUT = ["train.rollout_every=2", "train.rollout.prompts_per_rollout=4",
                "train.rollout.max_new_tokens=6", "constraints.toxicity.scorer=profanity_check"]


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


def test_violated_constraint_raises_lambda_and_satisfied_one_stays_at_zero(tmp_path):
    """length eps=0.5 token can never hold (every response has >= 1 token): with the gradient
    rule lambda_t = min(lr * sum_{s<=t} (g_s - eps), lambda_max) rises every step. kl_budget
    eps=5 nats/token is far above the KL of a few LoRA steps: lambda stays clipped at 0."""
    _, rows = _pd(tmp_path, "train.steps=6", "constraints.length.epsilon=0.5",
                  "constraints.kl_budget.epsilon=5.0", "dual.lr=0.1", "dual.lambda_max=100")
    lam = [r["lambda_next/length"] for r in rows]
    assert all(b > a for a, b in zip(lam, lam[1:])), lam
    expected = 0.0
    for r in rows:  # the gradient rule by hand, from the logged g
        expected = min(max(expected + 0.1 * (r["g/length"] - 0.5), 0.0), 100.0)
        assert r["lambda_next/length"] == pytest.approx(expected, rel=1e-9)
    assert all(r["lambda_next/kl_budget"] == 0.0 for r in rows)
    assert all(r["g/kl_budget"] < 5.0 for r in rows)


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
