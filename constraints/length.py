"""Length: the mean number of tokens the policy generates per response.

g(pi) = E[|y|] <= epsilon tokens, with |y| counted as generated (the EOS token included where
one was sampled; a response cut at max_new_tokens counts max_new_tokens). Preference training
is known to inflate length (Park et al. 2024, https://arxiv.org/abs/2403.19159); the relative
mode bounds it against the starting policy: epsilon = ratio * mean reference length,
measured by `calibrate` on a rollout of the reference before training.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pdalign.constraint import RolloutConstraint


class Length(RolloutConstraint):
    """Mean response length in tokens, bounded absolutely or relative to the reference.

    Args:
        name: constraint name. Default ``length``.
        epsilon: bound in tokens per response, > 0; required unless relative_to_reference,
            where calibrate() replaces it (and a resumed run recomputes it).
        prompts: bundled set name or JSONL/CSV path. Default ``benign``.
        relative_to_reference: set epsilon = ratio * mean length of a reference rollout.
        ratio: allowed growth over the reference length, > 0 (1.2 = 20 % longer).
        lambda_max, baseline_momentum: see `RolloutConstraint`.
    """

    epsilon_range = (0.0, math.inf)
    epsilon_low_open = True
    epsilon_unit = "tokens per response"

    def __init__(self, name: str = "length", epsilon: float | None = None,
                 prompts: str = "benign", relative_to_reference: bool = False, ratio: float = 1.2,
                 lambda_max: float | None = None, baseline_momentum: float = 0.9):
        # set before the base checks epsilon: relative mode may leave it None until calibrate()
        self.relative_to_reference = bool(relative_to_reference)
        self.reference_length: float | None = None
        super().__init__(name, epsilon, prompts, lambda_max, baseline_momentum)
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
