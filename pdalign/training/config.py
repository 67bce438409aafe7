"""Schema and range checks on a composed config: a typo or an out-of-range value in a key is one
clear error before anything runs.

Hydra's struct mode already rejects an unknown key given on the command line. A key misspelt
inside a YAML file (an experiment, a user's own group option) merges silently, though, so
`check_config` compares each group's keys with the union of the keys its shipped options
define under ``conf/<group>/`` and names the offending key, its group and the known keys.
`check_ranges` then checks every numeric or enumerated knob against `RANGES`, so ``train.lr=0``
or ``train.steps=0`` stops before the model loads instead of failing in torch after it (or
training nothing and reporting success).
"""

from __future__ import annotations

import difflib
import math
import re
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# The one path of the shipped Hydra configs (the checkout's conf/; an editable install keeps it),
# read by every command and by the config checks.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
CHECKED_GROUPS = ("model", "data", "peft", "method", "dual", "train", "eval", "logging")


def _paths(node, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in node.items():
        path = f"{prefix}{key}"
        keys.add(path)
        if isinstance(value, dict) and value:
            keys |= _paths(value, f"{path}.")
    return keys


@lru_cache(maxsize=None)
def known_keys(group: str) -> frozenset[str]:
    """Dotted key paths any shipped ``conf/<group>/*.yaml`` defines (defaults lists excluded)."""
    keys: set[str] = set()
    for path in (CONF_DIR / group).glob("*.yaml"):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
        node.pop("defaults", None)
        keys |= _paths(node)
    return frozenset(keys)


def check_config(cfg: DictConfig) -> None:
    """Raise ValueError naming the first key no shipped option of its group knows, then run
    `check_ranges`."""
    for group in CHECKED_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        known = known_keys(group)
        if not known:
            continue
        container = OmegaConf.to_container(node, resolve=False)
        for key in sorted(_paths(container)):
            root = key.split(".")[0]
            if key in known or ("." in key and root in known and _free_form(group, root)):
                continue
            guess = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {group}.{guess[0]}?" if guess else ""
            raise ValueError(f"{group}.{key} is not a known key of the {group} config group "
                             f"(conf/{group}/*.yaml).{hint} Remove or rename it.")
    check_ranges(cfg)


def _free_form(group: str, root: str) -> bool:
    """Mappings whose keys are user data, not schema (tiny model shape, column maps, sets)."""
    return (group, root) in {("model", "tiny"), ("data", "columns"), ("eval", "sets")}


OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")

# key: (kind, range, meaning). kind: "integer" | "number" (finite) | "boolean", "... or null"
# where null is allowed, or a tuple of the allowed values. range: ">= a", "> a" or an interval
# "[a, b)"; None = any. A key the composed config lacks (peft=none has no r) is skipped.
# Checked where they are used, before the model, and so not here: train.dtype
# (models.resolve_dtype), train.resume (checkpoint.resume_path), train.activation_checkpointing
# (trainer.train), dual.* (dual.DualState), constraints.* (each constraint's constructor).
RANGES: dict[str, tuple] = {
    "train.steps": ("integer", ">= 1", "optimizer steps"),
    "train.batch_size": ("integer", ">= 1", "preference pairs per micro-batch"),
    "train.grad_accum": ("integer", ">= 1", "micro-batches per optimizer step"),
    "train.lr": ("number", "> 0", "the optimizer's learning rate"),
    "train.weight_decay": ("number", ">= 0", "AdamW weight decay"),
    "train.warmup_steps": ("integer", ">= 0", "linear warm-up steps; 0 = none"),
    "train.schedule": (("constant", "cosine"), None, "the learning-rate schedule after warm-up"),
    "train.max_grad_norm": ("number", ">= 0", "global gradient-norm clip; 0 = off"),
    "train.optimizer": (OPTIMIZERS, None, "the optimizer; the 8-bit ones need bitsandbytes"),
    "train.threads": ("integer", ">= 0", "torch CPU threads; 0 = torch's default"),
    "train.share_prompt": ((True, False, "auto"), None, "run each shared prompt once"),
    "train.pack_pairs": ("boolean", None, "the preference rows as one token trie"),
    "train.sharding": (("ddp", "fsdp2"), None, "how the ranks hold the model"),
    "train.precompute_ref_logps": ("boolean", None, "cache reference log-probs on disk"),
    "train.hold_frozen_in_dtype": ("boolean", None, "frozen base weights in the compute dtype"),
    "train.rollout_every": ("integer", ">= 1", "steps between rollouts"),
    "train.rollout.prompts_per_rollout": ("integer", ">= 1", "prompts per set per rollout"),
    "train.rollout.max_new_tokens": ("integer", ">= 1", "generation budget in tokens"),
    "train.rollout.temperature": ("number", "> 0", "sampling temperature; the constraint "
                                                    "surrogates need samples, not greedy text"),
    "train.rollout.top_p": ("number", "(0, 1]", "nucleus mass; 1 = off"),
    "train.rollout.batch_size": ("integer", ">= 1", "sequences per generate() call"),
    "train.rollout.is_clip": ("number", "> 1", "importance weights are clipped to "
                                               "[1/is_clip, is_clip]"),
    "train.rollout.no_signal_after": ("integer", ">= 0", "flat rollouts in a row before the "
                                                          "no-signal warning; 0 = never"),
    "train.checkpoint_every": ("integer", ">= 0", "steps between checkpoints; 0 = only at the end"),
    "train.keep_last": ("integer", ">= 1", "checkpoints kept on disk"),
    "train.max_nonfinite_steps": ("integer", ">= 1", "non-finite steps in a row before stopping"),
    "data.max_length": ("integer or null", ">= 2", "prompt + response tokens; null = no limit"),
    # >= data.max_length is caught per row when tokenizing, before the model (a prompt that
    # leaves no room for a response), and is harmless when every prompt is short
    "data.max_prompt_length": ("integer or null", ">= 1", "prompt tokens; null = no limit"),
    "data.on_overlong": (("truncate", "error", "skip"), None,
                         "what a prompt or response over its token budget gets"),
    "data.skip_invalid": ("boolean", None, "drop and count bad rows instead of stopping"),
    "data.unpair": ("boolean", None, "split pairs into desirable/undesirable rows for KTO"),
    "eval.every": ("integer", ">= 0", "steps between held-out evaluations; 0 = only at the end"),
    "eval.prompts_per_set": ("integer", ">= 1", "prompts per held-out set"),
    "eval.max_new_tokens": ("integer", ">= 1", "generation budget in tokens"),
    "eval.batch_size": ("integer", ">= 1", "prompts per generate() call"),
    "eval.temperature": ("number", ">= 0", "sampling temperature; 0 = greedy"),
    "eval.top_p": ("number", "(0, 1]", "nucleus mass; 1 = off"),
    "eval.seed": ("integer", None, "the evaluation's sampling seed"),
    "eval.confidence": ("number", "(0, 1)", "one-sided level of the upper bounds"),
    "eval.ifeval_prompts": ("integer", "[0, 541]", "IFEval prompts scored at each eval; 0 = off"),
    "eval.ifeval_max_new_tokens": ("integer", ">= 1", "IFEval generation budget in tokens"),
    "peft.r": ("integer", ">= 1", "LoRA rank"),
    "peft.lora_alpha": ("number", "> 0", "LoRA scale = lora_alpha / r"),
    "peft.lora_dropout": ("number", "[0, 1)", "dropout on the adapter input"),
    "peft.optimizer": (OPTIMIZERS + (None,), None, "this adapter's optimizer; null = "
                                                   "train.optimizer"),
    "logging.every": ("integer", ">= 1", "steps between log lines"),
}
_KINDS = {"integer": "an integer", "number": "a finite number", "boolean": "true or false"}
_ABSENT = object()


def check_ranges(cfg: DictConfig) -> None:
    """Raise one ValueError for the first `RANGES` key whose value is of the wrong kind or out of
    range, naming the key, the value, the allowed range, what the knob means and the fix."""
    for key, (kind, bounds, meaning) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or _allowed(value, kind, bounds):
            continue
        if isinstance(kind, tuple):
            must = "one of " + ", ".join(_yaml(v) for v in kind)
        else:
            base, _, null = kind.partition(" or ")
            must = " ".join(filter(None, (_KINDS[base], _describe(bounds), null and "or null")))
        verdict = "is out of range" if _allowed(value, kind, None) else "is not valid"
        default = _shipped_default(key)
        hint = "" if default is _ABSENT else f", e.g. the default {key}={_yaml(default)}"
        raise ValueError(f"{key}={_yaml(value)} {verdict}: it must be {must} ({meaning}). "
                         f"Set {key} to {must}{hint}")


def _allowed(value, kind, bounds: str | None) -> bool:
    if isinstance(kind, tuple):  # True == 1 in Python: compare types too
        return any(type(value) is type(v) and value == v for v in kind)
    base, _, null = kind.partition(" or ")
    if value is None:
        return bool(null)
    if base == "boolean":
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, int if base == "integer" else (int, float)):
        return False  # bools are not numbers here, and "1.5" is not an integer
    return math.isfinite(value) and (bounds is None or _within(value, bounds))


