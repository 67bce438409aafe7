"""Config -> objects, for every entry point alike: training, ``pdalign-eval``, the benchmarks.

One function per thing built, each reading only its own config group: the preference
objective, the constraints, the dual state, the precision, the tokenizer and datasets, the
policy (model, adapter or 4-bit base, reference handling) or a saved one, the rollout manager
and the calibration of constraints that set epsilon from the reference; for training also the
reference cache, the optimizer and schedule, the batch loader and the metrics logger. Nothing else in the
package builds these, so an entry point is a few calls here and no copied setup.
"""

from __future__ import annotations

import itertools
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM

from pdalign.contract.base import Constraint
from pdalign.contract.manager import RolloutManager
from pdalign.data.features import PreferenceCollator, build_dataset
from pdalign.data.readers import PreferenceDataError, source_file
from pdalign.policy.models import (
    apply_peft,
    bnb_4bit_config,
    cache_dir,
    dequantized_state_dict,
    enable_activation_checkpointing,
    frozen_copy,
    has_adapter,
    hold_frozen_linears,
    load_model,
    load_tokenizer,
    reference_mode,
)
from pdalign.policy.precision import autocast, resolve_dtype
from pdalign.policy.reference import precompute_reference, reference_cache_key
from pdalign.runfiles.export_card import is_merged_export
from pdalign.runfiles.metrics import MetricsLogger
from pdalign.training.dual import DualState

log = logging.getLogger("pdalign")


def build_objective(cfg: DictConfig):
    """The preference objective ``method.objective`` names (a `pdalign.objectives.losses` class). An
    objective on unpaired rows (KTO) checks the batch settings it needs, before any model."""

    objective = instantiate(cfg.objectives[cfg.method.objective])
    if getattr(objective, "unpaired", False):
        objective.check_batch(int(cfg.train.batch_size),
                              bool(cfg.train.get("precompute_ref_logps", False)))
    return objective


def build_constraints(cfg: DictConfig) -> list[Constraint]:
    """Instantiate every listed constraint (validates eps and prompt files before any model)."""

    built = []
    for key, node in (cfg.get("constraints") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"constraints.{key} has no _target_; each entry of conf/constraints/ "
                             f"must name its class, e.g. _target_: pdalign.constraints.length.Length")
        try:
            # an entry without a name takes its key's, so errors and logs say the same thing
            margin = node.get("margin", 0.0)
            if "margin" in node:  # the trainer's key, not the class's: left out of its arguments
                node = OmegaConf.create({k: v for k, v in OmegaConf.to_container(
                    node, resolve=True).items() if k != "margin"})
            c = instantiate(node) if "name" in node else instantiate(node, name=key)
            c.set_margin(margin)
            built.append(c)
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
    check_budgets(cfg, built)
    return built


def check_budgets(cfg: DictConfig, constraints: list[Constraint]) -> None:
    """A constraint whose bound the generation budget caps (Length) checks its epsilon against
    both budgets, training rollouts and held-out evaluation, before any model loads."""
    for c in constraints:
        if (check := getattr(c, "check_budget", None)) is not None:
            check(int(cfg.train.rollout.max_new_tokens), "train.rollout.max_new_tokens")
            check(int(cfg.eval.max_new_tokens), "eval.max_new_tokens")


def build_dual(cfg: DictConfig, constraints: list[Constraint]) -> DualState:
    """The multipliers of ``constraints``: the ``dual`` group's rule, a constraint's own
    ``lambda_max`` over the group's, each constraint's ``scale``."""
    kwargs = OmegaConf.to_container(cfg.dual, resolve=True)  # keys = DualState's args
    kwargs["lambda_max"] = [c.lambda_max if c.lambda_max is not None
                            else float(cfg.dual.lambda_max) for c in constraints]
    kwargs["scale"] = [c.scale for c in constraints]
    return DualState([c.name for c in constraints], **kwargs)


def build_precision(cfg: DictConfig, device: torch.device) -> tuple[torch.dtype, Any]:
    """(autocast dtype by the ``train.dtype`` rule, the 4-bit quantization config or None).

    The 4-bit check runs one tiny nf4 matmul, so a machine where QLoRA cannot run fails here,
    naming ``peft=lora``, before any model loads.
    """
    dtype = resolve_dtype(cfg.train.get("dtype", "auto"), device.type)
    quant = None
    if cfg.get("peft") is not None and cfg.peft.get("quantize", False):
        quant = bnb_4bit_config(dtype, cfg.peft.quant_type, cfg.peft.double_quant)
    return dtype, quant


