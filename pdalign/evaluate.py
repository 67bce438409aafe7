"""Held-out evaluation: preference accuracy, constraint values and their one-sided upper bounds.

`evaluate` measures a policy on what training did not see:

- preference accuracy and reward margin on the held-out pairs (``data.heldout``), by the
  objective's own implicit reward;
- each rollout constraint's value g(pi) = E[c(x, y)], y ~ pi(.|x), on held-out prompt sets:
  ``id`` (in-distribution) and ``shifted`` (distribution-shifted), see `heldout_prompt_sets`;
- each batch constraint (the KL budget) on the held-out pairs.

Each value comes with a one-sided upper confidence bound at ``confidence``; the certificate
(`certificate`, `render_certificate`) PASSes a constraint only when that bound is <= epsilon,
the statistical form of "provable output bounds". Which bound:

=============================  ===================================================  ========
name                           used for                                             level
=============================  ===================================================  ========
``clopper_pearson``            binary costs (refusal, over-refusal): a rate         exact
``clopper_pearson_inferred``   a constraint declaring no cost type whose costs      exact if
                               were all 0/1                                         binary
``kl_hoeffding``               costs in a declared range [0, B] (toxicity B = 1,    exact
                               length B = max_new_tokens)
``student_t``                  costs with no known range; batch constraints (KL)    approx.
=============================  ===================================================  ========

A constraint declares its cost type with class attributes of `RolloutConstraint`
(``cost_binary``, ``cost_range``, or the method ``cost_bounds(max_new_tokens)``).

Assumptions behind "exact": the n costs are independent given the policy (one sampled
response per prompt), and the prompts are a random sample of the population g is defined on
(the first ``prompts_per_set`` of a file are taken, so keep prompt files shuffled). Each row of
the certificate holds at its own level; all K rows hold jointly at 1 - K(1 - confidence)
(Bonferroni).

Metric keys (a flat dict; `pdalign.report` reads them):
``eval/pref_accuracy``, ``eval/reward_margin``, ``eval/n_pairs``, ``eval/confidence`` and, per
constraint c and prompt set s, ``eval/<c>/<s>/{value, upper, eps, violation, pass, n, heldout,
exact}``, ``eval/<c>/<s>/bound/<name>`` (= 1.0, names the bound) and, for binary costs,
``eval/<c>/<s>/{lower_wilson, upper_wilson}`` (a two-sided Wilson interval, for display).

Standalone: ``pdalign-eval --run-dir RUN`` (see `main`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from pdalign.atomic import atomic_open
from pdalign.constraint import Constraint, bundled_prompts_dir, load_prompts, resolve_prompts
from pdalign.data import collate
from pdalign.logprobs import SequenceLogps, sequence_logps
from pdalign.models import autocast
from pdalign.rollout import generate

log = logging.getLogger("pdalign")
Tensor = torch.Tensor

BOUNDS: dict[str, str] = {
    "clopper_pearson": "exact one-sided binomial bound (Clopper & Pearson 1934)",
    "clopper_pearson_inferred": "Clopper-Pearson; the constraint declares no cost type and every "
                                "observed cost was 0 or 1: exact if the cost is binary",
    "kl_hoeffding": "finite-sample bound on a mean of costs in [0, B], Chernoff-Hoeffding in "
                    "relative-entropy form (Hoeffding 1963, Thm 1)",
    "student_t": "APPROXIMATE one-sided Student-t on per-sample (per-pair) values: no "
                 "finite-sample guarantee",
}
EXACT_BOUNDS = {"clopper_pearson", "clopper_pearson_inferred", "kl_hoeffding"}
SET_ORDER = {"id": 0, "shifted": 1}


# ---- statistics: pure functions ----------------------------------------------------------------

def _check_counts(k: int, n: int) -> None:
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval of a binomial rate k/n, for display.

    Wilson 1927, https://doi.org/10.1080/01621459.1927.10502953. With p = k/n and z the
    (1 + confidence)/2 normal quantile:
        centre = (p + z^2/(2n)) / (1 + z^2/n)
        half   = z / (1 + z^2/n) * sqrt(p(1 - p)/n + z^2/(4n^2))
    Args:
        k: successes (here: samples with cost 1); n: trials. n = 0 gives (0, 1).
        confidence: two-sided level. Default 0.95.
    """
    from scipy.stats import norm

    _check_counts(k, n)
    _check_confidence(confidence)
    if n == 0:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2))
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """Exact one-sided upper confidence bound of a binomial rate (Clopper & Pearson 1934).

    https://doi.org/10.1093/biomet/26.4.404. The largest p with P(Bin(n, p) <= k) >= 1 - conf,
    i.e. the ``conf`` quantile of Beta(k + 1, n - k); closed forms: k = n gives 1, k = 0 gives
    1 - (1 - conf)^(1/n). n = 0 gives 1 (nothing observed).

    Args:
        k: samples with cost 1; n: samples.
        confidence: one-sided level. Default 0.95.
    """
    from scipy.stats import beta

    _check_counts(k, n)
    _check_confidence(confidence)
    if k == n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def _bernoulli_kl(p: float, q: float) -> float:
    """kl(p || q) between Bernoulli(p) and Bernoulli(q), with 0 log 0 = 0; q in (0, 1)."""
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


