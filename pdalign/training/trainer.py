"""The training loop, as a table of contents: `setup`, `primal_step`, `lagrangian`, `dual_step`,
and `train`, which reads on one screen.

A step of the primal-dual method (Lagrangian L(theta, lambda) = L_pref + sum_i lambda_i (g_i - eps_i)):

1. primal: one forward over [chosen ; rejected] (plus the reference pass, adapter disabled) and
   one over the current rollout samples, giving L_pref and, from each constraint
   (`Constraint.step_estimate`), its estimate g_i and differentiable surrogate s_i;
   loss = `lagrangian` -> backward -> optimizer step;
2. dual: in the same iteration, from the same g_i (mean-all-reduced across ranks, so lambda is
   identical everywhere): lambda <- DualState.update(g, eps).

Baselines (``method.constrained: false``) run the same loop with no constraint terms and no dual
step, so "DPO vs primal-dual" differs by exactly the Lagrangian terms. Everything built from the
config comes from `pdalign.training.build`; everything a step changes lives in `TrainState`, which is
what a checkpoint holds.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from pdalign.contract.base import ConstraintEstimate, StepView
from pdalign.evaluation.heldout import eval_kwargs, evaluate
from pdalign.policy.logprobs import SequenceLogps, sequence_logps
from pdalign.policy.precision import FORCE_DTYPE_ENV, autocast
from pdalign.policy.reference import reference_logps
from pdalign.runfiles.atomic import write_text
from pdalign.runfiles.metrics import MetricsLogger
from pdalign.training import build
from pdalign.training import checkpoint as ckpt
from pdalign.training.config import check_config
from pdalign.training.manifest import run_files, write_manifest
from pdalign.training.sharding import check_sharding, local_norm, shard_policy

log = logging.getLogger("pdalign")


def resolve_share_prompt(value, device_type: str) -> bool:
    """``train.share_prompt``: true | false | auto (on CPU only).

    Sharing saves the prompt's decoder FLOPs (a DPO step 0.93x on CPU) but runs the decoder in
    two passes, prompt then continuation: about 4,000 more kernel launches per step at 30
    layers (experiments/results/bench_gpu.md), which on a GPU, where a small model's step is
    bound by launches rather than FLOPs, cost more than the FLOPs saved.
    """
    if value == "auto":
        return device_type == "cpu"
    if isinstance(value, bool):
        return value
    raise ValueError(f"train.share_prompt={value!r} is not one of true, false, auto "
                     f"(auto = share on CPU, not on a GPU)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class PolicyForward(torch.nn.Module):
    """The policy's log-prob forward as a module, so accelerate can wrap it (DDP/FSDP).

    Args:
        model: the policy (PeftModel or plain causal LM).
        ref_model: frozen reference copy, only for models without an adapter.
    """

    def __init__(self, model, ref_model=None):
        super().__init__()
        self.model = model
        self._ref = [ref_model]  # a list keeps the frozen copy out of the module tree

    def forward(self, input_ids, attention_mask, labels, ref_rows: int = 0, with_kl: bool = False,
                pairs: int | None = None, group: int = 2, stop_ids=(), stop_rows=None,
                pack: bool = False):
        out = sequence_logps(self.model, input_ids, attention_mask, labels,
                             with_ref=ref_rows > 0, with_kl=with_kl and ref_rows > 0,
                             ref_model=self._ref[0], ref_rows=ref_rows or None, pairs=pairs,
                             group=group, stop_ids=stop_ids, stop_rows=stop_rows, pack=pack)
        return {k: v for k, v in vars(out).items() if v is not None}


def _finite_on_all_ranks(accelerator, finite: bool, device: torch.device) -> bool:
    """True when every rank's loss and estimates are finite (one all-reduce of a flag)."""
    bad = torch.tensor([0.0 if finite else 1.0], device=device)
    return float(accelerator.reduce(bad, reduction="sum")) == 0.0


