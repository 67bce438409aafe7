"""``pdalign-iterate``: iterative on-policy DPO under the Lagrangian, one round at a time.

A round k, from the policy pi_k (round 0: the config's model):

1. sample: K responses per prompt from pi_k (`pdalign.policy.sampling.generate`, batched, KV cache) on
   this round's prompt pool: ``iterative.prompts_per_round`` prompts drawn from each listed
   constraint's prompt set (and from ``iterative.prompts``, a pool only the judge scores);
   fixed candidates (``iterative.candidates``) may join each prompt's samples;
2. score: the judge's reward r(x, y) for every candidate, and each constraint's cost
   c_i(x, y) on the candidates of its own prompt set (0 elsewhere: a refusal cost says nothing
   about a prompt outside the adversarial set);
3. dual: lambda <- DualState.update(g, eps) with g_i the mean cost of pi_k's own samples on
   constraint i's prompts (the sampled violation of the policy that is about to be trained);
4. pairs: per prompt, the best against the worst candidate under the Lagrangian reward
   r_lambda(x, y) = r(x, y) - sum_i lambda_i c_i(x, y) (C-DPO, Liu et al. 2024,
   https://arxiv.org/abs/2403.02475; MoCAN prices its reward the same way, Huang et al. 2024,
   https://arxiv.org/abs/2405.19544); a pair whose winner r alone would not have chosen is
   *flipped*, and *reversed* when r alone prefers its loser;
5. train: one DPO run of ``iterative.steps_per_round`` steps on those pairs through the one
   trainer (`pdalign.training.trainer.train`), with pi_k as the model *and* its reference (the LoRA
   adapter starts at zero on pi_k's weights, and disabling it gives pi_k); the trainer's final
   held-out evaluation is the round's;
6. merge: the round's adapter merged into pi_k's weights is pi_{k+1}, saved as a plain
   ``save_pretrained`` model that round k+1 loads as its model and reference.

Decision: lambda is updated (3) before the round's pairs are built (4), so the pairs always
price in the sampled violation of the policy that produced them. This is C-DPO's alternation
(train at lambda_k, sample the new policy, update lambda, train again) with its first dual step
taken on the base policy's samples rather than at lambda_init.

Files (``<run dir>/``; JSON and JSONL, each written atomically; their names, writer and parser
are `pdalign.runfiles.rounds`):

- ``config.yaml``: the resolved config; a resume checks the new config against it;
- ``initial.json``: the held-out evaluation of the starting policy (``iterative.eval_initial``);
- ``round-K/samples.jsonl``: every candidate: prompt, response, source (policy or the fixed
  candidate's source), r, each cost, r_lambda;
- ``round-K/pairs.jsonl``: the DPO pairs (prompt, chosen, rejected, the data the trainer
  reads) with r, r_lambda of both sides, ``flipped`` and ``reversed``;
- ``round-K/train/``: the round's training run (metrics.jsonl, checkpoint, manifest, config);
- ``round-K/policy/``: pi_{K+1}, the merged model (weights; not for committing);
- ``round-K/round.json``: the round's record (lambda before and after, sampled rates, eps,
  pair, flipped and reversed counts, the held-out evaluation, the DualState); written last,
  so its presence marks a complete round;
- ``rounds.jsonl``, ``rounds.md``: every complete round, one line each, and the round table.

Resume: run the same command with the same ``hydra.run.dir``: complete rounds are kept, an
incomplete one is redone from its start, and every round is a deterministic function of
(pi_k, the DualState, k, seed), so the resumed run gives the same pairs and lambda.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from pdalign.contract.prompts import load_prompts, resolve_prompts
from pdalign.evaluation.heldout import eval_kwargs, evaluate
from pdalign.iterative.pairs import best_vs_worst, lagrangian_reward
from pdalign.policy.precision import autocast
from pdalign.policy.sampling import generate
from pdalign.runfiles.atomic import atomic_dir, write_text
from pdalign.runfiles.metrics import read_metrics, split_records
from pdalign.runfiles.rounds import (
    INITIAL_FILE,
    ROUND_FILE,
    read_initial,
    read_rounds,
    round_dir,
    write_jsonl,
    write_round_table,
)
from pdalign.training import build
from pdalign.training.checkpoint import checkpoints
from pdalign.training.config import CONF_DIR, check_config
from pdalign.training.trainer import train

log = logging.getLogger("pdalign")
Tensor = torch.Tensor

POLICY_SOURCE = "policy"  # the `source` of a candidate sampled from the policy







# ---- config checks, before any model ---------------------------------------------------------

_POSITIVE_INTS = ("rounds", "samples_per_prompt", "prompts_per_round", "steps_per_round",
                  "max_new_tokens", "batch_size")


def _known_keys() -> set[str]:
    node = OmegaConf.load(CONF_DIR / "iterate.yaml")
    return set(node.iterative.keys())


def check_iterative(cfg: DictConfig) -> None:
    """Every ``iterative.*`` key and what the round loop needs from the rest of the config:
    one ValueError naming the field and the fix, before any model loads."""

    it = cfg.get("iterative")
    if not isinstance(it, DictConfig):
        raise ValueError("the config has no `iterative` node: run pdalign-iterate (its root "
                         "config conf/iterate.yaml defines it)")
    for key in it:
        if key not in _known_keys():
            raise ValueError(f"iterative.{key} is not a known key (conf/iterate.yaml: "
                             f"{', '.join(sorted(_known_keys()))}). Remove or rename it.")
    for key in _POSITIVE_INTS:
        value = it.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"iterative.{key}={value!r} must be an integer >= 1")
    if it.samples_per_prompt < 2 and not it.get("candidates"):
        raise ValueError(f"iterative.samples_per_prompt={it.samples_per_prompt}: a pair needs "
                         f"two candidates per prompt; set it >= 2 or add iterative.candidates")
    temp, top_p = it.get("temperature"), it.get("top_p")
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not temp > 0:
        raise ValueError(f"iterative.temperature={temp!r} must be > 0: the K samples of a prompt "
                         f"must differ (1.0 samples the policy itself)")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"iterative.top_p={top_p!r} must be in (0, 1]")
    if not isinstance(it.get("judge"), DictConfig) or "_target_" not in it.judge:
        raise ValueError("iterative.judge must be a node with a _target_: a callable scoring "
                         "(prompts, responses) -> (N,) rewards, e.g. "
                         "pdalign.iterative.judges.LogLikelihoodJudge")
    cands = it.get("candidates") or []
    if not isinstance(cands, ListConfig) and cands != []:
        raise ValueError("iterative.candidates must be a list of nodes with a _target_ "
                         "(e.g. pdalign.iterative.judges.PairAnswers), or []")
    for i, node in enumerate(cands):
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"iterative.candidates[{i}] has no _target_ (a callable "
                             f"prompts -> per-prompt lists of responses)")
    if cfg.method.get("constrained", False):
        raise ValueError(f"method={cfg.method.name} trains the constraints in the loss; an "
                         f"iterative round trains the preference objective alone (the "
                         f"constraints act through r_lambda when pairs are built): use "
                         f"method=dpo (or ipo, simpo, orpo)")
    if it.eval_initial not in (True, False):
        raise ValueError(f"iterative.eval_initial={it.eval_initial!r} must be true or false")
    check_config(cfg)


def scored_constraints(constraints: Sequence) -> list:
    """The constraints the rounds price: each must score a response (``cost``) on its own
    prompt set; ValueError naming one that cannot (a KL budget reads pairs, not samples)."""
    for c in constraints:
        if not callable(getattr(c, "cost", None)) or c.judged_prompts() is None:
            raise ValueError(f"constraints.{c.name} ({type(c).__name__}) has no per-response "
                             f"cost on a prompt set, so the rounds cannot price samples with it; "
                             f"drop it from constraints (iterative rounds take rollout-kind "
                             f"constraints: refusal, over_refusal, toxicity, length)")
        if c.needs_calibration:
            raise ValueError(f"constraints.{c.name}.epsilon is set from a reference rollout; "
                             f"give an absolute epsilon for an iterative run")
    return list(constraints)


# ---- one round ---------------------------------------------------------------------------------

@dataclass
class Pool:
    """The prompt sets a round draws from: each with the constraints that score it."""

    prompts: list[list[str]]  # per set, its prompts
    scorers: list[list[int]]  # per set, indices of the constraints that score it


def prompt_pool(cfg: DictConfig, constraints: Sequence) -> Pool:

    by_path: dict[Path, list[int]] = {}
    for i, c in enumerate(constraints):
        by_path.setdefault(Path(c.judged_prompts()).resolve(), []).append(i)
    extra = cfg.iterative.get("prompts")
    if extra is not None:
        path = resolve_prompts(extra, "iterative.prompts").resolve()
        load_prompts(path, "iterative.prompts")  # checked now, before any model
        by_path.setdefault(path, [])
    if not by_path:
        raise ValueError("the prompt pool is empty: list a constraint with a prompt set "
                         "(constraints=[refusal]) or give iterative.prompts=FILE")
    return Pool([load_prompts(p) for p in by_path], list(by_path.values()))


def draw(pool: Pool, k: int, n: int, seed: int) -> tuple[list[str], list[int], int]:
    """(prompts, their set index, the generation seed) of round k: ``n`` prompts without
    replacement from each set, seeded by (seed, k) alone, so a resumed round draws the same."""
    rng = np.random.default_rng([int(seed), int(k)])
    prompts, sets = [], []
    for s, items in enumerate(pool.prompts):
        for i in rng.choice(len(items), size=min(n, len(items)), replace=False):
            prompts.append(items[int(i)])
            sets.append(s)
    return prompts, sets, int(rng.integers(2**31 - 1))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _costs(constraints, pool: Pool, sets: Sequence[int], cand_prompt: Sequence[int],
           prompts: Sequence[str], texts: Sequence[str], lengths: Tensor) -> tuple[Tensor, Tensor]:
    """(costs (C, N), applies (C, N) bool): each constraint's cost on the candidates of the
    prompts its own set holds; 0 (and applies False) elsewhere."""
    n = len(texts)
    costs = torch.zeros(len(constraints), n, dtype=torch.float64)
    applies = torch.zeros(len(constraints), n, dtype=torch.bool)
    for i, c in enumerate(constraints):
        idx = [t for t in range(n) if i in pool.scorers[sets[cand_prompt[t]]]]
        if not idx:
            continue
        value = torch.as_tensor(c.cost([prompts[cand_prompt[t]] for t in idx],
                                       [texts[t] for t in idx], lengths[idx]))
        value = value.detach().to("cpu", torch.float64).flatten()
        if value.shape != (len(idx),) or not torch.isfinite(value).all():
            raise ValueError(f"{type(c).__name__}.cost for constraints.{c.name} must return "
                             f"{len(idx)} finite values, got shape {tuple(value.shape)}")
        costs[i, idx], applies[i, idx] = value, True
    return costs, applies


def sample_round(cfg: DictConfig, k: int, policy_src: DictConfig, pool: Pool, constraints,
                 judge, candidates, dual) -> dict[str, Any]:
    """Steps 1-4 of round k: sample, score, dual step, pairs. Returns the round's candidates,
    pairs and numbers (nothing is written here)."""

    it = cfg.iterative
    K = int(it.samples_per_prompt)
    prompts, sets, gen_seed = draw(pool, k, int(it.prompts_per_round), int(cfg.seed))
    device = _device()
    policy = build.load_base_policy(policy_src, device)
    with autocast(policy.dtype, device.type):
        ro = generate(policy.model, policy.tokenizer, [p for p in prompts for _ in range(K)],
                      max_new_tokens=int(it.max_new_tokens), temperature=float(it.temperature),
                      top_p=float(it.top_p), batch_size=int(it.batch_size), seed=gen_seed)
    tok = policy.tokenizer
    del policy
    # candidates: the K samples of each prompt, then the fixed ones
    texts, cand_prompt, source = list(ro.responses), [i // K for i in range(len(ro))], \
        [POLICY_SOURCE] * len(ro)
    lengths = ro.response_lengths.tolist()
    for src in candidates:
        offered = src(prompts)
        if len(offered) != len(prompts):
            raise ValueError(f"iterative.candidates: {type(src).__name__} returned "
                             f"{len(offered)} lists for {len(prompts)} prompts")
        for j, answers in enumerate(offered):
            for a in answers:
                texts.append(a)
                cand_prompt.append(j)
                source.append(getattr(src, "name", type(src).__name__))
                lengths.append(len(tok(a, add_special_tokens=False)["input_ids"]) + 1)  # + EOS
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    reward = torch.as_tensor(judge([prompts[j] for j in cand_prompt], texts)).detach()
    reward = reward.to("cpu", torch.float64).flatten()
    if reward.shape != (len(texts),) or not torch.isfinite(reward).all():
        raise ValueError(f"iterative.judge ({type(judge).__name__}) must return {len(texts)} "
                         f"finite rewards, got shape {tuple(reward.shape)}")
    costs, applies = _costs(constraints, pool, sets, cand_prompt, prompts, texts, lengths_t)
    sampled = torch.tensor([s == POLICY_SOURCE for s in source])  # (N,)
    # g_i: the mean cost of the policy's own samples on constraint i's prompts
    g = torch.tensor([float(costs[i, applies[i] & sampled].mean())
                      for i in range(len(constraints))], dtype=torch.float64)
    eps = torch.tensor([c.train_epsilon for c in constraints], dtype=torch.float64)
    lam_before = dual.lam.clone()
    if len(constraints):
        dual.update(g, eps)
    lam = dual.lam.clone()
    r_lam = lagrangian_reward(reward, costs, dual.weights)  # lambda/scale per unit cost
    groups = [[t for t in range(len(texts)) if cand_prompt[t] == j] for j in range(len(prompts))]
    pairs = best_vs_worst(groups, reward, r_lam, texts)
    names = [c.name for c in constraints]
    samples = [{"prompt": prompts[cand_prompt[t]], "response": texts[t], "source": source[t],
                "length": lengths[t], "r": float(reward[t]), "r_lambda": float(r_lam[t]),
                "costs": {names[i]: float(costs[i, t]) for i in range(len(names))
                          if applies[i, t]}} for t in range(len(texts))]
    pair_rows = [{"prompt": prompts[p.prompt], "chosen": texts[p.chosen],
                  "rejected": texts[p.rejected], "flipped": p.flipped, "reversed": p.reversed,
                  "chosen_source": source[p.chosen], "rejected_source": source[p.rejected],
                  "r_chosen": float(reward[p.chosen]), "r_rejected": float(reward[p.rejected]),
                  "r_lambda_chosen": float(r_lam[p.chosen]),
                  "r_lambda_rejected": float(r_lam[p.rejected])} for p in pairs]
    return {"samples": samples, "pairs": pair_rows, "n_prompts": len(prompts),
            "n_samples": int(sampled.sum()), "n_candidates": len(texts),
            "lambda_before": dict(zip(names, lam_before.tolist())),
            "lambda": dict(zip(names, lam.tolist())), "rate": dict(zip(names, g.tolist())),
            "eps": dict(zip(names, eps.tolist())),
            "violation": dict(zip(names, (g - eps).tolist())),
            "judge_mean": float(reward[sampled].mean()), "generation_seed": gen_seed}


def round_config(cfg: DictConfig, k: int, policy_src: DictConfig, pairs_file: Path
                 ) -> DictConfig:
    """The trainer's config for round k: the run's config with the round's pairs as data, the
    round's starting policy as the model (and so, with the adapter disabled, the reference),
    ``iterative.steps_per_round`` steps, one checkpoint at the end and no resume."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.pop("iterative", None)
        out.model = OmegaConf.create(OmegaConf.to_container(policy_src.model, resolve=True))
        out.data.train = str(pairs_file)
        out.train.steps = int(cfg.iterative.steps_per_round)
        out.train.resume = None
        out.train.checkpoint_every = 0
        out.train.keep_last = 1
        out.seed = int(cfg.seed) + k
    return out


