"""Length: the mean number of tokens the policy generates per response.

g(pi) = E[|y|] <= epsilon tokens, with |y| counted as generated (the EOS token included where
one was sampled; a response cut at max_new_tokens counts max_new_tokens). Preference training
is known to inflate length (Park et al. 2024, https://arxiv.org/abs/2403.19159); the relative
mode bounds it against the starting policy: epsilon = ratio * mean reference length,
measured by `calibrate` on a rollout of the reference before training.

Two estimators of grad g (``constraints.length.estimator``): ``sampled``, the score-function
surrogate every rollout constraint uses (`pdalign.contract.rollout.score_function_estimate`), which has
no gradient when every sample has the same length (all cut at the generation budget, common for
a small chat model on a CPU budget); and ``stop``, which also reads the policy's probability of
stopping at every position of the samples and stays dense there (`stop_estimate`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from pdalign.contract import (
    ConstraintEstimate,
    RolloutConstraint,
    StopLogps,
    score_function_estimate,
)

Tensor = torch.Tensor
# 1 - h_s is floored here: log pi(stop) carries ~1e-7 absolute error in float32, so a smaller
# 1 - exp(log h) is rounding; the floor keeps the stop term's weight finite where h_s -> 1.
MIN_CONTINUE = 1e-6


class Length(RolloutConstraint):
    """Mean response length in tokens, bounded absolutely or relative to the reference.

    Args:
        name: constraint name. Default ``length``.
        epsilon: bound in tokens per response, > 0; required unless relative_to_reference,
            where calibrate() replaces it (and a resumed run recomputes it).
        prompts: bundled set name or JSONL/CSV path. Default ``benign``.
        relative_to_reference: set epsilon = ratio * mean length of a reference rollout.
        ratio: allowed growth over the reference length, > 0 (1.2 = 20 % longer).
        lambda_max, baseline_momentum, scale: see `RolloutConstraint`.
        estimator: how grad g is estimated from the samples. ``sampled`` (default): the
            score-function surrogate mean(w (c - b) log pi(y|x)), zero when every sample has the
            same length. ``stop``: the same gradient with each stop decision scored against the
            length a stop there gives (`stop_estimate`): unbiased too, and dense when every
            sample hit the budget; costs one more LM-head pass over the rollout tokens. g_hat,
            the value the dual step and the certificates see, is the same sampled mean either
            way.
    """

    # name -> what it is, for the error on an unknown name
    estimators: ClassVar[dict[str, str]] = {
        "sampled": "the score-function surrogate, zero gradient when all lengths are equal",
        "stop": "each stop decision scored against the length a stop there gives, dense at "
                "the cap",
    }
    epsilon_range = (0.0, math.inf)
    epsilon_low_open = True
    epsilon_unit = "tokens per response"

    def __init__(self, name: str = "length", epsilon: float | None = None,
                 prompts: str = "benign", relative_to_reference: bool = False, ratio: float = 1.2,
                 lambda_max: float | None = None, baseline_momentum: float = 0.9,
                 estimator: str = "sampled", scale: float = 1.0):
        # set before the base checks epsilon: relative mode may leave it None until calibrate()
        self.relative_to_reference = bool(relative_to_reference)
        self.reference_length: float | None = None
        super().__init__(name, epsilon, prompts, lambda_max, baseline_momentum, scale)
        if estimator not in self.estimators:
            options = "; ".join(f"{k} ({v})" for k, v in self.estimators.items())
            raise ValueError(f"{self.config_key('estimator')}={estimator!r} is not an estimator: "
                             f"use one of {options}")
        self.estimator = estimator
        if not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"{self.config_key('ratio')} must be > 0, got {ratio}")
        self.ratio = float(ratio)

    def cost_bounds(self, max_new_tokens: int) -> tuple[float, float]:
        """A response has at most ``max_new_tokens`` tokens (generation stops there)."""
        return (0.0, float(max_new_tokens))

    def check_budget(self, max_new_tokens: int, key: str) -> None:
        """Raise ValueError when epsilon is not below the generation budget ``key``.

        Every response is capped at ``max_new_tokens`` tokens, so with epsilon >= the budget the
        mean length can never exceed the bound: it never binds, and once the policy fills the
        budget every sample costs the same, which the score-function surrogate cannot use.
        A no-op while epsilon is unknown or a placeholder (relative mode before `calibrate`;
        call it again once calibrated).

        Args:
            max_new_tokens: the generation budget, tokens per response (EOS included).
            key: its config key, named in the error (``train.rollout.max_new_tokens``,
                ``eval.max_new_tokens``).
        """
        if self.epsilon is None or self.needs_calibration or self.epsilon < max_new_tokens:
            return
        eps = f"{self.config_key('epsilon')}={self.epsilon:g}"
        fix = (f"Raise {key} (e.g. to {math.ceil(2 * self.epsilon)} = 2 x epsilon) or lower "
               f"{self.config_key('epsilon')}")
        if self.relative_to_reference:
            # epsilon = ratio x a reference length measured under this budget: raising the
            # budget only helps once the reference's responses end before it
            eps += (f" (relative_to_reference: {self.ratio:g} x the reference's mean length "
                    f"{self.reference_length:.1f} tokens)")
            fix = (f"Lower {self.config_key('ratio')} below "
                   f"{max_new_tokens / self.reference_length:.3g}, or raise {key} until the "
                   f"reference's responses end before it")
        raise ValueError(f"{eps} is not below {key}={max_new_tokens}: every response is capped "
                         f"at {max_new_tokens} tokens, so the bound can never bind and, once the "
                         f"policy fills the budget, its samples never vary. {fix}")

    @property
    def needs_stop_logps(self) -> bool:
        return self.estimator == "stop"

    @property
    def silent_when_flat(self) -> bool:
        return self.estimator == "sampled"

    def estimate(self, costs: Tensor, logps: Tensor, weights: Tensor,
                 stops: StopLogps | None = None) -> ConstraintEstimate:
        """g_hat (the weighted mean length) and the surrogate of the configured ``estimator``.

        Args:
            costs: (N,) the samples' lengths ℓ_i, detached.
            logps: (N,) log pi(y|x) under the current policy, differentiable.
            weights: (N,) detached clipped importance weights.
            stops: the per-position stop log-probs; required by ``estimator: stop``.
        """
        baseline = self.baseline if self.baseline is not None else float(costs.mean())
        if self.estimator == "sampled":
            return score_function_estimate(costs, logps, weights, baseline)
        if stops is None:
            raise ValueError(f"{self.config_key('estimator')}=stop needs the samples' stop "
                             f"log-probs (StopLogps); the rollout manager passes them")
        return stop_estimate(costs, logps, weights, baseline, stops)

    @property
    def needs_calibration(self) -> bool:
        return self.relative_to_reference and self.reference_length is None

    def calibrate(self, reference_costs: torch.Tensor) -> None:
        """In relative mode, epsilon = ratio * mean reference length; otherwise a no-op."""
        if not self.relative_to_reference:
            return
        self.reference_length = float(reference_costs.float().mean())
        self.epsilon = self.check_epsilon(self.ratio * self.reference_length)

    def cost(self, prompts: list[str], responses: list[str],
             response_lengths: torch.Tensor) -> torch.Tensor:
        return response_lengths.float()  # (N,)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "reference_length": self.reference_length}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the baseline and the measured reference length; epsilon is recomputed from
        it, so a resumed run need not re-sample the reference (and honours an edited ratio)."""
        super().load_state_dict(state)
        self.reference_length = state["reference_length"]
        if self.relative_to_reference and self.reference_length is not None:
            self.epsilon = self.check_epsilon(self.ratio * self.reference_length)