def build_tokenizer(cfg: DictConfig):
    return load_tokenizer(cfg.model.name_or_path)


def build_datasets(cfg: DictConfig, tokenizer, objective=None) -> tuple[list, list, dict]:
    """(train features, held-out features, skipped rows per reason) from the ``data`` group:
    pairs, or unpaired rows when the objective trains on them (KTO; ``data.unpair=true`` splits
    a pair file into them), whose label balance is then checked against the objective's class
    weights (a warning, as in TRL)."""

    objective = objective if objective is not None else build_objective(cfg)
    unpaired = bool(getattr(objective, "unpaired", False))
    d = cfg.data
    train, held, skipped = build_dataset(
        tokenizer, d.train, heldout=d.get("heldout"), columns=dict(d.columns),
        max_length=d.max_length, max_prompt_length=d.max_prompt_length,
        on_overlong=d.get("on_overlong", "truncate"), skip_invalid=d.skip_invalid, unpaired=unpaired, unpair=bool(d.get("unpair", False)))
    if unpaired:
        n_desirable = sum(bool(f["label"]) for f in train)
        if n_desirable in (0, len(train)):  # possible only after skip_invalid dropped rows
            raise PreferenceDataError(
                f"after skipping invalid rows every training row has label="
                f"{'true' if n_desirable else 'false'}", source=str(source_file(d.train) or
                                                                    d.train),
                fix="repair the dropped rows or add rows of the other label")
        objective.check_balance(n_desirable, len(train) - n_desirable)
    return train, held, skipped


@dataclass
class Policy:
    """The model being trained or judged, and how its reference is had.

    Args:
        model: the policy (a PeftModel, or a plain causal LM).
        ref_model: a frozen copy for models without an adapter, when a reference is needed;
            None where the adapter disabled is the reference (or none is needed).
        tokenizer: its tokenizer.
        dtype: the autocast dtype every forward runs in.
        device: where it lives.
    """

    model: Any
    ref_model: Any
    tokenizer: Any
    dtype: torch.dtype
    device: torch.device

    @contextmanager
    def reference(self):
        """The reference policy: the adapter disabled, or the frozen copy."""
        with reference_mode(self.model, self.ref_model) as ref:
            yield ref


def warn_requantized_merge(cfg: DictConfig) -> bool:
    """Log a warning (and return True) when ``model.name_or_path`` is a merged export
    (``pdalign-export --merge``) and ``peft.quantize`` would quantize it to 4 bits again.

    A merged fine-tune's change to each weight is mostly smaller than half a step of the 4-bit
    grid, so quantizing it rounds the weights back toward the base it was trained from: the
    length scenario's concise start answered 32 held-out prompts in 32 tokens on average in
    bf16 and in 108 (53% at the 160 cap) once quantized to nf4
    (experiments/results/drift_length_start/requantized.json). Read before any
    model loads."""
    merged = bool(cfg.peft.get("quantize")) and is_merged_export(cfg.model.name_or_path)
    if merged:
        log.warning("model.name_or_path=%s is a merged fine-tune and peft.quantize=true "
                    "quantizes it to 4 bits again, which rounds most of its change back onto "
                    "the base's grid: the model trained here is closer to the base than to it. "
                    "Use peft=lora (a full-precision base) to train from a merged model",
                    cfg.model.name_or_path)
    return merged


def _load_base(cfg: DictConfig, quant):
    return load_model(cfg.model.name_or_path, tiny=cfg.model.get("tiny"), quantization=quant,
                      trust_remote_code=cfg.model.get("trust_remote_code", False),
                      revision=cfg.model.get("revision"))


def build_policy(cfg: DictConfig, tokenizer, *, dtype: torch.dtype, quant, device: torch.device,
                 needs_reference: bool) -> Policy:
    """The policy to train: the base model (4-bit where ``quant``), activation checkpointing,
    the ``peft`` adapter, and a frozen reference copy when one is needed and there is no
    adapter to disable."""
    model, _ = _load_base(cfg, quant)
    model.config.use_cache = False
    enable_activation_checkpointing(model, int(cfg.train.get("activation_checkpointing") or 0))
    adapter = cfg.peft.get("adapter", "lora") != "none"
    model = apply_peft(model, OmegaConf.to_container(cfg.peft) if adapter else None,
                       quantized=quant is not None).to(device)
    ref_model = frozen_copy(model) if needs_reference and not has_adapter(model) else None
    if quant is None and cfg.train.get("hold_frozen_in_dtype", True):
        # frozen base layers (and a frozen reference copy) in the compute dtype: no per-use cast
        held = sum(hold_frozen_linears(m, dtype) for m in (model, ref_model) if m is not None)
        log.info("frozen linear layers held in %s: %d (train.hold_frozen_in_dtype)", dtype, held)
    return Policy(model, ref_model, tokenizer, dtype, device)


