"""Judges and fixed candidates of ``pdalign-iterate``, named in ``conf/iterate.yaml`` by
``_target_``: a judge is any callable ``(prompts, responses) -> (N,)`` rewards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import torch

from pdalign.contract.prompts import resolve_pairs
from pdalign.policy.logprobs import sequence_logps
from pdalign.policy.models import load_model, model_source
from pdalign.policy.sampling import chat_prompt_ids, right_pad

Tensor = torch.Tensor


class LogLikelihoodJudge:
    """r(x, y) = mean per-token log-probability of the response under a fixed scorer model.

    r(x, y) = (1/|y|) sum_t log p(y_t | chat(x), y_<t), the response tokenized as its text
    plus EOS (as the training data is), summed over the response tokens only. What it
    measures: how typical the response is, as an answer to x, for the scorer model: fluent,
    on-topic text that the scorer would itself write scores high; broken, off-topic or
    unfinished text scores low. Limits: it is not a helpfulness, correctness or safety
    judgement; it prefers short, generic and repetitive answers (a stock phrase is likely);
    a response cut at the generation budget loses its EOS term only; and with the policy's
    own base as the scorer it rewards staying close to that base (a KL-like pull). Bring a
    reward model for real use (any callable ``(prompts, responses) -> (N,)``).

    The scorer loads on the first call, so a bad config fails before any model loads and
    a run that never scores loads nothing.

    Args:
        name_or_path: the scorer, as ``model.name_or_path`` (default in the config: the run's
            starting model, which stays fixed while the policy moves).
        tiny: `pdalign.policy.models.build_tiny` overrides when ``name_or_path`` is ``tiny``.
        batch_size: (prompt, response) pairs per forward. Default 16.
    """

    def __init__(self, name_or_path: str, tiny: Mapping | None = None, batch_size: int = 16):

        if int(batch_size) < 1:
            raise ValueError(f"iterative.judge.batch_size must be >= 1, got {batch_size}")
        model_source(str(name_or_path))  # a bad name is one clear error now, not at the first call
        self.name_or_path, self.batch_size = str(name_or_path), int(batch_size)
        self.tiny = dict(tiny) if tiny else None
        self._model = self._tokenizer = None

    def _load(self):

        if self._model is None:
            model, self._tokenizer = load_model(self.name_or_path, tiny=self.tiny)
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self._model = model.to(device).eval()
        return self._model, self._tokenizer

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """(N,) float32 rewards of N (prompt, response) pairs."""

        model, tok = self._load()
        device = next(model.parameters()).device
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        out = []
        for s in range(0, len(prompts), self.batch_size):
            rows = [(chat_prompt_ids(tok, p),
                     list(tok(r, add_special_tokens=False)["input_ids"]) + eos)
                    for p, r in zip(prompts[s:s + self.batch_size],
                                    responses[s:s + self.batch_size])]
            ids, mask, labels = right_pad(rows, tok.pad_token_id)  # each (b, T)
            lp = sequence_logps(model, ids.to(device), mask.to(device), labels.to(device))
            out.append((lp.logps / lp.n_tokens.clamp(min=1)).float().cpu())  # (b,)
        return torch.cat(out) if out else torch.zeros(0)


class FixedResponses:
    """The same responses offered as candidates for every prompt (e.g. a refusal template).

    Args:
        responses: the candidate texts.
        name: the ``source`` recorded in samples.jsonl. Default ``fixed``.
    """

    def __init__(self, responses: Sequence[str], name: str = "fixed"):
        self.responses = [str(r) for r in responses]
        if not self.responses or not all(r.strip() for r in self.responses):
            raise ValueError("iterative.candidates: FixedResponses needs non-empty responses")
        self.name = name

    def __call__(self, prompts: Sequence[str]) -> list[list[str]]:
        return [list(self.responses) for _ in prompts]


class PairAnswers:
    """One side of a pair set as a candidate for the prompts the set covers (none elsewhere):
    e.g. the bundled refusal_pairs' ``chosen`` refusals for the adversarial prompts.

    Args:
        pairs: a bundled pair set name (``refusal_pairs``) or a JSONL file with ``prompt`` and
            the ``side`` column.
        side: the column offered. Default ``chosen``.
        name: the ``source`` recorded in samples.jsonl. Default ``<pairs>:<side>``.
    """

    def __init__(self, pairs: str = "refusal_pairs", side: str = "chosen",
                 name: str | None = None):

        path = resolve_pairs(pairs, "iterative.candidates.pairs")
        self.answers: dict[str, str] = {}
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get(side), str) or not isinstance(row.get("prompt"), str):
                raise ValueError(f"iterative.candidates.pairs={pairs!r} ({path}): line {lineno} "
                                 f"has no text 'prompt' and {side!r} fields")
            self.answers.setdefault(row["prompt"], row[side])
        self.name = name or f"{Path(str(pairs)).stem}:{side}"

    def __call__(self, prompts: Sequence[str]) -> list[list[str]]:
        return [[self.answers[p]] if p in self.answers else [] for p in prompts]
