"""The opener kind: the exact probability that the policy opens (or whole-answers) with given
words, teacher-forced per prompt, dense from a zero base rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from pdalign.contract.base import Constraint, ConstraintEstimate, StepView
from pdalign.contract.pair import SeededBatches
from pdalign.contract.prompts import load_prompts, resolve_prompts
from pdalign.policy.logprobs import sequence_logps
from pdalign.policy.sampling import chat_prompt_ids, right_pad

Tensor = torch.Tensor


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
        self.tokenizer = None
        self.opener_ids: list[list[int]] = []
        self.pad_id = 0
        self.batches: SeededBatches | None = None
        self._batch: list[int] = []

    def judged_prompts(self) -> Path:
        return self.prompt_path

    def bind(self, policy, seed: int = 0) -> None:
        """Tokenize the prompts (chat template, assistant header) and the openers, and check the
        openers' events are disjoint in token space."""

        self._tokenize_openers(policy.tokenizer)
        self.prompt_ids = [chat_prompt_ids(policy.tokenizer, p) for p in self.prompts]
        self.batches = SeededBatches(len(self.prompts), self.batch_size, seed)

    def _tokenize_openers(self, tok) -> None:
        self.tokenizer = tok
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

    def rows(self, device) -> dict[str, Tensor]:
        """The next ``batch_size`` prompts of a seeded epoch order, each followed by every
        opener: (J * batch_size, T) rows, opener-major (row ``j * batch_size + i`` is prompt i
        with opener j, the block layout the shared-prompt forward reads), labels on the opener
        tokens only."""

        if self.prompt_ids is None:
            raise RuntimeError(f"constraints.{self.name}: call bind(policy) before training")
        self._batch = self.batches.next()
        return self._opener_rows([self.prompt_ids[i] for i in self._batch], device)

    def _opener_rows(self, prompt_ids: list[list[int]], device) -> dict[str, Tensor]:
        rows = [(p, o) for o in self.opener_ids for p in prompt_ids]
        ids, mask, labels = right_pad(rows, self.pad_id)
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
                "labels": labels.to(device)}

    @staticmethod
    def _log_mass(logps: Tensor, prompts: int) -> Tensor:
        """log P(x) per prompt (B,) from opener-major row log-probs (J * B,)."""
        return torch.logsumexp(logps.float().view(-1, prompts), dim=0)

    def step_estimate(self, view: StepView) -> ConstraintEstimate:
        out = view.rows[self.name]
        log_p = self._log_mass(out.logps, len(self._batch))  # (B,)
        p = log_p.exp().clamp(max=1.0)
        if self.side == "wanted":
            g, loss = (1.0 - p).mean(), -log_p.mean()
        else:  # -log(1 - P), with 1 - P kept away from 0 in float
            g, loss = p.mean(), -torch.log1p(-p.clamp(max=1.0 - 1e-6)).mean()
        surrogate = g.detach() + (loss - loss.detach())
        return ConstraintEstimate(value=g.detach(), surrogate=surrogate,
                                  stats={"log_mass": float(log_p.detach().mean())})

    @torch.no_grad()
    def prompt_values(self, model, tokenizer, prompts: Sequence[str], device,
                      batch_size: int | None = None) -> Tensor:
        """Each prompt's exact share of g, (N,) float64 on CPU, in prompt order: 1 - P(x) on the
        wanted side, P(x) on the bounded side, teacher-forced like the training rows, in
        micro-batches of ``batch_size`` prompts (default the constraint's own): the chunk's
        rows packed as one token trie, each shared prefix run once, as in training
        (`pdalign.policy.logprobs.sequence_logps` with ``pack``). Their mean is g
        on those prompts, the opener-judged rate without sampling noise; the held-out
        ``<set>.opener`` rows bound it (`pdalign.evaluation.bounds.betting_mean_upper`). The
        caller sets eval mode and autocast."""

        if self.tokenizer is not tokenizer:
            self._tokenize_openers(tokenizer)
        ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
        step = int(batch_size or self.batch_size)
        out = []
        for s in range(0, len(ids), step):
            chunk = ids[s:s + step]
            batch = self._opener_rows(chunk, device)
            logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                                   batch["labels"], pairs=len(chunk),
                                   group=self.rows_per_prompt, pack=True).logps
            out.append(self._log_mass(logps, len(chunk)).exp().clamp(max=1.0).double().cpu())
        p = torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
        return 1.0 - p if self.side == "wanted" else p

    def state_dict(self) -> dict[str, Any]:
        return {} if self.batches is None else self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.batches is not None and state:
            self.batches.load_state_dict(state)
