"""Preference losses as pure per-example tensor functions, and the objectives built on them.

Every function takes per-sequence log-probs of shape ``(B,)`` and returns unreduced
per-example tensors ``(B,)``; the training loop reduces. Rewards are always detached.

The objective classes at the bottom (`DPO`, `SimPO`, `ORPO`) are what a Hydra
``method/*.yaml`` names with ``_target_``, so the trainer picks a method by config and
never branches on its name (STYLE rule 3). They all read the same ``out`` dict:

- ``chosen_logps``, ``rejected_logps``: log-probs summed over response tokens, ``(B,)``
- ``chosen_n_tokens``, ``rejected_n_tokens``: response token counts as floats, ``(B,)``
- ``ref_chosen_logps``, ``ref_rejected_logps``: the reference's summed log-probs ``(B,)``,
  present only when the objective's ``needs_reference`` is True.

The two row blocks of a batch are named by the objective's ``row_names``: ``("chosen",
"rejected")`` for the pair objectives; KTO (unpaired rows, `KTO`) names them ``("completion",
"kl")`` and reads ``completion_*`` and ``kl_*`` keys instead, plus ``label`` ``(B,)`` bool and,
under several processes, ``reduce_mean`` (a callable mean-all-reduce across ranks).

Each call returns ``(losses (B,), metrics)``. In the metrics, ``rewards/*`` are on each
method's own scale, while ``logps/chosen`` and ``logps/rejected`` are always the summed
log-probs from ``out`` (for KTO: of the desirable and the undesirable completions), so those
two compare across methods.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

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


def _check_dpo_args(beta: float, loss_type: str, label_smoothing: float) -> None:
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
    _check_dpo_args(beta, loss_type, label_smoothing)
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
# Unpaired: KTO
# ---------------------------------------------------------------------------------------


def kto_reference_point(
    policy_kl_logps: Tensor,  # (B,) summed log pi(y_{i-1} | x_i), mismatched pairs
    ref_kl_logps: Tensor,  # (B,) the same rows under the reference
    reduce_mean: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """KTO's reference point z0: the batch estimate of KL(pi || pi_ref), detached, >= 0.

    KTO: https://arxiv.org/abs/2402.01306 , §4.1: z0 is estimated on mismatched pairs
    (x_i, y_j), j != i, from the same batch, so it reflects the policy's drift in general
    rather than on the rows whose reward it offsets; no gradient flows through it. As in TRL's
    KTOTrainer, the per-rank mean of log pi - log pi_ref is averaged across ranks first and
    then clamped at 0 (a sampled KL estimate can come out negative).

    Args:
        policy_kl_logps: policy log-probs of the mismatched rows, ``(B,)``.
        ref_kl_logps: reference log-probs of the same rows, ``(B,)``.
        reduce_mean: mean-all-reduce across data-parallel ranks, or None on one process.
            Default None.

    Returns:
        ``()`` the reference point, detached, clamped at 0.
    """
    z0 = (policy_kl_logps - ref_kl_logps).mean().detach()  # ()
    if reduce_mean is not None:
        z0 = reduce_mean(z0)
    return z0.clamp(min=0)


def kto_loss(
    policy_logps: Tensor,  # (B,) summed log pi(y_i | x_i)
    ref_logps: Tensor,  # (B,) summed log pi_ref(y_i | x_i)
    label: Tensor,  # (B,) bool, True = desirable
    reference_point: Tensor,  # () z0 from `kto_reference_point`
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO loss per row: ``w(y) * (1 - v(x, y))``, the sigmoid value of Eq. (7) of KTO.

    KTO: https://arxiv.org/abs/2402.01306 . With r = log pi(y|x) - log pi_ref(y|x):

    - desirable:   ``w_D * (1 - sigmoid(beta * (r - z0)))``
    - undesirable: ``w_U * (1 - sigmoid(beta * (z0 - r)))``

    the form of TRL's ``KTOTrainer`` (``loss_type="kto"``), whose batch loss is the mean of
    these over all B rows; 1 - sigmoid(u) is evaluated as sigmoid(-u).

    Args:
        policy_logps: policy log-probs of the completions, summed over tokens, ``(B,)``.
        ref_logps: reference log-probs of the same completions, ``(B,)``; detached here.
        label: True where the completion is desirable, ``(B,)``.
        reference_point: z0, ``()``; detached here.
        beta: inverse temperature of the implicit reward; > 0.
        desirable_weight: w_D, >= 0. Default 1.
        undesirable_weight: w_U, >= 0. Default 1.

    Returns:
        ``(losses, rewards)``, each ``(B,)``; rewards are ``beta * r``, detached.
    """
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    label = label.to(device=policy_logps.device, dtype=torch.bool)
    logratio = policy_logps - ref_logps.detach()  # (B,)
    u = beta * (logratio - reference_point.detach())  # (B,) the value's argument, desirable
    sign = torch.where(label, 1.0, -1.0).to(u.dtype)  # undesirable rows use z0 - r
    # full_like: python weights enter in u's dtype (torch.where on scalars would go via fp32)
    weight = torch.where(label, torch.full_like(u, desirable_weight),
                         torch.full_like(u, undesirable_weight))
    losses = weight * torch.sigmoid(-sign * u)  # (B,)
    return losses, beta * logratio.detach()


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