def _pad_cat(a: torch.Tensor, b: torch.Tensor, value: int) -> torch.Tensor:
    width = max(a.shape[1], b.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
    return torch.cat([pad(a), pad(b)])


class BatchStream:
    """Endless, seeded iteration over epochs that can resume at the exact batch.

    The sampler draws an epoch's order from ``generator`` when the epoch starts, so the state
    kept is the generator state at the start of the current epoch plus the position in it.
    """

    def __init__(self, loader, generator: torch.Generator):
        self.loader, self.generator = loader, generator
        self.epoch_rng, self.pos, self._it = generator.get_state(), 0, None

    def next(self) -> dict:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch_rng, self.pos = self.generator.get_state(), 0
            self._it = iter(self.loader)
            batch = next(self._it)
        self.pos += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch_rng": self.epoch_rng, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["epoch_rng"])
        self.epoch_rng, self._it = state["epoch_rng"], iter(self.loader)
        for _ in range(state["pos"]):
            next(self._it)
        self.pos = state["pos"]


@dataclass
class TrainState:
    """Everything a training step changes; a checkpoint holds each rank's `state_dict` beside
    the weights, optimizer, scheduler and RNG that accelerate saves (`pdalign.training.checkpoint`).

    Args:
        model: the policy (its weights are saved with ``save_pretrained``).
        optimizer, scheduler: the primal optimizer and its learning-rate schedule.
        dual: the multipliers (`pdalign.training.dual.DualState`).
        rollouts: the rollout manager (samples, baselines, its RNG), or None.
        batches: the seeded preference batch stream (`BatchStream`).
        constraints: the trained constraints; each one's ``state_dict`` (a rollout baseline, a
            pair set's batch order) is saved with the rest.
        step: optimizer steps done.
        elapsed_s: the run's training seconds up to the last checkpoint, so a resumed run's
            clock covers every leg.
    """

    model: Any
    optimizer: Any
    scheduler: Any
    dual: Any
    rollouts: Any
    batches: BatchStream
    constraints: list = field(default_factory=list)  # the trained constraints (their state)
    step: int = 0
    elapsed_s: float = 0.0
    sharded: bool = False  # FSDP2: the optimizer is saved sharded, the scheduler here

    def state_dict(self) -> dict[str, Any]:
        # the optimizer and scheduler are saved by accelerate; under FSDP2 the optimizer's
        # shards by pdalign.training.sharding and the scheduler (the same on every rank) here
        out = {"step": self.step, "dual": self.dual.state_dict(),
               "rollouts": self.rollouts.state_dict() if self.rollouts is not None else None,
               "data": self.batches.state_dict(), "elapsed_s": float(self.elapsed_s),
               "constraints": {c.name: c.state_dict() for c in self.constraints}}
        if self.sharded:
            out["scheduler"] = self.scheduler.state_dict()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:  # checkpoints written before accelerate's save_state
            self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:  # those, and FSDP2 runs
            self.scheduler.load_state_dict(state["scheduler"])
        self.dual.load_state_dict(state["dual"])
        if self.rollouts is not None and state["rollouts"] is not None:
            self.rollouts.load_state_dict(state["rollouts"])
        self.batches.load_state_dict(state["data"])
        for c in self.constraints:  # older checkpoints hold rollout constraints' state only
            if c.name in state.get("constraints", {}):
                c.load_state_dict(state["constraints"][c.name])
        self.step = int(state["step"])
        self.elapsed_s = float(state.get("elapsed_s", 0.0))  # older checkpoints lack the clock


@dataclass
class Setup:
    """What `setup` builds once and every step reads (nothing here changes during training)."""

    cfg: DictConfig
    run_dir: Path
    accelerator: Any
    objective: Any
    constraints: list  # trained on (empty for a baseline)
    eval_constraints: list  # judged on held-out prompts: every listed constraint
    eps: torch.Tensor  # (C,) float64, the bounds of `constraints`
    policy: build.Policy
    forward: PolicyForward  # the policy's log-prob forward, prepared by accelerate
    heldout: list  # tokenized held-out pairs
    params: list  # the trainable parameters
    logger: MetricsLogger
    precomputed: bool  # reference log-probs come with the batch (train.precompute_ref_logps)
    ref_in_step: bool  # the step runs the reference forward
    needs_kl: bool  # some trained constraint reads the exact KL of the preference rows
    share_prompt: bool  # each pair's (opener rows') prompt runs once (train.share_prompt)
    shared_forward: bool  # rollout rows join the pairs' forward (one forward per backward: DDP)
    pack_pairs: bool = False  # the preference rows as one token trie (train.pack_pairs)
    sharded: bool = False  # FSDP2 (train.sharding=fsdp2): every rank runs the evaluation too
    warned: set = field(default_factory=set)  # constraints already warned about as stalled

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class StepResult:
    """One primal step, for the dual step and the log."""

    finite: bool  # False: a loss, estimate or gradient was non-finite; nothing was updated
    g: torch.Tensor  # (C,) float64: each constraint's estimate, mean over micro-batches
    metrics: dict[str, float]  # loss, loss/pref, the objective's metrics, lr, grad_norm
    tokens: int  # tokens through the forward (preference and rollout rows)


def setup(cfg: DictConfig, run_dir: str | Path) -> tuple[Setup, TrainState]:
    """Build the run from ``cfg``: checks, then the parts (`pdalign.training.build`), then the
    state, restored from a checkpoint when ``train.resume`` names one. Everything that can be
    wrong with the config or the data fails before the model loads."""
    run_dir = Path(run_dir)
    check_config(cfg)  # every key and range, before anything reads one
    build.warn_requantized_merge(cfg)
    tcfg = cfg.train
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=int(tcfg.grad_accum))
    device, main, world = accelerator.device, accelerator.is_main_process, accelerator.num_processes
    sharded = check_sharding(cfg, accelerator.distributed_type)
    if sharded and world == 1:
        log.warning("train.sharding=fsdp2 with one process: nothing to shard, the run is "
                    "unsharded (launch with torchrun or accelerate launch for several ranks)")
        sharded = False
    seed_everything(int(cfg.seed))

    # ---- config and data, before the model ---------------------------------------------------
    objective = build.build_objective(cfg)
    # every listed constraint is evaluated on held-out prompts; only primal-dual trains on them
    eval_constraints = build.build_constraints(cfg)
    constraints = eval_constraints if cfg.method.constrained else []
    dual = build.build_dual(cfg, constraints)
    dtype, quant = build.build_precision(cfg, device)
    tokenizer = build.build_tokenizer(cfg)
    train_set, heldout_set, skipped = build.build_datasets(cfg, tokenizer, objective)
    log.info("data: %d train pairs, %d held-out, skipped %s", len(train_set), len(heldout_set),
             dict(skipped) or "none")
    forced = os.environ.get(FORCE_DTYPE_ENV) if tcfg.dtype == "auto" else None
    log.info("precision: %s on %s (train.dtype=%s%s)", dtype, device, tcfg.dtype,
             f", forced by {FORCE_DTYPE_ENV}={forced}" if forced else "")
    if len(train_set) < int(tcfg.batch_size) * world:
        raise ValueError(
            f"data.train has {len(train_set)} usable pairs, fewer than one batch "
            f"(train.batch_size={int(tcfg.batch_size)} x {world} processes; "
            f"the loader drops a ragged last batch). Lower train.batch_size or add pairs")
    ckpt.resume_path(tcfg.get("resume"), run_dir, world)  # a bad train.resume fails here
    if int(tcfg.get("activation_checkpointing") or 0) < 0:
        raise ValueError(f"train.activation_checkpointing must be >= 0 (0 = off, k = every k-th "
                         f"decoder layer), got {tcfg.activation_checkpointing}")

    # ---- policy, reference, optimizer, batch stream, rollouts ------------------------------
    needs_kl = any(c.needs_kl for c in constraints)
    policy = build.build_policy(cfg, tokenizer, dtype=dtype, quant=quant, device=device,
                                needs_reference=objective.needs_reference or needs_kl)
    for c in constraints:  # what a constraint prepares once the policy exists (pair sets)
        c.bind(policy, seed=int(cfg.seed) + accelerator.process_index)
        for name, text in (c.files().items() if main else ()):
            write_text(run_dir / "constraints" / name, text)
    precomputed = bool(tcfg.precompute_ref_logps and objective.needs_reference)
    if precomputed:
        train_set = build.build_reference_cache(cfg, policy, train_set, quant, world_size=world,
                                                progress=main)
    if sharded:  # before the optimizer: fully_shard replaces the parameters by DTensors
        shard_policy(policy.model)
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer, scheduler = build.build_optimizer(cfg, params)
    loader, generator = build.build_loader(cfg, train_set, tokenizer)
    if sharded:  # accelerate would wrap the module in DDP, and save the optimizer from rank 0
        forward = PolicyForward(policy.model, policy.ref_model)
        loader = accelerator.prepare(loader)
    else:
        forward, optimizer, loader, scheduler = accelerator.prepare(
            PolicyForward(policy.model, policy.ref_model), optimizer, loader, scheduler)
    share_setting = tcfg.get("share_prompt", "auto")
    share_prompt = resolve_share_prompt(share_setting, device.type)
    log.info("shared prompt: %s (train.share_prompt=%s)", share_prompt, share_setting)
    # each data-parallel rank samples its own responses; g is averaged across ranks
    rollouts = build.build_rollouts(cfg, constraints, tokenizer, rank=accelerator.process_index,
                                    every=int(tcfg.rollout_every))
    state = TrainState(policy.model, optimizer, scheduler, dual, rollouts,
                       BatchStream(loader, generator), constraints, sharded=sharded)
    ckpt.register(accelerator, state)  # save_state / load_state cover every rank's state
    ckpt.resume(tcfg.get("resume"), run_dir, state, accelerator)
    build.calibrate(cfg, eval_constraints, policy, rollouts)

    # ---- provenance and logs -------------------------------------------------------------------
    if main:
        write_manifest(run_dir, OmegaConf.to_container(cfg, resolve=True),
                       run_files(cfg, eval_constraints), seed=int(cfg.seed),
                       dtype=str(dtype).replace("torch.", ""), world_size=world)
    logger = build.build_logger(cfg, run_dir, main=main, resume_step=state.step)
    eps = torch.tensor([c.train_epsilon for c in constraints], dtype=torch.float64)
    s = Setup(cfg, run_dir, accelerator, objective, constraints, eval_constraints, eps, policy,
              forward, heldout_set, params, logger, precomputed,
              ref_in_step=needs_kl or (objective.needs_reference and not precomputed),
              needs_kl=needs_kl,
              share_prompt=share_prompt,
              # One process: rollout rows get a forward of their own at their own width (~half
              # the pairs' here). Under DDP one forward per backward is required, so they share
              # the pairs' forward there; FSDP2 has no such rule.
              shared_forward=world > 1 and not sharded, sharded=sharded,
              # under DDP the extra rows join the pairs' forward, laid out by row blocks
              pack_pairs=bool(tcfg.get("pack_pairs", False)) and not (world > 1 and not sharded))
    return s, state


