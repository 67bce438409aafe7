# Run:  .venv/bin/python experiments/bandit_kkt.py          (writes results/bandit_lambda.png
#                                                          and results/bandit_kkt.json)
#       .venv/bin/python experiments/bandit_kkt.py --json   (prints the summary JSON, last line)
"""Closed-form KKT check of `DualState` on a constrained bandit.

A categorical policy pi over K responses with reward r, cost c and reference pi_ref solves

    max_pi  E_pi[r] - beta * KL(pi || pi_ref)   s.t.  E_pi[c] <= epsilon.

For a multiplier lambda the Lagrangian's maximizer is pi_lambda ∝ pi_ref * exp((r - lambda c)/beta)
(the KL-regularized Gibbs policy, as in the DPO derivation https://arxiv.org/abs/2305.18290),
and E_{pi_lambda}[c] falls monotonically in lambda (its derivative is -Var(c)/beta), so the KKT
multiplier lambda* solves E_{pi_lambda}[c] = epsilon by bisection whenever the constraint binds
(complementary slackness), else lambda* = 0.

The check runs the primal-dual loop of the trainer on this problem: each iteration reads
g_hat = E_pi[c] at the current policy, takes one gradient step on the logits of
-E[r] + beta*KL + lambda*(E[c] - epsilon) with the current lambda, then one `DualState.update`
with that g_hat -- once with the ``gradient`` rule and once with ``pid`` -- and compares the
final lambda with lambda* and the final E[c] with epsilon.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pdalign.runfiles.atomic import write_text
from pdalign.training.dual import DualState

RESULTS = Path(__file__).resolve().parent / "results"

# The problem. The highest-reward response is the costliest and pi_ref already spends
# E[c] = 0.305, while the unconstrained optimum spends 0.754 > epsilon, so the bound binds
# and lambda* > 0 (0.9418).
K = 5
BETA = 0.2
EPSILON = 0.3
R = np.array([1.0, 0.8, 0.6, 0.3, 0.0])
C = np.array([1.0, 0.7, 0.3, 0.1, 0.0])
PI_REF = np.array([0.10, 0.15, 0.25, 0.25, 0.25])

# The loop. One primal step per dual step, as in the trainer. The PID gains add damping
# (Kp) and a brake on rising cost (Kd) to the same integral step (Ki = gradient lr), which
# is the point of Stooke et al. 2020: less overshoot at the same integral gain.
ITERS = 800
PRIMAL_LR = 1.0
RULES = {
    "gradient": dict(rule="gradient", lr=0.5),
    "pid": dict(rule="pid", ki=0.5, kp=2.0, kd=1.0),
}
LAMBDA_TOL = 0.05  # relative, |lambda_final - lambda*| <= 5% of lambda*
COST_TOL = 1e-3  # absolute, E[c] <= epsilon + 1e-3


def gibbs_policy(lam: float) -> np.ndarray:  # (K,)
    """pi_lambda ∝ pi_ref * exp((r - lambda*c)/beta), the Lagrangian's exact maximizer."""
    return _softmax(np.log(PI_REF) + (R - lam * C) / BETA)


def solve_lambda_star(tol: float = 1e-12) -> float:
    """KKT multiplier: 0 if pi_0 is feasible, else the root of E_{pi_lambda}[c] = epsilon."""
    if gibbs_policy(0.0) @ C <= EPSILON:
        return 0.0
    lo, hi = 0.0, 1.0
    while gibbs_policy(hi) @ C > EPSILON:  # grow the bracket; E[c] -> min(c) as lambda -> inf
        hi *= 2.0
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if gibbs_policy(mid) @ C > EPSILON else (lo, mid)
    return 0.5 * (lo + hi)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def lagrangian_grad(theta: np.ndarray, lam: float) -> np.ndarray:  # (K,)
    """d/dtheta of -E[r] + beta*KL(pi||pi_ref) + lambda*E[c] with pi = softmax(theta).

    For pi = softmax(theta), d E_pi[u]/d theta = pi * (u - E_pi[u]); the KL's own
    derivative adds beta*(log pi - log pi_ref) to u (its "+1" cancels in the centering).
    """
    pi = _softmax(theta)
    u = -R + lam * C + BETA * (np.log(pi) - np.log(PI_REF))
    return pi * (u - pi @ u)


