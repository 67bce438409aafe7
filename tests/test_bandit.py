"""The closed-form bandit check: DualState's lambda converges to the KKT multiplier."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import script_json

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bandit_kkt.py"


@pytest.fixture(scope="module")
def summary() -> dict:
    """Run the script as users and outside checks do, and parse its last stdout line."""
    return script_json(SCRIPT, timeout=120)


def test_constraint_binds_and_lambda_star_is_kkt(summary):
    """Independent of the script: with pi ∝ pi_ref * exp((r - lambda* c)/beta), the
    constraint is active, E[c] = epsilon, while lambda = 0 would violate it (so lambda* > 0)."""
    beta, eps, r, c, ref = (summary[k] for k in ("beta", "epsilon", "r", "c", "pi_ref"))

    def expected_cost(lam: float) -> float:
        w = [p * math.exp((ri - lam * ci) / beta) for p, ri, ci in zip(ref, r, c)]
        return sum(wi * ci for wi, ci in zip(w, c)) / sum(w)

    assert len(r) == len(c) == len(ref) == summary["K"]
    assert summary["lambda_star"] > 0
    assert expected_cost(0.0) > eps
    assert expected_cost(summary["lambda_star"]) == pytest.approx(eps, abs=1e-9)


@pytest.mark.parametrize("rule", ["gradient", "pid"])
def test_dual_rule_converges_to_lambda_star(summary, rule):
    lam_star = summary["lambda_star"]
    assert abs(summary["lambda_final"][rule] - lam_star) <= 0.05 * lam_star
    assert summary["expected_cost_final"][rule] <= summary["epsilon"] + 1e-3
    assert summary["expected_reward_final"][rule] == pytest.approx(
        summary["expected_reward_star"], abs=1e-3)
