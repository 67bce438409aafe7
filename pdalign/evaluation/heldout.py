"""Held-out evaluation: preference accuracy, constraint values and their one-sided upper bounds.

`evaluate` measures a policy on what training did not see:

- preference accuracy and reward margin on the held-out pairs (``data.heldout``), by the
  objective's own implicit reward;
- each sampled constraint's value g(pi) = E[c(x, y)], y ~ pi(.|x), on held-out prompt sets:
  ``id`` (in-distribution) and ``shifted`` (distribution-shifted), see `heldout_prompt_sets`;
- each constraint that reads pairs (the KL budget) on the held-out pairs;
- each opener constraint's exact per-prompt value (1 - P(opens as wanted | x), or P(opens as
  bounded | x)) on the same prompts, in a row of its own, set ``<set>.opener``, with the
  variance-adaptive betting bound: no sampling noise, so a far tighter bound on the
  opener-judged rate. On the wanted side (refusal openers) it also bounds the sampled,
  phrase-judged answered rate, since the phrase detector judges an answer opening with any
  opener a refusal; on the bounded side it is a lower estimate of the over-refusal rate only. The sampled row stays the headline.
- with ``eval.ifeval_prompts`` > 0, IFEval's prompt- and instruction-level accuracy, strict
  and loose (`pdalign.evaluation.ifeval`): what the constraints cost in instruction following.

Each value comes with a one-sided upper confidence bound at ``confidence`` (`pdalign.evaluation.bounds`;
`cost_bound` picks which from what the constraint declares about its costs: ``cost_binary``,
``cost_range`` or ``cost_bounds(max_new_tokens)``); the certificate
(`pdalign.evaluation.certificate.certificate`) PASSes a constraint only when that bound is <= epsilon, the
statistical form of "provable output bounds".

Assumptions behind "exact": the n costs are independent given the policy (one sampled
response per prompt), and the prompts are a random sample of the population g is defined on
(the first ``prompts_per_set`` of a file are taken, so keep prompt files shuffled). Each row of
the certificate holds at its own level; all K rows hold jointly at 1 - K(1 - confidence)
(Bonferroni).

Metric keys: `pdalign.evaluation.certificate` (``eval/<c>/<s>/<field>``, one writer and one parser).
Standalone: ``pdalign-eval --run-dir RUN`` (`pdalign.cli.eval`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from pdalign.contract.base import Constraint
from pdalign.contract.opener import OpenerConstraint
from pdalign.contract.prompts import bundled_prompts_dir, load_prompts, resolve_prompts
from pdalign.data.features import collate
from pdalign.evaluation.bounds import (
    betting_mean_upper,
    check_confidence,
    clopper_pearson_upper,
    student_t_upper,
    wilson_interval,
)
from pdalign.evaluation.certificate import set_metrics
from pdalign.evaluation.ifeval import DEFAULT_MAX_NEW_TOKENS, check_ifeval_args, ifeval_metrics
from pdalign.policy.logprobs import SequenceLogps, sequence_logps
from pdalign.policy.models import dequantized_4bit_once, eval_mode
from pdalign.policy.precision import autocast
from pdalign.policy.sampling import generate
from pdalign.runfiles.metrics import OPENER_ROW, SET_ORDER, opener_set

log = logging.getLogger("pdalign")
Tensor = torch.Tensor


def cost_bound(c: Constraint, costs: Tensor, max_new_tokens: int, confidence: float
                ) -> tuple[str, float, tuple[float, float] | None]:
    """(bound name, upper bound, Wilson interval or None) for one constraint's costs (N,)."""
    n = int(costs.numel())
    mean = float(costs.mean())
    is01 = bool(((costs == 0) | (costs == 1)).all())
    bounds = c.cost_bounds(max_new_tokens) if hasattr(c, "cost_bounds") else None
    if getattr(c, "cost_binary", False) or (bounds is None and is01):
        if not is01:
            raise ValueError(f"constraints.{c.name}: {type(c).__name__} declares binary costs "
                             f"(cost_binary) but returned values other than 0 and 1")
        k = int(costs.sum())
        name = "clopper_pearson" if getattr(c, "cost_binary", False) else \
            "clopper_pearson_inferred"
        return name, clopper_pearson_upper(k, n, confidence), wilson_interval(k, n, confidence)
    if bounds is not None and all(math.isfinite(b) for b in bounds):
        lo, hi = bounds
        if float(costs.min()) < lo - 1e-6 or float(costs.max()) > hi + 1e-6:
            raise ValueError(f"constraints.{c.name}: costs fall outside the declared cost range "
                             f"[{lo:g}, {hi:g}] (observed [{float(costs.min()):g}, "
                             f"{float(costs.max()):g}]); fix {type(c).__name__}.cost_range")
        # variance-adaptive: a score near 0 on most samples (toxicity) or lengths that vary
        # little certify at a mean Chernoff-Hoeffding cannot (drift_base: a base toxicity of
        # 0.049 over 60 samples bounds at 0.110 here, at 0.148 by Chernoff-Hoeffding)
        scaled = ((costs - lo) / (hi - lo)).clamp(0.0, 1.0).numpy() if hi > lo else None
        upper = lo if scaled is None else lo + (hi - lo) * betting_mean_upper(scaled, confidence)
        return "betting", upper, None
    std = float(costs.std()) if n > 1 else 0.0
    return "student_t", student_t_upper(mean, std, n, confidence), None



