"""The rollout manager: samples the policy for the rollout constraints and turns the samples
into their estimates.

`RolloutManager` owns the rollout constraints: every ``every`` optimizer steps it samples a
fresh subset of each prompt set (`pdalign.policy.sampling.generate`; constraints naming the
same prompt file share one rollout), scores the costs once, and in between reuses the samples
with clipped importance weights. It also watches each constraint's signal: a rollout whose
samples all cost the same gives the score-function surrogate zero gradient (`signal_stats`, one
warning when it persists).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from pdalign.contract.base import Constraint, ConstraintEstimate, StopLogps
from pdalign.contract.rollout import RolloutConstraint, importance_weights
from pdalign.policy.logprobs import sequence_logps
from pdalign.policy.sampling import Rollout, eos_token_ids, generate
from pdalign.runfiles.metrics import signal_key

Tensor = torch.Tensor
log = logging.getLogger("pdalign")

# The config key RolloutManager's max_new_tokens comes from (pdalign.training.build.build_rollouts), named
# in its no-signal warning.
BUDGET_KEY = "train.rollout.max_new_tokens"
# Consecutive fresh rollouts without cost spread before the one warning. One or two flat
# rollouts happen by chance for a rare binary cost on a few prompts ((1 - p)^8 = 0.43 for p = 0.1
# and 8 samples); three in a row (0.08) at the default rollout_every=4 is 12 steps of a zero
# gradient, early enough to act on in a 24-step study and rare for a cost that moves.
NO_SIGNAL_AFTER = 3
# Costs are float32 (rounding ~6e-8 relative): a spread below 1e-6 of the largest |cost| is a
# batched scorer's rounding, not a difference the surrogate can follow.
SPREAD_RTOL = 1e-6


def no_spread(spread: float, scale: float) -> bool:
    """True when a rollout's cost spread (max - min) is nil against the costs' scale (the
    largest |cost|): its score-function surrogate mean(w (c - b) log pi) has no gradient."""
    return spread <= SPREAD_RTOL * abs(scale)


# (model, input_ids, attention_mask, labels[, stop_ids=]) -> SequenceLogps
LogpsFn = Callable[..., Any]


def _default_logps_fn(model, input_ids, attention_mask, labels, **kwargs):

    return sequence_logps(model, input_ids, attention_mask, labels, **kwargs)


class RolloutManager:
    """Samples the policy for the rollout constraints and turns the samples into estimates.

    Constraints whose prompt file is the same share one rollout: generated once, scored by
    each. Every ``every`` steps (and on the first call) each prompt set gets a fresh random
    subset of ``prompts_per_rollout`` prompts; on the steps between, the same samples are
    re-scored under the current policy and importance-weighted (clipped) against the log-probs
    of their first scoring. Costs are computed once, when the samples are drawn. A rollout's
    costs enter each constraint's running baseline when the rollout is retired, so the baseline
    a sample is scored against never contains that sample's own cost.

    Per optimizer step the trainer calls:

    1. ``maybe_sample(model, step)`` once, before the micro-batches;
    2. ``rows(device)`` -> {input_ids, attention_mask, labels} (M, T): the rows to append to
       the forward (the same rows for every micro-batch of the step);
    3. ``estimates(logps, stop_logps=...)`` -> {name: ConstraintEstimate}, with ``logps`` (M,)
       the summed response log-probs of those rows from that forward (differentiable) and,
       when ``needs_stop_logps``, that forward's per-position stop log-probs of the rows
       (`pdalign.policy.logprobs.sequence_logps` with ``stop_ids=manager.stop_ids``).

    ``step_estimates(model, step)`` does all three with its own forward.

    Args:
        constraints: constraints (a list or a name -> constraint mapping); those whose
            `sampled_prompts` is None (batch constraints) are ignored here.
        tokenizer: the policy's tokenizer.
        every: steps between fresh rollouts; 1 = fresh samples every step (no reuse).
        prompts_per_rollout: prompts drawn (without replacement) per prompt set per rollout;
            a set smaller than this is used whole.
        max_new_tokens, temperature, top_p: sampling, see `generate`.
        batch_size: prompts per ``generate`` call.
        is_clip: importance weights of reused samples are clipped to [1/is_clip, is_clip].
        seed: seeds prompt subsets and generation (give each data-parallel rank its own).
        no_signal_after: warn once when a constraint's costs have had no spread (every sample
            the same cost) for this many consecutive fresh rollouts; 0 = never. Default
            `NO_SIGNAL_AFTER` = 3. `signal_stats` reports the count either way.
    """

    def __init__(self, constraints: Iterable[Constraint] | Mapping[str, Constraint], tokenizer,
                 *, every: int = 1, prompts_per_rollout: int = 8, max_new_tokens: int = 48,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
                 is_clip: float = 2.0, seed: int = 0, no_signal_after: int = NO_SIGNAL_AFTER):
        if isinstance(constraints, Mapping):
            constraints = constraints.values()
        if every < 1 or prompts_per_rollout < 1:
            raise ValueError(f"rollout every and prompts_per_rollout must be >= 1, got {every} "
                             f"and {prompts_per_rollout}")
        if not is_clip > 1.0:
            raise ValueError(f"rollout is_clip must be > 1, got {is_clip}")
        if no_signal_after < 0:
            raise ValueError(f"rollout no_signal_after must be >= 0 (0 = never warn), got "
                             f"{no_signal_after}")
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else tokenizer.eos_token_id
        self.every, self.prompts_per_rollout = int(every), int(prompts_per_rollout)
        self.gen_kwargs = {"max_new_tokens": int(max_new_tokens),
                           "temperature": float(temperature), "top_p": float(top_p),
                           "batch_size": int(batch_size)}
        self.is_clip, self.seed = float(is_clip), int(seed)
        self.no_signal_after = int(no_signal_after)
        by_path: dict[Path, list[RolloutConstraint]] = {}
        for c in constraints:
            if (path := c.sampled_prompts()) is not None:
                by_path.setdefault(path, []).append(c)
        # group key: the constraints' names joined, stable across machines (paths are not)
        self.groups = {"+".join(c.name for c in group): group for group in by_path.values()}
        self.rollouts: dict[str, Rollout] = {}
        self.rng = np.random.default_rng(self.seed)
        self._rows: dict[str, Tensor] | None = None  # rows() cache, rebuilt after sampling
        # per constraint: consecutive fresh rollouts without cost spread, and their costs (the
        # last no_signal_after of them, for the warning)
        self.flat_rollouts = {c.name: 0 for c in self.constraints}
        self._flat_costs: dict[str, list[float]] = {c.name: [] for c in self.constraints}
        # the token ids that end a response (generation's EOS ids), set by `maybe_sample`
        self.stop_ids: list[int] = []

    @property
    def constraints(self) -> list[RolloutConstraint]:
        return [c for group in self.groups.values() for c in group]

    def __bool__(self) -> bool:
        return bool(self.groups)

    @property
    def needs_stop_logps(self) -> bool:
        """True when some constraint's estimate reads the samples' per-position stop log-probs:
        the scoring forward then computes them (`pdalign.policy.logprobs.sequence_logps` stop_ids)."""
        return any(c.needs_stop_logps for c in self.constraints)

    # ---- sampling ---------------------------------------------------------------------------

    def _sample(self, model, group: list[RolloutConstraint], prompts: list[str], seed: int,
                step: int) -> Rollout:
        rollout = generate(model, self.tokenizer, prompts, seed=seed, **self.gen_kwargs)
        rollout.step = step
        for c in group:
            cost = torch.as_tensor(c.cost(rollout.prompts, rollout.responses,
                                          rollout.response_lengths))
            cost = cost.detach().to(device="cpu", dtype=torch.float32)
            if cost.shape != (len(rollout),) or not torch.isfinite(cost).all():
                raise ValueError(f"{type(c).__name__}.cost for constraints.{c.name} must return "
                                 f"{len(rollout)} finite values, got shape {tuple(cost.shape)}")
            rollout.costs[c.name] = cost
        return rollout

    @property
    def needs_calibration(self) -> bool:
        return any(c.needs_calibration for c in self.constraints)

    def calibrate(self, model) -> dict[str, float]:
        """Sample the reference policy on every prompt of the sets whose constraints need it
        and call their `calibrate` (Length's relative mode sets epsilon here).

        Call once before training, before reading any epsilon, with the reference (e.g. inside
        ``pdalign.policy.models.reference_mode``); a no-op when nothing needs calibration. What
        calibration measured (Length's reference length) is in `state_dict`, so a resumed run
        skips it. Returns {name: epsilon} of the constraints calibrated.
        """
        done = {}
        for group in self.groups.values():
            targets = [c for c in group if c.needs_calibration]
            if not targets:
                continue
            rollout = self._sample(model, targets, group[0].prompts, seed=self.seed, step=0)
            for c in targets:
                c.calibrate(rollout.costs[c.name])
                done[c.name] = c.epsilon
        return done

    def maybe_sample(self, model, step: int, device: torch.device | str | None = None) -> bool:
        """Draw fresh samples for every prompt set whose rollout is ``every`` steps old (or
        missing); score their costs. Returns True if anything was sampled.

        Args:
            model: the policy (switched to eval for sampling, then restored).
            step: the optimizer step.
            device: where `rows` keeps its cached rows; default the model's device.
        """
        self.stop_ids = sorted(eos_token_ids(model, self.tokenizer))  # what `generate` stops on
        uncalibrated = [c.name for c in self.constraints if c.needs_calibration]
        if uncalibrated:
            raise RuntimeError(f"constraints {uncalibrated} set epsilon from a reference rollout: "
                               f"call RolloutManager.calibrate(reference_model) before training")
        sampled = False
        for key, group in self.groups.items():
            old = self.rollouts.get(key)
            if old is not None and step - old.step < self.every:
                continue
            if old is not None:  # retire: its costs enter the baseline after their use
                for c in group:
                    c.update_baseline(old.costs[c.name])
            prompts = group[0].prompts
            k = min(self.prompts_per_rollout, len(prompts))
            idx = self.rng.choice(len(prompts), size=k, replace=False)
            seed = int(self.rng.integers(2**31 - 1))
            self.rollouts[key] = self._sample(model, group, [prompts[i] for i in idx], seed, step)
            self._watch_signal(group, self.rollouts[key])
            sampled = True
        if sampled or self._rows is None:
            self._rows = self.rows(device or next(model.parameters()).device, cached=False)
        return sampled

    # ---- signal ------------------------------------------------------------------------------

    def _watch_signal(self, group: list[RolloutConstraint], rollout: Rollout) -> None:
        """Count consecutive fresh rollouts whose costs have no spread, per constraint; warn
        once when a count reaches ``no_signal_after`` (again only after spread returns and
        goes again)."""
        for c in group:
            costs = rollout.costs[c.name]  # (N,)
            if not no_spread(float(costs.max() - costs.min()), float(costs.abs().max())):
                self.flat_rollouts[c.name], self._flat_costs[c.name] = 0, []
                continue
            self.flat_rollouts[c.name] += 1
            n = self.flat_rollouts[c.name]
            self._flat_costs[c.name] = (self._flat_costs[c.name] + [float(costs[0])])[
                -max(self.no_signal_after, 1):]
            if n == self.no_signal_after and c.silent_when_flat:
                values = [f"{round(v, 6)!r}" for v in self._flat_costs[c.name]]
                cost = (f"costs {values[0]}" if len(set(values)) == 1 else
                        f"costs the same ({', '.join(values)} in turn)")
                log.warning(
                    "constraint %s has no signal: every sample of the last %d rollouts %s, so "
                    "its score-function surrogate has zero gradient; use a pair or opener "
                    "constraint, a dense estimator where the constraint has one (length: "
                    "constraints.<name>.estimator=stop), or widen the generation budget (%s=%d; "
                    "%.0f%% of the last rollout's samples reached it)", c.name, n, cost, BUDGET_KEY,
                    self.gen_kwargs["max_new_tokens"], 100 * self._at_budget(rollout))

    def _at_budget(self, rollout: Rollout) -> float:
        """Share of the rollout's responses that used the whole generation budget: length
        (EOS counted) == max_new_tokens, whether cut there or ending with an EOS on the last
        slot; either way the Length cost sits at its cap."""
        budget = self.gen_kwargs["max_new_tokens"]
        return float((rollout.response_lengths >= budget).float().mean())

    def signal_stats(self) -> dict[str, float]:
        """Per rollout constraint, on the current samples (the trainer logs these each step):

        - ``signal/<c>/spread``: max - min of their costs (0 = the surrogate has no gradient);
        - ``signal/<c>/at_budget``: share of them at the generation budget (see `_at_budget`);
        - ``signal/<c>/flat_rollouts``: consecutive fresh rollouts with no spread, this one
          included (`no_spread`); the warning fires when it reaches ``no_signal_after``;
        - ``signal/<c>/silent_when_flat``: 1 when such rollouts leave the constraint's surrogate
          without gradient (the constraint's ``silent_when_flat``), 0 for a dense surrogate
          (Length's stop estimator), which gets no warning and is not reported as no signal.

        {} before the first `maybe_sample`. On data-parallel ranks each rank has its own.
        """
        out: dict[str, float] = {}
        for key, group in self.groups.items():
            rollout = self.rollouts.get(key)
            if rollout is None:
                continue
            at_budget = self._at_budget(rollout)
            for c in group:
                costs = rollout.costs[c.name]  # (N,)
                out[signal_key(c.name, "spread")] = float(costs.max() - costs.min())
                out[signal_key(c.name, "at_budget")] = at_budget
                out[signal_key(c.name, "flat_rollouts")] = float(self.flat_rollouts[c.name])
                out[signal_key(c.name, "silent_when_flat")] = float(c.silent_when_flat)
        return out

    def rows(self, device: torch.device | str | None = None, *, cached: bool = True
             ) -> dict[str, Tensor] | None:
        """The current samples as rows to score: {input_ids, attention_mask, labels}, each
        (M, T), all prompt sets concatenated in group order and right-padded to one width; None
        without rollout constraints or before the first `maybe_sample`."""
        if not self.rollouts:
            return None
        if cached and self._rows is not None:
            return {k: v.to(device) for k, v in self._rows.items()} if device else self._rows
        order = [self.rollouts[k] for k in self.groups if k in self.rollouts]
        width = max(r.input_ids.shape[1] for r in order)

        def cat(name: str, value: int) -> Tensor:
            return torch.cat([torch.nn.functional.pad(getattr(r, name),
                                                      (0, width - r.input_ids.shape[1]),
                                                      value=value) for r in order]).to(device)

        return {"input_ids": cat("input_ids", self.pad_id),
                "attention_mask": cat("attention_mask", 0), "labels": cat("labels", -100)}

    def estimates(self, logps: Tensor, step: int | None = None,
                  stop_logps: Tensor | None = None) -> dict[str, ConstraintEstimate]:
        """{name: ConstraintEstimate} for every rollout constraint, from the rows' log-probs.

        Args:
            logps: (M,) summed response log-probs of `rows` under the current policy,
                differentiable, in `rows` order.
            step: the optimizer step (informational; the samples' own step decides reuse).
            stop_logps: (M, R) the rows' per-position log pi(stop | x, y_<s) from the same
                forward (`pdalign.policy.logprobs.SequenceLogps.stop_logps`, ``stop_ids`` =
                `stop_ids`); required when `needs_stop_logps`, handed as `StopLogps` to the
                constraints that need it.
        The first scoring of a rollout records its ``old_logps`` (weights 1 on that step).
        Call it once per micro-batch with that micro-batch's forward: each call returns a full
        estimate, so sum the surrogates into a loss that is averaged over micro-batches.
        """
        total = sum(len(self.rollouts[key]) for key in self.groups)
        if logps.shape != (total,):
            raise ValueError(f"estimates got {logps.shape[0]} log-probs for {total} rollout rows")
        if self.needs_stop_logps and (stop_logps is None or stop_logps.shape[0] != total
                                      or not self.stop_ids):
            need = [c.name for c in self.constraints if c.needs_stop_logps]
            raise ValueError(f"constraints {need} need the rollout rows' stop log-probs: pass "
                             f"stop_logps ({total} rows) from sequence_logps(..., "
                             f"stop_ids=manager.stop_ids)")
        result, start = {}, 0
        for key, group in self.groups.items():
            rollout = self.rollouts[key]
            lp = logps[start:start + len(rollout)]  # (N,)
            stops = None if stop_logps is None else self._stops(
                rollout, stop_logps[start:start + len(rollout)])
            start += len(rollout)
            if rollout.old_logps is None:
                rollout.old_logps = lp.detach().float().cpu()
            weights = importance_weights(lp, rollout.old_logps.to(lp.device), self.is_clip)
            for c in group:
                extra = {"stops": stops} if c.needs_stop_logps else {}
                result[c.name] = c.estimate(rollout.costs[c.name], lp, weights, **extra)
        return result

    def _stops(self, rollout: Rollout, stop_logps: Tensor) -> StopLogps:
        """The rollout's `StopLogps`: its (N, R) stop log-probs, lengths, and which responses
        ended on a stop token (the last label of each row, in `stop_ids`)."""
        lengths = rollout.response_lengths.to(stop_logps.device)  # (N,)
        labels = rollout.labels.to(stop_logps.device)  # (N, T)
        last = (labels != -100).long().cumsum(1).argmax(1)  # column of each row's last label
        last_token = labels.gather(1, last[:, None]).squeeze(1)  # (N,)
        ids = torch.tensor(self.stop_ids, dtype=last_token.dtype, device=last_token.device)
        stopped = torch.isin(last_token, ids) & (lengths > 0)
        return StopLogps(logps=stop_logps, lengths=lengths, stopped=stopped)

    def step_estimates(self, model, step: int, logps_fn: LogpsFn | None = None
                       ) -> dict[str, ConstraintEstimate]:
        """`maybe_sample`, `rows` and `estimates` with a forward of their own ({} if no
        rollout constraints).

        Args:
            model: the policy, in the mode the trainer keeps it (sampling switches to eval).
            step: the optimizer step.
            logps_fn: (model, input_ids, attention_mask, labels) -> SequenceLogps; default
                `pdalign.policy.logprobs.sequence_logps`. When `needs_stop_logps` it is also passed
                ``stop_ids=`` and must return ``stop_logps``.
        """
        if not self.groups:
            return {}
        self.maybe_sample(model, step)
        rows = self.rows(next(model.parameters()).device)
        stop = {"stop_ids": self.stop_ids} if self.needs_stop_logps else {}
        out = (logps_fn or _default_logps_fn)(model, rows["input_ids"], rows["attention_mask"],
                                              rows["labels"], **stop)
        return self.estimates(out.logps, step, out.stop_logps if stop else None)

    # ---- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """RNG, each rollout constraint's state (baseline; Length's reference length), the
        current samples and the no-signal counts.

        The samples (a few hundred KB of token ids, costs and old log-probs) are kept so a
        resumed run reuses them exactly as the uninterrupted run would have.
        """
        return {"rng": self.rng.bit_generator.state,
                "constraints": {c.name: c.state_dict() for c in self.constraints},
                "rollouts": {k: r.state_dict() for k, r in self.rollouts.items()},
                "signal": {c.name: {"flat_rollouts": self.flat_rollouts[c.name],
                                    "flat_costs": list(self._flat_costs[c.name])}
                           for c in self.constraints}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; constraints or prompt groups absent from ``state`` start fresh (as do the
        no-signal counts of checkpoints written before they existed)."""
        self.rng.bit_generator.state = state["rng"]
        for c in self.constraints:
            if c.name in state["constraints"]:
                c.load_state_dict(state["constraints"][c.name])
        signal = state.get("signal") or {}
        for c in self.constraints:
            saved = signal.get(c.name) or {}
            self.flat_rollouts[c.name] = int(saved.get("flat_rollouts", 0))
            self._flat_costs[c.name] = [float(v) for v in saved.get("flat_costs", [])]
        self.rollouts = {k: Rollout(**r) for k, r in state["rollouts"].items()
                         if k in self.groups}
        self._rows = None
