# Run:  .venv/bin/python experiments/dual_ablation.py          (writes results/dual_ablation.json,
#                                                             .md and .png)
#       .venv/bin/python experiments/dual_ablation.py --json   (prints the summary JSON, last line)
"""Dual-update ablation on the closed-form bandit: gradient vs PID, lambda_max on vs off.

The problem and the primal step are those of `bandit_kkt.py` (K = 5, beta = 0.2, epsilon = 0.3,
known lambda*). Each run varies one thing at a time:

- ``rule``: ``gradient`` (lr = eta) or ``pid`` with the shipped gain ratios of conf/dual/pid.yaml
  (ki = eta, kp = eta, kd = eta/2), so the PID integral is exactly the gradient rule;
- ``eta``: the dual step, 0.5 / 2 / 8;
- ``lambda_max``: 10 (clipped) or 1e6 (clipping effectively off; DualState needs a finite cap);
- ``scenario``: ``binding`` (g_hat = E_pi[c], the estimate is right) or ``stuck`` (for the first
  STUCK iterations g_hat reads 1.0 whatever the policy does, as a scorer that cannot see the
  policy's improvement would; afterwards it is right again). ``stuck`` is what the refusal
  constraint does on SmolLM2, whose sampled responses never refuse.

Per run: final lambda and its error against lambda*, peak lambda, lambda's peak-to-peak swing over
the last LATE iterations (an oscillation that has not died out), the iteration after which lambda stays within 5% of
lambda* (None: it never settles in ITERS), and the reward given up against pi_{lambda*} summed over
the run (regret; negative while an infeasible policy out-earns the optimum).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bandit_kkt as bandit  # noqa: E402  (the problem, its lambda*, the primal step)

from pdalign.runfiles.atomic import write_text
from pdalign.training.dual import DualState

RESULTS = Path(__file__).resolve().parent / "results"

ITERS = 800
STUCK = 100  # iterations the stuck estimator reads g_hat = STUCK_VALUE
STUCK_VALUE = 1.0
ETAS = (0.5, 2.0, 8.0)
CAPS = (10.0, 1e6)
SCENARIOS = ("binding", "stuck")
RULES = ("gradient", "pid")
SETTLE_TOL = 0.05  # relative band around lambda*
LATE = 200  # iterations at the end over which the swing of lambda is measured


def dual_kwargs(rule: str, eta: float, lambda_max: float) -> dict:
    """DualState arguments of one ablation point."""
    if rule == "gradient":
        return dict(rule="gradient", lr=eta, lambda_max=lambda_max)
    return dict(rule="pid", ki=eta, kp=eta, kd=eta / 2, lambda_max=lambda_max)


def run_point(rule: str, eta: float, lambda_max: float, scenario: str,
              iters: int = ITERS) -> dict[str, list[float]]:
    """The primal-dual loop of bandit_kkt.run_rule with the scenario's estimator."""
    dual = DualState(["cost"], **dual_kwargs(rule, eta, lambda_max))
    theta = np.log(bandit.PI_REF)
    eps = torch.tensor([bandit.EPSILON], dtype=torch.float64)
    lambdas, costs, rewards = [], [], []
    for t in range(iters):
        pi = bandit._softmax(theta)
        cost = float(pi @ bandit.C)
        g_hat = STUCK_VALUE if scenario == "stuck" and t < STUCK else cost
        theta = theta - bandit.PRIMAL_LR * bandit.lagrangian_grad(theta, float(dual.lam[0]))
        dual.update(torch.tensor([g_hat], dtype=torch.float64), eps)
        lambdas.append(float(dual.lam[0]))
        costs.append(cost)
        rewards.append(float(pi @ bandit.R))
    return {"lambda": lambdas, "cost": costs, "reward": rewards}


def settle_iteration(lambdas: list[float], lam_star: float) -> int | None:
    """First iteration from which lambda stays within SETTLE_TOL of lambda*; None if never."""
    lam = np.asarray(lambdas)
    outside = np.nonzero(np.abs(lam - lam_star) > SETTLE_TOL * lam_star)[0]
    if len(outside) == 0:
        return 0
    last = int(outside[-1]) + 1
    return None if last >= len(lam) else last