def run_rule(dual: DualState, iters: int = ITERS) -> dict[str, list[float]]:
    """Primal-dual iterations from pi = pi_ref; traces of lambda and E[c] per iteration."""
    theta = np.log(PI_REF)
    eps = torch.tensor([EPSILON], dtype=torch.float64)
    lambdas, costs = [], []
    for _ in range(iters):
        g_hat = float(_softmax(theta) @ C)  # the estimate the dual step will use
        lam = float(dual.lam[0])
        theta = theta - PRIMAL_LR * lagrangian_grad(theta, lam)
        dual.update(torch.tensor([g_hat], dtype=torch.float64), eps)
        lambdas.append(float(dual.lam[0]))
        costs.append(g_hat)
    return {"lambda": lambdas, "cost": costs, "pi": _softmax(theta).tolist()}


def run_bandit(iters: int = ITERS) -> tuple[dict, dict[str, dict[str, list[float]]]]:
    """Solve lambda*, run both rules; return the summary dict and the per-rule traces."""
    lam_star = solve_lambda_star()
    pi_star = gibbs_policy(lam_star)
    traces = {name: run_rule(DualState(["cost"], **kw), iters) for name, kw in RULES.items()}
    final_pi = {name: np.array(t["pi"]) for name, t in traces.items()}
    lam_final = {name: t["lambda"][-1] for name, t in traces.items()}
    cost_final = {name: float(p @ C) for name, p in final_pi.items()}
    summary = {
        "K": K,
        "beta": BETA,
        "epsilon": EPSILON,
        "r": R.tolist(),
        "c": C.tolist(),
        "pi_ref": PI_REF.tolist(),
        "lambda_star": lam_star,
        "pi_star": pi_star.tolist(),
        "expected_cost_star": float(pi_star @ C),
        "expected_reward_star": float(pi_star @ R),
        "expected_cost_unconstrained": float(gibbs_policy(0.0) @ C),
        "iters": iters,
        "rules": RULES,
        "lambda_final": lam_final,
        "expected_cost_final": cost_final,
        "expected_reward_final": {name: float(p @ R) for name, p in final_pi.items()},
        # KKT residuals: stationarity as the policy's distance to pi_{lambda*}, and
        # complementary slackness lambda * (E[c] - epsilon).
        "tv_to_pi_star": {
            name: 0.5 * float(np.abs(p - pi_star).sum()) for name, p in final_pi.items()
        },
        "complementary_slackness": {
            name: lam_final[name] * (cost_final[name] - EPSILON) for name in RULES
        },
        "max_lambda": {name: max(t["lambda"]) for name, t in traces.items()},
    }
    summary["passed"] = all(
        abs(lam_final[n] - lam_star) <= LAMBDA_TOL * lam_star
        and cost_final[n] <= EPSILON + COST_TOL
        for n in RULES
    )
    return summary, traces


def plot(summary: dict, traces: dict, path: Path) -> None:
    """lambda and E[c] per iteration for both rules, with lambda* and epsilon dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"gradient": "tab:blue", "pid": "tab:orange"}
    fig, (ax_l, ax_c) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    for name, t in traces.items():
        it = np.arange(1, len(t["lambda"]) + 1)
        label = f"{name}: λ_final = {summary['lambda_final'][name]:.4f}"
        ax_l.plot(it, t["lambda"], color=colors[name], lw=1.6, label=label)
        ax_c.plot(it, t["cost"], color=colors[name], lw=1.6, label=name)
    ax_l.axhline(summary["lambda_star"], color="black", ls="--", lw=1.2,
                 label=f"λ* = {summary['lambda_star']:.4f} (closed form)")
    ax_c.axhline(EPSILON, color="black", ls="--", lw=1.2, label=f"ε = {EPSILON}")
    ax_l.set_ylabel("Lagrange multiplier λ")
    ax_c.set_ylabel("expected cost E_π[c]")
    ax_c.set_xlabel("iteration, log scale (one primal step + one dual step each)")
    ax_l.set_xscale("log")
    ax_l.legend(loc="upper left", fontsize=9)
    ax_c.legend(loc="upper right", fontsize=9)
    for ax in (ax_l, ax_c):
        ax.grid(alpha=0.3)
    ax_l.set_title(f"Constrained bandit (K={K}, β={BETA}, ε={EPSILON}): λ → λ*")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON line (last line) and write no files")
    parser.add_argument("--iters", type=int, default=ITERS, help="primal-dual iterations")
    args = parser.parse_args(argv)
    summary, traces = run_bandit(args.iters)
    if not args.json:
        plot(summary, traces, RESULTS / "bandit_lambda.png")
        write_text(RESULTS / "bandit_kkt.json", json.dumps(summary, indent=2) + "\n")
        for name in RULES:
            print(f"{name:9s} lambda_final={summary['lambda_final'][name]:.6f} "
                  f"E[c]={summary['expected_cost_final'][name]:.6f}")
        print(f"lambda*={summary['lambda_star']:.6f} passed={summary['passed']}")
    print(json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
