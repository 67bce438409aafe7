"""KL budget: the policy's mean per-token KL divergence from the reference on the batch.

g(pi) = sum over response tokens of KL(pi(.|x, y<t) || pi_ref(.|x, y<t)) / number of response
tokens, over every row of the training forward (chosen and rejected), <= epsilon nats per token.
The KL is exact over the vocabulary (`pdalign.policy.logprobs`), so value and surrogate are the same
differentiable number: no sampling noise, unlike the sampled log-ratio estimate of PPO-style
RLHF (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155).
"""

from __future__ import annotations

import math

from pdalign.contract import BatchConstraint, ConstraintEstimate


class KLBudget(BatchConstraint):
    """Mean per-token KL(pi || pi_ref) over the batch's response tokens, bounded by epsilon.

    Args:
        name: constraint name. Default ``kl_budget``.
        epsilon: budget in nats per response token, > 0.
        lambda_max, scale: see `Constraint`.
    """

    needs_kl = True
    epsilon_range = (0.0, math.inf)
    epsilon_low_open = True
    epsilon_unit = "nats per response token"

    def __init__(self, name: str = "kl_budget", epsilon: float = 0.05,
                 lambda_max: float | None = None, scale: float = 1.0):
        super().__init__(name, epsilon, lambda_max, scale)

    def estimate(self, out) -> ConstraintEstimate:
        """Token-weighted mean KL: out.kl.sum() / out.n_tokens.sum().

        Args:
            out: `SequenceLogps` of the preference rows (2B,), with ``kl`` computed.
        """
        if out.kl is None:
            raise RuntimeError(f"constraints.{self.name} needs per-token KL: call sequence_logps "
                               f"with with_kl=True for batch constraints with needs_kl")
        kl = out.kl.sum() / out.n_tokens.sum().clamp(min=1.0)  # ()
        return ConstraintEstimate(value=kl.detach(), surrogate=kl)
