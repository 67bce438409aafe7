# Run:  .venv/bin/python experiments/bench_step.py --rounds 3 --steps 4 --warmup 1 --threads 2
#         (the published table: replaces this CPU kind's section of results/bench.md and its entry
#          in results/bench.json; run it on an idle machine, every trainer of every round is a
#          fresh process)
#       .venv/bin/python experiments/bench_step.py --model tiny --rounds 1 --steps 1
#         (smoke run on the tiny model; writes to a temp dir, never to results/)
#       .venv/bin/python experiments/bench_step.py --only dpo,trl_dpo --rounds 1 --steps 2
#         (a subset; names: see TRAINERS below)
"""Seconds per optimizer step of pdalign against TRL, and against the matmul floor of the CPU.

What is compared. The embedded SmolLM2-135M with the same LoRA (conf/peft/lora.yaml: r=16,
alpha 32, q/k/v/o, no dropout), the same rows, the same batch (4 pairs), the same threads and, for
both frameworks, the precision rule of ``train.dtype=auto`` (`pdalign.policy.precision.resolve_dtype`: bf16
only where it is native and fast, fp32 otherwise). The rows are written once to a JSONL file in
TRL's conversational format, which both frameworks read:

- ``fixed``: a deterministic set whose chosen and rejected sequences are each exactly
  ``--seq-len`` (160) tokens, prompt + response, under the SmolLM2 chat template as pdalign
  tokenizes it (quickstart prompts; responses extended with text from other quickstart answers).
  No padding, so every step has the same ``tokens_per_step`` real tokens. TRL keeps the template's
  trailing newline after ``<|im_end|>`` that pdalign drops (data.py), so its sequences are one
  token longer; its tokens/s use its own counted tokens.
- ``quickstart``: the first rows of ``builtin:quickstart`` as they are (prompt ~44, chosen ~91,
  rejected ~9 tokens), where padding costs. Each framework draws its own seeded batches, so
  per-step tokens differ; tokens/s and the floor use each trainer's own counted real tokens.

Each run uses ``batch * (warmup + steps)`` rows, so every row is seen exactly once. The
``primal_dual`` row lists every built-in constraint (each ``conf/constraints/*.yaml``: the
sampled toxicity with ``scorer=profanity_check``, refusal, over_refusal and length, the batch
kl_budget, the pair-based refusal_pairs / over_refusal_pairs and the opener-based
refusal_openers / over_refusal_openers); toxicity and length are pointed at the adversarial
prompt set so one rollout (8 prompts x 48 new tokens, every 4 steps) serves three sampled
constraints, and over_refusal keeps its benign set (a second rollout, as a user's run has it).
``primal_dual_pairs`` and ``primal_dual_openers`` run only the two pair-based or the two
opener-based constraints: their cost alone. Take ``--steps`` a multiple of 4 so the timed steps
hold their share of rollouts (with warm-up 1 and steps 4, step 5 samples); a trainer's s/step is
the MEAN over its timed steps, which amortizes the rollout.

Where results go. ``bench.json`` maps a machine kind to one run's results; ``bench.md`` holds
one section per kind. The kind is the CPU's (``avx2`` / ``avx512_bf16`` / ``amx``, from its
flags: `cpu_kind`), or the GPU's name on a CUDA run, so a run replaces its own kind's section and
entry and leaves the others byte for byte. A ``bench.json`` of the older single-run format is
read as the section of the kind its CPU capabilities name. ``experiments/bench_scaling.py``
adds its own sections (``scaling/<kind>``) with this module's machinery.

Timing. Each round runs every trainer once, each in a fresh process (so load time is not a step
and peak RSS is its own: the child reports VmHWM of /proc/self/status at exit); the order rotates
by one each round. pdalign steps are timed by the trainer itself (``step_time_s`` in
metrics.jsonl: batch, forward, backward, clip, optimizer, dual step); TRL steps by a
TrainerCallback from on_step_begin to on_step_end (forward, backward, clip, optimizer step; the
batch is fetched just before on_step_begin). The first ``--warmup`` steps are dropped. Ratios are
taken within a round and the median over rounds is reported.

The floor. At the start the run times a square GEMM of the chosen dtype (best of 3 after one
warm-up) on the benchmark's threads: R FLOP/s. A step's matmul FLOPs count, for T real
(non-pad) tokens of the step (chosen + rejected) and N = non-embedding parameters + the LM head:

    forward 2*N*T  (LM head counted on every token)  +  LoRA backward ~ one more forward 2*N*T
    +  reference forward 2*N*T where the method runs one (DPO; not ORPO, not precomputed)

so DPO = 6*N*T, ORPO = 4*N*T, DPO with precomputed reference = 4*N*T; floor_s = FLOPs / R. This
one definition serves each method whatever a framework does (pdalign puts only response tokens
through the LM head; TRL all tokens). Not counted, so the floor is slightly low: attention
score/value matmuls (4*layers*T_seq*d per token, ~4% here), the LoRA adapters' own matmuls (~1%)
and their weight gradients, softmax/norm/elementwise work, optimizer, rollouts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pdalign.runfiles.atomic import write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
CONF_DIR = ROOT / "conf"

MAX_LENGTH = 256  # data.max_length for both frameworks: no row of either set is truncated
MAX_PROMPT_LENGTH = 128
# Every built-in constraint: a new conf/constraints/*.yaml joins the primal_dual row by itself.
CONSTRAINTS = sorted(p.stem for p in (CONF_DIR / "constraints").glob("*.yaml"))
PAIR_CONSTRAINTS = ("refusal_pairs", "over_refusal_pairs")
OPENER_CONSTRAINTS = ("refusal_openers", "over_refusal_openers")
FIRST_CONSTRAINTS = ("toxicity", "refusal", "kl_budget", "length")  # the round-one primal_dual row
# Targets of issue 20 (performance, round two), as (ratio key, upper limit). Each run stores the
# targets it was held to, so an older section keeps its own.
TARGETS = {"dpo_time_vs_trl": 0.5, "orpo_time_vs_trl": 0.5, "dpo_peak_rss_vs_trl": 0.6,
           "primal_dual_time_vs_dpo": 1.3, "dpo_time_vs_floor": 1.3, "orpo_time_vs_floor": 1.3}
# Kinds of CPU, slowest bf16 first: the order of bench.md's sections.
CPU_KINDS = ("avx2", "avx512_bf16", "amx")


@dataclass(frozen=True)
class Trainer:
    """One row of the table: a framework, a method and a setup.

    Args:
        framework: ``pdalign`` | ``trl``.
        method: ``dpo`` | ``orpo`` | ``primal_dual`` (pdalign's method config name).
        data: ``fixed`` (equal-length rows) | ``quickstart`` (variable-length bundled rows).
        precompute: reference log-probs computed once before training.
        qlora: nf4 base weights (double quantization) and 8-bit AdamW.
        floor: which floor the row is held against: ``dpo`` | ``orpo`` | ``dpo_precomputed``.
        extra: further pdalign overrides of this row.
        constraints: the constraint configs a ``primal_dual`` row trains under.
    """

    framework: str
    method: str
    data: str = "fixed"
    precompute: bool = False
    qlora: bool = False
    floor: str = "dpo"
    extra: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()


TRAINERS = {
    "dpo": Trainer("pdalign", "dpo"),
    "orpo": Trainer("pdalign", "orpo", floor="orpo"),
    "primal_dual": Trainer("pdalign", "primal_dual", constraints=tuple(CONSTRAINTS)),
    "primal_dual_pairs": Trainer("pdalign", "primal_dual", constraints=PAIR_CONSTRAINTS),
    "primal_dual_openers": Trainer("pdalign", "primal_dual", constraints=OPENER_CONSTRAINTS),
    "trl_dpo": Trainer("trl", "dpo"),
    "trl_orpo": Trainer("trl", "orpo", floor="orpo"),
    "dpo_precomputed": Trainer("pdalign", "dpo", precompute=True, floor="dpo_precomputed"),
    "trl_dpo_precomputed": Trainer("trl", "dpo", precompute=True, floor="dpo_precomputed"),
    "dpo_quickstart": Trainer("pdalign", "dpo", data="quickstart"),
    "trl_dpo_quickstart": Trainer("trl", "dpo", data="quickstart"),
    "dpo_qlora": Trainer("pdalign", "dpo", qlora=True),
    "dpo_recompute": Trainer("pdalign", "dpo", extra=("train.activation_checkpointing=1",)),
    "dpo_unshared": Trainer("pdalign", "dpo", extra=("train.share_prompt=false",)),
    "orpo_unshared": Trainer("pdalign", "orpo", floor="orpo", extra=("train.share_prompt=false",)),
    "dpo_cast_each_use": Trainer("pdalign", "dpo", extra=("train.hold_frozen_in_dtype=false",)),
    "primal_dual_openers_cast_each_use": Trainer(
        "pdalign", "primal_dual", constraints=OPENER_CONSTRAINTS,
        extra=("train.hold_frozen_in_dtype=false",)),
    "trl_dpo_qlora": Trainer("trl", "dpo", qlora=True),
    "dpo_packed": Trainer("pdalign", "dpo", extra=("train.pack_pairs=true",)),
    "orpo_packed": Trainer("pdalign", "orpo", floor="orpo", extra=("train.pack_pairs=true",)),
    "dpo_quickstart_packed": Trainer("pdalign", "dpo", data="quickstart",
                                     extra=("train.pack_pairs=true",)),
}
# Matmul passes of 2*N*T per step: forward, LoRA backward (~ one forward), reference forward.
FLOOR_PASSES = {"dpo": 3, "orpo": 2, "dpo_precomputed": 2}
NOTES = {
    "primal_dual": f"every built-in constraint ({', '.join(CONSTRAINTS)}); every 4 steps one "
                   "adversarial rollout serves toxicity (profanity_check), refusal and length, "
                   "one benign rollout over_refusal; held against the DPO floor (rollouts, pair "
                   "and opener rows are not in it)",
    "primal_dual_pairs": f"only the pair-based constraints ({', '.join(PAIR_CONSTRAINTS)}): "
                         "their forward on top of DPO's",
    "primal_dual_openers": f"only the opener-based constraints "
                           f"({', '.join(OPENER_CONSTRAINTS)})",
    "dpo_precomputed": "reference log-probs cached before step 1 (train.precompute_ref_logps)",
    "trl_dpo_precomputed": "precompute_ref_log_probs=True (before step 1)",
    "dpo_quickstart": "variable-length builtin:quickstart rows, padded per batch",
    "trl_dpo_quickstart": "variable-length builtin:quickstart rows, padded per batch",
    "dpo_qlora": "peft=qlora: nf4 + double quant base, 8-bit AdamW",
    "dpo_recompute": "train.activation_checkpointing=1: decoder activations recomputed in "
                     "backward (memory for time)",
    "dpo_unshared": "train.share_prompt=false: the prompt runs twice per pair, once with chosen "
                    "and once with rejected (the lever's off state)",
    "orpo_unshared": "train.share_prompt=false (the lever's off state)",
    "dpo_cast_each_use": "train.hold_frozen_in_dtype=false: frozen base weights kept fp32 and cast "
                         "to the compute dtype at every use (the lever's off state; the same in "
                         "fp32)",
    "primal_dual_openers_cast_each_use": "train.hold_frozen_in_dtype=false (the lever's off "
                                         "state)",
    "dpo_packed": "train.pack_pairs=true: [chosen ; rejected] as one token trie (the lever's "
                  "on state; off by default)",
    "orpo_packed": "train.pack_pairs=true (the lever's on state)",
    "dpo_quickstart_packed": "train.pack_pairs=true on the variable-length quickstart rows, where "
                             "the trie drops the padding a batch of unequal pairs carries",
    "trl_dpo_qlora": "nf4 + double quant base, optim=adamw_bnb_8bit; adapters cast back to the "
                     "dtype rule's dtype after TRL's bf16 cast",
}
RATIO_PAIRS = {  # key -> (numerator trainer, denominator trainer, measure)
    "dpo_time_vs_trl": ("dpo", "trl_dpo", "s_per_step"),
    "orpo_time_vs_trl": ("orpo", "trl_orpo", "s_per_step"),
    "dpo_peak_rss_vs_trl": ("dpo", "trl_dpo", "peak_rss_mb"),
    "primal_dual_time_vs_dpo": ("primal_dual", "dpo", "s_per_step"),
    "primal_dual_pairs_time_vs_dpo": ("primal_dual_pairs", "dpo", "s_per_step"),
    "primal_dual_openers_time_vs_dpo": ("primal_dual_openers", "dpo", "s_per_step"),
}
EXTRA_PAIRS = {
    "orpo_peak_rss_vs_trl": ("orpo", "trl_orpo", "peak_rss_mb"),
    "dpo_precomputed_time_vs_trl": ("dpo_precomputed", "trl_dpo_precomputed", "s_per_step"),
    "dpo_quickstart_time_vs_trl": ("dpo_quickstart", "trl_dpo_quickstart", "s_per_step"),
    "dpo_quickstart_tokens_per_s_vs_trl": ("dpo_quickstart", "trl_dpo_quickstart",
                                           "tokens_per_s"),
    "dpo_qlora_time_vs_trl": ("dpo_qlora", "trl_dpo_qlora", "s_per_step"),
    "dpo_qlora_peak_rss_vs_trl": ("dpo_qlora", "trl_dpo_qlora", "peak_rss_mb"),
    "dpo_qlora_time_vs_lora": ("dpo_qlora", "dpo", "s_per_step"),
    "dpo_qlora_peak_rss_vs_lora": ("dpo_qlora", "dpo", "peak_rss_mb"),
    "dpo_precomputed_time_vs_dpo": ("dpo_precomputed", "dpo", "s_per_step"),
    "dpo_recompute_peak_rss_vs_trl": ("dpo_recompute", "trl_dpo", "peak_rss_mb"),
    "dpo_recompute_time_vs_trl": ("dpo_recompute", "trl_dpo", "s_per_step"),
    "dpo_recompute_peak_rss_vs_dpo": ("dpo_recompute", "dpo", "peak_rss_mb"),
    "dpo_recompute_time_vs_dpo": ("dpo_recompute", "dpo", "s_per_step"),
    "dpo_time_vs_unshared": ("dpo", "dpo_unshared", "s_per_step"),
    "dpo_peak_rss_vs_unshared": ("dpo", "dpo_unshared", "peak_rss_mb"),
    "orpo_time_vs_unshared": ("orpo", "orpo_unshared", "s_per_step"),
    "orpo_peak_rss_vs_unshared": ("orpo", "orpo_unshared", "peak_rss_mb"),
    "dpo_time_vs_cast_each_use": ("dpo", "dpo_cast_each_use", "s_per_step"),
    "dpo_peak_rss_vs_cast_each_use": ("dpo", "dpo_cast_each_use", "peak_rss_mb"),
    "primal_dual_openers_time_vs_cast_each_use": ("primal_dual_openers",
                                                  "primal_dual_openers_cast_each_use",
                                                  "s_per_step"),
    "dpo_packed_time_vs_dpo": ("dpo_packed", "dpo", "s_per_step"),
    "dpo_packed_peak_rss_vs_dpo": ("dpo_packed", "dpo", "peak_rss_mb"),
    "orpo_packed_time_vs_orpo": ("orpo_packed", "orpo", "s_per_step"),
    "dpo_quickstart_packed_time_vs_dpo_quickstart": ("dpo_quickstart_packed", "dpo_quickstart",
                                                     "s_per_step"),
    # on a GPU the memory that limits a run is the device's (absent on CPU runs)
    "dpo_peak_gpu_vs_trl": ("dpo", "trl_dpo", "peak_gpu_mb"),
    "orpo_peak_gpu_vs_trl": ("orpo", "trl_orpo", "peak_gpu_mb"),
    "dpo_qlora_peak_gpu_vs_trl": ("dpo_qlora", "trl_dpo_qlora", "peak_gpu_mb"),
}


# ---- config: one composition serves both frameworks ----------------------------------------

def compose(overrides: list[str]):
    """The shipped Hydra config with ``overrides``, as pdalign-train composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def overrides(spec: dict) -> list[str]:
    """pdalign overrides of one run; the TRL child reads LoRA, lr, beta and lengths from them."""
    out = [f"model={'tiny' if spec['model'] == 'tiny' else 'smollm2_135m'}",
           f"peft={'qlora' if spec['qlora'] else 'lora'}", f"method={spec['method']}",
           f"data.train={spec['data_path']}", "data.heldout=null",
           f"data.max_length={spec.get('max_length', MAX_LENGTH)}",
           f"data.max_prompt_length={MAX_PROMPT_LENGTH}",
           f"train.steps={spec['warmup'] + spec['steps']}", f"train.batch_size={spec['batch']}",
           "train.grad_accum=1", f"train.threads={spec['threads']}", "train.warmup_steps=0",
           "train.schedule=constant", "train.checkpoint_every=0", "train.dtype=auto",
           f"train.precompute_ref_logps={str(spec['precompute']).lower()}",
           f"train.ref_cache_dir={spec['work_dir']}/ref_cache", "logging.wandb=false",
           "logging.every=1", "seed=0"]
    if spec["method"] == "primal_dual":
        # a spec without a list (experiments/profile_step.py's) keeps the first bench's four,
        # whose one adversarial rollout that profile times
        names = list(spec["constraints"] if "constraints" in spec else FIRST_CONSTRAINTS)
        out += [f"constraints=[{','.join(names)}]", "train.rollout_every=4"]
        if "toxicity" in names:  # offline scorer; the adversarial set shares refusal's rollout
            out += ["constraints.toxicity.scorer=profanity_check",
                    "constraints.toxicity.prompts=adversarial"]
        if "length" in names:
            # below the 8-token held-out budget `pdalign_config` sets (a bound at or above a
            # budget is a config error); the step's cost does not depend on it
            out += ["constraints.length.prompts=adversarial", "constraints.length.epsilon=6"]
    return out + list(spec.get("extra", ()))


def pdalign_config(spec: dict):
    """The composed config of a pdalign row, its end-of-run held-out evaluation cut to a token.

    The trainer evaluates after the last step (outside ``step_time_s``); one prompt per set and
    8 new tokens keep that from adding minutes of generation, and memory, to a timed row.
    """
    from omegaconf import open_dict

    cfg = compose(overrides(spec))
    shrink = {"prompts_per_set": 1, "max_new_tokens": 8}
    with open_dict(cfg):
        for key, value in shrink.items():
            if key in (cfg.get("eval") or {}):
                cfg.eval[key] = value
    return cfg


# ---- the rows --------------------------------------------------------------------------------

def _messages(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def _response_len(tokenizer, prompt: str, text: str) -> tuple[int, int]:
    """(prompt tokens, response tokens) of one answer, exactly as pdalign.data.preference tokenizes it."""
    from pdalign.data.features import tokenize_pair
    from pdalign.data.preference import PreferenceRow

    row = PreferenceRow(prompt=prompt, chosen=text, rejected=text, index=0, source="bench",
                        location="row 1")
    f = tokenize_pair(tokenizer, row)
    return f["prompt_len"], f["chosen_len"]


def _fit(tokenizer, prompt: str, words: list[str], room: int) -> str:
    """The longest prefix of ``words`` whose response fits ``room`` tokens, topped up exactly."""
    lo, hi = 1, len(words)
    while lo < hi:  # largest k with response_len(words[:k]) <= room
        mid = (lo + hi + 1) // 2
        if _response_len(tokenizer, prompt, " ".join(words[:mid]))[1] <= room:
            lo = mid
        else:
            hi = mid - 1
    text = " ".join(words[:lo])
    for filler in ["and", "so", "then", "it", "is", "the", "a", "of"] * room:
        n = _response_len(tokenizer, prompt, text)[1]
        if n == room:
            return text
        candidate = f"{text} {filler}"
        if _response_len(tokenizer, prompt, candidate)[1] <= room:
            text = candidate
    raise RuntimeError(f"could not build a response of exactly {room} tokens for {prompt!r}")


def fixed_rows(tokenizer, n: int, seq_len: int) -> list[dict]:
    """``n`` deterministic pairs whose chosen and rejected sequences are ``seq_len`` tokens each."""
    from pdalign.data.preference import load_preference_rows
    from pdalign.data.readers import QUICKSTART

    source, _ = load_preference_rows(QUICKSTART)
    corpus = " ".join(r.chosen for r in source).split()
    rows = []
    for i in range(n):
        base = source[i % len(source)]
        prompt_len, _ = _response_len(tokenizer, base.prompt, base.chosen)
        room = seq_len - prompt_len
        if room < 8:
            raise ValueError(f"--seq-len {seq_len} leaves no room after a {prompt_len}-token "
                             f"prompt")
        # responses: the row's own answer, continued with other answers' words (chosen and
        # rejected continue at different offsets, so they never coincide)
        start = (97 * i) % len(corpus)
        chosen = base.chosen.split() + corpus[start:] + corpus[:start]
        other = (start + len(corpus) // 2) % len(corpus)
        rejected = base.rejected.split() + corpus[other:] + corpus[:other]
        rows.append(_messages(base.prompt, _fit(tokenizer, base.prompt, chosen, room),
                              _fit(tokenizer, base.prompt, rejected, room)))
    return rows


def quickstart_rows(n: int) -> list[dict]:
    """The first ``n`` bundled quickstart pairs, unchanged, in the conversational format."""
    from pdalign.data.preference import load_preference_rows
    from pdalign.data.readers import QUICKSTART

    source, _ = load_preference_rows(QUICKSTART)
    if n > len(source):
        raise ValueError(f"builtin:quickstart has {len(source)} rows; batch*(warmup+steps)={n}")
    return [_messages(r.prompt, r.chosen, r.rejected) for r in source[:n]]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def real_tokens(tokenizer, path: Path, max_length: int = MAX_LENGTH) -> list[int]:
    """Real (non-pad) tokens of each pair, chosen + rejected, as pdalign tokenizes ``path``."""
    from pdalign.data.features import build_dataset

    features, _, _ = build_dataset(tokenizer, str(path), max_length=max_length,
                                   max_prompt_length=MAX_PROMPT_LENGTH)
    return [2 * f["prompt_len"] + f["chosen_len"] + f["rejected_len"] for f in features]


# ---- the floor -------------------------------------------------------------------------------

def matmul_params(model) -> int:
    """N: non-embedding parameters plus the LM head (counted once more if tied)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embed, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    total = sum(p.numel() for p in base.parameters())  # a tied head is listed once
    return total - embed.numel() + (head.numel() if head is embed else 0)


def model_matmul_params(model: str) -> int:
    """`matmul_params` of the bench's model: ``embedded`` (SmolLM2-135M) or ``tiny``."""
    from pdalign.policy.models import EMBEDDED, load_model

    tiny = dict(compose(["model=tiny"]).model.tiny) if model == "tiny" else None
    loaded, _ = load_model("tiny" if model == "tiny" else EMBEDDED, tiny=tiny)
    return matmul_params(loaded)


def matmul_tflops(dtype, size: int, device: str = "cpu", reps: int = 3) -> float:
    """Best-of-``reps`` rate of a ``size`` x ``size`` GEMM in ``dtype`` (after one warm-up)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for i in range(reps + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for the result on any device
        dt = time.perf_counter() - t0
        if i:
            best = min(best, dt)
    return 2 * size**3 / best / 1e12


# ---- one trainer in a child process ---------------------------------------------------------

def _peak_rss_mb() -> float:
    import resource

    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak_kb = max(peak_kb, int(line.split()[1]))
    except OSError:
        pass
    return peak_kb / 1024


def _peak_gpu_mb() -> float | None:
    """Peak GPU memory held by tensors (torch's allocator) on a CUDA run; None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def _child_pdalign(spec: dict) -> dict:
    from pdalign.runfiles.metrics import read_metrics
    from pdalign.training.trainer import train

    run_dir = Path(spec["work_dir"]) / "run"
    summary = train(pdalign_config(spec), run_dir)
    records = sorted((r for r in read_metrics(run_dir / "metrics.jsonl") if "step_time_s" in r),
                     key=lambda r: r["step"])
    times = [float(r["step_time_s"]) for r in records]
    if spec["pair_tokens_per_step"] is not None and spec["method"] == "primal_dual":
        # the logged count includes the rollout rows that share the forward; report pair tokens
        tokens = [int(spec["pair_tokens_per_step"])] * len(records)
    else:
        tokens = [round(r["tokens_per_s"] * r["step_time_s"]) for r in records]
    return {"step_times": times, "pair_tokens": tokens, "dtype": summary["dtype"]}


def _child_trl(spec: dict) -> dict:
    import dataclasses

    import torch
    from datasets import Dataset
    from omegaconf import OmegaConf
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback

    from pdalign.policy.models import bnb_4bit_config, build_tiny, embedded_dir, load_tokenizer
    from pdalign.policy.precision import resolve_dtype

    if spec["method"] == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as TrainerClass
    else:
        try:  # TRL >= 1.0 moved ORPO to trl.experimental
            from trl.experimental.orpo import ORPOConfig as Config
            from trl.experimental.orpo import ORPOTrainer as TrainerClass
        except ImportError:
            from trl import ORPOConfig as Config
            from trl import ORPOTrainer as TrainerClass

    cfg = compose(overrides(spec))  # the same LoRA, lr, beta and lengths as the pdalign rows
    torch.set_num_threads(int(spec["threads"]))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype("auto", device)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    quant = (bnb_4bit_config(dtype, cfg.peft.quant_type, cfg.peft.double_quant)
             if spec["qlora"] else None)
    if spec["model"] == "tiny":
        tiny = OmegaConf.to_container(cfg.model.tiny)
        model = build_tiny(len(tokenizer), **tiny)
        if quant is not None:  # bitsandbytes swaps layers at load time only
            tmp = Path(spec["work_dir"]) / "tiny"
            model.save_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant)
    else:
        kwargs = {"dtype": quant.bnb_4bit_compute_dtype if quant else torch.float32}
        if quant is not None:
            kwargs["quantization_config"] = quant
        model = AutoModelForCausalLM.from_pretrained(embedded_dir(), **kwargs)
    peft = cfg.peft
    lora = LoraConfig(r=int(peft.r), lora_alpha=float(peft.lora_alpha),
                      lora_dropout=float(peft.lora_dropout),
                      target_modules=list(peft.target_modules), bias="none", task_type="CAUSAL_LM")
    rows = [json.loads(line) for line in Path(spec["data_path"]).read_text().splitlines()]
    args = dict(output_dir=str(Path(spec["work_dir"]) / "trl"),
                per_device_train_batch_size=int(spec["batch"]), gradient_accumulation_steps=1,
                max_steps=int(spec["warmup"] + spec["steps"]), learning_rate=float(cfg.train.lr),
                lr_scheduler_type="constant", warmup_steps=0,
                weight_decay=float(cfg.train.weight_decay),
                max_grad_norm=float(cfg.train.max_grad_norm),
                max_length=int(spec.get("max_length", MAX_LENGTH)),
                beta=float(cfg.objectives[cfg.method.objective].beta), logging_steps=1,
                report_to=[], use_cpu=device == "cpu", bf16=dtype == torch.bfloat16, fp16=False,
                dataloader_num_workers=0, save_strategy="no", disable_dropout=True,
                seed=int(cfg.seed), data_seed=int(cfg.seed))
    # TRL defaults activation (gradient) checkpointing on; pdalign never recomputes activations.
    # transformers 5.x renamed the argument (the old name is a deprecated alias).
    known = {f.name for f in dataclasses.fields(Config)}
    args["activation_checkpointing" if "activation_checkpointing" in known
         else "gradient_checkpointing"] = False
    if spec["qlora"]:
        args["optim"] = "adamw_bnb_8bit"  # bitsandbytes AdamW8bit, as peft=qlora's adamw_8bit
    if spec["precompute"]:
        args["precompute_ref_log_probs"] = True
    extra = {"ref_model": None} if spec["method"] == "dpo" else {}

    class StepTimer(TrainerCallback):
        """Wall time from on_step_begin to on_step_end (forward, backward, clip, optimizer)."""

        def __init__(self):
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if device == "cuda":  # kernels run asynchronously: time them, not their launch
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    trainer = TrainerClass(model=model, args=Config(**args), train_dataset=Dataset.from_list(rows),
                           processing_class=tokenizer, peft_config=lora, callbacks=[timer],
                           **extra)
    if spec["qlora"]:
        # TRL casts QLoRA adapters to bf16 (QLoRA paper's recommendation); per the dtype rule a
        # bf16 matmul is what this machine must avoid, so put them back in the rule's dtype.
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != dtype:
                p.data = p.data.to(dtype)
    # Count the real tokens of each training batch as the trainer collates it (the k-th batch
    # collated during train() is step k's: one micro-batch per step).
    counts: list[int] = []
    collate = trainer.data_collator

    def counting(examples):
        batch = collate(examples)
        if "attention_mask" in batch:  # DPO: chosen and rejected rows in one tensor
            counts.append(int(batch["attention_mask"].sum()))
        else:  # ORPO: prompt+chosen and prompt+rejected tensors
            counts.append(int(batch["chosen_attention_mask"].sum()
                              + batch["rejected_attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    if getattr(trainer.args, "activation_checkpointing", trainer.args.gradient_checkpointing):
        raise RuntimeError("TRL resolved activation checkpointing to on; the comparison needs "
                           "it off")
    trainer.train()
    n = len(timer.times)
    return {"step_times": list(timer.times), "pair_tokens": counts[:n],
            "dtype": str(dtype).replace("torch.", "")}


def child_main(spec_path: str) -> None:
    """Run one trainer as described by the spec file and write its result file."""
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    try:
        result = (_child_pdalign if spec["framework"] == "pdalign" else _child_trl)(spec)
        result["error"] = None
    except Exception as err:  # reported in the table; the other trainers still run
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"}
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = _peak_rss_mb()
    result["peak_gpu_mb"] = _peak_gpu_mb()
    Path(spec["result_path"]).write_text(json.dumps(result))


def run_child(name: str, spec: dict, timeout: float) -> dict:
    """Start a fresh interpreter for one trainer and return its result (or its failure)."""
    work = Path(spec["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "result_path": str(work / "result.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
           "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log_path = work / "child.log"
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, __file__, "--child", str(work / "spec.json")],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT),
                                  timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    path = Path(spec["result_path"])
    if not path.is_file():
        tail = log_path.read_text()[-800:] if log_path.is_file() else ""
        return {"error": f"child exited with {rc} and no result; log tail: {tail}"}
    result = json.loads(path.read_text())
    if result.get("error"):
        print(f"  {name}: {result['error']} (log: {log_path})", file=sys.stderr)
    return result


# ---- summary ---------------------------------------------------------------------------------

def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def measure(result: dict, warmup: int, floor_s_of, fixed_floor: float | None) -> dict:
    """Per-round numbers of one trainer from its child's result."""
    if result.get("error"):
        return {"error": result["error"], "peak_rss_mb": result.get("peak_rss_mb"),
                "peak_gpu_mb": result.get("peak_gpu_mb")}
    times, tokens = result["step_times"][warmup:], result["pair_tokens"][warmup:]
    if not times:
        return {"error": f"only {len(result['step_times'])} steps ran (warm-up {warmup})"}
    s = statistics.mean(times)
    mean_tokens = statistics.mean(tokens) if tokens else None
    floor = fixed_floor if fixed_floor is not None else (
        floor_s_of(mean_tokens) if mean_tokens and floor_s_of else None)
    return {"s_per_step": s, "step_times_s": times,
            "tokens_per_step": mean_tokens,
            "tokens_per_s": sum(tokens) / sum(times) if tokens else None,
            "peak_rss_mb": result["peak_rss_mb"], "peak_gpu_mb": result.get("peak_gpu_mb"),
            "floor_s": floor,
            "time_vs_floor": s / floor if floor else None, "wall_s": result.get("wall_s"),
            "dtype": result.get("dtype")}


def ratio_medians(rounds: list[dict], pairs: dict) -> dict[str, float | None]:
    out = {}
    for key, (num, den, what) in pairs.items():
        per_round = []
        for rnd in rounds:
            a, b = rnd.get(num, {}).get(what), rnd.get(den, {}).get(what)
            if a is not None and b:
                per_round.append(a / b)
        out[key] = _median(per_round)
    return out


def _fmt(value, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


# ---- machine kinds and the files that keep one section per kind ------------------------------

def cpu_kind(flags) -> str:
    """The CPU kind that decides the dtype rule: ``amx`` | ``avx512_bf16`` | ``avx2``.

    Args:
        flags: the CPU's feature flags, as /proc/cpuinfo's or lscpu's "flags" line (a string) or
            as a collection of flag names. ``amx_bf16`` makes ``amx``; else ``avx512_bf16`` makes
            ``avx512_bf16``; anything else is ``avx2`` (the AVX2-only fp32 path, also the name
            given to an older CPU without AVX2: its dtype rule is the same).
    """
    flags = set(flags.split()) if isinstance(flags, str) else set(flags)
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "avx2"


def detect_cpu_kind() -> str:
    """`cpu_kind` of this machine: /proc/cpuinfo's flags, else lscpu's."""
    from pdalign.policy.precision import cpu_flags

    flags = cpu_flags()
    if not flags:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        flags = next((line.split(":", 1)[1].split() for line in out.splitlines()
                      if line.startswith("Flags:")), [])
    return cpu_kind(flags)


def machine_kind(settings: dict) -> str:
    """The section a run's results belong to: the GPU's name on a CUDA run, else the CPU kind
    (read from the capabilities of a run recorded before ``settings.cpu.kind`` existed)."""
    if settings.get("gpu"):
        return settings["gpu"]
    cpu = settings.get("cpu") or {}
    return cpu.get("kind") or cpu_kind(cpu.get("capabilities") or [])


def read_kinds(path: Path) -> dict[str, dict]:
    """``{kind: results}`` of a bench JSON file; ``{}`` when it does not exist.

    The one parser of bench.json and bench_scaling.json. A file in the older single-run format
    (its top level holds ``settings``) is one kind's entry, the kind from its own settings: the
    published AVX2 EPYC run reads as ``{"avx2": ...}``.
    """
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if "settings" in data:
        return {machine_kind(data["settings"]): data}
    return data


def write_kind(path: Path, kind: str, results: dict) -> dict[str, dict]:
    """Replace ``kind``'s entry of the JSON file at ``path`` (atomically); the others stay."""
    kinds = {**read_kinds(path), kind: results}
    write_text(path, json.dumps(kinds, indent=2) + "\n")
    return kinds


MARKER = "<!-- bench: {} -->"
MD_HEAD = """# Step benchmark: pdalign vs TRL

One section per machine kind (CPU: `avx2` / `avx512_bf16` / `amx`, from its flags; or the GPU's
name), written by `experiments/bench_step.py`; `scaling/<kind>` sections by
`experiments/bench_scaling.py` (cost against tokens per step and against the number of
constraints, with fitted slopes). A run replaces only its own section; the numbers behind each are
the same kind's entry in `bench.json` / `bench_scaling.json`.
"""


def _section_order(key: str) -> tuple:
    scaling, kind = key.startswith("scaling/"), key.removeprefix("scaling/")
    rank = CPU_KINDS.index(kind) if kind in CPU_KINDS else len(CPU_KINDS)
    return scaling, rank, kind


def split_sections(text: str) -> dict[str, str]:
    """The marked sections of a bench.md, ``{key: text}``, each text from its marker line to the
    next marker (the blank separator line dropped); unmarked text (the head) is not returned."""
    pattern = re.compile("^" + re.escape(MARKER).replace(r"\{\}", "(.+?)") + "$", re.M)
    found = list(pattern.finditer(text))
    sections = {}
    for m, nxt in zip(found, found[1:] + [None]):
        body = text[m.start():nxt.start() if nxt else len(text)]
        sections[m.group(1)] = body.rstrip("\n") + "\n"
    return sections


def section(key: str, body: str) -> str:
    """One bench.md section: its marker line, then ``body`` ending in one newline."""
    return MARKER.format(key) + "\n" + body.rstrip("\n") + "\n"


def update_markdown(out: Path, sections: dict[str, str]) -> Path:
    """Replace ``sections`` (``{key: text}``, text from `section`) in ``out/bench.md``; every
    other section stays byte for byte. A step section that bench.json has but bench.md lacks (a
    file of the older, unmarked format) is rendered from bench.json first."""
    path = out / "bench.md"
    current = split_sections(path.read_text()) if path.is_file() else {}
    for kind, payload in read_kinds(out / "bench.json").items():
        if kind not in current:
            current[kind] = section(kind, markdown(payload))
    current.update(sections)
    keys = sorted(current, key=_section_order)
    write_text(path, MD_HEAD + "\n" + "\n".join(current[k] for k in keys))
    return path


def markdown(payload: dict) -> str:
    """One kind's bench.md section (without its marker), from its bench.json entry."""
    s, run = payload["settings"], payload["run"]
    cpu = s["cpu"]
    gpu = s.get("gpu")
    host = (f"{cpu['model']} ({', '.join(cpu['capabilities']) or 'no AVX2/AVX512/AMX'}; "
            f"{cpu['logical_cpus']} logical CPUs)")
    lines = [
        f"## {machine_kind(s)}: {gpu or cpu['model']}",
        "",
        f"**Machine:** {f'GPU {gpu}, host ' if gpu else ''}{host}, {s['threads']} threads, "
        f"dtype {s['dtype']} "
        f"(train.dtype=auto rule, both frameworks), {s['matmul_tflops']:.3f} TFLOP/s measured "
        f"({payload['floor']['gemm_size']}² GEMM; {payload['floor']['matmul_tflops_end']:.3f} "
        f"at the end). Load average at start / end: "
        f"{run['loadavg_start']} / {run['loadavg_end']}. Finished {run['finished']}.",
        "",
        f"**Setup:** {s['model']} ({s['n_params'] / 1e6:.1f} M matmul params N), LoRA r=16 α=32 "
        f"q/k/v/o, {run['batch_pairs']} pairs per step, fixed rows of {run['seq_len']} tokens "
        f"per sequence ({s['tokens_per_step']} real tokens per DPO step), {run['rounds']} "
        f"interleaved rounds × {run['steps']} timed steps after {run['warmup']} warm-up, each "
        f"trainer a fresh process. Versions: "
        + ", ".join(f"{k} {v}" for k, v in run["versions"].items()) + ".",
        "",
        f"Command: `{run['command']}`",
        "",
        "| trainer | data | s/step | tokens/s | peak RSS MB | "
        + ("peak GPU MB | " if gpu else "") + "time/floor | note |",
        "|---|---|---:|---:|---:|" + ("---:|" if gpu else "") + "---:|---|",
    ]
    for row in payload["rows"]:
        if row.get("s_per_step") is None:
            lines.append(f"| {row['trainer']} | {row['data']} | — | — | — | "
                         + ("— | " if gpu else "") + "— | "
                         f"{row.get('error') or row.get('note', '')} |")
            continue
        lines.append(f"| {row['trainer']} | {row['data']} | {row['s_per_step']:.3f} | "
                     f"{_fmt(row['tokens_per_s'], '.0f')} | {_fmt(row['peak_rss_mb'], '.0f')} | "
                     + (f"{_fmt(row.get('peak_gpu_mb'), '.0f')} | " if gpu else "")
                     + f"{_fmt(row['time_vs_floor'], '.2f')} | {row.get('note', '')} |")
    lines += ["", "Medians over rounds; s/step is the mean of a run's timed steps. "
              "tokens/s counts real (non-pad) preference tokens, chosen + rejected.", "",
              "| ratio (median of per-round ratios) | value | target | |", "|---|---:|---:|---|"]
    for key, t in payload["targets"].items():
        mark = "—" if t["met"] is None else ("met" if t["met"] else "missed")
        lines.append(f"| {key} | {_fmt(t['value'], '.2f')} | ≤ {t['limit']} | {mark} |")
    for key, value in payload["ratios"].items():  # ratios without a target (pairs, openers)
        if key not in payload["targets"]:
            lines.append(f"| {key} | {_fmt(value, '.2f')} | — | — |")
    extra = {k: v for k, v in payload["extra_ratios"].items() if v is not None}
    if extra:
        lines += ["", "Other ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in extra.items()) + "."]
    fl = payload["floor"]
    lines += ["", "### Floor", "", fl["definition"], "",
              "floor_s per step: " + ", ".join(f"{k} {v:.3f} s" for k, v in
                                               payload["floor_s_all"].items()) + ".", ""]
    if run["notes"]:
        lines += ["### Notes", ""] + [f"- {n}" for n in run["notes"]] + [""]
    lines += ["### Per round (s/step)", "",
              "| trainer | " + " | ".join(f"round {i + 1}" for i in range(run["rounds"])) + " |",
              "|---|" + "---:|" * run["rounds"]]
    for name in payload["trainers"]:
        cells = []
        for rnd in payload["rounds"]:
            r = rnd.get(name, {})
            cells.append("failed" if r.get("error") else _fmt(r.get("s_per_step"), ".3f"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- the run ---------------------------------------------------------------------------------

def trl_available() -> bool:
    """TRL is the optional ``bench`` extra; without it the TRL rows are skipped with a note."""
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Arguments every bench mode shares (this script and experiments/bench_scaling.py)."""
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over them)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per trainer and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of every trainer")
    p.add_argument("--model", choices=["embedded", "tiny"], default="embedded")
    p.add_argument("--out", default=None, help="output dir (default experiments/results; with "
                                               "--model tiny, a new temp dir)")
    p.add_argument("--child-timeout", type=float, default=3600, help="seconds per trainer run")
    p.add_argument("--keep-work", action="store_true", help="keep the temp dir of child runs")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p)
    p.add_argument("--only", default=None, help=f"comma list of trainers: {','.join(TRAINERS)}")
    p.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    p.add_argument("--seq-len", type=int, default=160, help="tokens per fixed-set sequence")
    p.add_argument("--gemm", type=int, default=None,
                   help="size of the square GEMM timed (default 3072 on CPU, 8192 on CUDA)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def output_dir(args: argparse.Namespace) -> Path:
    """Where a run writes: --out; results/ by default; a temp dir (never results/) for tiny."""
    if args.model == "tiny":
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pdalign-bench-tiny-"))
        if out.resolve() == RESULTS.resolve():
            raise SystemExit("--model tiny must not write experiments/results; give another --out")
        return out
    return Path(args.out) if args.out else RESULTS


def idle_note() -> list[str]:
    load = os.getloadavg()[0]
    if load <= 0.5:
        return []
    return [f"the machine was not idle at the start (load average {load:.2f}): other processes "
            f"shared the CPU, so the timings are noisy"]


def run_versions() -> dict[str, str]:
    from pdalign.training.manifest import versions

    return {k: v for k, v in versions().items()
            if k in ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate") and v}


def child_spec(t: Trainer, *, data_path: Path, args: argparse.Namespace, batch: int,
               pair_tokens: int | None, max_length: int = MAX_LENGTH) -> dict:
    """What a child process needs to run trainer ``t`` (its work dir is set per round)."""
    return {"framework": t.framework, "method": t.method, "qlora": t.qlora,
            "precompute": t.precompute, "data_path": str(data_path), "model": args.model,
            "threads": args.threads, "steps": args.steps, "warmup": args.warmup, "batch": batch,
            "extra": list(t.extra), "constraints": list(t.constraints),
            "max_length": max_length, "pair_tokens_per_step": pair_tokens}


def run_rounds(specs: dict[str, dict], *, rounds: int, warmup: int, timeout: float, work: Path,
               floors: dict[str, tuple] | None = None) -> list[dict]:
    """The interleaved discipline: every spec once per round, each in a fresh process, the
    order rotated by one each round. Returns one ``{name: measure(...)}`` per round.

    Args:
        specs: ``{name: child_spec(...)}``, run in this order in round 1.
        floors: ``{name: (floor_s_of(tokens), fixed floor_s or None)}``; absent = no floor.
    """
    names = list(specs)
    out: list[dict] = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)] if names else []
        results = {}
        for name in order:
            spec = {**specs[name], "work_dir": str(work / f"r{r}-{name.replace('/', '_')}")}
            print(f"round {r + 1}/{rounds}: {name}", file=sys.stderr)
            raw = run_child(name, spec, timeout)
            floor_s_of, fixed = (floors or {}).get(name, (None, None))
            results[name] = m = measure(raw, warmup, floor_s_of, fixed)
            if m.get("s_per_step") is not None:
                vs = m.get("time_vs_floor")
                print(f"  {m['s_per_step']:.3f} s/step, {m['peak_rss_mb']:.0f} MB"
                      + (f", {vs:.2f}x floor" if vs else ""), file=sys.stderr)
        out.append(results)
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        child_main(args.child)
        return {}
    names = list(TRAINERS) if not args.only else [n.strip() for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in TRAINERS]
    if unknown:
        raise SystemExit(f"--only: unknown trainer(s) {unknown}; choose from {list(TRAINERS)}")
    out = output_dir(args)
    if min(args.rounds, args.steps, args.threads, args.batch) < 1 or args.warmup < 0:
        raise SystemExit("--rounds, --steps, --threads, --batch must be >= 1, --warmup >= 0")

    import torch

    from pdalign.policy.models import EMBEDDED, load_tokenizer
    from pdalign.policy.precision import resolve_dtype
    from pdalign.training.manifest import cpu_info

    notes = idle_note()
    if not trl_available():
        skipped = [n for n in names if TRAINERS[n].framework == "trl"]
        names = [n for n in names if TRAINERS[n].framework != "trl"]
        if skipped:
            notes.append(f"TRL is not installed (pip install -e '.[dev,bench]'); skipped {skipped}")
    loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = resolve_dtype("auto", device)
    model_name = "tiny" if args.model == "tiny" else EMBEDDED
    work = Path(tempfile.mkdtemp(prefix="pdalign-bench-work-"))
    print(f"work dir {work}; output {out}", file=sys.stderr)

    # ---- the rows, N, the floor ------------------------------------------------------------
    tokenizer = load_tokenizer(model_name)
    n_rows = args.batch * (args.warmup + args.steps)
    data = {"fixed": write_jsonl(fixed_rows(tokenizer, n_rows, args.seq_len),
                                 work / "fixed.jsonl"),
            "quickstart": write_jsonl(quickstart_rows(n_rows), work / "quickstart.jsonl")}
    fixed_tokens = real_tokens(tokenizer, data["fixed"])
    if set(fixed_tokens) != {2 * args.seq_len}:  # chosen + rejected sequence of each pair
        raise RuntimeError(f"fixed rows are not all {args.seq_len} tokens: {set(fixed_tokens)}")
    tokens_per_step = 2 * args.batch * args.seq_len  # B pairs x 2 sequences x seq_len
    n_params = model_matmul_params(args.model)
    if args.gemm is None:
        args.gemm = 8192 if device == "cuda" else 3072
    tflops = matmul_tflops(dtype, args.gemm, device)
    rate = tflops * 1e12

    def floor_s(kind: str, tokens: float) -> float:
        return FLOOR_PASSES[kind] * 2 * n_params * tokens / rate

    floor_fixed = {k: floor_s(k, tokens_per_step) for k in FLOOR_PASSES}
    print(f"N={n_params} tokens/step={tokens_per_step} {dtype} {tflops:.3f} TFLOP/s floors "
          f"{ {k: round(v, 3) for k, v in floor_fixed.items()} }", file=sys.stderr)

    # ---- interleaved rounds ----------------------------------------------------------------
    specs, floors = {}, {}
    for name in names:
        t = TRAINERS[name]
        specs[name] = child_spec(t, data_path=data[t.data], args=args, batch=args.batch,
                                 pair_tokens=tokens_per_step if t.data == "fixed" else None)
        floors[name] = (lambda x, k=t.floor: floor_s(k, x),
                        floor_fixed[t.floor] if t.data == "fixed" else None)
    rounds = run_rounds(specs, rounds=args.rounds, warmup=args.warmup, timeout=args.child_timeout,
                        work=work, floors=floors)

    tflops_end = matmul_tflops(dtype, args.gemm, device)  # drift check; the floor uses the start

    # ---- summary -----------------------------------------------------------------------------
    rows = []
    for name in names:
        t = TRAINERS[name]
        ok = [rnd[name] for rnd in rounds if not rnd.get(name, {}).get("error")]
        errors = sorted({rnd[name]["error"] for rnd in rounds if rnd.get(name, {}).get("error")})
        row = {"trainer": name, **asdict(t), "note": NOTES.get(name, ""),
               "rounds_ok": len(ok), "error": "; ".join(errors) or None}
        for key in ("s_per_step", "tokens_per_s", "peak_rss_mb", "peak_gpu_mb", "time_vs_floor",
                    "floor_s", "tokens_per_step"):
            row[key] = _median([m.get(key) for m in ok])
        rows.append(row)
    ratios = ratio_medians(rounds, RATIO_PAIRS)
    for key, kind in (("dpo_time_vs_floor", "dpo"), ("orpo_time_vs_floor", "orpo")):
        ratios[key] = _median([rnd.get(kind, {}).get("time_vs_floor") for rnd in rounds])
    targets = {k: {"limit": lim, "value": ratios[k],
                   "met": None if ratios[k] is None else bool(ratios[k] <= lim)}
               for k, lim in TARGETS.items()}
    if args.steps % 4 and any(TRAINERS[n].method == "primal_dual" for n in names):
        notes.append(f"--steps {args.steps} is not a multiple of rollout_every=4: the timed "
                     f"primal_dual steps do not hold exactly one rollout per 4 steps")
    notes.append("TRL: DPOTrainer/ORPOTrainer with peft_config (LoRA as above; reference = "
                 "adapter disabled), per_device_train_batch_size=batch, max_length=256, "
                 "gradient_checkpointing=False, bf16 per the dtype rule, use_cpu on CPU, "
                 "dataloader_num_workers=0, save_strategy=no, lr/beta/max_grad_norm from "
                 "pdalign's config, constant schedule; its default optimizer otherwise")
    notes.append("the fixed rows are synthesized from quickstart prompts and answers (content "
                 "does not matter for timing); TRL tokenizes one more token per sequence (the "
                 "template's newline after <|im_end|>)")
    cpu = {**cpu_info(), "kind": detect_cpu_kind()}
    command = "python experiments/bench_step.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    definition = (
        "floor_s = matmul FLOPs of one step / the measured GEMM rate of the chosen dtype. FLOPs "
        "= passes × 2·N·T with T the real (non-pad) tokens of the step (chosen + rejected) and "
        "N = non-embedding parameters + the LM head (its matmul counted on every token, the "
        "standard full forward, although pdalign only runs it on response tokens). Passes: "
        "forward 1, LoRA backward ≈ one more forward 1, reference forward 1 where the method "
        "runs one: DPO 3 (6·N·T), ORPO 2 (4·N·T), DPO with precomputed reference 2. Not "
        "counted "
        "(so the floor is a little low): attention score/value matmuls, the LoRA adapters' own "
        "matmuls and weight gradients, elementwise work, optimizer, rollouts. Fixed rows use "
        "tokens_per_step; quickstart rows use each trainer's own mean real tokens per step.")
    payload = {
        "ratios": {k: ratios[k] for k in [*RATIO_PAIRS, *TARGETS]},
        "floor_s": {"dpo": floor_fixed["dpo"], "orpo": floor_fixed["orpo"]},
        "settings": {"model": model_name, "n_params": n_params, "tokens_per_step": tokens_per_step,
                     "dtype": str(dtype).replace("torch.", ""), "threads": args.threads,
                     "cpu": cpu, "matmul_tflops": tflops,
                     "gpu": torch.cuda.get_device_name() if device == "cuda" else None},
        "targets": targets,
        "rows": rows,
        "extra_ratios": ratio_medians(rounds, EXTRA_PAIRS),
        "floor_s_all": floor_fixed,
        "floor": {"definition": definition, "gemm_size": args.gemm, "passes": FLOOR_PASSES,
                  "matmul_tflops_end": tflops_end,
                  "flops_per_step": {k: FLOOR_PASSES[k] * 2 * n_params * tokens_per_step
                                     for k in FLOOR_PASSES}},
        "trainers": names,
        "rounds": rounds,
        "run": {"command": command, "rounds": args.rounds, "steps": args.steps,
                "warmup": args.warmup, "batch_pairs": args.batch, "seq_len": args.seq_len,
                "device": device, "loadavg_start": loadavg_start,
                "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": run_versions(),
                "notes": notes},
    }
    kind = machine_kind(payload["settings"])
    write_kind(out / "bench.json", kind, payload)
    update_markdown(out, {kind: section(kind, markdown(payload))})
    if not args.keep_work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote the {kind} section of {out / 'bench.md'} and {out / 'bench.json'}",
          file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