def lagrangian(pref_loss: torch.Tensor, estimates: list[ConstraintEstimate], lam: torch.Tensor,
               eps: torch.Tensor) -> torch.Tensor:
    """The primal objective L_pref + sum_i w_i (s_i - eps_i), w constant in theta.

    Args:
        pref_loss: () the preference loss, mean over the micro-batch's pairs.
        estimates: one per constraint, in order; each surrogate s_i () carries the value of the
            estimate g_i, so the loss reads in the constraints' own units.
        lam: (C,) this step's weights w = lambda/scale (`DualState.weights`; float64, used
            in float32).
        eps: (C,) the bounds.
    """
    lam = lam.to(device=pref_loss.device, dtype=torch.float32)
    loss = pref_loss
    for i, est in enumerate(estimates):
        loss = loss + lam[i] * (est.surrogate - float(eps[i]))
    return loss


def _micro_batch(s: Setup, state: TrainState, batch: dict):
    """(preference losses (B,), metrics, constraint estimates, tokens) of one micro-batch:
    the policy forward over [chosen ; rejected] (+ reference), over the rows the constraints
    need (rollout samples, pair-set batches), the objective, and each `step_estimate`."""
    b = batch["index"].shape[0]
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    pad, device = s.policy.tokenizer.pad_token_id, s.policy.device
    # rows the constraints need scored: {key: (rows, rows per shared prompt or None)}
    extra = {}
    if state.rollouts is not None and (ro := state.rollouts.rows(device)) is not None:
        extra["rollout"] = (ro, None)
    for c in s.constraints:
        if (rows := c.rows(device)) is not None:
            extra[c.name] = (rows, c.rows_per_prompt)
    # a rollout constraint may read the policy's stop probabilities along the samples (Length's
    # stop estimator): the rollout rows' forward then computes them, one more LM-head pass
    stop_ids = state.rollouts.stop_ids if "rollout" in extra and state.rollouts.needs_stop_logps \
        else []
    shared_stop = {}
    if s.shared_forward:  # DDP: one forward per backward, so the extra rows join the pairs'
        for key, (rows, _) in extra.items():
            if key == "rollout" and stop_ids:
                shared_stop = {"stop_ids": stop_ids, "stop_rows": (
                    ids.shape[0], ids.shape[0] + rows["input_ids"].shape[0])}
            ids = _pad_cat(ids, rows["input_ids"], pad)
            mask = _pad_cat(mask, rows["attention_mask"], 0)
            labels = _pad_cat(labels, rows["labels"], -100)
    out = s.forward(ids, mask, labels, ref_rows=2 * b if s.ref_in_step else 0,
                    with_kl=s.needs_kl, pairs=b if s.share_prompt else None,
                    pack=s.pack_pairs, **shared_stop)
    # the batch's two row blocks: (chosen, rejected) pairs, or KTO's (completion, kl) rows
    first, second = getattr(s.objective, "row_names", ("chosen", "rejected"))
    pref = {f"{first}_logps": out["logps"][:b], f"{second}_logps": out["logps"][b:2 * b],
            f"{first}_n_tokens": out["n_tokens"][:b],
            f"{second}_n_tokens": out["n_tokens"][b:2 * b]}
    if s.objective.needs_reference:
        if s.precomputed:
            ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
            if bool(ref.isnan().any()):  # a pair the cache lacks (a run longer than planned)
                with torch.no_grad():
                    ref = reference_logps(s.policy.model, batch["input_ids"],
                                          batch["attention_mask"], batch["labels"],
                                          ref_model=s.policy.ref_model,
                                          pairs=b if s.share_prompt else None).float()
        else:
            ref = out["ref_logps"][:2 * b]
        pref[f"ref_{first}_logps"], pref[f"ref_{second}_logps"] = ref[:b], ref[b:]
    if "label" in batch:  # unpaired rows: desirable or not
        pref["label"] = batch["label"]
    if s.accelerator.num_processes > 1:  # a batch statistic (KTO's z0) is averaged over ranks
        pref["reduce_mean"] = lambda t: s.accelerator.reduce(t.reshape(1), "mean").reshape(())
    losses, metrics = s.objective(pref)
    tokens = int(mask.sum())
    if not s.constraints:
        return losses, metrics, [], tokens
    scored, start = {}, 2 * b
    for key, (rows, group) in extra.items():
        n = rows["input_ids"].shape[0]
        if s.shared_forward:
            fields = ("logps", "n_tokens", "stop_logps") if key == "rollout" and stop_ids \
                else ("logps", "n_tokens")
            scored[key] = SequenceLogps(**{k: out[k][start:start + n] for k in fields})
            start += n
        else:  # one process: the rows' own forward at their own width
            # Opener and pair rows are short continuations of a few prompts that share the chat
            # template's header: packed as one token trie (every shared prefix run once, no KV
            # cache to copy) their forward and backward take 0.57x (two opener constraints) and
            # 0.73x (pairs) the shared-prompt path's time on SmolLM2
            # (experiments/results/opener_rows/). The preference rows keep that path for now:
            # packed, 4 quickstart pairs took 0.87x there, but long answers pay for the trie in
            # masked (L, L) attention, and the reference and KL ride on the same forward.
            share = ({"pairs": n // group, "group": group, "pack": True}
                     if s.share_prompt and group else {})
            if key == "rollout" and stop_ids:
                share["stop_ids"] = stop_ids
            scored[key] = SequenceLogps(**s.forward(rows["input_ids"], rows["attention_mask"],
                                                    rows["labels"], **share))
            tokens += int(rows["attention_mask"].sum())
    sampled = scored.pop("rollout", None)
    rollout = ({} if sampled is None else
               state.rollouts.estimates(sampled.logps, state.step, sampled.stop_logps))
    view = StepView(batch=SequenceLogps(**{k: v[:2 * b] for k, v in out.items()
                                           if k != "stop_logps"}),
                    rollout=rollout, rows=scored)
    return losses, metrics, [c.step_estimate(view) for c in s.constraints], tokens


def primal_step(s: Setup, state: TrainState) -> StepResult:
    """One optimizer step on theta: per micro-batch, the forward, the `lagrangian` at this
    step's lambda and backward; then clip and step. A non-finite loss, estimate or gradient
    (on any rank) skips the whole step: no update, gradients dropped."""
    model, device, dtype = s.policy.model, s.policy.device, s.policy.dtype
    tcfg, accum = s.cfg.train, int(s.cfg.train.grad_accum)
    model.train()
    if state.rollouts is not None:
        with autocast(dtype, device.type):
            state.rollouts.maybe_sample(model, state.step, device=device)
    g_sum = torch.zeros(len(s.constraints), dtype=torch.float64)
    sums: dict[str, float] = {}
    tokens, finite = 0, True
    for _ in range(accum):
        batch = state.batches.next()
        with s.accelerator.accumulate(s.forward), autocast(dtype, device.type):
            losses, metrics, estimates, n_tokens = _micro_batch(s, state, batch)
            loss = lagrangian(losses.mean(), estimates, state.dual.weights, s.eps)
            for i, est in enumerate(estimates):
                g_sum[i] += float(est.value)
                metrics.update({f"stat/{s.constraints[i].name}/{k}": v
                                for k, v in est.stats.items()})
            finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(g_sum).all())
            if s.accelerator.num_processes > 1:
                # Skip on every rank or none: a rank that skipped backward would leave
                # the others waiting in DDP's gradient all-reduce.
                finite = _finite_on_all_ranks(s.accelerator, finite, loss.device)
            if not finite:
                break
            s.accelerator.backward(loss)  # accelerate divides by grad_accum
        metrics["loss/pref"] = float(losses.detach().mean())
        metrics["loss"] = float(loss.detach())
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v / accum
        tokens += n_tokens
    grad_norm = (local_norm(s.accelerator.clip_grad_norm_(s.params, tcfg.max_grad_norm))
                 if finite and tcfg.max_grad_norm else None)
    if grad_norm is not None and not torch.isfinite(grad_norm):
        finite = False  # a finite loss with overflowing gradients: skip it the same way
    if finite:
        state.optimizer.step()
        state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    sums.update({"lr": state.scheduler.get_last_lr()[0],
                 "grad_norm": float("nan") if grad_norm is None else float(grad_norm)})
    return StepResult(finite, g_sum / accum, sums, tokens)


