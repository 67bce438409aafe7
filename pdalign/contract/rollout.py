"""The rollout kind: a per-sample cost c(x, y) on the policy's samples of its own prompt set,
and the score-function surrogate that turns costs and log pi(y|x) into g_hat and a gradient
(REINFORCE with a running-mean baseline, Williams 1992, https://doi.org/10.1007/BF00992696;
truncated importance weights for reused samples, Ionides 2008,
https://doi.org/10.1198/106186008X320456)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch

from pdalign.contract.base import Constraint, ConstraintEstimate, StepView, StopLogps
from pdalign.contract.prompts import load_prompts, resolve_prompts

Tensor = torch.Tensor
class RolloutConstraint(Constraint):
    """A constraint on samples of the policy on its own prompt set, with a per-sample cost.

    Constraints that name the same prompt file share one rollout (`pdalign.contract.manager`).

    Args:
        prompts: a bundled prompt set name or a JSONL/CSV path; loaded (and checked) here,
            before any model loads.
        baseline_momentum: m in b <- m*b + (1-m)*mean(c), applied with each rollout's costs
            once that rollout is retired; higher is smoother but lags a moving policy.
            Default 0.9. Until the first update, a rollout is scored against its own mean.
    """

    # What the held-out certificate (`pdalign.evaluation.heldout`) may assume about c(x, y); training
    # does not read these. Declared binary costs get the exact Clopper-Pearson bound, a declared
    # range the finite-sample betting bound on the costs rescaled to [0, 1]; a constraint declaring neither gets
    # Clopper-Pearson if every observed cost is 0 or 1, else an approximate Student-t bound.
    cost_binary: ClassVar[bool] = False  # True: every cost is 0 or 1 (the constraint is a rate)
    cost_range: ClassVar[tuple[float, float] | None] = None  # [low, high] of every cost, or None

    def cost_bounds(self, max_new_tokens: int) -> tuple[float, float] | None:
        """[low, high] that every cost lies in when responses have at most ``max_new_tokens``
        tokens; None = unknown. Default: ``cost_range``."""
        return self.cost_range

    def __init__(self, name: str, epsilon: float | None, prompts: str,
                 lambda_max: float | None = None, baseline_momentum: float = 0.9,
                 scale: float = 1.0):
        super().__init__(name, epsilon, lambda_max, scale)
        self.prompt_path = resolve_prompts(prompts, self.config_key("prompts")).resolve()
        self.prompts = load_prompts(prompts, self.config_key("prompts"))
        if not 0.0 <= baseline_momentum < 1.0:
            raise ValueError(f"{self.config_key('baseline_momentum')} must be in [0, 1), "
                             f"got {baseline_momentum}")
        self.baseline_momentum = float(baseline_momentum)
        self.baseline: float | None = None  # set when the first rollout is retired

    # What the rollout manager asks. needs_stop_logps: `estimate` also takes the policy's
    # per-position stop log-probs on the samples (``stops``, `StopLogps`), one more LM-head pass
    # over the rollout tokens. silent_when_flat: samples that all cost the same give the
    # surrogate no gradient (true of the score-function surrogate), so such rollouts are
    # reported as "no signal" (`pdalign.contract.manager.RolloutManager.signal_stats`, `pdalign.reporting.stats`).
    needs_stop_logps: ClassVar[bool] = False
    silent_when_flat: ClassVar[bool] = True

    def sampled_prompts(self) -> Path:
        return self.prompt_path

    def step_estimate(self, view: StepView) -> ConstraintEstimate:
        return view.rollout[self.name]

    def calibrate(self, reference_costs: Tensor) -> None:
        """Set state (e.g. epsilon) from costs of a reference-policy rollout. Default: no-op.

        Args:
            reference_costs: (N,) costs of samples of the reference policy.
        """

    def cost(self, prompts: list[str], responses: list[str], response_lengths: Tensor) -> Tensor:
        """Per-sample cost c(x, y), detached float  # (N,).

        Args:
            prompts, responses: N prompt and decoded response texts.
            response_lengths: (N,) response token counts (EOS included where sampled).
        """
        raise NotImplementedError

    def estimate(self, costs: Tensor, logps: Tensor, weights: Tensor,
                 stops: StopLogps | None = None) -> ConstraintEstimate:
        """g_hat and the score-function surrogate for this constraint's costs.

        Args:
            costs: (N,) detached costs of the samples.
            logps: (N,) log pi(y|x) under the current policy, differentiable.
            weights: (N,) detached clipped importance weights (see `importance_weights`).
            stops: the samples' per-position stop log-probs, passed only to a constraint that
                ``needs_stop_logps``; unused here.
        """
        baseline = self.baseline if self.baseline is not None else float(costs.mean())
        return score_function_estimate(costs, logps, weights, baseline)

    def update_baseline(self, costs: Tensor) -> None:
        """b <- m*b + (1-m)*mean(c); the first call sets b = mean(c)."""
        mean = float(costs.float().mean())
        m = self.baseline_momentum
        self.baseline = mean if self.baseline is None else m * self.baseline + (1.0 - m) * mean

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline = state["baseline"]


def importance_weights(logps: Tensor, old_logps: Tensor, clip: float) -> Tensor:
    """Truncated importance weights pi(y|x) / pi_old(y|x) of samples drawn from pi_old.

    Clipped to [1/clip, clip]: a ratio bound symmetric in log space, so one sample can neither
    dominate nor vanish after the policy moved. Fresh samples (logps == old_logps) get 1.

    Args:
        logps: (N,) log pi(y|x) under the current policy (detached here).
        old_logps: (N,) log pi_old(y|x) at the first scoring of the samples.
        clip: > 1; 2.0 keeps every weight in [0.5, 2].
    Returns (N,) detached weights.
    """
    if not clip > 1.0:
        raise ValueError(f"importance weight clip must be > 1 (weights in [1/clip, clip]), "
                         f"got {clip}")
    log_ratio = (logps.detach() - old_logps.detach()).clamp(-math.log(clip), math.log(clip))
    return log_ratio.exp()


def score_function_estimate(costs: Tensor, logps: Tensor, weights: Tensor,
                            baseline: float) -> ConstraintEstimate:
    """g_hat and the REINFORCE surrogate of g(pi) = E_{y~pi}[c(x, y)] from N samples.

    With self-normalized weights w~_i = w_i / mean(w):
        g_hat = mean(w~ * c)
        grad  = mean(w~ * (c - b) * grad log pi(y|x))
    The surrogate's value is g_hat (a detached offset), its gradient is the line above; with
    w = 1 and b = mean(c) the gradient is exactly zero when every cost is equal.

    Args:
        costs: (N,) per-sample costs, detached.
        logps: (N,) summed response log-probs under the current policy, differentiable.
        weights: (N,) detached importance weights (ones for fresh samples).
        baseline: b, the running mean cost (a control variate; unbiased for any fixed b).
    """
    costs = costs.detach().to(device=logps.device, dtype=torch.float32)
    weights = weights.detach().to(device=logps.device, dtype=torch.float32)
    w = weights / weights.mean()  # (N,)
    value = (w * costs).mean()
    score = (w * (costs - baseline) * logps.float()).mean()
    surrogate = value + (score - score.detach())
    stats = {"baseline": float(baseline), "is_weight_min": float(weights.min()),
             "is_weight_max": float(weights.max())}
    return ConstraintEstimate(value=value.detach(), surrogate=surrogate, stats=stats)