def _save_policy(cfg_round: DictConfig, train_dir: Path, out: Path) -> None:
    """The round's adapter merged into its starting weights, saved as a plain model (atomic:
    a temp dir renamed into place)."""

    ckpt = checkpoints(train_dir)[-1] / "model"
    merged = build.load_merged_policy(cfg_round, ckpt, torch.device("cpu"))
    with atomic_dir(out) as tmp:
        merged.model.save_pretrained(tmp)
        merged.tokenizer.save_pretrained(tmp)


def _last_eval(train_dir: Path) -> dict[str, float]:

    _, evals = split_records(read_metrics(train_dir / "metrics.jsonl"))
    return {k: v for k, v in evals[-1].items() if k != "step"} if evals else {}


def _policy_source(cfg: DictConfig, run_dir: Path, k: int) -> DictConfig:
    """A config whose ``model`` is round k's starting policy: the config's model for round 0,
    round k-1's merged policy after."""
    src = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if k > 0:
        with open_dict(src):
            src.model.name_or_path = str(round_dir(run_dir, k - 1) / "policy")
    return src


def run_round(cfg: DictConfig, run_dir: Path, k: int, pool: Pool, constraints, judge,
              candidates, dual) -> dict[str, Any]:
    """Round k, start to end; its record is written last (`ROUND_FILE`)."""

    t0 = time.perf_counter()
    rdir = round_dir(run_dir, k)
    if rdir.exists():  # an incomplete round from an interrupted run: redo it from its start
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True)
    src = _policy_source(cfg, run_dir, k)
    done = sample_round(cfg, k, src, pool, constraints, judge, candidates, dual)
    write_jsonl(rdir / "samples.jsonl", done.pop("samples"))
    pairs = done.pop("pairs")
    write_jsonl(rdir / "pairs.jsonl", pairs)
    n_flipped = sum(p["flipped"] for p in pairs)
    n_reversed = sum(p["reversed"] for p in pairs)
    log.info("round %d: %d pairs (%d winners flipped by lambda, %d reversed), lambda %s, "
             "sampled rate %s", k, len(pairs), n_flipped, n_reversed, done["lambda"],
             done["rate"])
    need = int(cfg.train.batch_size)
    if len(pairs) < need:
        raise ValueError(f"round {k} built {len(pairs)} pairs, fewer than one batch "
                         f"(train.batch_size={need}): raise iterative.prompts_per_round or "
                         f"iterative.samples_per_prompt, or lower train.batch_size")
    cfg_round = round_config(cfg, k, src, rdir / "pairs.jsonl")
    train_dir = rdir / "train"
    train_dir.mkdir()
    write_text(train_dir / "config.yaml", OmegaConf.to_yaml(cfg_round, resolve=True))
    summary = train(cfg_round, train_dir)
    write_text(train_dir / "summary.json", json.dumps(summary, indent=2))
    _save_policy(cfg_round, train_dir, rdir / "policy")
    record = {"round": k, "model": str(src.model.name_or_path), **done,
              "n_pairs": len(pairs), "n_flipped": n_flipped, "n_reversed": n_reversed,
              "eval": _last_eval(train_dir), "train": summary,
              "wall_time_s": time.perf_counter() - t0,
              "dual_state": dual_to_json(dual.state_dict())}
    write_text(rdir / ROUND_FILE, json.dumps(record, indent=2))
    gc.collect()
    return record


