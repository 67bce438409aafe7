"""Preference losses as pure per-example tensor functions.

Every function takes per-sequence log-probs of shape ``(B,)`` and returns unreduced
per-example tensors ``(B,)``; the training loop reduces. Rewards are always detached. The
objectives that a config names (`pdalign.objectives`) are built on them.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
log = logging.getLogger("pdalign")


# ---------------------------------------------------------------------------------------
# DPO family: sigmoid (DPO), hinge (SLiC), ipo (IPO)
# ---------------------------------------------------------------------------------------


def _sigmoid_loss(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # Conservative DPO: the label is flipped with probability `label_smoothing`, giving a
    # mixture of the loss on h and on -h (Mitchell 2023, "A note on DPO with noisy
    # preferences"; the same form TRL and torchtune use).
    return (
        -F.logsigmoid(beta * h) * (1.0 - label_smoothing)
        - F.logsigmoid(-beta * h) * label_smoothing
    )


def _hinge_loss(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # SLiC-HF rank-calibration hinge (Zhao et al. 2023, https://arxiv.org/abs/2305.10425) on
    # the reference-adjusted gap: relu(1 - beta*h) = beta * max(0, 1/beta - h), i.e. margin
    # delta = 1/beta; the same parameterisation as TRL's loss_type="hinge".
    return torch.relu(1.0 - beta * h)


def _ipo_loss(h: Tensor, beta: float, label_smoothing: float) -> Tensor:
    # IPO's sampled loss: squared regression of the log-ratio gap onto 1/(2 tau), with
    # tau = beta (Azar et al. 2023).
    return (h - 1.0 / (2.0 * beta)) ** 2


_DPO_LOSSES: dict[str, Callable[[Tensor, float, float], Tensor]] = {
    "sigmoid": _sigmoid_loss,
    "hinge": _hinge_loss,
    "ipo": _ipo_loss,
}


def check_dpo_args(beta: float, loss_type: str, label_smoothing: float) -> None:
    if loss_type not in _DPO_LOSSES:
        raise ValueError(
            f"loss_type={loss_type!r} is not known; use one of {sorted(_DPO_LOSSES)}"
        )
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing > 0 and loss_type != "sigmoid":
        raise ValueError(
            f"label_smoothing applies to loss_type='sigmoid' only, got loss_type={loss_type!r}"
        )


def dpo_loss(
    policy_chosen_logps: Tensor,  # (B,)
    policy_rejected_logps: Tensor,  # (B,)
    ref_chosen_logps: Tensor,  # (B,)
    ref_rejected_logps: Tensor,  # (B,)
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO-family loss on the log-ratio gap h = (pi_c - pi_r) - (ref_c - ref_r), per example.

    DPO: https://arxiv.org/abs/2305.18290 ; IPO: https://arxiv.org/abs/2310.12036 ;
    SLiC-HF (hinge): https://arxiv.org/abs/2305.10425

    - ``sigmoid``: ``-logsigmoid(beta*h)*(1-ls) - logsigmoid(-beta*h)*ls``
    - ``hinge``:   ``relu(1 - beta*h)``
    - ``ipo``:     ``(h - 1/(2*beta))**2``

    Args:
        policy_chosen_logps: policy log-probs of the chosen responses, ``(B,)``.
        policy_rejected_logps: policy log-probs of the rejected responses, ``(B,)``.
        ref_chosen_logps: reference log-probs of the chosen responses, ``(B,)``; detached here.
        ref_rejected_logps: reference log-probs of the rejected responses, ``(B,)``; detached.
        beta: inverse temperature (DPO beta, IPO tau, SLiC inverse margin); > 0.
        loss_type: one of ``"sigmoid"``, ``"hinge"``, ``"ipo"``. Default ``"sigmoid"``.
        label_smoothing: probability in [0, 0.5) that a label is flipped (conservative DPO);
            sigmoid only. Default 0.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``; rewards are
        ``beta * (policy - ref)``, detached.
    """
    check_dpo_args(beta, loss_type, label_smoothing)
    # The reference is a constant of the objective; detaching costs nothing and keeps a
    # reference computed with grad enabled (adapter disabled, same graph) out of backward.
    ref_chosen_logps = ref_chosen_logps.detach()
    ref_rejected_logps = ref_rejected_logps.detach()
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    losses = _DPO_LOSSES[loss_type](h, beta, label_smoothing)  # (B,)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()  # (B,)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


# ---------------------------------------------------------------------------------------
# Reference-free: SimPO, ORPO; and the NLL term
# ---------------------------------------------------------------------------------------