def bounded_mean_upper(mean: float, n: int, confidence: float = 0.95, low: float = 0.0,
                       high: float = 1.0) -> float:
    """Finite-sample one-sided upper confidence bound of E[X] from n independent X_i in [low, high].

    Chernoff-Hoeffding in relative-entropy form (Hoeffding 1963, Theorem 1,
    https://doi.org/10.1080/01621459.1963.10500830): for X_i in [0, 1],
    P(mean(X) <= mu - t) <= exp(-n kl(mu - t || mu)), kl the Bernoulli relative entropy. Inverted,
    with x = (mean - low)/(high - low) and delta = 1 - confidence:
        U = max{q in [x, 1] : n kl(x || q) <= ln(1/delta)},   mapped back to [low, high].
    Valid for any distribution on [low, high] (the Bernoulli is the worst case), the same
    inversion as kl-UCB (Garivier & Cappe 2011, https://arxiv.org/abs/1102.2490). By Pinsker,
    kl >= 2(x - q)^2, it is never looser than Hoeffding's additive x + sqrt(ln(1/delta)/(2n)), and
    much tighter near 0, where constraint values live: x = 0 gives 1 - delta^(1/n) (0.072 for
    n = 40 at 95 %, against 0.194). Preferred to empirical Bernstein (Maurer & Pontil 2009),
    whose 7 ln(2/delta)/(3(n - 1)) term alone is 0.22 at n = 40.

    Args:
        mean: the sample mean, in [low, high].
        n: number of samples; n = 0 gives ``high``.
        confidence: one-sided level. Default 0.95.
        low, high: the a-priori range of every X_i (toxicity [0, 1], length [0, max_new_tokens]).
    """
    _check_confidence(confidence)
    if not high > low:
        raise ValueError(f"need high > low, got [{low}, {high}]")
    x = (mean - low) / (high - low)
    if not -1e-9 <= x <= 1 + 1e-9:
        raise ValueError(f"mean {mean} is outside the cost range [{low}, {high}]")
    x = min(max(x, 0.0), 1.0)
    if n <= 0 or x >= 1.0:
        return float(high)
    budget = math.log(1.0 / (1.0 - confidence)) / n
    lo, hi = x, 1.0  # kl(x || q) rises from 0 at q = x to infinity at q = 1: bisect
    for _ in range(100):
        mid = (lo + hi) / 2
        if _bernoulli_kl(x, mid) <= budget:
            lo = mid
        else:
            hi = mid
    return float(low + hi * (high - low))


def student_t_upper(mean: float, std: float, n: int, confidence: float = 0.95) -> float:
    """APPROXIMATE one-sided upper bound mean + t_{conf, n-1} * std / sqrt(n).

    The one-sided Student-t interval: exact for normal samples only, a large-n approximation
    otherwise, with no finite-sample guarantee for skewed, unbounded costs (per-token KL). n < 2
    gives +inf.

    Args:
        mean: the estimate; std: sample standard deviation (ddof 1) of the per-unit values.
        n: independent units (samples, or preference pairs).
        confidence: one-sided level. Default 0.95.
    """
    from scipy.stats import t

    _check_confidence(confidence)
    if n < 2:
        return math.inf
    return float(mean + t.ppf(confidence, n - 1) * std / math.sqrt(n))


