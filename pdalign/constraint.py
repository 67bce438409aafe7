"""The constraint contract and the score-function surrogate shared by every rollout constraint.

A constraint bounds a quantity of the policy, g(pi) <= epsilon, and produces for the current
policy (a) a detached estimate g_hat and (b) a differentiable surrogate whose gradient
estimates grad g. The trainer adds lambda * (surrogate - epsilon) to the loss and steps lambda
with g_hat. Two kinds:

- `BatchConstraint` reads the training forward over the preference batch (KL budget).
- `RolloutConstraint` scores samples y ~ pi(.|x) on its own prompt set with a per-sample cost
  c(x, y); `score_function_estimate` turns costs and log pi(y|x) into g_hat and the
  surrogate (REINFORCE with a running-mean baseline, Williams 1992,
  https://doi.org/10.1007/BF00992696; truncated importance weights for reused samples,
  Ionides 2008, https://doi.org/10.1198/106186008X320456).

A user constraint subclasses one of the two and is selected by ``_target_`` in a YAML file
under ``conf/constraints/``; nothing else changes. The trainer, the rollout manager and the
evaluation never test a constraint's kind: they ask the constraint what it needs
(`Constraint.sampled_prompts`, ``needs_kl``, ``reads_pairs``, ``needs_stop_logps``) and for its
step estimate (`Constraint.step_estimate`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

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
        batch: the training forward's `pdalign.logprobs.SequenceLogps` over the preference rows
            [chosen ; rejected] (2B,), with ``kl`` when some constraint ``needs_kl``.
        rollout: {name: estimate} of every sampled constraint, from this step's forward over
            the rollout rows (`pdalign.rollout.RolloutManager.estimates`); empty without any.
        rows: {name: `SequenceLogps`} of the rows a constraint asked the step to score
            (`Constraint.rows`), under the current policy, differentiable.
    """

    batch: Any
    rollout: Mapping[str, ConstraintEstimate] = field(default_factory=dict)
    rows: Mapping[str, Any] = field(default_factory=dict)


# ---- prompt sets ------------------------------------------------------------------------------

def bundled_prompts_dir() -> Path:
    """The prompt sets shipped in the wheel (``constraints/prompts`` in the source tree)."""
    return Path(str(resources.files("pdalign.constraints").joinpath("prompts")))


def bundled_prompt_sets() -> list[str]:
    return sorted(p.stem for p in bundled_prompts_dir().glob("*.jsonl"))