def stop_estimate(costs: Tensor, logps: Tensor, weights: Tensor, baseline: float,
                  stops: StopLogps) -> ConstraintEstimate:
    """g_hat and a dense surrogate of g = E[ℓ]: the score-function gradient with every stop
    decision scored against the length a stop there gives.

    The length ℓ = min(|y|, B) (stop token counted, B = max_new_tokens) is decided by stop
    decisions: at position s = 1, 2, ... the policy stops (ℓ = s) with probability
    h_s = pi(stop | x, y_<s), or continues with a token y_s ~ q_s = pi(. | x, y_<s, no stop). So at
    a continued position log pi(y_s) = log(1 - h_s) + log q_s(y_s), at the stop log pi = log h_s,
    and the score-function gradient (Williams 1992) splits into the two choices, each with a
    baseline of its own fixed by the prefix (its expected score is zero, so any such baseline
    leaves the gradient unbiased; C the continued positions, y_s not a stop token):

        grad E[ℓ] = E[ sum_{s in C} grad log q_s(y_s) (ℓ - b)                  token choices
                      + sum_{s in C} grad log(1 - h_s) (ℓ - b_s)                stop decisions
                      + [stopped] grad log h_ℓ (ℓ - b_ℓ) ]

    ``sampled`` takes b_s = b, the running mean cost, for both. Here b_s = s, the length a stop
    at s gives: the term of the sampled stop is then exactly 0 (ℓ = s), and with
    grad log(1 - h_s) = -grad h_s / (1 - h_s), on N samples with self-normalized weights w:

        grad = (1 / sum w) sum_i w_i [ sum_{s in C_i} grad log q_s(y_s) (ℓ_i - b)
                                       + sum_{s in C_i} grad h_s (s - ℓ_i) / (1 - h_s) ]

    The second sum is dense: at every position where the sample went on, it raises the stop
    probability in proportion to the tokens a stop there would have saved, ℓ_i - s >= 0. It does
    not vanish when every sample has the same length, as when all hit the budget (there
    ℓ_i - b = 0 and the first sum, the only part `sampled` has then, is zero too). At s = B the
    choice changes nothing (stopping or not, ℓ = B) and ℓ_i - s = 0 gives it no weight.

    It is the Rao-Blackwellised stop term, sum_{s in C_i} grad h_s (s - ℓ_i) (the stop/continue
    choice in exact expectation, the continue branch valued by the sampled ℓ_i), divided by the
    probability 1 - h_s of having continued: that term has a sample of the continue branch only
    where the sample went on, so without the division its expectation weighs each position's
    exact term grad h_s (s - E[ℓ | continue]) by 1 - h_s, a bias toward zero where the policy
    already stops often (and none where it rarely does, h_s ~ 0).
    Per logit the stop term's gradient is h_s (e_stop - q_s) (s - ℓ_i): bounded by 2 h_s |s - ℓ_i|
    however close h_s comes to 1 (1 - h_s is floored at `MIN_CONTINUE` against rounding).

    What it shares with ``sampled``: g_hat = sum w ℓ / sum w, the value the dual step and the
    certificates read, unchanged; the baseline b; the importance weights of reused samples; the
    assumption that samples come from pi itself (temperature 1, top_p 1). The token choices'
    effect on later length (a terser wording rather than an earlier stop) is still learnt only
    from the first sum, which needs lengths that vary.

    Args:
        costs: (N,) the samples' lengths ℓ_i (Length's cost), detached.
        logps: (N,) log pi(y|x) under the current policy, differentiable.
        weights: (N,) detached importance weights (ones for fresh samples).
        baseline: b, the running mean length.
        stops: the samples' per-position log pi(stop | x, y_<s) (N, R), lengths and stop flags.
    """
    device = logps.device
    ell = costs.detach().to(device=device, dtype=torch.float32)  # (N,)
    weights = weights.detach().to(device=device, dtype=torch.float32)
    w = weights / weights.mean()  # (N,)
    value = (w * ell).mean()
    log_h = stops.logps.to(device).float()  # (N, R)
    lengths, stopped = stops.lengths.to(device), stops.stopped.to(device)  # (N,)
    s = torch.arange(1, log_h.shape[1] + 1, device=device)  # (R,) 1-based positions
    went_on = s[None, :] <= (lengths - stopped.long())[:, None]  # (N, R): the set C_i
    h = log_h.exp()
    # value: anything; gradient: grad log(1 - h_s) = -grad h_s / (1 - h_s), finite as h_s -> 1
    go_on = torch.where(went_on, -h / (-torch.expm1(log_h)).clamp(min=MIN_CONTINUE).detach(),
                        torch.zeros_like(h))  # (N, R)
    # the sampled stop token's log-prob, taken out of log pi(y): its term is 0 with b_s = s
    last = (lengths - 1).clamp(min=0)[:, None]
    stop_lp = log_h.gather(1, last).squeeze(1) if log_h.shape[1] else torch.zeros_like(ell)
    tokens = logps.float() - torch.where(stopped, stop_lp, 0.0) - go_on.sum(1)  # (N,)
    stop_term = (go_on * (ell[:, None] - s[None, :])).sum(1)  # (N,)
    score = (w * ((ell - baseline) * tokens + stop_term)).mean()
    surrogate = value + (score - score.detach())
    n_went_on = went_on.sum().clamp(min=1)
    stats = {"baseline": float(baseline), "is_weight_min": float(weights.min()),
             "is_weight_max": float(weights.max()),
             "stop_prob": float((h.detach() * went_on).sum() / n_went_on)}
    return ConstraintEstimate(value=value.detach(), surrogate=surrogate, stats=stats)
