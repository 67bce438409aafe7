"""The training loop: setup -> (forward, primal step, dual step) per step -> log -> checkpoint.

One function, `train`, reads top to bottom. Baselines (``method.constrained: false``) run the
same loop with no constraint terms and no dual step, so "DPO vs primal-dual" differs by exactly
the Lagrangian terms. A step of the primal-dual method:

1. one forward over [chosen ; rejected ; rollout samples] (the reference pass on the pairs
   only, adapter disabled), giving L_pref, each constraint's estimate g_i and surrogate s_i;
2. loss = L_pref + sum_i lambda_i * (s_i - eps_i) -> backward -> optimizer step;
3. in the same iteration, from the same g_i (mean-all-reduced across ranks, so lambda is
   identical everywhere): lambda <- DualState.update(g, eps).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pdalign import checkpoint as ckpt
from pdalign.logging import MetricsLogger
from pdalign.logprobs import precompute_reference, reference_cache_key, sequence_logps
from pdalign.models import (
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

    def forward(self, input_ids, attention_mask, labels, ref_rows: int = 0, with_kl: bool = False):
        out = sequence_logps(self.model, input_ids, attention_mask, labels,
                             with_ref=ref_rows > 0, with_kl=with_kl and ref_rows > 0,
                             ref_model=self._ref[0], ref_rows=ref_rows or None)
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
            built.append(instantiate(node))
        except Exception as err:  # hydra wraps import errors; surface one clear line
            cause = err.__cause__ or err
            raise ValueError(f"constraints.{key}: {cause}") from err
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


def _pad_cat(a: torch.Tensor, b: torch.Tensor, value: int) -> torch.Tensor:
    width = max(a.shape[1], b.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)  # noqa: E731
    return torch.cat([pad(a), pad(b)])


def train(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run one training job described by ``cfg`` and return a summary dict."""
    from accelerate import Accelerator
    from hydra.utils import instantiate

    from pdalign.data import PreferenceCollator, build_dataset
    from pdalign.dual import DualState

    run_dir = Path(run_dir)
    tcfg, dcfg = cfg.train, cfg.data
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))
    seed_everything(int(cfg.seed))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              gradient_accumulation_steps=int(tcfg.grad_accum))
    device = accelerator.device
    main = accelerator.is_main_process

    # ---- everything that can be wrong in the config or data fails here, before the model --
    objective = instantiate(cfg.objectives[cfg.method.objective])
    constraints = build_constraints(cfg) if cfg.method.constrained else []
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
    log.info("precision: %s autocast on %s (train.dtype=%s)", dtype, device, tcfg.dtype)

    # ---- model, reference, optimizer ---------------------------------------------------
    model, _ = load_model(cfg.model.name_or_path, tiny=cfg.model.get("tiny"),
                          quantization=quant, trust_remote_code=cfg.model.trust_remote_code,
                          revision=cfg.model.get("revision"))
    model.config.use_cache = False
    adapter = cfg.peft.get("adapter", "lora") != "none"
    model = apply_peft(model, OmegaConf.to_container(cfg.peft) if adapter else None,
                       quantized=quantize)
    needs_kl = any(getattr(c, "needs_kl", False) for c in constraints)
    needs_ref = objective.needs_reference or needs_kl
    ref_model = frozen_copy(model) if needs_ref and not has_adapter(model) else None
    if tcfg.precompute_ref_logps and objective.needs_reference:
        model_id = {"model": OmegaConf.to_container(cfg.model, resolve=True),
                    "quantize": quantize, "dtype": str(dtype)}
        key = reference_cache_key(model_id, train_set)
        with autocast(dtype, device.type):
            train_set = precompute_reference(
                model, train_set, PreferenceCollator(tokenizer.pad_token_id),
                Path(tcfg.ref_cache_dir or cache_dir() / "reference") / f"{key}.pt", batch_size=int(tcfg.batch_size),
                ref_model=ref_model, device=device, progress=main)
    policy = PolicyForward(model, ref_model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _optimizer(params, tcfg, cfg.peft)
    scheduler = _schedule(optimizer, tcfg)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=int(tcfg.batch_size), shuffle=True, drop_last=True,
        generator=generator, collate_fn=PreferenceCollator(tokenizer.pad_token_id))
    policy, optimizer, loader, scheduler = accelerator.prepare(policy, optimizer, loader,
                                                               scheduler)

    names = [c.name for c in constraints]
    eps = torch.tensor([float(c.epsilon) for c in constraints], dtype=torch.float64)
    dual_kwargs = OmegaConf.to_container(cfg.dual, resolve=True)  # keys = DualState's args
    dual_kwargs["lambda_max"] = [c.lambda_max if getattr(c, "lambda_max", None) is not None
                                 else float(cfg.dual.lambda_max) for c in constraints]
    dual = DualState(names, **dual_kwargs)
    rollout_constraints = [c for c in constraints if c.kind == "rollout"]
    rollouts = None
    if rollout_constraints:
        from pdalign.rollout import RolloutManager

        rollouts = RolloutManager(rollout_constraints, tokenizer, every=int(tcfg.rollout_every),
                                  seed=int(cfg.seed), **OmegaConf.to_container(tcfg.rollout))
    logger = MetricsLogger(run_dir, OmegaConf.to_container(cfg, resolve=True),
                           use_wandb=cfg.logging.wandb, project=cfg.logging.project,
                           group=cfg.logging.group, name=run_dir.name, enabled=main)
    state = {"step": 0, "nonfinite": 0, "warned": set()}
    start_step = ckpt.maybe_resume(tcfg.get("resume"), run_dir, accelerator.unwrap_model(policy).model,
                                   optimizer, scheduler, dual, rollouts, generator)
    state["step"] = start_step

    # ---- the loop ----------------------------------------------------------------------
    from tqdm.auto import tqdm

    bar = tqdm(total=int(tcfg.steps), initial=start_step, desc=f"train {cfg.method.name}",
               disable=not main)
    data_iter = iter(loader)
    t_start = time.perf_counter()
    while state["step"] < int(tcfg.steps):
        t0 = time.perf_counter()
        model.train()
        step = state["step"]
        if rollouts is not None:
            rollouts.maybe_sample(accelerator.unwrap_model(policy).model, step, device=device)
        g_sum = torch.zeros(len(constraints), dtype=torch.float64)
        metrics_acc: dict[str, float] = {}
        tokens = 0
        for _ in range(int(tcfg.grad_accum)):
            try:
                batch = next(data_iter)
            except StopIteration:
                data_iter = iter(loader)
                batch = next(data_iter)
            b = batch["index"].shape[0]
            ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
            ro = rollouts.rows(device) if rollouts is not None else None  # share the forward
            if ro is not None:
                ids = _pad_cat(ids, ro["input_ids"], tokenizer.pad_token_id)
                mask = _pad_cat(mask, ro["attention_mask"], 0)
                labels = _pad_cat(labels, ro["labels"], -100)
            ref_rows = 2 * b if needs_ref and "ref_chosen_logps" not in batch else 0
            with accelerator.accumulate(policy), autocast(dtype, device.type):
                out = policy(ids, mask, labels, ref_rows=ref_rows, with_kl=needs_kl)
                pref = {"chosen_logps": out["logps"][:b], "rejected_logps": out["logps"][b:2 * b],
                        "chosen_n_tokens": out["n_tokens"][:b],
                        "rejected_n_tokens": out["n_tokens"][b:2 * b]}
                if objective.needs_reference:
                    ref = out["ref_logps"] if ref_rows else torch.cat(
                        [batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
                    pref["ref_chosen_logps"], pref["ref_rejected_logps"] = ref[:b], ref[b:2 * b]
                losses, metrics = objective(pref)
                loss = losses.mean()
                estimates = {}
                if constraints:
                    batch_out = {k: v[:2 * b] for k, v in out.items()}
                    estimates.update({c.name: c.estimate(batch_out)
                                      for c in constraints if c.kind == "batch"})
                    if ro is not None:
                        estimates.update(rollouts.estimates(out["logps"][2 * b:], step))
                    lam = dual.lam.to(device=loss.device, dtype=torch.float32)
                    for i, c in enumerate(constraints):
                        loss = loss + lam[i] * (estimates[c.name].surrogate - float(c.epsilon))
                        g_sum[i] += float(estimates[c.name].value)
                if not torch.isfinite(loss):
                    break
                accelerator.backward(loss)  # accelerate divides by grad_accum
            metrics["loss/pref"] = float(losses.detach().mean())
            for k, v in metrics.items():
                metrics_acc[k] = metrics_acc.get(k, 0.0) + v / int(tcfg.grad_accum)
            tokens += int(mask.sum())

        if not torch.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            state["nonfinite"] += 1
            log.warning("step %d: non-finite loss, step skipped (%d in a row)", step,
                        state["nonfinite"])
            if state["nonfinite"] >= int(tcfg.max_nonfinite_steps):
                raise FloatingPointError(
                    f"{state['nonfinite']} non-finite steps in a row: lower train.lr, lower "
                    f"beta, or set train.dtype=fp32 if bf16 overflows")
            state["step"] += 1
            continue
        state["nonfinite"] = 0
        grad_norm = (accelerator.clip_grad_norm_(params, tcfg.max_grad_norm)
                     if tcfg.max_grad_norm else torch.tensor(float("nan")))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        # ---- dual step: same iteration, same g_i, identical on every rank --------------
        record: dict[str, Any] = {"step": step + 1}
        if constraints:
            g = g_sum / int(tcfg.grad_accum)
            g = accelerator.reduce(g.to(device), reduction="mean").cpu().to(torch.float64)
            lam_used = dual.lam.clone()
            dual.update(g, eps)
            for i, name in enumerate(names):
                record[f"lambda/{name}"] = float(lam_used[i])
                record[f"lambda_next/{name}"] = float(dual.lam[i])
                record[f"g/{name}"] = float(g[i])
                record[f"eps/{name}"] = float(eps[i])
                record[f"violation/{name}"] = float(g[i] - eps[i])
            for i in dual.stalled():
                if names[i] not in state["warned"]:
                    state["warned"].add(names[i])
                    log.warning("constraint %s is not being met at the current capacity: lambda "
                                "is pinned at lambda_max or keeps rising (lambda=%.3f)",
                                names[i], float(dual.lam[i]))
        dt = time.perf_counter() - t0
        record.update(metrics_acc)
        record.update({"loss": float(loss.detach()), "lr": scheduler.get_last_lr()[0],
                       "grad_norm": float(grad_norm), "step_time_s": dt,
                       "tokens_per_s": tokens / dt if dt > 0 else 0.0})
        state["step"] += 1
        if step % int(cfg.logging.every) == 0 or state["step"] == int(tcfg.steps):
            logger.log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        every = int(tcfg.checkpoint_every)
        if main and ((every and state["step"] % every == 0) or state["step"] == int(tcfg.steps)):
            ckpt.save(run_dir, state["step"], accelerator.unwrap_model(policy).model, optimizer,
                      scheduler, dual, rollouts, generator, keep_last=int(tcfg.keep_last))
    bar.close()
    logger.close()
    summary = {"steps": state["step"], "wall_time_s": time.perf_counter() - t_start,
               "lambda": dual.as_dict() if constraints else {}, "dtype": str(dtype),
               "world_size": accelerator.num_processes}
    accelerator.wait_for_everyone()
    return summary