def load_saved_policy(cfg: DictConfig, checkpoint: Path, device: torch.device,
                      needs_base: bool) -> Policy:
    """A saved policy: a peft adapter directory on the config's base model, or a full
    ``save_pretrained`` model (then the config's base is its reference, loaded only when
    ``needs_base``)."""

    dtype, quant = build_precision(cfg, device)
    adapter = (checkpoint / "adapter_config.json").is_file()
    base, tokenizer = _load_base(cfg, quant) if adapter or needs_base else (None, None)
    if adapter:
        from peft import PeftModel  # peft pulls bitsandbytes and torch.compile

        model = PeftModel.from_pretrained(base, checkpoint).to(device)
        return Policy(model, None, tokenizer, dtype, device)

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device)
    ref = frozen_copy(base.to(device)) if base is not None else None
    return Policy(model, ref, tokenizer or load_tokenizer(cfg.model.name_or_path), dtype, device)


def load_base_policy(cfg: DictConfig, device: torch.device) -> Policy:
    """The config's base model alone, as training loaded it (4-bit where ``peft`` quantizes),
    without an adapter: the base a checkpoint is compared against, or any model named by
    ``model.name_or_path`` to sample from."""
    dtype, quant = build_precision(cfg, device)
    model, tokenizer = _load_base(cfg, quant)
    return Policy(model if quant is not None else model.to(device), None, tokenizer, dtype,
                  device)


def load_merged_policy(cfg: DictConfig, checkpoint: Path, device: torch.device) -> Policy:
    """A saved adapter merged into its base: one plain float32 causal LM with no adapter.

    On a 4-bit (QLoRA) base the adapter is merged into the base's dequantized weights, the
    weights the adapter was trained against (nf4 codes times their scales), held in a plain
    float32 model of the same architecture; nothing is merged into, or re-quantized to, nf4.
    A full ``save_pretrained`` checkpoint (``peft=none``) comes back as it is.
    """
    from peft import PeftModel  # peft pulls bitsandbytes and torch.compile

    if not (checkpoint / "adapter_config.json").is_file():
        return load_saved_policy(cfg, checkpoint, device, needs_base=False)
    dtype, quant = build_precision(cfg, device)
    base, tokenizer = _load_base(cfg, None)
    if quant is not None:
        quantized, _ = _load_base(cfg, quant)
        base.load_state_dict(dequantized_state_dict(quantized, base), strict=True)
        del quantized
    base = base.float()
    merged = PeftModel.from_pretrained(base, checkpoint).merge_and_unload()
    return Policy(merged.to(device), None, tokenizer, dtype, device)


def build_rollouts(cfg: DictConfig, constraints: list[Constraint], tokenizer, *,
                   rank: int = 0, every: int | None = None):
    """The rollout manager of the constraints that score policy samples, or None when none
    does. Each data-parallel rank samples with its own seed (``seed + rank``)."""

    if not any(c.sampled_prompts() is not None for c in constraints):
        return None
    kwargs = OmegaConf.to_container(cfg.train.rollout, resolve=True)
    if every is not None:
        kwargs["every"] = every
    return RolloutManager(constraints, tokenizer, seed=int(cfg.seed) + rank, **kwargs)


def calibrate(cfg: DictConfig, constraints: list[Constraint], policy: Policy,
              rollouts=None) -> dict[str, float]:
    """Set epsilon of the constraints that take it from the reference (Length's relative mode)
    by sampling the reference on their training prompts; {} when none needs it. ``rollouts``
    (the training manager) samples when given, so its state records what was measured."""
    if not any(c.needs_calibration for c in constraints):
        check_budgets(cfg, constraints)  # a resumed relative bound came back from its checkpoint
        return {}
    calibrator = rollouts or build_rollouts(cfg, constraints, policy.tokenizer)
    with policy.reference() as ref, autocast(policy.dtype, policy.device.type):
        done = calibrator.calibrate(ref)
    log.info("calibrated from the reference: %s", done)
    check_budgets(cfg, constraints)
    return done


