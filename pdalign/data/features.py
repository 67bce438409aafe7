"""Tokens of preference and unpaired rows under the chat template and the truncation policy,
their collation into one (2B, T) batch, and `build_dataset`, the trainer's one call from
sources to features (the steps are described in `pdalign.data`)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from pdalign.data.preference import (
    PreferenceRow,
    UnpairedRow,
    Value,
    as_messages,
    as_text,
    check_both_labels,
    load_preference_rows,
    load_unpaired_rows,
    report_skipped,
    split_heldout,
    unpair_rows,
)
from pdalign.data.readers import PreferenceDataError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value torch's cross-entropy and our log-prob code skip


# What a row over its token budget gets (``data.on_overlong``).
ON_OVERLONG = ("truncate", "error", "skip")


def tokenize_pair(tokenizer, row: PreferenceRow, max_length: int | None = None,
                  max_prompt_length: int | None = None, on_overlong: str = "truncate",
                  ) -> dict[str, Any]:
    """Token ids of one pair under the chat template and the truncation policy.

    Args:
        tokenizer: a transformers tokenizer (its chat template is used when it has one).
        row: a validated row.
        max_length: budget for prompt + response tokens, or None for no limit.
        max_prompt_length: budget for the prompt alone, or None for no limit.
        on_overlong: what a prompt or response over its budget gets: ``truncate`` (default;
            the prompt keeps its end, a response its start), ``error`` (a `PreferenceDataError`
            naming the row and the field) or ``skip`` (the same error with reason
            ``overlong``, which `tokenize_rows` drops and counts).
    Returns a feature dict: ``index``; ``prompt_ids``; ``chosen_ids`` and ``rejected_ids``
    (response tokens only); ``prompt_len``, ``chosen_len``, ``rejected_len`` (their
    lengths); ``template_fallback`` (True when the response was tokenized on its own);
    ``truncated``, {field: its length in tokens before it was cut} (empty when nothing was).
    """
    prompt_ids = _prompt_ids(tokenizer, row)
    chosen_ids, chosen_fallback = _response_ids(tokenizer, row, prompt_ids, row.chosen)
    rejected_ids, rejected_fallback = _response_ids(tokenizer, row, prompt_ids, row.rejected)
    prompt_ids, (chosen_ids, rejected_ids), truncated = _fit(
        row, prompt_ids, {"chosen": chosen_ids, "rejected": rejected_ids}, max_length,
        max_prompt_length, on_overlong)
    return {
        "index": row.index,
        "prompt_ids": prompt_ids,
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        "prompt_len": len(prompt_ids),
        "chosen_len": len(chosen_ids),
        "rejected_len": len(rejected_ids),
        "template_fallback": chosen_fallback or rejected_fallback,
        "truncated": truncated,
    }


def tokenize_unpaired(tokenizer, row: UnpairedRow, max_length: int | None = None,
                      max_prompt_length: int | None = None, on_overlong: str = "truncate",
                      ) -> dict[str, Any]:
    """Token ids of one unpaired row, under the chat template and truncation policy of
    `tokenize_pair`.

    Returns a feature dict: ``index``; ``label``; ``prompt_ids``; ``completion_ids``;
    ``prompt_len``, ``completion_len``; ``room``, the response tokens ``max_length`` leaves
    after this prompt (None: no limit), which `collate` applies to the mismatched completion
    this prompt is paired with; ``template_fallback``; ``truncated``.
    """
    prompt_ids = _prompt_ids(tokenizer, row)
    completion_ids, fallback = _response_ids(tokenizer, row, prompt_ids, row.completion)
    prompt_ids, (completion_ids,), truncated = _fit(
        row, prompt_ids, {"completion": completion_ids}, max_length, max_prompt_length,
        on_overlong)
    room = None if max_length is None else max_length - len(prompt_ids)
    return {"index": row.index, "label": bool(row.label), "prompt_ids": prompt_ids,
            "completion_ids": completion_ids, "prompt_len": len(prompt_ids),
            "completion_len": len(completion_ids), "room": room, "template_fallback": fallback,
            "truncated": truncated}


def _fit(row, prompt_ids: list[int], responses: dict[str, list[int]], max_length: int | None,
         max_prompt_length: int | None, on_overlong: str,
         ) -> tuple[list[int], list[list[int]], dict[str, int]]:
    """(the prompt, the responses in order, {field: length before a cut}) under the budgets:
    an over-long prompt keeps its END (the question itself), a response its START."""
    if on_overlong not in ON_OVERLONG:
        raise ValueError(f"data.on_overlong={on_overlong!r} is not one of "
                         f"{', '.join(ON_OVERLONG)}")

    def error(problem: str, fix: str, field: str, reason: str) -> PreferenceDataError:
        return PreferenceDataError(problem, source=row.source, location=row.location,
                                   field=field, reason=reason, fix=fix)

    def over(field: str, n: int, budget: str) -> PreferenceDataError:
        return error(f"the {'prompt' if field == 'prompt' else 'response'} has {n} tokens, over "
                     f"{budget}", f"shorten it, raise data.{budget.split('=')[0]}, or set "
                     f"data.on_overlong=truncate (cut it) or data.on_overlong=skip (drop the "
                     f"row)", field, "overlong")

    truncated: dict[str, int] = {}
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        if on_overlong != "truncate":
            raise over("prompt", len(prompt_ids), f"max_prompt_length={max_prompt_length}")
        truncated["prompt"] = len(prompt_ids)
        prompt_ids = prompt_ids[-max_prompt_length:]
    if max_length is None:
        return prompt_ids, list(responses.values()), truncated
    room = max_length - len(prompt_ids)
    if room < 1:
        raise error(f"the prompt has {len(prompt_ids)} tokens, leaving no room for a response "
                    f"in max_length={max_length}",
                    "set data.max_prompt_length below data.max_length, raise "
                    "data.max_length, or set data.skip_invalid=true", "prompt", "prompt_too_long")
    kept = []
    for field, ids in responses.items():
        if len(ids) > room:
            if on_overlong != "truncate":
                raise over(field, len(ids), f"max_length={max_length} after its "
                                            f"{len(prompt_ids)}-token prompt")
            truncated[field] = len(ids)
        kept.append(ids[:room])
    return prompt_ids, kept, truncated


def tokenize_rows(tokenizer, rows: Iterable[PreferenceRow | UnpairedRow],
                  max_length: int | None = None,
                  max_prompt_length: int | None = None, on_overlong: str = "truncate",
                  skip_invalid: bool = False) -> tuple[list[dict[str, Any]], Counter]:
    """`tokenize_pair` (`tokenize_unpaired` for unpaired rows) over rows, checking every row's
    budget before training starts, and saying how many prompts and responses were cut.

    Args:
        tokenizer, max_length, max_prompt_length, on_overlong: as in `tokenize_pair`; under
            ``on_overlong="skip"`` the rows over a budget are dropped and counted as
            ``overlong``.
        rows: validated rows.
        skip_invalid: drop rows whose prompt is too long and count them, instead of raising.
            Default False.
    Returns (features, skipped): feature dicts and a Counter of dropped rows per reason.
    """
    features: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    first_error: PreferenceDataError | None = None
    source = "preference rows"
    for row in rows:
        source = row.source
        tokenize = tokenize_unpaired if isinstance(row, UnpairedRow) else tokenize_pair
        try:
            features.append(tokenize(tokenizer, row, max_length, max_prompt_length,
                                     on_overlong))
        except PreferenceDataError as err:
            dropped = (on_overlong == "skip" and err.reason == "overlong") or (
                skip_invalid and err.reason is not None)
            if not dropped:
                raise
            skipped[err.reason] += 1
            first_error = first_error or err
    if not features and not skipped:
        raise PreferenceDataError("no rows to tokenize", source=source,
                                  fix="check the data source and the held-out split")
    report_skipped(source, features, skipped, first_error)
    if (note := truncation_note(features, max_length, max_prompt_length)) is not None:
        log.warning("%s: %s (data.on_overlong=error stops at such a row, =skip drops it)",
                    source, note)
    fallbacks = sum(f["template_fallback"] for f in features)
    if fallbacks:
        log.warning("%s: %d of %d rows were tokenized as response text + eos because the "
                    "chat template does not extend the prompt's tokens", source, fallbacks,
                    len(features))
    return features, skipped


def truncation_note(features: Sequence[Mapping[str, Any]], max_length: int | None,
                    max_prompt_length: int | None) -> str | None:
    """How many prompts and responses of ``features`` were cut, to what and from what; None
    when nothing was. E.g. "truncated 1 of 48 prompts to max_prompt_length=128 tokens (the
    longest had 6604) and 2 of 96 responses to fit max_length=256 (the longest had 900)"."""
    cut = [f.get("truncated") or {} for f in features]
    prompts = [c["prompt"] for c in cut if "prompt" in c]
    responses = [n for c in cut for field, n in c.items() if field != "prompt"]
    if not prompts and not responses:
        return None
    per_row = 2 if features and "chosen_ids" in features[0] else 1
    parts = []
    if prompts:
        parts.append(f"{len(prompts)} of {len(features)} prompts to "
                     f"max_prompt_length={max_prompt_length} tokens (the longest had "
                     f"{max(prompts)})")
    if responses:
        parts.append(f"{len(responses)} of {per_row * len(features)} responses to fit "
                     f"max_length={max_length} (the longest had {max(responses)})")
    return "truncated " + " and ".join(parts)