def _within(value: float, bounds: str) -> bool:
    """``value`` against ">= a", "> a" or an interval such as "(0, 1]"."""
    if bounds[0] in "[(":
        low, high = (float(x) for x in bounds[1:-1].split(","))
        return ((low <= value if bounds[0] == "[" else low < value)
                and (value <= high if bounds[-1] == "]" else value < high))
    op, limit = bounds.split()
    return value >= float(limit) if op == ">=" else value > float(limit)


def _describe(bounds: str | None) -> str:
    return "" if bounds is None else f"in {bounds}" if bounds[0] in "[(" else bounds


def _yaml(value) -> str:
    """A value as it is written on the command line: true, null, cosine, 0.001."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


@lru_cache(maxsize=None)
def _default_options() -> dict[str, str]:
    """{group: its default option} from conf/config.yaml's defaults list."""
    entries = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"]
    return {k: v for e in entries if isinstance(e, dict) for k, v in e.items()
            if isinstance(v, str)}


def _shipped_default(key: str):
    """The value of ``key`` in its group's default option, or _ABSENT."""
    group, _, rest = key.partition(".")
    path = CONF_DIR / group / f"{_default_options().get(group)}.yaml"
    if not path.is_file():
        return _ABSENT
    return OmegaConf.select(OmegaConf.load(path), rest, default=_ABSENT)


def check_constraint_names(argv: list[str]) -> None:
    """Fail with the list of available constraints when an override names one that has no YAML.

    Hydra reports a missing multi-select entry only as "Could not load 'constraints/x'"; this
    says what exists and how to add one.
    """
    available = sorted(p.stem for p in (Path(CONF_DIR) / "constraints").glob("*.yaml"))
    for arg in argv:
        match = re.fullmatch(r"\+?constraints=\[?([^\]]*)\]?", arg)
        if not match:
            continue
        for name in filter(None, (n.strip() for n in match.group(1).split(","))):
            if name not in available:
                raise SystemExit(
                    f"{arg}: unknown constraint {name!r} (no conf/constraints/{name}.yaml). "
                    f"Available: {', '.join(available)}. To add one, drop a class in "
                    f"constraints/ and a YAML with its _target_ in conf/constraints/.")
