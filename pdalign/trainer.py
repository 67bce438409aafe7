"""The training loop: setup -> (forward, primal step, dual step) per step -> log -> checkpoint.

One function, `train`, reads top to bottom. Baselines (``method.constrained: false``) run the
same loop with no constraint terms and no dual step, so "DPO vs primal-dual" differs by exactly
the Lagrangian terms. A step of the primal-dual method:

1. one forward over [chosen ; rejected] (plus the reference pass, adapter disabled) and one
   over the current rollout samples (joined into the first under DDP), giving L_pref, each
   constraint's estimate g_i and surrogate s_i;
2. loss = L_pref + sum_i lambda_i * (s_i - eps_i) -> backward -> optimizer step;
3. in the same iteration, from the same g_i (mean-all-reduced across ranks, so lambda is
   identical everywhere): lambda <- DualState.update(g, eps).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pdalign import checkpoint as ckpt
from pdalign.config import check_config
from pdalign.evaluate import eval_kwargs, evaluate, heldout_prompt_sets
from pdalign.logging import MetricsLogger
from pdalign.logprobs import (
    SequenceLogps,
    precompute_reference,
    reference_cache_key,
    sequence_logps,
)
from pdalign.manifest import write_manifest
from pdalign.models import (
    FORCE_DTYPE_ENV,
    apply_peft,
    autocast,
    bnb_4bit_config,
    cache_dir,
    frozen_copy,
    has_adapter,
    load_model,
    load_tokenizer,
    resolve_dtype,
)

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
                pairs: int | None = None):
        out = sequence_logps(self.model, input_ids, attention_mask, labels,
                             with_ref=ref_rows > 0, with_kl=with_kl and ref_rows > 0,
                             ref_model=self._ref[0], ref_rows=ref_rows or None, pairs=pairs)
        return {k: v for k, v in vars(out).items() if v is not None}


def build_constraints(cfg: DictConfig) -> list:
    """Instantiate every listed constraint (validates eps and prompt files before any model)."""
    from hydra.utils import instantiate

    built = []
    for key, node in (cfg.get("constraints") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"constraints.{key} has no _target_; each entry of conf/constraints/ "
                             f"must name its class, e.g. _target_: pdalign.constraints.length.Length")
        try:
            # an entry without a name takes its key's, so errors and logs say the same thing
            built.append(instantiate(node) if "name" in node else instantiate(node, name=key))
        except Exception as err:  # hydra wraps import and constructor errors: one clear line
            cause = err.__cause__ or err
            if isinstance(cause, ImportError):
                reason = cause.__cause__ or cause
                raise ValueError(
                    f"constraints.{key}._target_={node._target_} cannot be imported "
                    f"({type(reason).__name__}: {str(reason).splitlines()[0]}). Put the class "
                    f"in constraints/<file>.py and name it pdalign.constraints.<file>.<Class>, "
                    f"or fix the dotted path") from err
            message = str(cause)
            if not message.startswith(f"constraints.{key}"):
                message = f"constraints.{key}: {message}"
            raise ValueError(message) from err
    return built


def _optimizer(params, tcfg: DictConfig, peft_cfg: DictConfig):
    name = peft_cfg.get("optimizer") or tcfg.optimizer
    kwargs = {"lr": tcfg.lr, "weight_decay": tcfg.weight_decay}
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    import bitsandbytes as bnb

    table = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}
    if name not in table:
        raise ValueError(f"train.optimizer={name!r} is not one of adamw, adamw_8bit, "
                         f"paged_adamw_8bit")
    return table[name](params, **kwargs)


def _schedule(optimizer, tcfg: DictConfig):
    warm, total = max(0, int(tcfg.warmup_steps)), max(1, int(tcfg.steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if tcfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def enable_activation_checkpointing(model, every_n_layers: int) -> None:
    """Recompute every ``every_n_layers``-th decoder layer in backward (0 = off).

    Saved activations are most of a LoRA step's peak memory once the LM head is chunked; this
    trades them for one more decoder forward per step at ``every_n_layers=1``. Non-reentrant
    checkpointing, so frozen inputs need no ``requires_grad`` trick. Generation (rollouts,
    evaluation) runs in eval mode and keeps its KV cache.
    """
    if every_n_layers == 0:
        return
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"train.activation_checkpointing={every_n_layers}: "
                         f"{type(model).__name__} does not support activation checkpointing; "
                         "set train.activation_checkpointing=0")
    model.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=every_n_layers)


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


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run one training job described by ``cfg`` and return a summary dict."""
    from accelerate import Accelerator
    from hydra.utils import instantiate
    from tqdm.auto import tqdm

    from pdalign.data import PreferenceCollator, build_dataset, source_file
    from pdalign.dual import DualState
    from pdalign.models import reference_mode

    run_dir = Path(run_dir)
    check_config(cfg)  # every key and range, before anything reads one
    tcfg, dcfg = cfg.train, cfg.data
    steps, accum = int(tcfg.steps), int(tcfg.grad_accum)
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=accum)
    device, main = accelerator.device, accelerator.is_main_process
    seed_everything(int(cfg.seed))

    # ---- everything that can be wrong in the config or data fails here, before the model --
    objective = instantiate(cfg.objectives[cfg.method.objective])
    # every listed constraint is evaluated on held-out prompts; only primal-dual trains on them
    eval_constraints = build_constraints(cfg)
    constraints = eval_constraints if cfg.method.constrained else []
    names = [c.name for c in constraints]
    dual_kwargs = OmegaConf.to_container(cfg.dual, resolve=True)  # keys = DualState's args
    dual_kwargs["lambda_max"] = [c.lambda_max if c.lambda_max is not None
                                 else float(cfg.dual.lambda_max) for c in constraints]
    dual = DualState(names, **dual_kwargs)
    dtype = resolve_dtype(tcfg.dtype, device.type)
    quantize = bool(cfg.peft.get("quantize", False))
    quant = bnb_4bit_config(dtype, cfg.peft.quant_type, cfg.peft.double_quant) if quantize else None
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    train_set, heldout_set, skipped = build_dataset(
        tokenizer, dcfg.train, heldout=dcfg.get("heldout"), columns=dict(dcfg.columns),
        max_length=dcfg.max_length, max_prompt_length=dcfg.max_prompt_length,
        skip_invalid=dcfg.skip_invalid)
    log.info("data: %d train pairs, %d held-out, skipped %s", len(train_set), len(heldout_set),
             dict(skipped) or "none")
    forced = os.environ.get(FORCE_DTYPE_ENV) if tcfg.dtype == "auto" else None
    log.info("precision: %s on %s (train.dtype=%s%s)", dtype, device, tcfg.dtype,
             f", forced by {FORCE_DTYPE_ENV}={forced}" if forced else "")
    need = int(tcfg.batch_size) * accelerator.num_processes
    if len(train_set) < need:
        raise ValueError(
            f"data.train has {len(train_set)} usable pairs, fewer than one batch "
            f"(train.batch_size={int(tcfg.batch_size)} x {accelerator.num_processes} processes; "
            f"the loader drops a ragged last batch). Lower train.batch_size or add pairs")
    ckpt.resume_path(tcfg.get("resume"), run_dir)  # a bad train.resume fails before the model
    recompute = int(tcfg.get("activation_checkpointing") or 0)
    if recompute < 0:
        raise ValueError(f"train.activation_checkpointing must be >= 0 (0 = off, k = every k-th "
                         f"decoder layer), got {recompute}")

    # ---- model, reference, optimizer, rollouts ---------------------------------------------
    model, _ = load_model(cfg.model.name_or_path, tiny=cfg.model.get("tiny"),
                          quantization=quant, trust_remote_code=cfg.model.trust_remote_code,
                          revision=cfg.model.get("revision"))
    model.config.use_cache = False
    enable_activation_checkpointing(model, recompute)
    adapter = cfg.peft.get("adapter", "lora") != "none"
    model = apply_peft(model, OmegaConf.to_container(cfg.peft) if adapter else None,
                       quantized=quantize).to(device)
    needs_kl = any(getattr(c, "needs_kl", False) for c in constraints)
    ref_model = (frozen_copy(model) if (objective.needs_reference or needs_kl)
                 and not has_adapter(model) else None)
    precomputed = bool(tcfg.precompute_ref_logps and objective.needs_reference)
    if precomputed:
        model_id = {"model": OmegaConf.to_container(cfg.model, resolve=True),
                    "quantize": quantize, "dtype": str(dtype)}
        path = Path(tcfg.ref_cache_dir or cache_dir() / "reference")
        with autocast(dtype, device.type):
            train_set = precompute_reference(
                model, train_set, PreferenceCollator(tokenizer.pad_token_id),
                path / f"{reference_cache_key(model_id, train_set)}.pt",
                batch_size=int(tcfg.batch_size), ref_model=ref_model, device=device,
                progress=main)
    # The reference forward runs in the step when the loss needs it and it was not cached,
    # and always for the exact KL budget (which needs the reference's whole distribution).
    ref_in_step = needs_kl or (objective.needs_reference and not precomputed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, tcfg, cfg.peft)
    scheduler = _schedule(optimizer, tcfg)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=int(tcfg.batch_size), shuffle=True, drop_last=True,
        generator=generator, collate_fn=PreferenceCollator(tokenizer.pad_token_id))
    policy, optimizer, loader, scheduler = accelerator.prepare(
        PolicyForward(model, ref_model), optimizer, loader, scheduler)
    batches = BatchStream(loader, generator)
    # One process: rollout rows get a forward of their own at their own width (~half the
    # pairs' here) instead of being padded to the pairs' width. Under DDP one forward per
    # backward is required, so they share the pairs' forward there.
    shared_forward = accelerator.num_processes > 1
    # Chosen and rejected share their prompt: it runs once per pair (policy and reference),
    # the same numbers with the prompt's share of the decoder work and activations saved.
    share_setting = tcfg.get("share_prompt", "auto")
    share_prompt = resolve_share_prompt(share_setting, device.type)
    log.info("shared prompt: %s (train.share_prompt=%s)", share_prompt, share_setting)
    rollouts = None
    if any(c.kind == "rollout" for c in constraints):
        from pdalign.rollout import RolloutManager

        # each data-parallel rank samples its own responses; g is averaged across ranks
        rollouts = RolloutManager(constraints, tokenizer, every=int(tcfg.rollout_every),
                                  seed=int(cfg.seed) + accelerator.process_index,
                                  **OmegaConf.to_container(tcfg.rollout))
    start_step, elapsed_before = ckpt.maybe_resume(tcfg.get("resume"), run_dir, model,
                                                   optimizer, scheduler, dual, rollouts, batches)
    if any(c.needs_calibration for c in eval_constraints):
        from pdalign.rollout import RolloutManager

        calibrator = rollouts or RolloutManager(eval_constraints, tokenizer, seed=int(cfg.seed),
                                                **OmegaConf.to_container(tcfg.rollout))
        with reference_mode(model, ref_model) as ref:
            log.info("calibrated from the reference: %s", calibrator.calibrate(ref))
    eps = torch.tensor([float(c.epsilon) for c in constraints], dtype=torch.float64)
    if main:
        # the same files for every method of a sweep: training data, and each listed
        # constraint's training and held-out prompt sets
        files = [source_file(dcfg.train), source_file(dcfg.get("heldout"))]
        sets = cfg.eval.get("sets") or {}
        for c in eval_constraints:
            if c.kind == "rollout":
                files.append(c.prompt_path)
                files += [path for path, _ in heldout_prompt_sets(c, sets.get(c.name)).values()]
        write_manifest(run_dir, OmegaConf.to_container(cfg, resolve=True),
                       [f for f in files if f is not None], seed=int(cfg.seed),
                       dtype=str(dtype).replace("torch.", ""),
                       world_size=accelerator.num_processes)
    logger = MetricsLogger(run_dir, OmegaConf.to_container(cfg, resolve=True),
                           use_wandb=cfg.logging.wandb, project=cfg.logging.project,
                           group=cfg.logging.group, name=run_dir.name, enabled=main,
                           resume=start_step > 0, resume_step=start_step)

    # ---- the loop ----------------------------------------------------------------------
    bar = tqdm(total=steps, initial=start_step, desc=f"train {cfg.method.name}", disable=not main)
    # the run's clock: a resumed run continues from the training time its checkpoint saved
    step, nonfinite, warned = start_step, 0, set()
    t_start = time.perf_counter() - elapsed_before
    record: dict[str, Any] = {}
    while step < steps:
        t0 = time.perf_counter()
        model.train()
        if rollouts is not None:
            with autocast(dtype, device.type):
                rollouts.maybe_sample(model, step, device=device)
        g_sum = torch.zeros(len(constraints), dtype=torch.float64)
        sums: dict[str, float] = {}
        tokens, finite = 0, True
        for _ in range(accum):
            batch = batches.next()
            b = batch["index"].shape[0]
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
            ro = rollouts.rows(device) if rollouts is not None else None
            if ro is not None and shared_forward:  # rollout rows join the pairs' forward
                ids = _pad_cat(ids, ro["input_ids"], tokenizer.pad_token_id)
                mask = _pad_cat(mask, ro["attention_mask"], 0)
                labels = _pad_cat(labels, ro["labels"], -100)
            with accelerator.accumulate(policy), autocast(dtype, device.type):
                out = policy(ids, mask, labels, ref_rows=2 * b if ref_in_step else 0,
                             with_kl=needs_kl, pairs=b if share_prompt else None)
                pref = {"chosen_logps": out["logps"][:b], "rejected_logps": out["logps"][b:2 * b],
                        "chosen_n_tokens": out["n_tokens"][:b],
                        "rejected_n_tokens": out["n_tokens"][b:2 * b]}
                if objective.needs_reference:
                    ref = (torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
                           if precomputed else out["ref_logps"][:2 * b])
                    pref["ref_chosen_logps"], pref["ref_rejected_logps"] = ref[:b], ref[b:]
                losses, metrics = objective(pref)
                loss = losses.mean()
                if constraints:
                    batch_out = SequenceLogps(**{k: v[:2 * b] for k, v in out.items()})
                    est = {c.name: c.estimate(batch_out) for c in constraints
                           if c.kind == "batch"}
                    if ro is not None:
                        ro_logps = (out["logps"][2 * b:] if shared_forward else policy(
                            ro["input_ids"], ro["attention_mask"], ro["labels"])["logps"])
                        est.update(rollouts.estimates(ro_logps, step))
                        tokens += 0 if shared_forward else int(ro["attention_mask"].sum())
                    # primal: the Lagrangian with this step's lambda (constant in theta)
                    lam = dual.lam.to(device=loss.device, dtype=torch.float32)
                    for i, c in enumerate(constraints):
                        loss = loss + lam[i] * (est[c.name].surrogate - float(eps[i]))
                        g_sum[i] += float(est[c.name].value)
                finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(g_sum).all())
                if accelerator.num_processes > 1:
                    # Skip on every rank or none: a rank that skipped backward would leave
                    # the others waiting in DDP's gradient all-reduce.
                    finite = _finite_on_all_ranks(accelerator, finite, loss.device)
                if not finite:
                    break
                accelerator.backward(loss)  # accelerate divides by grad_accum
            metrics["loss/pref"] = float(losses.detach().mean())
            metrics["loss"] = float(loss.detach())
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v / accum
            tokens += int(mask.sum())

        grad_norm = (accelerator.clip_grad_norm_(params, tcfg.max_grad_norm)
                     if finite and tcfg.max_grad_norm else None)
        if grad_norm is not None and not torch.isfinite(grad_norm):
            finite = False  # a finite loss with overflowing gradients: skip it the same way
        if not finite:  # skip the whole step: no primal update, no dual update
            optimizer.zero_grad(set_to_none=True)
            nonfinite += 1
            log.warning("step %d: non-finite loss, gradient or constraint estimate; step "
                        "skipped (%d in a row)", step + 1, nonfinite)
            logger.log({"step": step + 1, "skipped_nonfinite": 1})
            if nonfinite >= int(tcfg.max_nonfinite_steps):
                raise FloatingPointError(
                    f"{nonfinite} non-finite steps in a row at step {step + 1}: the likely "
                    f"causes are a too-large train.lr, a too-large beta, or bf16 overflow "
                    f"(try train.dtype=fp32)")
            step += 1
            bar.update(1)
            if main and step == steps:
                ckpt.save(run_dir, step, model, optimizer, scheduler, dual, rollouts, batches,
                          keep_last=int(tcfg.keep_last),
                          elapsed_s=time.perf_counter() - t_start)
            continue
        nonfinite = 0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        # ---- dual: same iteration, same g_i, mean over ranks so lambda is identical ------
        record: dict[str, Any] = {"step": step + 1}
        if constraints:
            g = accelerator.reduce((g_sum / accum).to(device), reduction="mean")
            g = g.cpu().to(torch.float64)
            lam_used = dual.lam.clone()
            dual.update(g, eps)
            for i, name in enumerate(names):
                record[f"lambda/{name}"] = float(lam_used[i])
                record[f"lambda_next/{name}"] = float(dual.lam[i])
                record[f"g/{name}"] = float(g[i])
                record[f"eps/{name}"] = float(eps[i])
                record[f"violation/{name}"] = float(g[i] - eps[i])
            for i in dual.stalled():
                if names[i] not in warned:
                    warned.add(names[i])
                    log.warning("constraint %s is not being met at the current capacity: its "
                                "lambda is pinned at lambda_max or keeps rising (lambda=%.3f)",
                                names[i], float(dual.lam[i]))
        if device.type == "cuda":  # kernels run asynchronously: time the step, not its launch
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        record.update(sums)
        record.update({"lr": scheduler.get_last_lr()[0],
                       "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                       "step_time_s": dt, "tokens_per_s": tokens / dt if dt > 0 else 0.0})
        step += 1
        if step % int(cfg.logging.every) == 0 or step == steps:
            logger.log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if main and (step == steps or (cfg.eval.every and step % int(cfg.eval.every) == 0)):
            logger.log({"step": step, **evaluate(
                model, tokenizer, eval_constraints, heldout_features=heldout_set,
                objective=objective, ref_model=ref_model, dtype=dtype, device=device,
                progress=main, **eval_kwargs(cfg.eval))})
        every = int(tcfg.checkpoint_every)
        if main and ((every and step % every == 0) or step == steps):
            ckpt.save(run_dir, step, model, optimizer, scheduler, dual, rollouts, batches,
                      keep_last=int(tcfg.keep_last),
                      elapsed_s=time.perf_counter() - t_start)
    bar.close()
    logger.close()
    accelerator.wait_for_everyone()
    return {"steps": step, "wall_time_s": time.perf_counter() - t_start,
            "lambda": dual.as_dict(), "dtype": str(dtype).replace("torch.", ""),
            "world_size": accelerator.num_processes,
            "final_loss": record.get("loss") if step > start_step else None}
