"""The reference policy's log-probs: in the step (adapter disabled, or a frozen copy) and the
on-disk cache that a sweep computes once for the pairs its runs read
(``train.precompute_ref_logps``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from pdalign.policy.logprobs import decoder_and_head, per_sequence, response_states, token_logprobs
from pdalign.policy.models import reference_mode
from pdalign.runfiles.atomic import atomic_open


@torch.no_grad()
def reference_logps(model, input_ids, attention_mask, labels, ref_model=None,
                    pairs: int | None = None, group: int = 2) -> torch.Tensor:
    """Summed reference log-probs per sequence (adapter disabled, or ``ref_model``)  # (N,).

    Args:
        pairs, group: as in `sequence_logps`: the first group·pairs rows share pairs prompts.
    """
    with reference_mode(model, ref_model) as ref:
        st = response_states(ref, input_ids, attention_mask, labels, pairs, group)
        _, head = decoder_and_head(ref)  # the reference's own head (a frozen copy's, untrained)
    logp, _, _ = token_logprobs(st.h, head.weight, st.targets)
    return per_sequence(logp, st.row, input_ids.shape[0])


def reference_cache_key(model_id: dict, features: list[dict]) -> str:
    """sha256 over the model's identity and the exact token ids of every pair.

    Hashing the token ids (rather than file names) covers the data, the tokenizer, the chat
    template and the truncation settings at once: change any of them and the key changes.

    Args:
        model_id: what identifies the reference weights and numerics (name, revision, tiny
            config, quantization, dtype).
        features: tokenized pairs from `pdalign.data.features.tokenize_pair`.
    """

    h = hashlib.sha256(json.dumps(model_id, sort_keys=True, default=str).encode())
    for f in features:
        h.update(json.dumps([f["index"], f["prompt_ids"], f["chosen_ids"],
                             f["rejected_ids"]]).encode())
    return h.hexdigest()


def precompute_reference(model, features: list[dict], collate_fn, cache_path, *,
                         batch_size: int = 8, ref_model=None, device="cpu",
                         progress: bool = True, rows: Sequence[int] | None = None) -> list[dict]:
    """Attach ``ref_chosen_logps``/``ref_rejected_logps`` to every feature, from the cache.

    The reference runs once (no grad, adapter disabled) over the pairs the cache lacks among
    ``rows``, and the table is rewritten atomically; pairs outside ``rows`` that the cache does
    not hold get NaN (the trainer computes such a pair in the step if a run ever draws it).
    A cache that holds every requested pair runs nothing.

    Args:
        features: tokenized pairs (each with ``index``).
        collate_fn: turns a list of features into the concatenated batch.
        cache_path: file for this key (see `reference_cache_key`).
        rows: the positions a run will consume (`pdalign.training.trainer.consumed_positions`), or None
            for all of them.
    Returns new feature dicts (the inputs are not modified).
    """

    cache_path, n = Path(cache_path), len(features)
    if cache_path.is_file():
        table = torch.load(cache_path, weights_only=True)  # (n, 2) float32, by position
        if table.shape != (n, 2):
            raise ValueError(f"reference cache {cache_path} holds {tuple(table.shape)} values "
                             f"for {n} pairs; delete it to recompute")
    else:
        table = torch.full((n, 2), float("nan"))
    wanted = range(n) if rows is None else sorted(set(rows))
    missing = [i for i in wanted if bool(table[i].isnan().any())]
    if missing:

        for s in tqdm(range(0, len(missing), batch_size), desc="reference log-probs",
                      disable=not progress):
            pos = missing[s:s + batch_size]
            batch = collate_fn([features[i] for i in pos])
            b = len(pos)
            with torch.no_grad():
                logps = reference_logps(model, batch["input_ids"].to(device),
                                        batch["attention_mask"].to(device),
                                        batch["labels"].to(device), ref_model=ref_model,
                                        pairs=b).float().cpu()
            table[pos] = torch.stack([logps[:b], logps[b:]], dim=1)
        with atomic_open(cache_path, "wb") as fh:
            torch.save(table, fh)
    return [{**f, "ref_chosen_logps": float(table[i, 0]), "ref_rejected_logps": float(table[i, 1])}
            for i, f in enumerate(features)]