# Which log-probs each DPO loss_type consumes. IPO uses length-normalized (mean) log-probs
# for policy and reference: the paper writes sequence-level pi(y|x), but its authors advised
# averaging so that tau does not scale with response length (HF blog "Preference Tuning LLMs
# with Direct Preference Optimization Methods", 2024; TRL PR #1265; torchtune issue #1291).
_DPO_USES_MEAN = {"sigmoid": False, "hinge": False, "ipo": True}


def _mean_logps(out: dict[str, Tensor], key: str, side: str) -> Tensor:
    return out[key] / out[f"{side}_n_tokens"].clamp(min=1.0)


def _check_weight(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


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
        _check_dpo_args(self.beta, self.loss_type, self.label_smoothing)
        _check_weight("nll_weight", self.nll_weight)

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
        _check_weight("gamma", self.gamma)
        _check_weight("nll_weight", self.nll_weight)

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


@dataclass(frozen=True)
class KTO:
    """KTO objective on unpaired, labelled completions (desirable or not), TRL's sigmoid form.

    KTO: https://arxiv.org/abs/2402.01306 (Eq. 7); the form and defaults of TRL's
    ``KTOTrainer`` with ``loss_type="kto"``. A batch holds B rows (x_i, y_i, label_i) and,
    as its second block, the B mismatched rows (x_i, y_{i-1}) (responses rotated by one within
    the batch, as TRL builds them) from which the reference point z0 is estimated
    (`kto_reference_point`). Reads ``completion_logps``, ``ref_completion_logps``,
    ``kl_logps``, ``ref_kl_logps`` (summed, ``(B,)``), ``label`` ``(B,)`` and, when present,
    ``reduce_mean``.

    Metrics: ``rewards/chosen`` and ``rewards/rejected`` are the mean reward beta * r of the
    desirable and of the undesirable rows, ``rewards/margins`` their difference (TRL's
    definitions; a key is left out when its rows are absent from the batch), ``kl`` is z0 and
    ``rewards/accuracies`` the share of rows on their label's side of the reference point
    (desirable: r > z0, undesirable: r < z0), a label accuracy, not DPO's pairwise one.

    Args:
        beta: inverse temperature of the implicit reward. Default 0.1 (TRL's).
        desirable_weight: w_D, the weight of desirable rows' losses. Default 1.
        undesirable_weight: w_U, the weight of undesirable rows' losses. Default 1. With
            n_D desirable and n_U undesirable rows the paper advises
            w_D n_D / (w_U n_U) in [1, 4/3] (`check_balance`).
    """

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    needs_reference = True
    uses_mean_logps = False
    row_names: ClassVar[tuple[str, str]] = ("completion", "kl")
    unpaired: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}")
        _check_weight("desirable_weight", self.desirable_weight)
        _check_weight("undesirable_weight", self.undesirable_weight)
        if self.desirable_weight == 0 and self.undesirable_weight == 0:
            raise ValueError("desirable_weight and undesirable_weight are both 0: KTO would "
                             "train nothing; set at least one > 0")

    def check_batch(self, batch_size: int, precompute_ref_logps: bool) -> None:
        """Raise, naming the config key and the fix, where the reference point cannot work."""
        if batch_size < 2:
            # TRL raises the same: with one row, its mismatched pair is itself, so z0 would be
            # the row's own log-ratio and the loss would cancel the reward it should push.
            raise ValueError(f"train.batch_size={batch_size}: KTO estimates its reference point "
                             f"from the batch's other rows, so it needs at least 2 rows per "
                             f"micro-batch. Set train.batch_size >= 2")
        if precompute_ref_logps:
            raise ValueError("train.precompute_ref_logps=true cannot serve KTO: its mismatched "
                             "rows (x_i, y_{i-1}) depend on which rows share a batch, so their "
                             "reference log-probs are computed in the step. Set "
                             "train.precompute_ref_logps=false")

    def check_balance(self, n_desirable: int, n_undesirable: int) -> str | None:
        """Warn when the class weights do not offset an imbalance of the labels, as TRL does.

        TRL's KTOTrainer rule, from Eq. (8) of the paper (w_D n_D / (w_U n_U) in [1, 4/3]):
        with unequal counts, recommend EITHER desirable_weight in
        [n_U w_U / n_D, 1.33 n_U w_U / n_D] OR undesirable_weight in
        [n_D w_D / (1.33 n_U), n_D w_D / n_U] (bounds rounded to 2 decimals), and warn (not
        raise) when neither weight is in its range. Returns the warning, or None.
        """
        n_d, n_u = max(int(n_desirable), 1), max(int(n_undesirable), 1)
        if n_d == n_u:
            return None
        dw, uw = self.desirable_weight, self.undesirable_weight
        d_lo, d_hi = round(n_u * uw / n_d, 2), round(n_u * uw / n_d * 1.33, 2)
        u_lo, u_hi = round(n_d * dw / n_u / 1.33, 2), round(n_d * dw / n_u, 2)
        if d_lo <= dw <= d_hi or u_lo <= uw <= u_hi:
            return None
        message = (f"KTO: the training data has {n_d} desirable and {n_u} undesirable rows, and "
                   f"the weights desirable_weight={dw:g}, undesirable_weight={uw:g} do not "
                   f"offset the imbalance (the KTO paper's Eq. 8 wants w_D*n_D / (w_U*n_U) in "
                   f"[1, 4/3]). Set EITHER objectives.kto.desirable_weight in [{d_lo}, {d_hi}] "
                   f"OR objectives.kto.undesirable_weight in [{u_lo}, {u_hi}] (not both)")
        log.warning(message)
        return message

    def __call__(self, out: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Per-row losses ``(B,)`` and the batch-mean metrics dict."""
        z0 = kto_reference_point(out["kl_logps"], out["ref_kl_logps"], out.get("reduce_mean"))
        label = out["label"].to(device=out["completion_logps"].device, dtype=torch.bool)
        losses, rewards = kto_loss(out["completion_logps"], out["ref_completion_logps"], label,
                                   z0, self.beta, self.desirable_weight, self.undesirable_weight)
        # metrics in float64 whatever the step's dtype; one device sync for all of them
        rewards, z0 = rewards.double(), z0.detach().double()
        logps = out["completion_logps"].detach().double()
        sign = torch.where(label, 1.0, -1.0).double()
        # on the label's side of the reference point, in reward units: beta * (r - z0)
        right = (sign * (rewards - self.beta * z0) > 0).double()
        d, u = label.double(), (~label).double()
        sums = torch.stack([(rewards * d).sum(), (logps * d).sum(), (rewards * u).sum(),
                            (logps * u).sum(), d.sum(), u.sum(), right.mean(), z0])
        rc, lc, rr, lr, n_d, n_u, accuracy, kl = sums.tolist()
        metrics = {"rewards/accuracies": accuracy, "kl": kl}
        if n_d:
            metrics.update({"rewards/chosen": rc / n_d, "logps/chosen": lc / n_d})
        if n_u:
            metrics.update({"rewards/rejected": rr / n_u, "logps/rejected": lr / n_u})
        if n_d and n_u:
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses, metrics
