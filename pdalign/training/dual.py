"""DualState: the Lagrange multipliers lambda, one per constraint, and their update rules.

The dual step of the loop: given the (all-reduced) constraint estimates g_hat and bounds
epsilon, move lambda toward enforcing g <= epsilon. Everything is float64 on CPU and the
arithmetic is a fixed sequence of elementwise ops, so ranks fed the same g_hat hold
bit-identical lambda.

Two rules, chosen by ``dual.rule``:

- ``gradient``: projected dual ascent, lambda <- clip(lambda + lr*(g - eps)/scale, 0, lambda_max).
- ``pid``: the PID Lagrangian of Stooke, Achiam, Abbeel 2020
  (https://arxiv.org/abs/2007.03964, Algorithm 2), in the form of their released code
  (rlpyt ``cppo_pid``; also omnisafe ``PIDLagrangian``): with Delta = g - eps,
  I <- max(0, I + Ki*Delta); P = EMA_p(Delta); C = EMA_d(g); D = max(0, C - C_prev);
  lambda = clip(Kp*P + I + Kd*D, 0, lambda_max).

Each constraint reads its violation in units of its own ``scale`` (default 1): both rules see
g/scale and eps/scale, and the primal term is lambda*(g - eps)/scale (`weights` = lambda/scale).
A rate's full violation is 1; a length in tokens violates by tens, so a scale of ~eps puts it on
the same footing (the same lr moves both alike, and lambda_max caps the same relative weight).
The constraint set {g/scale <= eps/scale} is the one {g <= eps}; only the dual's step and cap
change meaning.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Sequence

import torch

Tensor = torch.Tensor
_F64 = torch.float64


def _per_constraint(value: float | Sequence[float], m: int, key: str) -> Tensor:
    """Broadcast a scalar or a length-m list to a float64 (m,) tensor, or name the key."""
    # Hydra hands lists over as ListConfig, which torch.as_tensor does not take: go via floats.
    values = [float(value)] if isinstance(value, (int, float)) else [float(x) for x in value]
    t = torch.tensor(values, dtype=_F64)
    if t.numel() == 1:
        t = t.expand(m).clone()
    if t.numel() != m:
        raise ValueError(f"{key} has {t.numel()} entries but there are {m} constraints")
    return t


def _check_unit_interval(value: float, key: str) -> None:
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"{key} must be in [0, 1) (0 turns the smoothing off), got {value}")


def _check_gain(value: float, key: str) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{key} must be a finite number >= 0, got {value}")


class DualState:
    """Lagrange multipliers for m constraints g_i <= eps_i, with gradient or PID updates.

    Gradient ascent: https://arxiv.org/abs/1805.11074 (RCPO) and safe-rlhf's ppo_lag;
    PID Lagrangian: https://arxiv.org/abs/2007.03964.

    Args:
        names: constraint names, one per entry of lambda, in the order g_hat arrives.
        lr: step size eta of the ``gradient`` rule. Default 0.05.
        lambda_init: starting lambda, scalar or one per constraint, in [0, lambda_max].
            For ``pid`` it seeds the integral. Default 0.
        lambda_max: upper clip, scalar or one per constraint; finite and >= 0. A finite cap
            bounds how far a badly estimated constraint can swamp the preference loss.
            Default 10.
        rule: ``"gradient"`` or ``"pid"``. Default ``"gradient"``.
        kp: PID proportional gain. Default 0.
        ki: PID integral gain (the integral alone is the gradient rule with lr = ki).
            Default 0.05.
        kd: PID derivative gain, on the positive part of the smoothed cost's rise. Default 0.
        p_ema: EMA factor of the PID proportional term's Delta, in [0, 1). Default 0 (off).
        d_ema: EMA factor of the cost the PID derivative differences, in [0, 1).
            Default 0 (off).
        ema: EMA factor applied to g_hat before either rule, in [0, 1). Default 0 (off).
        window: number of updates `stalled` looks back over. Default 100.
        scale: unit of each constraint's violation, scalar or one per constraint, finite
            and > 0: the rules read (g - eps)/scale and `weights` is lambda/scale. Default 1.
    """

    def __init__(
        self,
        names: Sequence[str],
        lr: float = 0.05,
        lambda_init: float | Sequence[float] = 0.0,
        lambda_max: float | Sequence[float] = 10.0,
        rule: str = "gradient",
        kp: float = 0.0,
        ki: float = 0.05,
        kd: float = 0.0,
        p_ema: float = 0.0,
        d_ema: float = 0.0,
        ema: float = 0.0,
        window: int = 100,
        scale: float | Sequence[float] = 1.0,
    ) -> None:
        self.names = list(names)
        m = len(self.names)
        if len(set(self.names)) != m:
            raise ValueError(f"constraint names must be unique, got {self.names}")
        if rule not in _RULES:
            raise ValueError(f"dual.rule={rule!r} is not known; use one of {sorted(_RULES)}")
        self.lambda_max = _per_constraint(lambda_max, m, "dual.lambda_max")
        if not (torch.isfinite(self.lambda_max).all() and (self.lambda_max >= 0).all()):
            raise ValueError(
                f"dual.lambda_max must be finite and >= 0 for every constraint, got "
                f"{self.lambda_max.tolist()}; an unbounded lambda lets one noisy constraint "
                "swamp the preference loss, so set a cap (e.g. 10)"
            )
        self.scale = _per_constraint(scale, m, "constraints.<name>.scale")
        if not (torch.isfinite(self.scale).all() and (self.scale > 0).all()):
            bad = [n for n, v in zip(self.names, self.scale.tolist())
                   if not (math.isfinite(v) and v > 0)]
            raise ValueError(f"constraints.{bad[0]}.scale must be a finite number > 0 (the unit "
                             f"of its violation; 1 for a rate), got {self.scale.tolist()}")
        lam0 = _per_constraint(lambda_init, m, "dual.lambda_init")
        in_range = (lam0 >= 0) & (lam0 <= self.lambda_max)  # False for NaN too
        if not in_range.all():
            raise ValueError(
                f"dual.lambda_init must lie in [0, dual.lambda_max], got {lam0.tolist()} "
                f"with lambda_max {self.lambda_max.tolist()}"
            )
        for key, value in (("dual.lr", lr), ("dual.kp", kp), ("dual.ki", ki), ("dual.kd", kd)):
            _check_gain(value, key)
        for key, value in (("dual.p_ema", p_ema), ("dual.d_ema", d_ema), ("dual.ema", ema)):
            _check_unit_interval(value, key)
        if int(window) < 1:
            raise ValueError(f"dual.window must be >= 1, got {window}")
        self.rule, self.lr, self.kp, self.ki, self.kd = rule, lr, kp, ki, kd
        self.p_ema, self.d_ema, self.ema, self.window = p_ema, d_ema, ema, int(window)

        self.lam = lam0  # (m,) float64
        self.step = 0  # accepted updates
        self.n_skipped = 0  # updates refused for a non-finite g_hat
        self.last_skipped = False
        zeros = torch.zeros(m, dtype=_F64)
        self.g_ema = zeros.clone()  # smoothed g_hat (valid once step > 0)
        # PID state. The integral starts at lambda_init so the controller starts there, as in
        # the released code.
        self.integral = lam0.clone()
        self.p_delta = zeros.clone()  # EMA of Delta for the P term
        self.d_cost = zeros.clone()  # EMA of g for the D term
        self.d_cost_prev = zeros.clone()
        self.history: deque[Tensor] = deque([lam0.clone()], maxlen=self.window + 1)

    # -- the update ---------------------------------------------------------------------

    def update(
        self,
        g_hat: Tensor,  # (m,) constraint estimates, already all-reduced across ranks
        epsilon: Tensor,  # (m,) bounds
    ) -> Tensor:  # (m,) float64 CPU, the new lambda
        """One dual step; returns the new lambda (a copy).

        A non-finite entry in g_hat (a scorer returned NaN, an empty rollout batch) skips
        the whole step: lambda and every internal state stay as they were,
        ``last_skipped`` is set and ``n_skipped`` counts it, so the trainer can log and
        carry on. lambda is never NaN. A non-finite or mis-shaped epsilon is a config
        error and raises ValueError.

        Args:
            g_hat: detached estimate of each g_i at the current policy, ``(m,)``, any
                dtype/device; converted to float64 CPU.
            epsilon: bound of each constraint, ``(m,)``.
        """
        m = len(self.names)
        g = torch.as_tensor(g_hat).detach().to(device="cpu", dtype=_F64).flatten()
        eps = torch.as_tensor(epsilon).detach().to(device="cpu", dtype=_F64).flatten()
        if g.numel() != m:
            raise ValueError(f"g_hat has {g.numel()} entries but there are {m} constraints")
        if eps.numel() != m or not torch.isfinite(eps).all():
            raise ValueError(
                f"epsilon must hold {m} finite bounds (constraints.<name>.epsilon), "
                f"got {eps.tolist()}"
            )
        if not torch.isfinite(g).all():
            self.last_skipped = True
            self.n_skipped += 1
            return self.lam.clone()
        self.last_skipped = False

        first = self.step == 0
        g, eps = g / self.scale, eps / self.scale  # each violation in its constraint's unit
        # Every EMA is seeded with its first observation rather than with 0 (the released
        # PID code starts them at 0, which damps the first P terms and, since C_prev = 0,
        # fires a one-step derivative kick of Kd*g on the first update).
        self.g_ema = g.clone() if first else self.ema * self.g_ema + (1.0 - self.ema) * g
        self.lam = _RULES[self.rule](self, self.g_ema, eps, first)
        self.step += 1
        self.history.append(self.lam.clone())
        return self.lam.clone()

    def _gradient_rule(self, g: Tensor, eps: Tensor, first: bool) -> Tensor:
        return self._clip(self.lam + self.lr * (g - eps))

    def _pid_rule(self, g: Tensor, eps: Tensor, first: bool) -> Tensor:
        delta = g - eps
        # Anti-windup: the integral is also capped at lambda_max. The paper and its code cap
        # only the output, so a long violation at the cap winds I far above lambda_max and
        # lambda stays pinned for many steps after the constraint is met.
        self.integral = self._clip(self.integral + self.ki * delta)
        if first:
            self.p_delta = delta.clone()
            self.d_cost = g.clone()
            self.d_cost_prev = g.clone()  # no derivative on the first update
        else:
            self.p_delta = self.p_ema * self.p_delta + (1.0 - self.p_ema) * delta
            self.d_cost = self.d_ema * self.d_cost + (1.0 - self.d_ema) * g
        # Only a rising cost pushes lambda up; a falling one does not pull it down (paper).
        derivative = torch.clamp(self.d_cost - self.d_cost_prev, min=0.0)
        self.d_cost_prev = self.d_cost.clone()
        return self._clip(self.kp * self.p_delta + self.integral + self.kd * derivative)

    def _clip(self, lam: Tensor) -> Tensor:
        return torch.minimum(torch.clamp(lam, min=0.0), self.lambda_max)

    @property
    def weights(self) -> Tensor:
        """(m,) float64: the weight of each constraint's own g in the primal objective,
        lambda/scale (lambda itself when every scale is 1)."""
        return self.lam / self.scale

    # -- health -------------------------------------------------------------------------

    def stalled(self) -> list[int]:
        """Indices of constraints whose lambda sat at lambda_max at each of the last ``window``
        updates, or rose at every one of them (the bound may be unreachable, or lr too small).

        Nothing is reported before ``window`` updates: a lambda that touches its cap once (a
        large first violation in the constraint's own unit does that at any lr) and falls back
        is not stalled. Constraints with lambda_max = 0 (switched off) are never reported.
        """
        if len(self.history) < self.window + 1:
            return []
        hist = torch.stack(list(self.history))  # (window + 1, m)
        at_max = ((hist[1:] >= self.lambda_max).all(dim=0)) & (self.lambda_max > 0)
        rising = (hist[1:] > hist[:-1]).all(dim=0)
        return torch.nonzero(at_max | rising).flatten().tolist()

    def as_dict(self) -> dict[str, float]:
        """lambda by constraint name, as python floats for logging: ``{"lambda/<name>": x}``."""
        return {f"lambda/{n}": v for n, v in zip(self.names, self.lam.tolist())}

    # -- checkpointing ------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the updates read: lambda, integral, EMAs, previous cost, step,
        skip count and the history window. Hyperparameters come from the config."""
        return {
            "names": list(self.names),
            "lam": self.lam.clone(),
            "step": self.step,
            "n_skipped": self.n_skipped,
            "g_ema": self.g_ema.clone(),
            "integral": self.integral.clone(),
            "p_delta": self.p_delta.clone(),
            "d_cost": self.d_cost.clone(),
            "d_cost_prev": self.d_cost_prev.clone(),
            "history": torch.stack(list(self.history)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from `state_dict`; the constraint names must match, in order."""
        if list(state["names"]) != self.names:
            raise ValueError(
                f"dual state was saved for constraints {list(state['names'])} but this run "
                f"has {self.names}; resume with the same constraint list"
            )
        self.lam = state["lam"].to(_F64).clone()
        self.step = int(state["step"])
        self.n_skipped = int(state["n_skipped"])
        self.last_skipped = False
        for key in ("g_ema", "integral", "p_delta", "d_cost", "d_cost_prev"):
            setattr(self, key, state[key].to(_F64).clone())
        self.history = deque(
            (row.clone() for row in state["history"].to(_F64)), maxlen=self.window + 1
        )


_RULES = {"gradient": DualState._gradient_rule, "pid": DualState._pid_rule}
