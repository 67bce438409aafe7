"""The pair objectives a Hydra ``method/*.yaml`` names with ``_target_`` (`DPO`, `SimPO`,
`ORPO`), so the trainer picks a method by config and never branches on its name.

They all read the same ``out`` dict:

- ``chosen_logps``, ``rejected_logps``: log-probs summed over response tokens, ``(B,)``
- ``chosen_n_tokens``, ``rejected_n_tokens``: response token counts as floats, ``(B,)``
- ``ref_chosen_logps``, ``ref_rejected_logps``: the reference's summed log-probs ``(B,)``,
  present only when the objective's ``needs_reference`` is True.

The two row blocks of a batch are named by the objective's ``row_names``: ``("chosen",
"rejected")`` for the pair objectives (KTO, `pdalign.objectives.kto`, names its own).

Each call returns ``(losses (B,), metrics)``. In the metrics, ``rewards/*`` are on each
method's own scale, while ``logps/chosen`` and ``logps/rejected`` are always the summed
log-probs from ``out``, so those two compare across methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from pdalign.objectives.losses import (
    check_dpo_args,
    check_weight,
    dpo_loss,
    nll_loss,
    orpo_loss,
    preference_metrics,
    simpo_loss,
)

Tensor = torch.Tensor
# Which log-probs each DPO loss_type consumes. IPO uses length-normalized (mean) log-probs
# for policy and reference: the paper writes sequence-level pi(y|x), but its authors advised
# averaging so that tau does not scale with response length (HF blog "Preference Tuning LLMs
# with Direct Preference Optimization Methods", 2024; TRL PR #1265; torchtune issue #1291).
_DPO_USES_MEAN = {"sigmoid": False, "hinge": False, "ipo": True}


def _mean_logps(out: dict[str, Tensor], key: str, side: str) -> Tensor:
    return out[key] / out[f"{side}_n_tokens"].clamp(min=1.0)


def _finish(losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor,
            out: dict[str, Tensor], nll_weight: float) -> tuple[Tensor, dict[str, float]]:
    """Add the optional RPO-style NLL term (weight alpha) and build the metrics dict."""
    extra = {}
    if nll_weight > 0:
        nll = nll_loss(out["chosen_logps"], out["chosen_n_tokens"])  # (B,)
        losses = losses + nll_weight * nll
        extra["nll"] = nll
    metrics = preference_metrics(
        chosen_rewards, rejected_rewards, out["chosen_logps"], out["rejected_logps"], extra
    )
    return losses, metrics


@dataclass(frozen=True)
class DPO:
    """DPO / IPO / SLiC-hinge objective over the ``out`` dict, plus an optional RPO NLL term.

    DPO: https://arxiv.org/abs/2305.18290 ; IPO: https://arxiv.org/abs/2310.12036 ;
    RPO NLL term: https://arxiv.org/abs/2404.19733

    Method ``ipo`` is this class with ``loss_type="ipo"``; it then feeds mean log-probs
    (policy and reference) to the loss, the others feed summed log-probs.

    Args:
        beta: inverse temperature (IPO's tau for ``ipo``). Default 0.1.
        loss_type: ``"sigmoid"`` (DPO), ``"hinge"`` (SLiC), ``"ipo"``. Default ``"sigmoid"``.
        label_smoothing: conservative-DPO flip probability in [0, 0.5), sigmoid only.
            Default 0.
        nll_weight: weight alpha of the added mean NLL on chosen (RPO); 0 turns it off.
            Default 0.
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    nll_weight: float = 0.0

    needs_reference = True  # class attribute, not a field: fixed by the method
    row_names: ClassVar[tuple[str, str]] = ("chosen", "rejected")  # the batch's two row blocks
    unpaired: ClassVar[bool] = False  # trains on pairs, not on labelled single completions

    def __post_init__(self) -> None:
        check_dpo_args(self.beta, self.loss_type, self.label_smoothing)
        check_weight("nll_weight", self.nll_weight)

    @property
    def uses_mean_logps(self) -> bool:
        return _DPO_USES_MEAN[self.loss_type]

    def __call__(self, out: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Per-example losses ``(B,)`` and the batch-mean metrics dict."""
        if self.uses_mean_logps:
            logps = [
                _mean_logps(out, "chosen_logps", "chosen"),
                _mean_logps(out, "rejected_logps", "rejected"),
                _mean_logps(out, "ref_chosen_logps", "chosen"),
                _mean_logps(out, "ref_rejected_logps", "rejected"),
            ]
        else:
            logps = [out[k] for k in (
                "chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"
            )]
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            *logps, self.beta, self.loss_type, self.label_smoothing
        )
        return _finish(losses, chosen_rewards, rejected_rewards, out, self.nll_weight)


@dataclass(frozen=True)
class SimPO:
    """SimPO objective (reference-free, length-normalized) plus an optional NLL term.

    SimPO: https://arxiv.org/abs/2405.14734 ; NLL term as in CPO/RPO.

    Args:
        beta: reward scale. Default 2.0 (the paper's range is 2 to 2.5 for most setups).
        gamma: absolute target margin. Default 1.0 (gamma/beta = 0.5, the paper's usual ratio).
        nll_weight: weight of the added mean NLL on chosen; 0 turns it off. Default 0.
    """

    beta: float = 2.0
    gamma: float = 1.0
    nll_weight: float = 0.0

    needs_reference = False
    uses_mean_logps = True
    row_names: ClassVar[tuple[str, str]] = ("chosen", "rejected")
    unpaired: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        check_weight("gamma", self.gamma)
        check_weight("nll_weight", self.nll_weight)

    def __call__(self, out: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Per-example losses ``(B,)`` and the batch-mean metrics dict; reads no ref keys."""
        chosen = _mean_logps(out, "chosen_logps", "chosen")  # (B,)
        rejected = _mean_logps(out, "rejected_logps", "rejected")  # (B,)
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            chosen, rejected, self.beta, self.gamma
        )
        return _finish(losses, chosen_rewards, rejected_rewards, out, self.nll_weight)


@dataclass(frozen=True)
class ORPO:
    """ORPO objective: mean NLL on chosen plus ``beta`` times the odds-ratio loss.

    ORPO: https://arxiv.org/abs/2403.07691 (L = L_SFT + lambda * L_OR, with lambda = beta).
    Reference-free; logged rewards are ``beta * mean logps``, as in TRL.

    Args:
        beta: weight of the odds-ratio term (the paper's lambda). Default 0.1.
    """

    beta: float = 0.1

    needs_reference = False
    uses_mean_logps = True
    row_names: ClassVar[tuple[str, str]] = ("chosen", "rejected")
    unpaired: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")

    def __call__(self, out: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Per-example losses ``(B,)`` and the batch-mean metrics dict; reads no ref keys."""
        chosen = _mean_logps(out, "chosen_logps", "chosen")  # (B,)
        rejected = _mean_logps(out, "rejected_logps", "rejected")  # (B,)
        or_losses, log_odds_ratio = orpo_loss(chosen, rejected, self.beta)
        nll = nll_loss(out["chosen_logps"], out["chosen_n_tokens"])  # (B,)
        losses = nll + or_losses
        metrics = preference_metrics(
            self.beta * chosen.detach(),
            self.beta * rejected.detach(),
            out["chosen_logps"],
            out["rejected_logps"],
            {"log_odds_ratio": log_odds_ratio, "nll": nll},
        )
        return losses, metrics