def dual_step(s: Setup, state: TrainState, g_local: torch.Tensor) -> dict[str, float]:
    """lambda <- DualState.update(g, eps) with this step's estimates, mean-all-reduced across
    ranks first so every rank holds the same lambda (the update and its synchronisation side
    by side). Returns the step's lambda / lambda_next / g / eps / violation per constraint."""
    if not s.constraints:
        return {}
    g = s.accelerator.reduce(g_local.to(s.policy.device), reduction="mean")
    g = g.cpu().to(torch.float64)
    lam_used = state.dual.lam.clone()
    state.dual.update(g, s.eps)
    record: dict[str, float] = {}
    for i, c in enumerate(s.constraints):
        record[f"lambda/{c.name}"] = float(lam_used[i])
        record[f"lambda_next/{c.name}"] = float(state.dual.lam[i])
        record[f"g/{c.name}"] = float(g[i])
        record[f"eps/{c.name}"] = float(s.eps[i])
        record[f"violation/{c.name}"] = float(g[i] - s.eps[i])
    for i in state.dual.stalled():
        name = s.constraints[i].name
        if name not in s.warned:
            s.warned.add(name)
            log.warning("constraint %s is not being met at the current capacity: its lambda is "
                        "pinned at lambda_max or keeps rising (lambda=%.3f)", name,
                        float(state.dual.lam[i]))
    return record