# ---- prompt sets -------------------------------------------------------------------------------

def heldout_prompt_sets(constraint, override: Mapping[str, Any] | None = None
                        ) -> dict[str, tuple[Path, bool]]:
    """The prompt sets a rollout constraint is evaluated on: {set name: (file, held out?)}.

    Convention: a constraint trained on the bundled set ``X`` is evaluated on ``X_heldout``
    (set ``id``) and ``X_shifted`` (set ``shifted``), those that exist. ``override`` (from
    ``eval.sets.<name>``) maps set names to user files (JSONL ``prompt`` field or CSV
    ``prompt`` column) that replace them, or to None to drop one. Decision: with no ``id`` set
    left, the training prompts stand in as ``id``, marked not held out (``heldout`` = 0 in the
    metrics, "train prompts" in the certificate), so every run reports ``eval/<c>/id/*``.
    """
    train = Path(constraint.judged_prompts()).resolve()
    bundled = bundled_prompts_dir().resolve()
    found: dict[str, Path] = {}
    if train.parent == bundled:
        for name, suffix in (("id", "_heldout"), ("shifted", "_shifted")):
            path = bundled / f"{train.stem}{suffix}.jsonl"
            if path.is_file():
                found[name] = path
    for name, source in (override or {}).items():
        if "/" in str(name) or not str(name) or str(name).endswith(OPENER_ROW):
            raise ValueError(f"eval.sets.{constraint.name}: set name {name!r} must be non-empty, "
                             f"contain no '/' (it becomes part of a metric key) and not end in "
                             f"{OPENER_ROW!r} (the exact opener rows' suffix)")
        if source is None:
            found.pop(str(name), None)
        else:
            found[str(name)] = resolve_prompts(
                source, f"eval.sets.{constraint.name}.{name}").resolve()
    sets = {name: (path, path != train) for name, path in found.items()}
    if "id" not in sets:
        sets = {"id": (train, False), **sets}
    return dict(sorted(sets.items(), key=lambda kv: (SET_ORDER.get(kv[0], 9), kv[0])))



# ---- evaluation --------------------------------------------------------------------------------

