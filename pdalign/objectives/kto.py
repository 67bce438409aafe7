"""KTO (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306) on unpaired, labelled
completions: the reference point z0, the per-row loss, and the `KTO` objective a config names.

A KTO batch's two row blocks are ``("completion", "kl")``: it reads ``completion_*`` and
``kl_*`` keys, plus ``label`` ``(B,)`` bool and, under several processes, ``reduce_mean`` (a
callable mean-all-reduce across ranks). ``logps/chosen`` and ``logps/rejected`` in its metrics
are the summed log-probs of the desirable and the undesirable completions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from pdalign.objectives.losses import check_weight

Tensor = torch.Tensor
log = logging.getLogger("pdalign")
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
        check_weight("desirable_weight", self.desirable_weight)
        check_weight("undesirable_weight", self.undesirable_weight)
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