def summarize(trace: dict[str, list[float]], lam_star: float, reward_star: float) -> dict:
    cost = np.asarray(trace["cost"])
    late = np.asarray(trace["lambda"][-LATE:])
    return {
        "lambda_final": trace["lambda"][-1],
        "lambda_rel_error": abs(trace["lambda"][-1] - lam_star) / lam_star,
        "lambda_peak": max(trace["lambda"]),
        "cost_final": float(cost[-1]),
        "lambda_swing_late": float(late.max() - late.min()),
        "settle_iter": settle_iteration(trace["lambda"], lam_star),
        "regret": float(np.sum(reward_star - np.asarray(trace["reward"]))),
    }


def run_ablation(iters: int = ITERS) -> tuple[dict, dict[str, dict]]:
    lam_star = bandit.solve_lambda_star()
    reward_star = float(bandit.gibbs_policy(lam_star) @ bandit.R)
    rows, traces = [], {}
    for scenario, rule, eta, cap in itertools.product(SCENARIOS, RULES, ETAS, CAPS):
        trace = run_point(rule, eta, cap, scenario, iters)
        traces[f"{scenario}/{rule}/{eta:g}/{cap:g}"] = trace
        rows.append({"scenario": scenario, "rule": rule, "eta": eta, "lambda_max": cap,
                     **summarize(trace, lam_star, reward_star)})
    summary = {"lambda_star": lam_star, "reward_star": reward_star, "epsilon": bandit.EPSILON,
               "iters": iters, "stuck_iters": STUCK, "stuck_value": STUCK_VALUE,
               "settle_tol": SETTLE_TOL, "late_iters": LATE,
               "pid_gains": "ki = eta, kp = eta, kd = eta/2", "rows": rows}
    return summary, traces


def markdown(summary: dict) -> str:
    lines = [
        "# Dual-update ablation on the closed-form bandit",
        "",
        f"λ* = {summary['lambda_star']:.6f}, ε = {summary['epsilon']}, {summary['iters']} "
        f"iterations; PID gains {summary['pid_gains']}. `stuck`: g_hat reads "
        f"{summary['stuck_value']} for the first {summary['stuck_iters']} iterations. "
        f"Settled = λ within {summary['settle_tol']:.0%} of λ* from that iteration on "
        f"(– = never); late swing = max − min of λ over the last {summary['late_iters']} "
        "iterations; regret = Σ_t (E_π*[r] − E_π_t[r]).",
        "",
        "| scenario | rule | η | λ_max | λ_final | peak λ | E[c] final | late swing | "
        "settled at | regret |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        settled = "–" if r["settle_iter"] is None else str(r["settle_iter"])
        lines.append(f"| {r['scenario']} | {r['rule']} | {r['eta']:g} | {r['lambda_max']:g} | "
                     f"{r['lambda_final']:.4g} | {r['lambda_peak']:.4g} | {r['cost_final']:.4g} | "
                     f"{r['lambda_swing_late']:.3g} | {settled} | {r['regret']:.4g} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, traces: dict, path: Path) -> None:
    """lambda per iteration: binding (eta = 8) and stuck (eta = 0.5), each rule and cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("binding", 8.0, "estimate right, η = 8"),
              ("stuck", 0.5, f"g_hat stuck at 1 for {STUCK} iterations, η = 0.5"))
    colors = {"gradient": "tab:blue", "pid": "tab:orange"}
    for ax, (scenario, eta, title) in zip(axes, panels):
        for rule, cap in itertools.product(RULES, CAPS):
            t = traces[f"{scenario}/{rule}/{eta:g}/{cap:g}"]
            ax.plot(np.arange(1, len(t["lambda"]) + 1), t["lambda"], color=colors[rule],
                    ls="-" if cap == CAPS[0] else ":", lw=1.4, label=f"{rule}, λ_max {cap:g}")
        ax.axhline(summary["lambda_star"], color="black", ls="--", lw=1, label="λ*")
        if scenario == "stuck":  # lambda spans 0 to hundreds there
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0.0)
        ax.set_xlabel("iteration")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("λ")
    axes[1].set_ylabel("λ (symlog)")
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON line (last line) and write no files")
    args = parser.parse_args(argv)
    summary, traces = run_ablation()
    if not args.json:
        plot(summary, traces, RESULTS / "dual_ablation.png")
        write_text(RESULTS / "dual_ablation.json", json.dumps(summary, indent=2) + "\n")
        table = markdown(summary)
        write_text(RESULTS / "dual_ablation.md", table)
        print(table)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