def resolve_prompts(source: str | Path, field_name: str = "prompts") -> Path:
    """Path of a prompt set: an existing file, else a bundled set name (``adversarial``).

    Raises FileNotFoundError naming ``field_name``, the paths tried and the bundled sets.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path
    bundled = bundled_prompts_dir() / (path.name if path.suffix else f"{path.name}.jsonl")
    if len(path.parts) == 1 and bundled.is_file():
        return bundled
    raise FileNotFoundError(
        f"{field_name}={str(source)!r}: no such file (tried {path.resolve()} and {bundled}). "
        f"Give a JSONL file with a 'prompt' field, a CSV file with a 'prompt' column, or a "
        f"bundled set: {', '.join(bundled_prompt_sets())}."
    )


def load_prompts(source: str | Path, field_name: str = "prompts") -> list[str]:
    """Prompts from a bundled set name or a user JSONL (``prompt`` field) / CSV (``prompt`` column).

    Args:
        source: a path, or the name of a bundled set (see `bundled_prompt_sets`).
        field_name: the config key named in error messages, e.g. ``constraints.refusal.prompts``.
    """
    path = resolve_prompts(source, field_name)
    where = f"{field_name}={str(source)!r} ({path})"
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "prompt" not in (reader.fieldnames or []):
                raise ValueError(f"{where}: the CSV has no 'prompt' column "
                                 f"(columns: {reader.fieldnames})")
            rows = [(i + 2, row["prompt"]) for i, row in enumerate(reader)]
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: line {lineno} is not JSON ({err.msg})") from err
            if not isinstance(record, dict) or "prompt" not in record:
                raise ValueError(f"{where}: line {lineno} has no 'prompt' field")
            rows.append((lineno, record["prompt"]))
    else:
        raise ValueError(f"{where}: expected a .jsonl or .csv file")
    for lineno, prompt in rows:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: line {lineno} has an empty or non-text prompt")
    if not rows:
        raise ValueError(f"{where}: the file has no prompts")
    return [prompt for _, prompt in rows]


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
            every constraint (see `pdalign.dual`). Default 1.
    """

    epsilon_range: ClassVar[tuple[float, float]] = (-math.inf, math.inf)  # closed interval
    epsilon_low_open: ClassVar[bool] = False  # True: epsilon must be > the low end
    epsilon_unit: ClassVar[str] = ""
    # How far below epsilon training holds g (``constraints.<name>.margin``, set by
    # `pdalign.build.build_constraints`): the dual step and the loss read epsilon - margin, the
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
        on policy samples, `pdalign.evaluate`); None when it is judged on pairs only."""
        return self.sampled_prompts()

    def bind(self, policy, seed: int = 0) -> None:
        """Called once the policy exists, before training (``policy``: `pdalign.build.Policy`).
        Default: nothing. A pair constraint tokenizes its pairs and scores the reference here."""

    # k: rows() are k blocks of M/k rows whose i-th rows share a prompt (block j, row i at
    # j * M/k + i: [chosen ; rejected] for k = 2), so the forward may encode each prompt once
    # (`pdalign.logprobs.response_states`); None: the rows share nothing
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


class RolloutConstraint(Constraint):
    """A constraint on samples of the policy on its own prompt set, with a per-sample cost.

    Constraints that name the same prompt file share one rollout (`pdalign.rollout`).

    Args:
        prompts: a bundled prompt set name or a JSONL/CSV path; loaded (and checked) here,
            before any model loads.
        baseline_momentum: m in b <- m*b + (1-m)*mean(c), applied with each rollout's costs
            once that rollout is retired; higher is smoother but lags a moving policy.
            Default 0.9. Until the first update, a rollout is scored against its own mean.
    """

    # What the held-out certificate (`pdalign.evaluate`) may assume about c(x, y); training
    # does not read these. Declared binary costs get the exact Clopper-Pearson bound, a declared
    # range the finite-sample bounded-mean bound; a constraint declaring neither gets
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
    # reported as "no signal" (`pdalign.rollout.RolloutManager.signal_stats`, `pdalign.report`).
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


class PairConstraint(Constraint):
    """A constraint moved by a constraint pair set and judged on policy samples.

    Each pair holds a prompt, the answer the constraint wants (``chosen``: a refusal on a
    harmful request, a helpful answer on a benign look-alike) and the one it bounds
    (``rejected``). g is the rate at which the policy prefers the bounded answer, relaxed by a
    sigmoid of a reward gap:

        g = mean_i sigmoid(beta * (r(x_i, rejected_i) - r(x_i, chosen_i)))

    exact on the batch, dense and differentiable, so it moves a policy that never samples the
    wanted behaviour, where a rollout estimate has no spread (the SafeDPO / SACPO / C-DPO idea,
    here as one term of the Lagrangian with its own multiplier). Two rewards:

    - ``reward: dpo``: the DPO implicit reward r = log pi(y|x) - log pi_ref(y|x), summed over
      the answer (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290). g is 0.5 at the
      reference and falls as the margin grows *relative to the reference*, which it can do by
      making an answer the policy never samples even less likely.
    - ``reward: simpo``: the length-normalized log-likelihood r = mean_t log pi(y_t|x, y_<t),
      no reference (as SimPO's reward, Meng et al. 2024, https://arxiv.org/abs/2405.14734).
      g < 0.5 means the policy gives the wanted answer a higher per-token likelihood than the
      bounded one in absolute terms; with the policy's own samples as the bounded side
      (``own_answers: rejected``) that is close to "the policy would rather say the wanted
      answer than what it says now", the quantity its samples are judged on.

    ``own_answers`` replaces one side of every pair by the reference policy's own sample for
    the pair's prompt (temperature 1, ``own_tokens`` new tokens, seeded), drawn once at `bind`
    and kept where the constraint's ``cost`` agrees with the side (a bounded sample must cost 1,
    a wanted one 0; the shipped answer stays otherwise). The bounded side is then what the
    policy actually says, not a template it never samples. The pairs used are in `files`.

    How the policy is judged stays separate: held-out prompts (`judged_prompts`), sampled,
    scored by ``cost`` (defined by the subclass).

    Args:
        name, epsilon, lambda_max, scale: see `Constraint`; epsilon is a rate in [0, 1].
        pairs: the pair set: a bundled name (``constraints/pairs/<name>.jsonl``) or a
            JSONL/JSON/Parquet file with ``prompt``, ``chosen`` and ``rejected`` (strings or
            message lists, validated as preference data before any model loads).
        prompts: the bundled prompt set (or file) whose held-out siblings judge it.
        beta: the reward gap's scale; larger ties g to small gaps. Default None: 0.1 for
            ``dpo`` (nats summed over an answer), 2.0 for ``simpo`` (nats per token).
        batch_size: pairs per micro-batch. Default 4.
        max_length: token budget per pair (prompt + answer). Default 256.
        nll_weight: alpha of a likelihood term on the wanted answers (as RPO adds to DPO,
            Pang et al. 2024, https://arxiv.org/abs/2404.19733): the surrogate becomes
            g + alpha * (NLL - NLL.detach()), so its value stays g and lambda * alpha weighs a
            push toward the wanted text itself. 0 (default) = the exact gradient of g.
        reward: ``dpo`` (default) or ``simpo``, see above.
        own_answers: None (default: the shipped pairs as they are), ``rejected`` or ``chosen``:
            the side replaced by the reference policy's own samples (prompts must be strings).
        own_tokens: generation budget of those samples. Default 48.
    """

    epsilon_range = (0.0, 1.0)
    epsilon_unit = "a rate"
    rows_per_prompt = 2  # [chosen ; rejected]
    rewards: ClassVar[dict[str, float]] = {"dpo": 0.1, "simpo": 2.0}  # name -> default beta

    def __init__(self, name: str, epsilon: float, pairs: str, prompts: str,
                 beta: float | None = None, batch_size: int = 4, max_length: int = 256,
                 nll_weight: float = 0.0, reward: str = "dpo", own_answers: str | None = None,
                 own_tokens: int = 48, lambda_max: float | None = None, scale: float = 1.0):
        super().__init__(name, epsilon, lambda_max, scale)
        if reward not in self.rewards:
            raise ValueError(f"{self.config_key('reward')}={reward!r} is not a reward: use one "
                             f"of {', '.join(self.rewards)}")
        if own_answers not in (None, "chosen", "rejected"):
            raise ValueError(f"{self.config_key('own_answers')}={own_answers!r}: use null (the "
                             f"shipped pairs), rejected or chosen (the side the policy's own "
                             f"samples replace)")
        beta = self.rewards[reward] if beta is None else beta
        from pdalign.data import load_preference_rows

        self.pairs_path = resolve_pairs(pairs, self.config_key("pairs"))
        self.pair_rows, _ = load_preference_rows(str(self.pairs_path),
                                                 config_key=self.config_key("pairs"))
        self.prompt_path = resolve_prompts(prompts, self.config_key("prompts")).resolve()
        load_prompts(prompts, self.config_key("prompts"))  # checked now, read when judged
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"{self.config_key('beta')}={beta!r} is out of range: it must be "
                             f"a finite number > 0 (the implicit reward's scale)")
        for key, value, low in (("batch_size", batch_size, 1), ("max_length", max_length, 2),
                                ("own_tokens", own_tokens, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{self.config_key(key)}={value!r} is out of range: it must be "
                                 f"an integer >= {low}")
        if batch_size > len(self.pair_rows):
            raise ValueError(f"{self.config_key('batch_size')}={batch_size} exceeds the "
                             f"{len(self.pair_rows)} pairs of {self.pairs_path}")
        if not (math.isfinite(nll_weight) and nll_weight >= 0):
            raise ValueError(f"{self.config_key('nll_weight')}={nll_weight!r} is out of range: "
                             f"it must be a finite number >= 0")
        self.beta, self.batch_size, self.max_length = float(beta), int(batch_size), int(max_length)
        self.nll_weight = float(nll_weight)
        self.reward, self.own_answers, self.own_tokens = reward, own_answers, int(own_tokens)
        if own_answers is not None:
            bad = next((r for r in self.pair_rows if not isinstance(r.prompt, str)), None)
            if bad is not None:
                raise ValueError(f"{self.config_key('own_answers')}={own_answers}: {bad.source} "
                                 f"{bad.location} has a message-list prompt; own answers are "
                                 f"sampled for plain string prompts only (set own_answers: "
                                 f"null, or give string prompts)")
        self.own_kept = 0  # pairs whose side is the policy's own sample (set by `bind`)
        self.features: list[dict] | None = None  # tokenized pairs, set by `bind`
        self.ref_logps: Tensor | None = None  # (P, 2): reference log-probs (chosen, rejected)
        self.pad_id = 0
        self.batches: SeededBatches | None = None  # the pair order, set by `bind`
        self._batch: list[int] = []  # the pairs of the rows handed out last

    def judged_prompts(self) -> Path:
        return self.prompt_path

    @torch.no_grad()
    def bind(self, policy, seed: int = 0) -> None:
        """Sample the policy's own answers where asked, tokenize the pairs with the policy's
        chat template and, for the ``dpo`` reward, score them once under the reference (it
        never changes during training), in the policy's dtype."""
        from pdalign.data import collate, tokenize_rows
        from pdalign.logprobs import sequence_logps
        from pdalign.models import autocast, eval_mode

        if self.own_answers is not None:
            self.pair_rows = self._with_own_answers(policy, seed)
        self.features, _ = tokenize_rows(policy.tokenizer, self.pair_rows,
                                         max_length=self.max_length,
                                         max_prompt_length=self.max_length // 2)
        self.pad_id = policy.tokenizer.pad_token_id
        self.batches = SeededBatches(len(self.features), self.batch_size, seed)
        if self.reward != "dpo":
            return
        ref = []
        with policy.reference() as model, eval_mode(model), autocast(policy.dtype,
                                                                      policy.device.type):
            for start in range(0, len(self.features), 8):
                part = self.features[start:start + 8]
                batch = collate(part, self.pad_id)
                out = sequence_logps(model, *(batch[k].to(policy.device) for k in
                                              ("input_ids", "attention_mask", "labels")))
                k = len(part)
                ref.append(torch.stack([out.logps[:k], out.logps[k:]], dim=1).float().cpu())
        self.ref_logps = torch.cat(ref)  # (P, 2)

    def _with_own_answers(self, policy, seed: int) -> list:
        """The pair rows with the ``own_answers`` side replaced by the reference policy's own
        samples, where ``cost`` agrees with the side (1 for a bounded, 0 for a wanted answer)."""
        import dataclasses

        from pdalign.models import autocast
        from pdalign.rollout import generate

        prompts = sorted({r.prompt for r in self.pair_rows})
        with policy.reference() as model, autocast(policy.dtype, policy.device.type):
            out = generate(model, policy.tokenizer, prompts, max_new_tokens=self.own_tokens,
                           temperature=1.0, top_p=1.0, batch_size=64, seed=seed)
        want = 1.0 if self.own_answers == "rejected" else 0.0
        cost = getattr(self, "cost", None)
        costs = (cost(out.prompts, out.responses, out.response_lengths).tolist()
                 if cost is not None else [want] * len(prompts))
        own = {p: r for p, r, c in zip(out.prompts, out.responses, costs)
               if r.strip() and abs(c - want) < 1e-6}
        self.own_kept = sum(r.prompt in own for r in self.pair_rows)
        log.info("%s: %d of %d pairs take the policy's own answer as %s (the other samples "
                 "disagreed with the side's cost)", self.name, self.own_kept,
                 len(self.pair_rows), self.own_answers)
        return [dataclasses.replace(r, **{self.own_answers: own[r.prompt]})
                if r.prompt in own else r for r in self.pair_rows]

    def files(self) -> dict[str, str]:
        """The pairs this constraint trains on, as JSONL, when they differ from the shipped file
        (own answers): written into the run directory for inspection."""
        if self.own_answers is None:
            return {}
        lines = [json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected},
                            ensure_ascii=False) for r in self.pair_rows]
        return {f"{self.name}_pairs.jsonl": "\n".join(lines) + "\n"}

    def rows(self, device) -> dict[str, Tensor]:
        """The next ``batch_size`` pairs of a seeded, reshuffled-every-epoch order, as rows
        [chosen ; rejected] (2k, T)."""
        from pdalign.data import collate

        if self.features is None:
            raise RuntimeError(f"constraints.{self.name}: call bind(policy) before training")
        self._batch = self.batches.next()
        batch = collate([self.features[i] for i in self._batch], self.pad_id)
        return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}

    def step_estimate(self, view: StepView) -> ConstraintEstimate:
        out = view.rows[self.name]
        k = len(self._batch)
        if self.reward == "dpo":
            ref = self.ref_logps[self._batch].to(out.logps.device)  # (k, 2)
            r_chosen = out.logps[:k].float() - ref[:, 0]  # (k,)
            r_rejected = out.logps[k:2 * k].float() - ref[:, 1]  # (k,)
        else:  # simpo: mean log-likelihood per answer token
            per_token = out.logps.float() / out.n_tokens.clamp(min=1)  # (2k,)
            r_chosen, r_rejected = per_token[:k], per_token[k:2 * k]
        g = torch.sigmoid(self.beta * (r_rejected - r_chosen)).mean()  # ()
        stats = {"reward_wanted": float(r_chosen.detach().mean()),
                 "reward_bounded": float(r_rejected.detach().mean())}
        surrogate = g
        if self.nll_weight:
            # per-token NLL of the wanted answers: value 0 in the surrogate, gradient added
            nll = (-out.logps[:k].float() / out.n_tokens[:k].clamp(min=1)).mean()  # ()
            surrogate = g + self.nll_weight * (nll - nll.detach())
            stats["nll_wanted"] = float(nll.detach())
        return ConstraintEstimate(value=g.detach(), surrogate=surrogate, stats=stats)

    def state_dict(self) -> dict[str, Any]:
        return {} if self.batches is None else self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.batches is not None and state:
            self.batches.load_state_dict(state)