# ---- what only training builds: reference cache, optimizer, batches, logger -------------------

def _optimizer(params, tcfg: DictConfig, peft_cfg: DictConfig):
    name = peft_cfg.get("optimizer") or tcfg.optimizer
    kwargs = {"lr": tcfg.lr, "weight_decay": tcfg.weight_decay}
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    import bitsandbytes as bnb  # 8-bit optimizers only; heavy, may not load

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


def consumed_positions(n: int, batch_size: int, samples: int, seed: int) -> list[int] | None:
    """The dataset positions the first ``samples`` draws of the training loader take, or None
    when the run reaches past its first epoch (then it reads every pair).

    The training loader shuffles the n pairs with a generator seeded by ``seed`` and keeps whole
    batches only; accelerate deals its batches out to the ranks in turn, so after k optimizer
    steps the run has read the first k · grad_accum · ranks batches. The same loader over the
    positions, with its own generator, gives them (a prediction that falls short costs only
    time: the step computes a pair the cache lacks).
    """
    epoch = (n // batch_size) * batch_size
    if samples >= epoch:
        return None
    order = torch.utils.data.DataLoader(range(n), batch_size=batch_size, shuffle=True,
                                        drop_last=True,
                                        generator=torch.Generator().manual_seed(seed))
    return [int(i) for batch in itertools.islice(order, -(-samples // batch_size))
            for i in batch][:samples]


def build_reference_cache(cfg: DictConfig, policy: Policy, train_set: list, quant, *,
                          world_size: int, progress: bool) -> list:
    """The training features with their reference log-probs attached from the on-disk cache
    (``train.precompute_ref_logps``; computed for the pairs this run reads, `consumed_positions`)."""
    tcfg = cfg.train
    model_id = {"model": OmegaConf.to_container(cfg.model, resolve=True),
                "quantize": quant is not None, "dtype": str(policy.dtype)}
    path = Path(tcfg.ref_cache_dir or cache_dir() / "reference")
    # only the pairs this run will read: a short run over a large set pays for its own
    draws = int(tcfg.steps) * int(tcfg.grad_accum) * world_size * int(tcfg.batch_size)
    with autocast(policy.dtype, policy.device.type):
        return precompute_reference(
            policy.model, train_set, PreferenceCollator(policy.tokenizer.pad_token_id),
            path / f"{reference_cache_key(model_id, train_set)}.pt",
            batch_size=int(tcfg.batch_size), ref_model=policy.ref_model, device=policy.device,
            progress=progress, rows=consumed_positions(len(train_set), int(tcfg.batch_size),
                                                       draws, int(cfg.seed)))


def build_optimizer(cfg: DictConfig, params: list) -> tuple[Any, Any]:
    """(optimizer, scheduler) of the trainable ``params``: ``train.optimizer`` (or the peft
    group's, e.g. QLoRA's 8-bit AdamW), then warm-up and a constant or cosine schedule."""
    optimizer = _optimizer(params, cfg.train, cfg.peft)
    return optimizer, _schedule(optimizer, cfg.train)


def build_loader(cfg: DictConfig, train_set: list, tokenizer) -> tuple[Any, torch.Generator]:
    """The training loader (whole, shuffled batches of ``train.batch_size``) and the generator
    that orders each epoch, seeded by ``seed`` (what `consumed_positions` replays)."""
    generator = torch.Generator().manual_seed(int(cfg.seed))
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=int(cfg.train.batch_size), shuffle=True, drop_last=True,
        generator=generator, collate_fn=PreferenceCollator(tokenizer.pad_token_id))
    return loader, generator


def build_logger(cfg: DictConfig, run_dir: Path, *, main: bool, resume_step: int) -> MetricsLogger:
    """The run's metrics logger: ``metrics.jsonl`` (rank 0 only), W&B when ``logging.wandb``;
    resuming at step N drops the records after N that the run is about to log again."""
    return MetricsLogger(run_dir, OmegaConf.to_container(cfg, resolve=True),
                         use_wandb=cfg.logging.wandb, project=cfg.logging.project,
                         group=cfg.logging.group, name=run_dir.name, enabled=main,
                         resume=resume_step > 0, resume_step=resume_step)