def _cost_bound(c: Constraint, costs: Tensor, max_new_tokens: int, confidence: float
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
        return "kl_hoeffding", bounded_mean_upper(mean, n, confidence, lo, hi), None
    std = float(costs.std()) if n > 1 else 0.0
    return "student_t", student_t_upper(mean, std, n, confidence), None


def _set_metrics(base: str, value: float, upper: float, bound: str, eps: float, n: int,
                 heldout: bool, wilson: tuple[float, float] | None = None) -> dict[str, float]:
    out = {f"{base}/value": value, f"{base}/upper": upper, f"{base}/eps": eps,
           f"{base}/violation": max(value - eps, 0.0), f"{base}/pass": float(upper <= eps),
           f"{base}/n": float(n), f"{base}/heldout": float(heldout),
           f"{base}/exact": float(bound in EXACT_BOUNDS), f"{base}/bound/{bound}": 1.0}
    if wilson is not None:
        out[f"{base}/lower_wilson"], out[f"{base}/upper_wilson"] = wilson
    return out


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
    train = Path(constraint.prompt_path).resolve()
    bundled = bundled_prompts_dir().resolve()
    found: dict[str, Path] = {}
    if train.parent == bundled:
        for name, suffix in (("id", "_heldout"), ("shifted", "_shifted")):
            path = bundled / f"{train.stem}{suffix}.jsonl"
            if path.is_file():
                found[name] = path
    for name, source in (override or {}).items():
        if "/" in str(name) or not str(name):
            raise ValueError(f"eval.sets.{constraint.name}: set name {name!r} must be non-empty "
                             f"and contain no '/' (it becomes part of a metric key)")
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

@contextmanager
def _eval_mode(*models):
    modes = [(m, m.training) for m in models if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in modes:
            m.train(was_training)


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
    with_kl = any(getattr(c, "needs_kl", False) for c in batch_cs)
    chosen, rejected = _score_pairs(model, features, tokenizer.pad_token_id, with_ref=with_ref,
                                    with_kl=with_kl, ref_model=ref_model,
                                    batch_size=batch_size, device=device, progress=progress)
    n = len(features)
    result: dict[str, float] = {}
    if objective is not None:
        pref = {"chosen_logps": chosen.logps, "rejected_logps": rejected.logps,
                "chosen_n_tokens": chosen.n_tokens, "rejected_n_tokens": rejected.n_tokens}
        if with_ref:
            pref["ref_chosen_logps"], pref["ref_rejected_logps"] = (chosen.ref_logps,
                                                                    rejected.ref_logps)
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
        result.update(_set_metrics(f"eval/{c.name}/id", value, upper, "student_t",
                                   float(c.epsilon), n, heldout=True))
    return result


@torch.no_grad()
def evaluate(model, tokenizer, constraints: Iterable[Constraint] | Mapping[str, Constraint], *,
             heldout_features: Sequence[Mapping] | None = None, objective=None,
             sets: Mapping[str, Mapping[str, Any]] | None = None, prompts_per_set: int = 40,
             max_new_tokens: int = 48, batch_size: int = 16, temperature: float = 1.0,
             top_p: float = 1.0, seed: int = 0, confidence: float = 0.95, ref_model=None,
             dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
             progress: bool = True) -> dict[str, float]:
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
        heldout_features: tokenized held-out pairs (`pdalign.data.build_dataset`'s second
            output); None or empty skips preference metrics and batch constraints.
        objective: the preference objective (`pdalign.losses`); its ``rewards/accuracies`` and
            ``rewards/margins`` over all pairs give ``eval/pref_accuracy`` and
            ``eval/reward_margin``. None skips them.
        sets: ``eval.sets``: {constraint: {set name: prompt file or None}}, see
            `heldout_prompt_sets`. Default: the bundled held-out sets.
        prompts_per_set: the first N prompts of each set. Default 40.
        max_new_tokens, temperature, top_p: sampling (see `pdalign.rollout.generate`);
            temperature 1 and top_p 1 (default) sample pi itself, on which g is defined.
        batch_size: prompts per generate call and pairs per scoring forward. Default 16.
        seed: sampling seed, the same for every set and call. Default 0.
        confidence: one-sided level of every upper bound. Default 0.95.
        ref_model: frozen reference for models without an adapter (KL, DPO rewards).
        dtype: autocast dtype (`pdalign.models.resolve_dtype`); float32 = no autocast.
        device: where inputs go; default the model's device.
        progress: show tqdm bars.
    Returns a flat {metric key: float} dict (keys in the module docstring).
    """
    _check_confidence(confidence)
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
    rollout_cs = [c for c in constraints if c.kind == "rollout"]
    batch_cs = [c for c in constraints if c.kind == "batch"]
    # every prompt file is resolved and read before anything is generated
    plan: dict[Path, list[tuple[Constraint, str, bool]]] = {}
    for c in rollout_cs:
        for set_name, (path, heldout) in heldout_prompt_sets(c, sets.get(c.name)).items():
            plan.setdefault(path, []).append((c, set_name, heldout))
    prompts = {path: load_prompts(path, f"eval prompts for {users[0][0].name}/{users[0][1]}"
                                  )[:prompts_per_set] for path, users in plan.items()}

    result: dict[str, float] = {"eval/confidence": float(confidence)}
    with _eval_mode(model, ref_model), autocast(dtype, device.type):
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
                bound, upper, wilson = _cost_bound(c, costs, max_new_tokens, confidence)
                result.update(_set_metrics(f"eval/{c.name}/{set_name}", float(costs.mean()),
                                           upper, bound, float(c.epsilon), len(rollout),
                                           heldout, wilson))
    return result


def eval_kwargs(eval_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """`evaluate` keyword arguments from the ``eval`` config node (``every`` is the caller's)."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.to_container(eval_cfg, resolve=True) if isinstance(eval_cfg, DictConfig) \
        else dict(eval_cfg or {})
    keys = ("prompts_per_set", "max_new_tokens", "batch_size", "temperature", "top_p", "seed",
            "confidence")
    out = {k: cfg[k] for k in keys if cfg.get(k) is not None}
    out["sets"] = cfg.get("sets") or {}
    return out


# ---- certificate and drift ---------------------------------------------------------------------

_VALUE_KEY = re.compile(r"^eval/([^/]+)/([^/]+)/value$")


def certificate(result: Mapping[str, float], confidence: float | None = None) -> list[dict]:
    """One row per constraint x prompt set of an `evaluate` result, id before shifted.

    Each row: constraint, set, n, estimate, upper, bound (a `BOUNDS` name), exact, epsilon,
    heldout, confidence and verdict: PASS only when the one-sided upper bound <= epsilon.

    Args:
        result: `evaluate`'s dict (or an eval record of metrics.jsonl).
        confidence: the level the bounds were computed at; default ``eval/confidence``.
    """
    conf = float(confidence if confidence is not None else result.get("eval/confidence", 0.95))
    pairs = [(m[1], m[2]) for k in result if (m := _VALUE_KEY.match(k))]
    pairs.sort(key=lambda p: (p[0], SET_ORDER.get(p[1], 9), p[1]))
    rows = []
    for c, s in pairs:
        base = f"eval/{c}/{s}"
        bound = next((k[len(base) + 7:] for k in result
                      if k.startswith(f"{base}/bound/") and result[k]), "unknown")
        upper, eps = float(result[f"{base}/upper"]), float(result[f"{base}/eps"])
        passed = bool(result.get(f"{base}/pass", float(upper <= eps)))
        rows.append({"constraint": c, "set": s, "n": int(result.get(f"{base}/n", 0)),
                     "estimate": float(result[f"{base}/value"]), "upper": upper,
                     "bound": bound, "exact": bound in EXACT_BOUNDS, "epsilon": eps,
                     "heldout": bool(result.get(f"{base}/heldout", 1.0)),
                     "confidence": conf, "verdict": "PASS" if passed else "FAIL"})
    return rows


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.4g}"


def render_certificate(rows: Sequence[Mapping], result: Mapping[str, float] | None = None) -> str:
    """The certificate as a markdown table, with the bounds used explained underneath.

    Args:
        rows: `certificate` rows.
        result: the `evaluate` dict, to add the held-out preference accuracy line; optional.
    """
    conf = rows[0]["confidence"] if rows else (result or {}).get("eval/confidence", 0.95)
    lines = [f"## Constraint certificate (one-sided {100 * conf:g}% upper bounds)", ""]
    if result and "eval/pref_accuracy" in result:
        lines += [f"Held-out preference accuracy: {result['eval/pref_accuracy']:.3f} over "
                  f"{int(result['eval/n_pairs'])} pairs (reward margin "
                  f"{result['eval/reward_margin']:.4g}).", ""]
    if not rows:
        return "\n".join(lines + ["No constraints evaluated."]) + "\n"
    lines += ["| constraint | prompts | n | estimate | upper bound | bound | ε | verdict |",
              "|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        prompts = r["set"] + ("" if r["heldout"] else " (train prompts)")
        bound = r["bound"] + ("" if r["exact"] else " †")
        lines.append(f"| {r['constraint']} | {prompts} | {r['n']} | {_fmt(r['estimate'])} | "
                     f"{_fmt(r['upper'])} | {bound} | {_fmt(r['epsilon'])} | {r['verdict']} |")
    joint = max(0.0, 1.0 - len(rows) * (1.0 - conf))
    lines += ["", "PASS: the upper bound is ≤ ε, so g(π) ≤ ε holds at the stated level for the "
              "prompt population the set samples. Each row holds on its own; all "
              f"{len(rows)} rows jointly at ≥ {100 * joint:.3g}% (Bonferroni)."]
    for name in dict.fromkeys(r["bound"] for r in rows):
        lines.append(f"- `{name}`{'' if name in EXACT_BOUNDS else ' †'}: "
                     f"{BOUNDS.get(name, 'unknown bound')}")
    if not all(r["heldout"] for r in rows):
        lines.append("- (train prompts): no held-out set exists for this constraint; its "
                     "training prompts were used, so the row is not a held-out estimate.")
    return "\n".join(lines) + "\n"


def violation_drift(records: Iterable[Mapping[str, Any]], key: str) -> dict[str, float]:
    """Final, max and trapezoid area of a held-out violation over the eval records.

    Args:
        records: metrics.jsonl records; those holding ``step`` and ``key`` are used, by step.
        key: a violation key, e.g. ``eval/refusal/id/violation`` ((value - eps)^+).
    Returns {"final", "max", "area"}: area = sum over consecutive evals of
    (v_i + v_{i+1})/2 * (step_{i+1} - step_i), in violation x steps (the constraint's unit times
    optimizer steps); 0 for a single eval point. Raises ValueError if no record has ``key``.
    """
    points = sorted((int(r["step"]), max(float(r[key]), 0.0)) for r in records
                    if r.get(key) is not None and "step" in r)
    if not points:
        raise ValueError(f"no record holds both 'step' and {key!r}")
    area = sum((v0 + v1) / 2 * (s1 - s0) for (s0, v0), (s1, v1) in zip(points, points[1:]))
    return {"final": points[-1][1], "max": max(v for _, v in points), "area": float(area)}


# ---- pdalign-eval ------------------------------------------------------------------------------

class _UsageError(Exception):
    """A bad path, config or argument: printed as one line, exit status 2."""


def _step_of(path: Path) -> int | None:
    for part in reversed(path.parts):
        if m := re.fullmatch(r"step-(\d+)", part):
            return int(m[1])
    return None


def _locate(args) -> tuple[Path, Path, Path]:
    """(checkpoint model dir, config file, run dir) from the CLI arguments, or _UsageError."""
    from pdalign.checkpoint import checkpoints

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None and not run_dir.is_dir():
        raise _UsageError(f"--run-dir {run_dir}: no such directory")
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if not ckpt.exists():
            raise _UsageError(f"--checkpoint {ckpt}: no such checkpoint (give a "
                              f"RUN/checkpoints/step-N directory, its model/ folder, or any "
                              f"peft adapter / save_pretrained model directory)")
        if (ckpt / "model").is_dir():
            ckpt = ckpt / "model"
        if not ((ckpt / "adapter_config.json").is_file() or (ckpt / "config.json").is_file()):
            raise _UsageError(f"--checkpoint {ckpt}: neither a peft adapter (adapter_config.json) "
                              f"nor a save_pretrained model (config.json)")
    elif run_dir is not None:
        found = checkpoints(run_dir)
        if not found:
            raise _UsageError(f"{run_dir / 'checkpoints'}: no complete step-N checkpoint (the "
                              f"trainer writes one at the end of a run); pass --checkpoint PATH")
        ckpt = found[-1] / "model"
    else:
        raise _UsageError("give --run-dir RUN (evaluates its newest checkpoint) or "
                          "--checkpoint PATH")
    if args.config:
        config = Path(args.config)
    elif run_dir is not None:
        config = run_dir / "config.yaml"
    else:  # a checkpoint inside a run dir: RUN/checkpoints/step-N/model
        config = next((p / "config.yaml" for p in ckpt.resolve().parents
                       if (p / "config.yaml").is_file()), ckpt / "config.yaml")
    if not config.is_file():
        raise _UsageError(f"{config}: no such config (pdalign-train writes the resolved "
                          f"config.yaml into the run dir); pass --config FILE")
    return ckpt, config, run_dir if run_dir is not None else config.parent


def _parse_prompt_overrides(items: Sequence[str], known: Iterable[str]) -> dict[str, dict]:
    """``c:s=PATH`` arguments -> {c: {s: PATH}}; every file is checked here."""
    known = set(known)
    out: dict[str, dict[str, str]] = {}
    for item in items:
        m = re.fullmatch(r"([^:=/]+):([^:=/]+)=(.+)", item)
        if not m:
            raise _UsageError(f"--prompts {item!r}: expected CONSTRAINT:SET=PATH, e.g. "
                              f"refusal:id=/data/redteam.jsonl")
        c, s, path = m[1], m[2], m[3]
        if c not in known:
            raise _UsageError(f"--prompts {item!r}: no constraint {c!r} in the run's config "
                              f"(constraints: {', '.join(sorted(known)) or 'none'})")
        try:
            resolve_prompts(path, f"--prompts {c}:{s}")
        except FileNotFoundError as err:
            raise _UsageError(str(err)) from err
        out.setdefault(c, {})[s] = path
    return out


def _restore_calibration(constraints, ckpt: Path) -> None:
    """Length's relative epsilon: from the checkpoint's trainer state when it was measured."""
    state_file = ckpt.parent / "trainer_state.pt"
    if not any(c.needs_calibration for c in constraints) or not state_file.is_file():
        return
    state = torch.load(state_file, weights_only=False).get("rollouts") or {}
    for c in constraints:
        if c.needs_calibration and c.name in state.get("constraints", {}):
            c.load_state_dict(state["constraints"][c.name])


def _load_policy(cfg, ckpt: Path, device, need_base: bool):
    """(policy, tokenizer, ref_model): a peft adapter on the config's base, or a full model
    (then the config's base is the reference, loaded only when ``need_base``)."""
    from pdalign.models import bnb_4bit_config, frozen_copy, load_model, resolve_dtype

    quant = None
    if cfg.get("peft") is not None and cfg.peft.get("quantize", False):
        quant = bnb_4bit_config(resolve_dtype(cfg.train.get("dtype", "auto"), device.type),
                                cfg.peft.quant_type, cfg.peft.double_quant)
    adapter = (ckpt / "adapter_config.json").is_file()
    base, tokenizer = (None, None)
    if adapter or need_base:
        base, tokenizer = load_model(cfg.model.name_or_path, tiny=cfg.model.get("tiny"),
                                     quantization=quant,
                                     trust_remote_code=cfg.model.get("trust_remote_code", False),
                                     revision=cfg.model.get("revision"))
    if adapter:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, ckpt).to(device), tokenizer, None
    from transformers import AutoModelForCausalLM

    from pdalign.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(device)
    ref = frozen_copy(base.to(device)) if base is not None else None
    return model, tokenizer or load_tokenizer(cfg.model.name_or_path), ref


def _write_json_atomic(path: Path, payload: dict) -> None:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None  # JSON has no inf: an infinite bound is written as null
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    with atomic_open(path) as f:
        json.dump(clean(payload), f, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    """``pdalign-eval``: held-out evaluation and constraint certificate of a saved checkpoint.

    Examples:
        pdalign-eval --run-dir outputs/2025-01-01/12-00-00
        pdalign-eval --checkpoint RUN/checkpoints/step-200 --prompts refusal:id=redteam.csv
    """
    parser = argparse.ArgumentParser(
        prog="pdalign-eval", description="Evaluate a pdalign checkpoint on held-out pairs and "
        "prompt sets; print the constraint certificate and write the metrics as JSON.")
    parser.add_argument("--run-dir", help="a pdalign-train run dir (config.yaml, checkpoints/); "
                        "its newest complete checkpoint is evaluated unless --checkpoint is given")
    parser.add_argument("--checkpoint", help="a checkpoints/step-N dir, a peft adapter dir or a "
                        "full save_pretrained model dir")
    parser.add_argument("--config", help="the run's resolved config.yaml (default: RUN/config.yaml"
                        ", or found above --checkpoint)")
    parser.add_argument("--prompts", action="append", default=[], metavar="C:S=PATH",
                        help="prompt file (JSONL 'prompt' field or CSV 'prompt' column) for "
                        "constraint C's set S (id, shifted, ...); repeatable")
    parser.add_argument("--prompts-per-set", type=int, help="default: eval.prompts_per_set")
    parser.add_argument("--max-new-tokens", type=int, help="default: eval.max_new_tokens")
    parser.add_argument("--confidence", type=float, help="default: eval.confidence")
    parser.add_argument("--seed", type=int, help="sampling seed; default: eval.seed")
    parser.add_argument("--device", help="cpu | cuda | cuda:N; default: cuda if available")
    parser.add_argument("--out", help="JSON output; default RUN/eval-step-N.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pdalign.trainer import build_constraints

    try:
        ckpt, config, run_dir = _locate(args)
        try:
            cfg = OmegaConf.load(config)
            # every listed constraint, also for baselines (method.constrained: false): the
            # certificate compares methods on the same constraints
            constraints = build_constraints(cfg)
            objective = instantiate(cfg.objectives[cfg.method.objective])
        except Exception as err:  # a broken or foreign config: one line, no traceback
            raise _UsageError(f"{config}: {type(err).__name__}: {err}") from err
        kwargs = eval_kwargs(cfg.get("eval"))
        for c, override in _parse_prompt_overrides(args.prompts,
                                                   [c.name for c in constraints]).items():
            kwargs["sets"][c] = {**(kwargs["sets"].get(c) or {}), **override}
    except _UsageError as err:
        print(f"pdalign-eval: error: {err}", file=sys.stderr)
        return 2

    from pdalign.data import build_dataset
    from pdalign.models import reference_mode, resolve_dtype
    from pdalign.rollout import RolloutManager

    for key in ("prompts_per_set", "max_new_tokens", "confidence", "seed"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _restore_calibration(constraints, ckpt)
    calibrate = any(c.needs_calibration for c in constraints)
    need_base = (calibrate or any(getattr(c, "needs_kl", False) for c in constraints)
                 or objective.needs_reference)
    model, tokenizer, ref_model = _load_policy(cfg, ckpt, device, need_base)
    dcfg = cfg.data
    _, heldout, _ = build_dataset(
        tokenizer, dcfg.train, heldout=dcfg.get("heldout"), columns=dict(dcfg.columns),
        max_length=dcfg.max_length, max_prompt_length=dcfg.max_prompt_length,
        skip_invalid=dcfg.skip_invalid)
    if calibrate:  # as the trainer does before step 1: sample the reference on training prompts
        manager = RolloutManager(constraints, tokenizer, seed=int(cfg.seed),
                                 **OmegaConf.to_container(cfg.train.rollout, resolve=True))
        with reference_mode(model, ref_model) as ref:
            log.info("calibrated from the reference: %s", manager.calibrate(ref))
    dtype = resolve_dtype(cfg.train.get("dtype", "auto"), device.type)
    result = evaluate(model, tokenizer, constraints, heldout_features=heldout,
                      objective=objective, ref_model=ref_model, dtype=dtype, device=device,
                      progress=not args.quiet, **kwargs)
    rows = certificate(result)
    print(render_certificate(rows, result))
    step = _step_of(ckpt)
    out = Path(args.out) if args.out else run_dir / (f"eval-step-{step}.json" if step is not None
                                                     else "eval.json")
    _write_json_atomic(out, {"checkpoint": str(ckpt), "config": str(config), "step": step,
                             "metrics": result, "certificate": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
