"""Config -> objects, for every entry point alike: training, ``pdalign-eval``, the benchmarks.

One function per thing built, each reading only its own config group: the preference
objective, the constraints, the dual state, the precision, the tokenizer and datasets, the
policy (model, adapter or 4-bit base, reference handling) or a saved one, the rollout manager
and the calibration of constraints that set epsilon from the reference. Nothing else in the
package builds these, so an entry point is a few calls here and no copied setup.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pdalign.constraint import Constraint
from pdalign.dual import DualState
from pdalign.models import (
    apply_peft,
    bnb_4bit_config,
    enable_activation_checkpointing,
    frozen_copy,
    has_adapter,
    load_model,
    load_tokenizer,
    reference_mode,
    resolve_dtype,
)

log = logging.getLogger("pdalign")


def build_objective(cfg: DictConfig):
    """The preference objective ``method.objective`` names (a `pdalign.losses` class). An
    objective on unpaired rows (KTO) checks the batch settings it needs, before any model."""
    from hydra.utils import instantiate

    objective = instantiate(cfg.objectives[cfg.method.objective])
    if getattr(objective, "unpaired", False):
        objective.check_batch(int(cfg.train.batch_size),
                              bool(cfg.train.get("precompute_ref_logps", False)))
    return objective


def build_constraints(cfg: DictConfig) -> list[Constraint]:
    """Instantiate every listed constraint (validates eps and prompt files before any model)."""
    from hydra.utils import instantiate

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
    from pdalign.data import PreferenceDataError, build_dataset, source_file

    objective = objective if objective is not None else build_objective(cfg)
    unpaired = bool(getattr(objective, "unpaired", False))
    d = cfg.data
    train, held, skipped = build_dataset(
        tokenizer, d.train, heldout=d.get("heldout"), columns=dict(d.columns),
        max_length=d.max_length, max_prompt_length=d.max_prompt_length,
        skip_invalid=d.skip_invalid, unpaired=unpaired, unpair=bool(d.get("unpair", False)))
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
    return Policy(model, ref_model, tokenizer, dtype, device)


def load_saved_policy(cfg: DictConfig, checkpoint: Path, device: torch.device,
                      needs_base: bool) -> Policy:
    """A saved policy: a peft adapter directory on the config's base model, or a full
    ``save_pretrained`` model (then the config's base is its reference, loaded only when
    ``needs_base``)."""
    from pdalign.models import load_tokenizer

    dtype, quant = build_precision(cfg, device)
    adapter = (checkpoint / "adapter_config.json").is_file()
    base, tokenizer = _load_base(cfg, quant) if adapter or needs_base else (None, None)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, checkpoint).to(device)
        return Policy(model, None, tokenizer, dtype, device)
    from transformers import AutoModelForCausalLM

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
    from peft import PeftModel

    from pdalign.models import dequantized_state_dict

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
    from pdalign.rollout import RolloutManager

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
    with policy.reference() as ref:
        done = calibrator.calibrate(ref)
    log.info("calibrated from the reference: %s", done)
    check_budgets(cfg, constraints)
    return done
