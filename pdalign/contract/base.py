"""The constraint contract: what a constraint is, what it produces, and what a step offers it.

A constraint bounds a quantity of the policy, g(pi) <= epsilon, and produces for the current
policy (a) a detached estimate g_hat and (b) a differentiable surrogate whose gradient
estimates grad g. The trainer adds lambda * (surrogate - epsilon) to the loss and steps lambda
with g_hat. Four kinds, one module each:

- `BatchConstraint` (here) reads the training forward over the preference batch (KL budget);
- `pdalign.contract.rollout.RolloutConstraint` scores samples y ~ pi(.|x) on its own prompt
  set with a per-sample cost c(x, y) and the score-function surrogate;
- `pdalign.contract.pair.PairConstraint` reads a constraint pair set (a wanted and a bounded
  answer per prompt): exact and dense on a batch;
- `pdalign.contract.opener.OpenerConstraint` takes the exact probability of opening (or
  answering) with given words, teacher-forced per prompt.

A user constraint subclasses one of them and is selected by ``_target_`` in a YAML file
under ``conf/constraints/``; nothing else changes. The trainer, the rollout manager and the
evaluation never test a constraint's kind: they ask the constraint what it needs
(`Constraint.sampled_prompts`, ``needs_kl``, ``reads_pairs``, ``needs_stop_logps``) and for its
step estimate (`Constraint.step_estimate`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch

Tensor = torch.Tensor
log = logging.getLogger(__name__)


@dataclass
class ConstraintEstimate:
    """One step's view of a constraint under the current policy.

    ``surrogate`` has the same value as ``value`` and carries the gradient estimate, so
    ``lambda * (surrogate - epsilon)`` in the loss reads as the Lagrangian term in the
    constraint's own units.
    """

    value: Tensor  # () detached g_hat
    surrogate: Tensor  # () differentiable, grad surrogate ~ grad g
    stats: dict[str, float] = field(default_factory=dict)  # optional diagnostics to log


@dataclass
class StopLogps:
    """Where N sampled responses could have stopped, and how likely the policy was to stop there
    (what a constraint with ``needs_stop_logps`` gets in `RolloutConstraint.estimate`).

    Position s (1-based) of response i is the choice of its s-th token after x, y_<s: stop (a
    stop/EOS token, giving length s) or continue. Positions 1..lengths[i] hold a sampled choice:
    every one "continue" except the last where ``stopped[i]``.
    """

    logps: Tensor  # (N, R) log pi(stop | x, y_<s) in column s - 1, differentiable; 0 past ℓ_i
    lengths: Tensor  # (N,) long: ℓ_i, response tokens incl. the stop token where one was sampled
    stopped: Tensor  # (N,) bool: the response ends with a stop token (else it was cut at the cap)


@dataclass
class StepView:
    """What one training step offers its constraints (`Constraint.step_estimate` reads it).

    Args:
        batch: the training forward's `pdalign.policy.logprobs.SequenceLogps` over the preference rows
            [chosen ; rejected] (2B,), with ``kl`` when some constraint ``needs_kl``.
        rollout: {name: estimate} of every sampled constraint, from this step's forward over
            the rollout rows (`pdalign.contract.manager.RolloutManager.estimates`); empty without any.
        rows: {name: `SequenceLogps`} of the rows a constraint asked the step to score
            (`Constraint.rows`), under the current policy, differentiable.
    """

    batch: Any
    rollout: Mapping[str, ConstraintEstimate] = field(default_factory=dict)
    rows: Mapping[str, Any] = field(default_factory=dict)


# ---- the contract -----------------------------------------------------------------------------

class Constraint:
    """A bound g(pi) <= epsilon with a name; subclass `BatchConstraint` or `RolloutConstraint`.

    Args:
        name: the key used in logs, lambda vectors and error messages (``constraints.<name>``).
        epsilon: the bound, in the constraint's unit (see ``epsilon_unit``); checked against
            ``epsilon_range``. May be None only where `calibrate` sets it.
        lambda_max: cap of this constraint's multiplier; None uses the dual config's.
        scale: the unit the dual reads this constraint's violation in, (g - eps)/scale, and of
            its primal term lambda (g - eps)/scale; finite and > 0. 1 for a rate; about
            epsilon for a quantity in tokens or nats, so one ``dual.lr`` and ``lambda_max`` fit
            every constraint (see `pdalign.training.dual`). Default 1.
    """

    epsilon_range: ClassVar[tuple[float, float]] = (-math.inf, math.inf)  # closed interval
    epsilon_low_open: ClassVar[bool] = False  # True: epsilon must be > the low end
    epsilon_unit: ClassVar[str] = ""
    # How far below epsilon training holds g (``constraints.<name>.margin``, set by
    # `pdalign.training.build.build_constraints`): the dual step and the loss read epsilon - margin, the
    # held-out certificate reads epsilon. A one-sided bound from n samples passes only when the
    # observed rate sits well under epsilon (at n = 60 and 95%, 6/60 for epsilon 0.2, 1/60 for
    # 0.1), and held-out prompts sit above the training ones; a policy trained to g = epsilon
    # fails its certificate about half the time at best.
    margin: float = 0.0

    def __init__(self, name: str, epsilon: float | None, lambda_max: float | None = None,
                 scale: float = 1.0):
        self.name = str(name)
        if epsilon is None and not self.needs_calibration:
            raise ValueError(f"constraints.{self.name}.epsilon is required"
                             + (f" ({self.epsilon_unit})" if self.epsilon_unit else ""))
        self.epsilon = None if epsilon is None else self.check_epsilon(epsilon)
        if lambda_max is not None and not (math.isfinite(lambda_max) and lambda_max > 0):
            raise ValueError(f"constraints.{self.name}.lambda_max must be a finite number > 0 "
                             f"or null (use the dual config's), got {lambda_max}")
        self.lambda_max = None if lambda_max is None else float(lambda_max)
        try:
            self.scale = float(scale)
        except (TypeError, ValueError):
            self.scale = math.nan
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"constraints.{self.name}.scale={scale!r}: the unit of the violation "
                             f"must be a finite number > 0 (1 for a rate; about epsilon for "
                             f"tokens or nats)")

    def check_epsilon(self, epsilon: float) -> float:
        lo, hi = self.epsilon_range
        value = float(epsilon)
        below = value <= lo if self.epsilon_low_open else value < lo
        if not math.isfinite(value) or below or value > hi:
            interval = (f"{'(' if self.epsilon_low_open else '['}{lo:g}, {hi:g}"
                        f"{')' if math.isinf(hi) else ']'}")
            unit = f" ({self.epsilon_unit})" if self.epsilon_unit else ""
            raise ValueError(f"constraints.{self.name}.epsilon={epsilon!r} is out of range: it "
                             f"must be in {interval}{unit}")
        return value

    @property
    def train_epsilon(self) -> float:
        """The bound training holds, epsilon - margin (epsilon must be set)."""
        return float(self.epsilon) - self.margin

    def set_margin(self, margin: Any) -> None:
        """Validate and set ``margin``: a finite number >= 0 leaving epsilon - margin in range
        (checked when epsilon is set; an epsilon calibration sets later, Length's relative
        mode, is not checked against the margin)."""
        try:
            value = float(margin)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"constraints.{self.name}.margin={margin!r} must be a finite number "
                             f">= 0 (training holds epsilon - margin; 0 = train at epsilon)")
        if self.epsilon is not None:
            try:
                self.check_epsilon(float(self.epsilon) - value)
            except ValueError as err:
                raise ValueError(f"constraints.{self.name}.margin={margin!r} leaves training "
                                 f"bound epsilon - margin = {float(self.epsilon) - value:g} out "
                                 f"of range ({str(err).split('out of range: ')[-1]}); lower "
                                 f"the margin") from None
        self.margin = value

    # What the constraint needs, asked by the trainer, the rollout manager and the evaluation.
    needs_kl: ClassVar[bool] = False  # the training forward computes KL(pi || pi_ref) per row
    reads_pairs: ClassVar[bool] = False  # judged on held-out preference pairs (`estimate(out)`)

    def sampled_prompts(self) -> Path | None:
        """The prompt set whose policy samples this constraint scores in training (the rollout
        manager draws them); None for a constraint that needs no samples to train."""
        return None

    def judged_prompts(self) -> Path | None:
        """The prompt set whose held-out siblings judge this constraint on samples (its ``cost``
        on policy samples, `pdalign.evaluation.heldout`); None when it is judged on pairs only."""
        return self.sampled_prompts()

    def bind(self, policy, seed: int = 0) -> None:
        """Called once the policy exists, before training (``policy``: `pdalign.training.build.Policy`).
        Default: nothing. A pair constraint tokenizes its pairs and scores the reference here."""

    # k: rows() are k blocks of M/k rows whose i-th rows share a prompt (block j, row i at
    # j * M/k + i: [chosen ; rejected] for k = 2), so the forward may encode each prompt once
    # (`pdalign.policy.logprobs.response_states`); None: the rows share nothing
    rows_per_prompt: int | None = None

    def rows(self, device) -> dict[str, Tensor] | None:
        """Rows {input_ids, attention_mask, labels} (M, T) this constraint needs scored by the
        policy in this micro-batch's forward, or None (default). Their log-probs come back in
        ``StepView.rows[name]`` in the same order (see ``rows_per_prompt``)."""
        return None

    def step_estimate(self, view: StepView) -> ConstraintEstimate:
        """This training step's g_hat and differentiable surrogate (the surrogate's value is
        g_hat), from what the step offers (`StepView`)."""
        raise NotImplementedError

    def files(self) -> dict[str, str]:
        """{file name: text} the trainer writes under ``<run dir>/constraints/`` after `bind`,
        for inspection (a pair constraint's pairs built from the policy's samples). Default:
        none."""
        return {}

    @property
    def needs_calibration(self) -> bool:
        """True while epsilon still waits for a reference rollout (Length's relative mode)."""
        return False

    def config_key(self, key: str) -> str:
        """The config path of one of this constraint's keys, for error messages."""
        return f"constraints.{self.name}.{key}"

    def state_dict(self) -> dict[str, Any]:
        # epsilon is config, not state: a resumed run takes the (possibly edited) config's.
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, epsilon={self.epsilon})"


class BatchConstraint(Constraint):
    """A constraint read off the training forward over the concatenated chosen‖rejected batch."""

    reads_pairs: ClassVar[bool] = True

    def estimate(self, out) -> ConstraintEstimate:
        """g_hat and surrogate from the training forward's `SequenceLogps` (rows: (2B,))."""
        raise NotImplementedError

    def step_estimate(self, view: StepView) -> ConstraintEstimate:
        return self.estimate(view.batch)