class OpenerConstraint(Constraint):
    """A bound on how likely the policy is to *open* its answer with given words, exact.

    With openers o_1..o_J (strings no one of which is a token prefix of another, so the events
    "the answer starts with o_j" are disjoint), the policy's probability of opening with one of
    them is P(x) = sum_j pi(o_j | x), computed exactly by scoring each opener after the prompt.
    On a batch of the constraint's prompts:

        side wanted:   g = mean_x (1 - P(x))   (the rate of *not* opening as wanted)
        side bounded:  g = mean_x P(x)         (the rate of opening as bounded)

    An answer that opens with a refusal phrase is judged a refusal, so for refusal openers the
    wanted side's g is an upper bound on the sampled answered rate, the quantity the held-out
    certificate measures, and the bounded side's g a lower bound on the sampled refusal rate.

    The gradient of P itself is P * grad log P: it vanishes where the policy never opens that way
    (the zero base rate a sampled estimate cannot leave). So the surrogate carries the gradient
    of the per-prompt log-loss of the event instead, -log P(x) on the wanted side and
    -log(1 - P(x)) on the bounded side (unlikelihood, Welleck et al. 2019,
    https://arxiv.org/abs/1908.04319): per prompt the same direction as grad g, rescaled by
    1 / P(x) (resp. 1 / (1 - P(x))), so it stays useful from P = 0 and fades as the bound is met.
    The surrogate's value is g, so lambda * (surrogate - epsilon) reads as the Lagrangian term.

    Args:
        name, epsilon, lambda_max, scale: see `Constraint`; epsilon is a rate in [0, 1].
        prompts: the training prompt set (a bundled name or a file); its held-out siblings
            judge the constraint on samples (`judged_prompts`).
        openers: the J opening strings, tokenized without special tokens after the chat
            template's assistant header.
        side: ``wanted`` or ``bounded``, see above.
        batch_size: prompts per micro-batch (each scored with every opener: batch_size * J
            short rows). Default 8.
        whole: the openers are whole answers: the tokenizer's EOS is appended to each, so P is
            the probability of answering with exactly one of them (and stopping). A policy can
            raise the probability of an opening and then go on differently ("Sorry, I can't do
            that, but here is how ..."); with whole answers it cannot. Default False.
    """

    epsilon_range = (0.0, 1.0)
    epsilon_unit = "a rate"

    def __init__(self, name: str, epsilon: float, prompts: str, openers: Sequence[str],
                 side: str = "wanted", batch_size: int = 8, whole: bool = False,
                 lambda_max: float | None = None, scale: float = 1.0):
        super().__init__(name, epsilon, lambda_max, scale)
        if side not in ("wanted", "bounded"):
            raise ValueError(f"{self.config_key('side')}={side!r}: use wanted (g = the rate of not "
                             f"opening with one of the openers) or bounded (g = the rate of "
                             f"opening with one)")
        openers = [openers] if isinstance(openers, str) else list(openers or [])
        if not openers or not all(isinstance(o, str) and o.strip() for o in openers):
            raise ValueError(f"{self.config_key('openers')} must be a non-empty list of "
                             f"non-empty strings, got {openers!r}")
        if len(set(openers)) != len(openers):
            raise ValueError(f"{self.config_key('openers')} lists an opener twice: {openers!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.config_key('batch_size')}={batch_size!r} is out of range: "
                             f"it must be an integer >= 1")
        self.prompt_path = resolve_prompts(prompts, self.config_key("prompts")).resolve()
        self.prompts = load_prompts(prompts, self.config_key("prompts"))
        if batch_size > len(self.prompts):
            raise ValueError(f"{self.config_key('batch_size')}={batch_size} exceeds the "
                             f"{len(self.prompts)} prompts of {self.prompt_path}")
        self.openers, self.side, self.batch_size = openers, side, int(batch_size)
        self.rows_per_prompt = len(openers)  # each prompt's rows: one per opener
        self.whole = bool(whole)
        self.prompt_ids: list[list[int]] | None = None  # set by `bind`
        self.opener_ids: list[list[int]] = []
        self.pad_id = 0
        self.batches: SeededBatches | None = None
        self._batch: list[int] = []

    def judged_prompts(self) -> Path:
        return self.prompt_path

    def bind(self, policy, seed: int = 0) -> None:
        """Tokenize the prompts (chat template, assistant header) and the openers, and check the
        openers' events are disjoint in token space."""
        from pdalign.rollout import chat_prompt_ids

        tok = policy.tokenizer
        self.prompt_ids = [chat_prompt_ids(tok, p) for p in self.prompts]
        end = [tok.eos_token_id] if self.whole else []
        if self.whole and tok.eos_token_id is None:
            raise ValueError(f"{self.config_key('whole')}=true needs a tokenizer with an EOS "
                             f"token; this one has none (set whole: false)")
        self.opener_ids = [list(tok(o, add_special_tokens=False)["input_ids"]) + end
                           for o in self.openers]
        for i, a in enumerate(self.opener_ids):
            for j, b in enumerate(self.opener_ids):
                if i != j and len(a) <= len(b) and b[:len(a)] == a:
                    raise ValueError(
                        f"{self.config_key('openers')}: {self.openers[i]!r} is a token prefix "
                        f"of {self.openers[j]!r}, so their probabilities overlap; drop the "
                        f"longer one or make them differ within the first one's tokens")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.batches = SeededBatches(len(self.prompts), self.batch_size, seed)

    def rows(self, device) -> dict[str, Tensor]:
        """The next ``batch_size`` prompts of a seeded epoch order, each followed by every
        opener: (J * batch_size, T) rows, opener-major (row ``j * batch_size + i`` is prompt i
        with opener j, the block layout the shared-prompt forward reads), labels on the opener
        tokens only."""
        from pdalign.rollout import right_pad

        if self.prompt_ids is None:
            raise RuntimeError(f"constraints.{self.name}: call bind(policy) before training")
        self._batch = self.batches.next()
        rows = [(self.prompt_ids[i], o) for o in self.opener_ids for i in self._batch]
        ids, mask, labels = right_pad(rows, self.pad_id)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "labels": labels.to(device)}

    def step_estimate(self, view: StepView) -> ConstraintEstimate:
        out = view.rows[self.name]
        # (J, B) opener-major, as `rows` lays them out
        log_p = torch.logsumexp(out.logps.float().view(-1, len(self._batch)), dim=0)  # (B,)
        p = log_p.exp().clamp(max=1.0)
        if self.side == "wanted":
            g, loss = (1.0 - p).mean(), -log_p.mean()
        else:  # -log(1 - P), with 1 - P kept away from 0 in float
            g, loss = p.mean(), -torch.log1p(-p.clamp(max=1.0 - 1e-6)).mean()
        surrogate = g.detach() + (loss - loss.detach())
        return ConstraintEstimate(value=g.detach(), surrogate=surrogate,
                                  stats={"log_mass": float(log_p.detach().mean())})

    def state_dict(self) -> dict[str, Any]:
        return {} if self.batches is None else self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.batches is not None and state:
            self.batches.load_state_dict(state)