def _skip(s: Setup, step: int, in_a_row: int) -> None:
    """Log a skipped non-finite step; stop once ``train.max_nonfinite_steps`` come in a row."""
    log.warning("step %d: non-finite loss, gradient or constraint estimate; step skipped "
                "(%d in a row)", step, in_a_row)
    s.logger.log({"step": step, "skipped_nonfinite": 1})
    if in_a_row >= int(s.cfg.train.max_nonfinite_steps):
        raise FloatingPointError(
            f"{in_a_row} non-finite steps in a row at step {step}: the likely causes are a "
            f"too-large train.lr, a too-large beta, or bf16 overflow (try train.dtype=fp32)")


def _due(every, step: int, steps: int) -> bool:
    """At the last step, and every ``every`` steps (0 or None: only the last)."""
    return step == steps or bool(every and step % int(every) == 0)


def _held_out(s: Setup, step: int) -> dict[str, float]:
    p = s.policy
    return {"step": step, **evaluate(
        p.model, p.tokenizer, s.eval_constraints, heldout_features=s.heldout,
        objective=s.objective, ref_model=p.ref_model, dtype=p.dtype, device=p.device,
        progress=s.main, **eval_kwargs(s.cfg.eval))}


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run one training job described by ``cfg`` and return a summary dict."""

    s, state = setup(cfg, run_dir)
    steps, start, every = int(cfg.train.steps), state.step, int(cfg.logging.every)
    t_start = time.perf_counter() - state.elapsed_s  # a resumed run continues its clock
    bar = tqdm(total=steps, initial=start, desc=f"train {cfg.method.name}", disable=not s.main)
    last: dict[str, Any] = {}
    nonfinite = 0
    try:
        while state.step < steps:
            t0 = time.perf_counter()
            # primal: forward, the Lagrangian at this lambda, backward, optimizer step
            out = primal_step(s, state)
            # dual: the same iteration's g_i (a skipped step updates nothing)
            duals = dual_step(s, state, out.g) if out.finite else {}
            state.step += 1
            nonfinite = 0 if out.finite else nonfinite + 1
            if not out.finite:
                _skip(s, state.step, nonfinite)
            else:
                if s.policy.device.type == "cuda":  # time the kernels, not their launch
                    torch.cuda.synchronize(s.policy.device)
                dt = time.perf_counter() - t0
                last = {"step": state.step, **duals, **out.metrics, "step_time_s": dt,
                        "tokens_per_s": out.tokens / dt if dt > 0 else 0.0,
                        **(state.rollouts.signal_stats() if state.rollouts else {})}
                if state.step % every == 0 or state.step == steps:
                    s.logger.log(last)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            bar.update(1)
            # held-out evaluation on the main process (on every rank under FSDP2, whose
            # forward is a collective; the main one logs); the checkpoint on every rank (each
            # saves its own RNG, rollouts and optimizer shard)
            if (s.main or s.sharded) and out.finite and _due(cfg.eval.every, state.step, steps):
                s.logger.log(_held_out(s, state.step))
            if _due(cfg.train.checkpoint_every if out.finite else 0, state.step, steps):
                state.elapsed_s = time.perf_counter() - t_start
                ckpt.save(s.run_dir, state, s.accelerator, keep_last=int(cfg.train.keep_last))
    finally:
        bar.close()
        s.logger.close()
    s.accelerator.wait_for_everyone()
    return {"steps": state.step, "wall_time_s": time.perf_counter() - t_start,
            "lambda": state.dual.as_dict(), "dtype": str(s.policy.dtype).replace("torch.", ""),
            "world_size": s.accelerator.num_processes,
            "final_loss": last.get("loss") if state.step > start else None}