def _prompt_ids(tokenizer, row: PreferenceRow) -> list[int]:
    if tokenizer.chat_template is None:
        if not isinstance(row.prompt, str):
            raise PreferenceDataError(
                "chat messages need a tokenizer with a chat template, and this one has none",
                source=row.source, location=row.location, field="prompt", reason="wrong_type",
                fix="use a chat model's tokenizer, or give the prompt as a plain string")
        return list(tokenizer(row.prompt)["input_ids"])  # with the tokenizer's BOS, if any
    text = tokenizer.apply_chat_template(as_messages(row.prompt, "user"),
                                         add_generation_prompt=True, tokenize=False)
    # The template writes its own special tokens; adding BOS again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _response_ids(tokenizer, row: PreferenceRow, prompt_ids: list[int], response: Value,
                  ) -> tuple[list[int], bool]:
    """(response token ids, used the text + eos fallback)."""
    if tokenizer.chat_template is not None:
        conversation = as_messages(row.prompt, "user") + as_messages(response, "assistant")
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
            return _strip_trailing_whitespace(tokenizer, list(full[len(prompt_ids):])), False
    ids = list(tokenizer(as_text(response), add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids, tokenizer.chat_template is not None


def _strip_trailing_whitespace(tokenizer, ids: list[int]) -> list[int]:
    """Drop whitespace-only tokens after the last non-whitespace one (see module docstring)."""
    end = len(ids)
    while end > 1 and not tokenizer.decode(ids[end - 1:end]).strip():
        end -= 1
    return ids[:end]


def collate(features: Sequence[Mapping[str, Any]], pad_token_id: int,
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Stack B pairs (or B unpaired rows) into one concatenated batch for a single forward pass.

    Pairs: rows 0..B-1 are chosen and rows B..2B-1 rejected, in the same pair order, each
    prompt + response, right-padded with ``pad_token_id``.

    Unpaired rows (features from `tokenize_unpaired`): rows 0..B-1 are (x_i, y_i) and rows
    B..2B-1 the mismatched (x_i, y_{i-1}), the completions rotated by one within the batch
    ((x_0, y_{B-1}) first), as TRL's KTOTrainer builds its KL rows; each mismatched completion
    is cut to its prompt's ``room``. Row i and row B + i share their prompt in both layouts.
    One row (B = 1) is its own mismatched row; KTO's training step refuses that batch size.

    Args:
        features: B feature dicts from `tokenize_pair` (optionally with float
            ``ref_chosen_logps`` / ``ref_rejected_logps`` from a reference cache).
        pad_token_id: the tokenizer's pad id.
        pad_to_multiple_of: round T up to a multiple of this (tensor-core friendly), or None.
    Returns:
        input_ids       (2B, T) long
        attention_mask  (2B, T) long, 1 on prompt and response tokens
        labels          (2B, T) long, input ids on response tokens, -100 elsewhere
        index           (B,)    long, the rows' source positions
        label           (B,)    bool, unpaired rows only: True = desirable
        ref_chosen_logps, ref_rejected_logps  (B,) float32, when every feature has them
    """
    import torch  # the data path up to collate stays torch-free (bad data fails fast)

    if not features:
        raise ValueError("collate needs at least one feature")
    if pad_token_id is None:
        raise ValueError("the tokenizer has no pad token id; set tokenizer.pad_token")
    unpaired = "completion_ids" in features[0]
    if unpaired:
        sequences = [(f["prompt_ids"], f["completion_ids"]) for f in features]
        shifted = [features[i - 1]["completion_ids"] for i in range(len(features))]
        sequences += [(f["prompt_ids"], y if f.get("room") is None else y[:f["room"]])
                      for f, y in zip(features, shifted)]
    else:
        sequences = [(f["prompt_ids"], f["chosen_ids"]) for f in features]
        sequences += [(f["prompt_ids"], f["rejected_ids"]) for f in features]
    width = max(len(prompt) + len(response) for prompt, response in sequences)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, response) in enumerate(sequences):
        start, end = len(prompt), len(prompt) + len(response)
        input_ids[i, :end] = torch.tensor(list(prompt) + list(response), dtype=torch.long)
        attention_mask[i, :end] = 1
        labels[i, start:end] = input_ids[i, start:end]
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "index": torch.tensor([f["index"] for f in features], dtype=torch.long)}
    if unpaired:
        batch["label"] = torch.tensor([bool(f["label"]) for f in features], dtype=torch.bool)
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        present = sum(key in f for f in features)
        if present == len(features):
            batch[key] = torch.tensor([float(f[key]) for f in features], dtype=torch.float32)
        elif present:
            raise ValueError(f"{present} of {len(features)} features carry {key}; a batch "
                             f"must have it for every pair or for none")
    return batch


@dataclass(frozen=True)
class PreferenceCollator:
    """`collate` with fixed padding settings, for ``DataLoader(collate_fn=...)``.

    Args:
        pad_token_id: the tokenizer's pad id.
        pad_to_multiple_of: round the sequence length up to a multiple of this, or None.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(features, self.pad_token_id, self.pad_to_multiple_of)


def build_dataset(tokenizer, source: Any, *, heldout: Any = None, heldout_fraction: float = 0.0,
                  seed: int = 0, columns: Mapping[str, str] | None = None,
                  max_length: int | None = None, max_prompt_length: int | None = None,
                  on_overlong: str = "truncate", skip_invalid: bool = False,
                  split: str = "train", unpaired: bool = False, unpair: bool = False,
                  ) -> tuple[list[dict], list[dict], Counter]:
    """Load, validate, split and tokenize a preference source (and its held-out set).

    Args:
        tokenizer: the policy's tokenizer.
        source: training data, as in `load_preference_rows`.
        heldout: an explicit held-out source (same columns), or None. Default None.
        heldout_fraction: with no ``heldout``, the share of ``source`` held out by
            `split_heldout`; 0 (default) holds nothing out.
        seed: the split's seed. Default 0.
        columns, skip_invalid, split: as in `load_preference_rows`.
        max_length, max_prompt_length, on_overlong: as in `tokenize_pair`.
        unpaired: the objective trains on unpaired rows (KTO): sources are read as
            ``prompt``/``completion``/``label`` rows. Default False (pairs).
        unpair: with ``unpaired``, the sources are pair files, split by `unpair_rows`
            (``data.unpair``); ignored for pair objectives. Default False.
    Returns (train_features, heldout_features, skipped): a held-out file's row ``index``
    counts from 0 in that file, so key a reference cache by (split, index).
    """
    if heldout is not None and heldout_fraction:
        raise ValueError("set either data.heldout (a file) or data.heldout_fraction, not both")

    def load(src: Any, key: str) -> tuple[list, Counter]:
        if not unpaired:
            return load_preference_rows(src, columns, skip_invalid, split, key)
        if not unpair:
            return load_unpaired_rows(src, columns, skip_invalid, split, key)
        pairs, dropped = load_preference_rows(src, columns, skip_invalid, split, key)
        return unpair_rows(pairs), dropped

    rows, skipped = load(source, "data.train")
    held_rows: list = []
    if heldout is not None:
        held_rows, held_skipped = load(heldout, "data.heldout")
        skipped += held_skipped
    elif heldout_fraction:
        rows, held_rows = split_heldout(rows, heldout_fraction, seed)
        if unpaired:
            fix = ("give data.heldout a file with both labels, or change "
                   "data.heldout_fraction or seed")
            for side, part in (("training", rows), ("held-out", held_rows)):
                check_both_labels(part, f"{part[0].source} ({side} side of "
                                        f"data.heldout_fraction={heldout_fraction})", fix=fix)
    budget = {"max_length": max_length, "max_prompt_length": max_prompt_length,
              "on_overlong": on_overlong, "skip_invalid": skip_invalid}
    train, train_skipped = tokenize_rows(tokenizer, rows, **budget)
    held: list[dict] = []
    if held_rows:
        held, held_skipped = tokenize_rows(tokenizer, held_rows, **budget)
        skipped += held_skipped
    return train, held, skipped + train_skipped