# ---- the run -----------------------------------------------------------------------------------

_RESUME_FREE = ("iterative.rounds", "train.threads", "logging.", "hydra.")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _check_resume(cfg: DictConfig, run_dir: Path) -> None:
    """A run dir that holds rounds resumes only under the config that made them (the number
    of rounds and bookkeeping aside): ValueError naming the keys that differ."""
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return
    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_file), resolve=True))
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    differ = sorted(k for k in set(saved) | set(now)
                    if saved.get(k) != now.get(k) and not k.startswith(_RESUME_FREE))
    if differ:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:5])
        raise ValueError(f"{run_dir} holds rounds of a run with another config ({changes}); "
                         f"resume with the same config (only iterative.rounds may grow) or use "
                         f"a new hydra.run.dir")


def _instantiate(node: DictConfig, key: str):
    """``hydra.utils.instantiate`` with the cause as one ValueError naming ``key`` (hydra wraps
    a constructor's error in its own)."""

    try:
        return instantiate(node)
    except Exception as err:
        cause = err.__cause__ or err
        message = str(cause)
        raise ValueError(message if message.startswith("iterative.") else
                         f"{key} ({node.get('_target_')}): {message}") from err


def setup(cfg: DictConfig):
    """Everything checked and built before any model: (constraints, pool, judge,
    candidates, dual)."""

    check_iterative(cfg)
    build.build_objective(cfg)  # checks the objective's settings
    constraints = scored_constraints(build.build_constraints(cfg))
    pool = prompt_pool(cfg, constraints)
    n_sets = len(pool.prompts)
    if int(cfg.iterative.prompts_per_round) * n_sets < int(cfg.train.batch_size):
        raise ValueError(f"iterative.prompts_per_round={cfg.iterative.prompts_per_round} x "
                         f"{n_sets} prompt set(s) gives fewer pairs than one batch "
                         f"(train.batch_size={cfg.train.batch_size}); raise it")
    judge = _instantiate(cfg.iterative.judge, "iterative.judge")
    candidates = [_instantiate(node, f"iterative.candidates[{i}]")
                  for i, node in enumerate(cfg.iterative.get("candidates") or [])]
    dual = build.build_dual(cfg, constraints)
    return constraints, pool, judge, candidates, dual


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) ``iterative.rounds`` rounds into ``run_dir``; returns a summary."""

    run_dir = Path(run_dir)
    constraints, pool, judge, candidates, dual = setup(cfg)
    if cfg.train.get("threads"):
        torch.set_num_threads(int(cfg.train.threads))
    done = read_rounds(run_dir)
    if done:
        _check_resume(cfg, run_dir)
        dual.load_state_dict(dual_from_json(done[-1]["dual_state"]))
        log.info("resuming after round %d (lambda %s)", len(done) - 1, done[-1]["lambda"])
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    t0 = time.perf_counter()
    if cfg.iterative.eval_initial and read_initial(run_dir) is None:
        base = build.load_base_policy(cfg, _device())
        result = evaluate(base.model, base.tokenizer, build.build_constraints(cfg),
                          dtype=base.dtype, device=base.device, progress=False,
                          **eval_kwargs(cfg.eval))
        write_text(run_dir / INITIAL_FILE, json.dumps({"eval": result}, indent=2))
        del base
    for k in range(len(done), int(cfg.iterative.rounds)):
        done.append(run_round(cfg, run_dir, k, pool, constraints, judge, candidates, dual))
        write_round_table(run_dir)
    write_round_table(run_dir)
    return {"rounds": len(done), "lambda": done[-1]["lambda"] if done else {},
            "policy": str(round_dir(run_dir, len(done) - 1) / "policy") if done else None,
            "wall_time_s": time.perf_counter() - t0}



def dual_to_json(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() if torch.is_tensor(v) else v for k, v in state.items()}


def dual_from_json(state: Mapping[str, Any]) -> dict[str, Any]:
    tensors = ("lam", "g_ema", "integral", "p_delta", "d_cost", "d_cost_prev", "history")
    out = dict(state)
    for k in tensors:
        out[k] = torch.tensor(state[k], dtype=torch.float64)
    m = len(state["names"])
    out["history"] = out["history"].reshape(-1, m)
    return out