def _score_pairs(model, features: Sequence[Mapping], pad_id: int, *, with_ref: bool,
                 with_kl: bool, ref_model, batch_size: int, device, progress: bool
                 ) -> tuple[SequenceLogps, SequenceLogps]:
    """Chosen and rejected `SequenceLogps` of every held-out pair, each field (P,) on CPU."""
    parts: dict[str, list[list[Tensor]]] = {"chosen": [], "rejected": []}
    starts = range(0, len(features), batch_size)
    for s in tqdm(starts, desc="eval pairs", leave=False, disable=not progress):
        batch = collate(features[s:s + batch_size], pad_id)
        b = batch["index"].shape[0]
        out = sequence_logps(model, batch["input_ids"].to(device),
                             batch["attention_mask"].to(device), batch["labels"].to(device),
                             with_ref=with_ref or with_kl, with_kl=with_kl, ref_model=ref_model,
                             pairs=b)
        fields = [out.logps, out.n_tokens, out.kl, out.ref_logps]  # each (2B,) or None
        for side, rows in (("chosen", slice(0, b)), ("rejected", slice(b, 2 * b))):
            parts[side].append([None if f is None else f[rows].detach().float().cpu()
                                for f in fields])

    def cat(side: str) -> SequenceLogps:
        cols = list(zip(*parts[side]))
        return SequenceLogps(*[None if col[0] is None else torch.cat(col) for col in cols])

    return cat("chosen"), cat("rejected")


def _pair_rows(chosen: SequenceLogps, rejected: SequenceLogps, idx) -> SequenceLogps:
    """Rows [chosen[idx]; rejected[idx]] as one `SequenceLogps`, the layout of a training batch."""
    def both(a, b):
        return None if a is None else torch.cat([a[idx], b[idx]])

    return SequenceLogps(both(chosen.logps, rejected.logps),
                         both(chosen.n_tokens, rejected.n_tokens),
                         both(chosen.kl, rejected.kl), both(chosen.ref_logps, rejected.ref_logps))


def _evaluate_pairs(model, tokenizer, features, objective, batch_cs, *, confidence, ref_model,
                    batch_size, device, progress) -> dict[str, float]:
    with_ref = objective is not None and bool(getattr(objective, "needs_reference", False))
    with_kl = any(c.needs_kl for c in batch_cs)
    chosen, rejected = _score_pairs(model, features, tokenizer.pad_token_id, with_ref=with_ref,
                                    with_kl=with_kl, ref_model=ref_model,
                                    batch_size=batch_size, device=device, progress=progress)
    n = len(features)
    result: dict[str, float] = {}
    if objective is not None:
        # the two row blocks by the objective's names: chosen/rejected, or KTO's completion/kl
        first, second = getattr(objective, "row_names", ("chosen", "rejected"))
        pref = {f"{first}_logps": chosen.logps, f"{second}_logps": rejected.logps,
                f"{first}_n_tokens": chosen.n_tokens, f"{second}_n_tokens": rejected.n_tokens}
        if with_ref:
            pref[f"ref_{first}_logps"], pref[f"ref_{second}_logps"] = (chosen.ref_logps,
                                                                        rejected.ref_logps)
        if "label" in features[0]:  # unpaired rows (KTO): z0 from all held-out mismatched rows
            pref["label"] = torch.tensor([bool(f["label"]) for f in features])
        _, metrics = objective(pref)  # means over all n pairs: one call on the whole set
        result.update({"eval/pref_accuracy": metrics["rewards/accuracies"],
                       "eval/reward_margin": metrics["rewards/margins"], "eval/n_pairs": float(n)})
    every = slice(None)
    for c in batch_cs:
        # value over all pairs exactly as in training (KL: token-weighted); the bound's spread
        # comes from per-pair values, pairs being the independent units.
        value = float(c.estimate(_pair_rows(chosen, rejected, every)).value)
        per_pair = torch.tensor([float(c.estimate(_pair_rows(chosen, rejected, [i])).value)
                                 for i in range(n)], dtype=torch.float64)
        std = float(per_pair.std()) if n > 1 else 0.0
        upper = student_t_upper(value, std, n, confidence)
        result.update(set_metrics(c.name, "id", value=value, upper=upper, bound="student_t",
                                  eps=float(c.epsilon), n=n, heldout=True))
    return result


