"""The pair kind: a constraint moved by a constraint pair set (a wanted and a bounded answer per
prompt), exact and differentiable on a batch, and judged on policy samples."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from pdalign.contract.base import Constraint, ConstraintEstimate, StepView
from pdalign.contract.prompts import load_prompts, resolve_pairs, resolve_prompts
from pdalign.data.features import collate, tokenize_rows
from pdalign.data.preference import load_preference_rows
from pdalign.policy.logprobs import sequence_logps
from pdalign.policy.models import eval_mode
from pdalign.policy.precision import autocast
from pdalign.policy.sampling import generate

Tensor = torch.Tensor
log = logging.getLogger(__name__)


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
                # packed like the training rows (trainer._micro_batch): the same path, so at
                # the start, when the policy is the reference, the reward gap is 0 to float
                # rounding (unpacked, it left -4e-6 in tests/test_fixed_seed.py's run)
                out = sequence_logps(model, *(batch[k].to(policy.device) for k in
                                              ("input_ids", "attention_mask", "labels")),
                                     pack=True)
                k = len(part)
                ref.append(torch.stack([out.logps[:k], out.logps[k:]], dim=1).float().cpu())
        self.ref_logps = torch.cat(ref)  # (P, 2)

    def _with_own_answers(self, policy, seed: int) -> list:
        """The pair rows with the ``own_answers`` side replaced by the reference policy's own
        samples, where ``cost`` agrees with the side (1 for a bounded, 0 for a wanted answer)."""
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


class SeededBatches:
    """Batches of indices 0..n-1: a seeded permutation per epoch, ``size`` at a time, resumable
    exactly (`state_dict` holds the RNG, the epoch's order and the position)."""

    def __init__(self, n: int, size: int, seed: int):
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