def simpo_loss(
    policy_chosen_logps: Tensor,  # (B,) mean over response tokens
    policy_rejected_logps: Tensor,  # (B,) mean over response tokens
    beta: float,
    gamma: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO loss ``-logsigmoid(beta*(c - r) - gamma)`` on length-normalized log-probs.

    SimPO: https://arxiv.org/abs/2405.14734 . gamma is the absolute target margin
    (not gamma/beta); TRL's ``simpo_gamma`` and the paper's gamma have this meaning.

    Args:
        policy_chosen_logps: mean per-token log-prob of the chosen responses, ``(B,)``.
        policy_rejected_logps: mean per-token log-prob of the rejected responses, ``(B,)``.
        beta: reward scale; > 0 (the paper uses 2 to 10).
        gamma: target reward margin, absolute, >= 0.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(B,)``; rewards are
        ``beta * logps``, detached.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - gamma  # (B,)
    losses = -F.logsigmoid(logits)
    return losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()


_ORPO_LOGP_CAP = 1e-6  # mean log-probs are clamped to <= -1e-6 (see orpo_loss)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both sides of -ln 2 (Maechler 2012).

    https://cran.r-project.org/web/packages/Rmpfr/vignettes/log1mexp-note.pdf
    """
    # Evaluate both branches on inputs that are safe for each, then pick; torch.where
    # differentiates through both branches, so an unsafe input in the unused one would
    # still leak NaN into the gradient.
    near_zero = x > -math.log(2.0)
    x_near = torch.where(near_zero, x, torch.full_like(x, -1.0))
    x_far = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def orpo_loss(
    policy_chosen_logps: Tensor,  # (B,) mean over response tokens
    policy_rejected_logps: Tensor,  # (B,) mean over response tokens
    beta: float,
) -> tuple[Tensor, Tensor]:
    """ORPO odds-ratio term ``-beta * logsigmoid(log odds(c) - log odds(r))``, per example.

    ORPO: https://arxiv.org/abs/2403.07691 . odds(y) = P(y)/(1 - P(y)) with P the
    length-normalized likelihood, so log odds = logp - log(1 - exp(logp)), computed in log
    space. The full ORPO objective is ``nll_loss(chosen) + or_losses``: beta (the paper's
    lambda) is already applied here, as in TRL, so the trainer adds the NLL unscaled.

    Finite for every logp <= 0 in fp32 and bf16, including logp -> 0- and logp = -100.
    bf16/fp16 inputs are evaluated in fp32 and the result cast back to the input dtype.

    Args:
        policy_chosen_logps: mean per-token log-prob of the chosen responses, ``(B,)``, < 0.
        policy_rejected_logps: mean per-token log-prob of the rejected responses, ``(B,)``.
        beta: weight of the odds-ratio term (the paper's lambda; 0.1 there); > 0.

    Returns:
        ``(or_losses, log_odds_ratio)``, each ``(B,)``; ``log_odds_ratio`` is detached.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    out_dtype = policy_chosen_logps.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    c = policy_chosen_logps.to(work)
    r = policy_rejected_logps.to(work)
    # A mean log-prob can round to exactly 0 (every token certain, or bf16 rounding), where
    # log(1 - exp(0)) = -inf, and near 0 d log-odds / d logp ~ 1/|logp|. Clamping at -1e-6
    # caps the log-odds at log((1 - 1e-6) / 1e-6) = 13.8 and the gradient at ~1e6 * beta;
    # clamping at -finfo.tiny instead (1.2e-38) let beta/|logp| overflow fp32 to inf
    # (found by the hypothesis property test at logp = -1.17549e-38, beta = 8).
    c = c.clamp(max=-_ORPO_LOGP_CAP)
    r = r.clamp(max=-_ORPO_LOGP_CAP)
    log_odds_ratio = (c - _log1mexp(c)) - (r - _log1mexp(r))  # (B,)
    or_losses = -beta * F.logsigmoid(log_odds_ratio)
    return or_losses.to(out_dtype), log_odds_ratio.detach().to(out_dtype)


def nll_loss(
    chosen_logps_sum: Tensor,  # (B,)
    chosen_n_tokens: Tensor,  # (B,) float
) -> Tensor:
    """Per-example mean negative log-likelihood over response tokens, ``-sum / n``.

    The SFT term of ORPO (https://arxiv.org/abs/2403.07691) and the alpha-weighted NLL term
    of RPO (https://arxiv.org/abs/2404.19733), which adds it to DPO; here it can be added to
    any method through ``nll_weight``.

    Args:
        chosen_logps_sum: log-prob of the chosen response summed over its tokens, ``(B,)``.
        chosen_n_tokens: number of response tokens, ``(B,)``; clamped to >= 1 so an empty
            response (which data validation should already reject) cannot divide by zero.

    Returns:
        ``(B,)`` mean NLL per token.
    """
    return -chosen_logps_sum / chosen_n_tokens.clamp(min=1.0)


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def preference_metrics(
    chosen_rewards: Tensor,  # (B,)
    rejected_rewards: Tensor,  # (B,)
    chosen_logps: Tensor,  # (B,)
    rejected_logps: Tensor,  # (B,)
    extra: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """Batch means of the metrics every method logs, as python floats.

    Keys: ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies`` (fraction with chosen reward > rejected reward),
    ``logps/chosen``, ``logps/rejected``, plus one key per entry of ``extra``.

    Args:
        chosen_rewards: implicit rewards of the chosen responses, ``(B,)``.
        rejected_rewards: implicit rewards of the rejected responses, ``(B,)``.
        chosen_logps: policy log-probs of the chosen responses, ``(B,)``.
        rejected_logps: policy log-probs of the rejected responses, ``(B,)``.
        extra: further per-example tensors ``(B,)`` to average, by metric name. Default none.
    """
    per_example = {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "logps/chosen": chosen_logps,
        "logps/rejected": rejected_logps,
        **(extra or {}),
    }
    # One stack and one .tolist(): a single device sync instead of one .item() per key.
    means = torch.stack([t.detach().float().mean() for t in per_example.values()]).tolist()
    return dict(zip(per_example, means))


# ---------------------------------------------------------------------------------------
# Objectives, selected by Hydra `_target_`
# ---------------------------------------------------------------------------------------


def check_weight(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