@torch.no_grad()
def evaluate(model, tokenizer, constraints: Iterable[Constraint] | Mapping[str, Constraint], *,
             heldout_features: Sequence[Mapping] | None = None, objective=None,
             sets: Mapping[str, Mapping[str, Any]] | None = None, prompts_per_set: int = 40,
             max_new_tokens: int = 48, batch_size: int = 16, temperature: float = 1.0,
             top_p: float = 1.0, seed: int = 0, confidence: float = 0.95, ref_model=None,
             dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
             progress: bool = True, samples: dict | None = None, ifeval_prompts: int = 0,
             ifeval_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> dict[str, float]:
    """Held-out preference metrics and constraint values with one-sided upper bounds.

    The model runs in eval mode without gradients (its previous mode is restored); sampling is
    seeded with ``seed`` at every call, so two calls on the same weights agree exactly and
    different steps and methods see the same prompts. Prompt files shared by several
    constraints are generated once and scored by each.

    Args:
        model: the policy (a PeftModel or a plain causal LM; the unwrapped module under DDP).
        tokenizer: its tokenizer.
        constraints: built constraints (list or name -> constraint); epsilon must be set
            (Length's relative mode: calibrated).
        heldout_features: tokenized held-out pairs (`pdalign.data.features.build_dataset`'s second
            output); None or empty skips preference metrics and batch constraints.
        objective: the preference objective (`pdalign.objectives.losses`); its ``rewards/accuracies`` and
            ``rewards/margins`` over all pairs give ``eval/pref_accuracy`` and
            ``eval/reward_margin``. None skips them.
        sets: ``eval.sets``: {constraint: {set name: prompt file or None}}, see
            `heldout_prompt_sets`. Default: the bundled held-out sets.
        prompts_per_set: the first N prompts of each set. Default 40.
        max_new_tokens, temperature, top_p: sampling (see `pdalign.policy.sampling.generate`);
            temperature 1 and top_p 1 (default) sample pi itself, on which g is defined.
        batch_size: prompts per generate call and pairs per scoring forward. Default 16.
        seed: sampling seed, the same for every set and call. Default 0.
        confidence: one-sided level of every upper bound. Default 0.95.
        ref_model: frozen reference for models without an adapter (KL, DPO rewards).
        dtype: autocast dtype (`pdalign.policy.precision.resolve_dtype`); float32 = no autocast.
        device: where inputs go; default the model's device.
        progress: show tqdm bars.
        samples: when a dict, filled with what the sampled rows were measured on:
            {(constraint, set): [{"prompt", "response", "cost"}, ...]} in prompt order (the
            safety battery prints the worst of them).
        ifeval_prompts: IFEval prompts to score as well (`pdalign.evaluation.ifeval`, greedy,
            its ``eval/ifeval/*`` keys); 0 (default) = off.
        ifeval_max_new_tokens: IFEval's generation budget per response. Default 256.
    Returns a flat {metric key: float} dict (keys in the module docstring).
    """
    check_confidence(confidence)
    check_ifeval_args(ifeval_prompts, ifeval_max_new_tokens, off_ok=True)
    if prompts_per_set < 1:
        raise ValueError(f"eval.prompts_per_set must be >= 1, got {prompts_per_set}")
    constraints = list(constraints.values() if isinstance(constraints, Mapping) else constraints)
    for c in constraints:
        if c.epsilon is None:
            raise ValueError(f"constraints.{c.name}.epsilon is not set yet: calibrate it "
                             f"(RolloutManager.calibrate) before evaluating")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    sets = dict(sets or {})
    names = {c.name for c in constraints}
    for name in sets:
        if name not in names:
            log.warning("eval.sets.%s: no such constraint in this run (%s); ignored", name,
                        ", ".join(sorted(names)) or "none")
    rollout_cs = [c for c in constraints if c.judged_prompts() is not None]
    batch_cs = [c for c in constraints if c.reads_pairs]
    # every prompt file is resolved and read before anything is generated
    plan: dict[Path, list[tuple[Constraint, str, bool]]] = {}
    for c in rollout_cs:
        for set_name, (path, heldout) in heldout_prompt_sets(c, sets.get(c.name)).items():
            plan.setdefault(path, []).append((c, set_name, heldout))
    prompts = {path: load_prompts(path, f"eval prompts for {users[0][0].name}/{users[0][1]}"
                                  )[:prompts_per_set] for path, users in plan.items()}

    result: dict[str, float] = {"eval/confidence": float(confidence)}
    with eval_mode(model, ref_model), autocast(dtype, device.type), dequantized_4bit_once(model):
        if heldout_features and (objective is not None or batch_cs):
            result.update(_evaluate_pairs(
                model, tokenizer, list(heldout_features), objective, batch_cs,
                confidence=confidence, ref_model=ref_model, batch_size=batch_size,
                device=device, progress=progress))
        elif batch_cs:
            log.warning("no held-out preference pairs (data.heldout): batch constraints %s are "
                        "not evaluated", [c.name for c in batch_cs])
        for path in tqdm(plan, desc="eval prompt sets", disable=not progress):
            rollout = generate(model, tokenizer, prompts[path], max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, batch_size=batch_size,
                               seed=seed)
            for c, set_name, heldout in plan[path]:
                costs = torch.as_tensor(c.cost(rollout.prompts, rollout.responses,
                                               rollout.response_lengths))
                costs = costs.detach().to(device="cpu", dtype=torch.float64)
                if costs.shape != (len(rollout),) or not torch.isfinite(costs).all():
                    raise ValueError(f"{type(c).__name__}.cost for constraints.{c.name} must "
                                     f"return {len(rollout)} finite values, got shape "
                                     f"{tuple(costs.shape)}")
                if samples is not None:
                    samples[(c.name, set_name)] = [
                        {"prompt": p, "response": r, "cost": float(x)}
                        for p, r, x in zip(rollout.prompts, rollout.responses, costs.tolist())]
                bound, upper, wilson = cost_bound(c, costs, max_new_tokens, confidence)
                result.update(set_metrics(c.name, set_name, value=float(costs.mean()),
                                          upper=upper, bound=bound, eps=float(c.epsilon),
                                          n=len(rollout), heldout=heldout, wilson=wilson))
                if isinstance(c, OpenerConstraint):
                    exact = c.prompt_values(model, tokenizer, prompts[path], device,
                                             batch_size=batch_size)
                    result.update(set_metrics(
                        c.name, opener_set(set_name), value=float(exact.mean()),
                        upper=betting_mean_upper(exact.numpy(), confidence), bound="betting",
                        eps=float(c.epsilon), n=len(exact), heldout=heldout))
        if ifeval_prompts:
            result.update(ifeval_metrics(model, tokenizer, n=ifeval_prompts,
                                         max_new_tokens=ifeval_max_new_tokens,
                                         batch_size=batch_size, dtype=dtype))
    return result


def eval_kwargs(eval_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """`evaluate` keyword arguments from the ``eval`` config node (``every`` is the caller's)."""

    cfg = OmegaConf.to_container(eval_cfg, resolve=True) if isinstance(eval_cfg, DictConfig) \
        else dict(eval_cfg or {})
    keys = ("prompts_per_set", "max_new_tokens", "batch_size", "temperature", "top_p", "seed",
            "confidence", "ifeval_prompts", "ifeval_max_new_tokens")
    out = {k: cfg[k] for k in keys if cfg.get(k) is not None}
    out["sets"] = cfg.get("sets") or {}
    return out