class SeededBatches:
    """Batches of indices 0..n-1: a seeded permutation per epoch, ``size`` at a time, resumable
    exactly (`state_dict` holds the RNG, the epoch's order and the position)."""

    def __init__(self, n: int, size: int, seed: int):
        import numpy as np

        self.n, self.size = int(n), int(size)
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.pos = 0

    def next(self) -> list[int]:
        if self.pos + self.size > len(self.order):
            self.order, self.pos = [int(i) for i in self.rng.permutation(self.n)], 0
        batch = self.order[self.pos:self.pos + self.size]
        self.pos += self.size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rng") is not None:
            self.rng.bit_generator.state = state["rng"]
        self.order, self.pos = list(state.get("order", [])), int(state.get("pos", 0))


def bundled_pairs_dir() -> Path:
    """The constraint pair sets shipped in the wheel (``constraints/pairs`` in the source)."""
    return Path(str(resources.files("pdalign.constraints").joinpath("pairs")))


def resolve_pairs(source: str | Path, field_name: str = "pairs") -> Path:
    """Path of a pair set: an existing file, else a bundled set name (``refusal_pairs``)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.resolve()
    bundled = bundled_pairs_dir() / (path.name if path.suffix else f"{path.name}.jsonl")
    if len(path.parts) == 1 and bundled.is_file():
        return bundled
    shipped = sorted(p.stem for p in bundled_pairs_dir().glob("*.jsonl"))
    raise FileNotFoundError(
        f"{field_name}={str(source)!r}: no such file (tried {path.resolve()} and {bundled}). "
        f"Give a JSONL/JSON/Parquet file with prompt, chosen (the wanted answer) and rejected "
        f"(the bounded one), or a bundled set: {', '.join(shipped)}.")


# ---- the estimator ----------------------------------------------------------------------------

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

