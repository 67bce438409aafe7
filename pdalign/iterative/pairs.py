"""The Lagrangian reward r_lambda = r - sum_i lambda_i c_i and the best-vs-worst pairs built from it
(pure functions of tensors; C-DPO, Liu et al. 2024, https://arxiv.org/abs/2403.02475)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

Tensor = torch.Tensor
def lagrangian_reward(reward: Tensor, costs: Tensor, lam: Tensor) -> Tensor:
    """r_lambda = r - sum_i lambda_i c_i.

    Args:
        reward: (N,) the judge's r(x, y).
        costs: (C, N) c_i(x, y); 0 where constraint i does not score the prompt.
        lam: (C,) the multipliers per unit of cost (`DualState.weights`, lambda/scale).
    Returns (N,) float64.
    """
    r = reward.to(torch.float64)
    if costs.numel() == 0:
        return r.clone()
    return r - (lam.to(torch.float64)[:, None] * costs.to(torch.float64)).sum(0)


@dataclass
class Pair:
    """A DPO pair from one prompt's candidates (indices into the round's candidates)."""

    prompt: int  # index of the prompt in the round's pool
    chosen: int  # argmax of r_lambda over the prompt's candidates (first on ties)
    rejected: int  # argmin of r_lambda (first on ties)
    flipped: bool  # lambda changed the winner: r alone would have chosen another candidate
    reversed: bool  # r alone orders these two the other way: r(chosen) < r(rejected)


def best_vs_worst(groups: Sequence[Sequence[int]], reward: Tensor, lagrangian: Tensor,
                  texts: Sequence[str]) -> list[Pair]:
    """Per prompt, its best candidate against its worst under r_lambda.

    A pair is *flipped* when its winner is not the prompt's winner under r alone (r(chosen) <
    max r: at lambda = 0 another candidate would have been chosen), and *reversed* when r alone
    prefers its loser (r(chosen) < r(rejected)), the stronger case. A prompt gives no pair
    when its candidates tie under r_lambda (nothing to prefer) or when the two picked texts are
    equal (a DPO pair with no difference).

    Args:
        groups: per prompt, the indices of its candidates.
        reward: (N,) r; lagrangian: (N,) r_lambda; texts: the N candidate responses.
    """
    r, rl = reward.tolist(), lagrangian.tolist()
    pairs = []
    for j, idx in enumerate(groups):
        if len(idx) < 2:
            continue
        best = max(idx, key=lambda i: rl[i])  # max/min keep the first of equal values
        worst = min(idx, key=lambda i: rl[i])
        if not rl[best] > rl[worst] or texts[best] == texts[worst]:
            continue
        pairs.append(Pair(j, best, worst, flipped=r[best] < max(r[i] for i in idx),
                          reversed=r[best] < r[worst]))
    return pairs
